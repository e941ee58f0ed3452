//! Authentication of everything Atlassian sends: which key verifies a request, and
//! the proof that it was verified.
//!
//! A handler receives a [`Verified<T>`], which only this module can build, so it
//! cannot act on a request that skipped verification. This module never logs a
//! token or a secret; on a qsh mismatch it exposes the canonical string it computed,
//! which is safe to log.

pub mod install;
pub mod jwt;
pub mod qsh;
pub mod tenants;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use jsonwebtoken::{Algorithm, DecodingKey};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::config::{normalise_audience, Config};
use crate::domain::{ClientKey, Product, Tenant, TenantKind, TenantState, UsedToken};
use crate::store::StoreError;
use install::InstallKeys;
pub use jwt::{Claims, SignedRequest};
use tenants::TenantCache;

/// Why a request was not authenticated. Everything but [`AuthError::KeyServer`]
/// and [`AuthError::Store`] is the caller's fault and answers 401.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no JWT in the Authorization header or the jwt query parameter")]
    MissingToken,
    #[error("malformed JWT: {0}")]
    Malformed(&'static str),
    #[error("JWT algorithm not accepted here")]
    WrongAlgorithm,
    #[error("JWT signature does not verify")]
    BadSignature,
    #[error("JWT has expired")]
    Expired,
    #[error("JWT `{0}` lies in the future")]
    NotYetValid(&'static str),
    #[error("JWT lacks the `{0}` claim")]
    MissingClaim(&'static str),
    #[error("JWT qsh does not match this request")]
    QshMismatch {
        /// The canonical request computed here (no secret in it), for the log.
        canonical: String,
    },
    #[error("JWT `iss` names no installed tenant")]
    UnknownTenant,
    #[error("tenant is uninstalled")]
    TenantUninstalled,
    #[error("tenant is installed for {installed_for}, not this product")]
    WrongProduct { installed_for: Product },
    #[error("JWT `iss` does not match the body's clientKey")]
    IssuerMismatch,
    #[error("JWT `aud` is not this app's base URL")]
    WrongAudience,
    #[error("JWT header has no usable `kid`")]
    BadKid,
    #[error("no install key is published for this `kid`")]
    UnknownKid,
    #[error("install key server unavailable: {0}")]
    KeyServer(String),
    #[error("store unavailable")]
    Store(#[from] StoreError),
}

impl AuthError {
    /// True when the failure is ours, not the caller's: the answer is 503 so that
    /// Atlassian retries, rather than 401.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AuthError::KeyServer(_) | AuthError::Store(_))
    }

    /// Refusals that cached tenant data could cause wrongly, after a change made
    /// by another process: worth one more look at the store.
    fn may_be_stale(&self) -> bool {
        matches!(
            self,
            AuthError::UnknownTenant
                | AuthError::BadSignature
                | AuthError::TenantUninstalled
                | AuthError::WrongProduct { .. }
        )
    }
}

/// A value that was obtained from a request whose signature, time claims and qsh
/// were all checked. Only this module constructs one.
#[derive(Debug, Clone)]
pub struct Verified<T> {
    value: T,
    claims: Claims,
}

impl<T> Verified<T> {
    fn new(value: T, claims: Claims) -> Self {
        Self { value, claims }
    }

    pub fn get(&self) -> &T {
        &self.value
    }

    pub fn claims(&self) -> &Claims {
        &self.claims
    }
}

impl Verified<UsedToken> {
    /// A signed install speaks for the `clientKey` in its body only if the token was
    /// issued by that client: the body itself is not covered by the signature.
    pub fn for_client(self, client_key: &str) -> Result<Verified<ClientKey>, AuthError> {
        if self.claims.iss != client_key {
            return Err(AuthError::IssuerMismatch);
        }
        Ok(Verified::new(
            ClientKey(client_key.to_string()),
            self.claims,
        ))
    }
}

/// Verifies Connect requests: HS256 with a tenant's shared secret, or RS256 signed
/// installs with Atlassian's published keys.
pub struct Authenticator {
    context_path: String,
    leeway: Duration,
    audiences: Vec<String>,
    tenants: Arc<TenantCache>,
    install_keys: InstallKeys,
}

impl Authenticator {
    pub fn new(config: &Config, tenants: Arc<TenantCache>, http: reqwest::Client) -> Self {
        Self {
            context_path: config.context_path.clone(),
            leeway: config.jwt_leeway,
            audiences: config.audiences.clone(),
            tenants,
            install_keys: InstallKeys::new(config.install_keys_url.clone(), http),
        }
    }

    /// A request signed by an installed (not uninstalled) tenant of `product` with
    /// its shared secret: webhooks, `enabled`, `disabled`.
    pub async fn verify_tenant_request(
        &self,
        request: &SignedRequest<'_>,
        product: Product,
    ) -> Result<Verified<Tenant>, AuthError> {
        let token = request.token()?;
        let (header, peeked) = jwt::peek(&token)?;
        record_claimed_issuer(&peeked.iss);
        if header.alg != "HS256" {
            return Err(AuthError::WrongAlgorithm);
        }
        let (tenant, cached) = self.tenants.get(&peeked.iss).await?;
        let (tenant, claims) = match check_tenant_token(&token, tenant, product) {
            Err(e) if cached && e.may_be_stale() => match self.tenants.recheck(&peeked.iss).await {
                Some(fresh) => check_tenant_token(&token, fresh?, product)?,
                None => return Err(e),
            },
            other => other?,
        };
        jwt::check_times(&claims, Utc::now(), self.leeway)?;
        jwt::check_qsh(&claims, request, &self.context_path)?;
        Ok(Verified::new(tenant, claims))
    }

    /// A signed-install lifecycle callback (`installed`, `uninstalled`): RS256 with
    /// the key Atlassian publishes under the token's `kid`, and `aud` naming this
    /// app. The caller then ties it to the body with [`Verified::for_client`], and
    /// has the store accept the returned token once: the body is not covered by
    /// the signature, so a captured token must not be usable with another body.
    pub async fn verify_signed_install(
        &self,
        request: &SignedRequest<'_>,
    ) -> Result<Verified<UsedToken>, AuthError> {
        let token = request.token()?;
        let (header, peeked) = jwt::peek(&token)?;
        record_claimed_issuer(&peeked.iss);
        if header.alg != "RS256" {
            return Err(AuthError::WrongAlgorithm);
        }
        let kid = header.kid.ok_or(AuthError::BadKid)?;
        // The claims are checked before the key is fetched too: a token that fails
        // them anyway must not cost an outgoing request.
        self.check_install_claims(&peeked, request)?;
        let key = self.install_keys.get(&kid, request.peer).await?;
        let claims = jwt::verify_signature(&token, &key, Algorithm::RS256)?;
        self.check_install_claims(&claims, request)?;
        let used = self.used_token(&token, &claims)?;
        Ok(Verified::new(used, claims))
    }

    /// The token to remember: the SHA-256 of what its signature covers (header
    /// and claims; another encoding of the same signature is the same token),
    /// until it would be refused as expired anyway.
    fn used_token(&self, token: &str, claims: &Claims) -> Result<UsedToken, AuthError> {
        let signed = token
            .rsplit_once('.')
            .map(|(signed, _)| signed)
            .ok_or(AuthError::Malformed("not three segments"))?;
        let exp = claims.exp.ok_or(AuthError::MissingClaim("exp"))?;
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX);
        let expires_at = DateTime::from_timestamp(exp.saturating_add(leeway), 0)
            .ok_or(AuthError::Malformed("exp out of range"))?;
        Ok(UsedToken {
            digest: Sha256::digest(signed.as_bytes()).into(),
            expires_at,
        })
    }

    fn check_install_claims(
        &self,
        claims: &Claims,
        request: &SignedRequest<'_>,
    ) -> Result<(), AuthError> {
        // Lifecycle callbacks are ordered by `iat`: one without it cannot be placed.
        claims.iat.ok_or(AuthError::MissingClaim("iat"))?;
        jwt::check_times(claims, Utc::now(), self.leeway)?;
        let audience_ok = claims
            .audiences()
            .iter()
            .any(|aud| self.audiences.contains(&normalise_audience(aud)));
        if !audience_ok {
            return Err(AuthError::WrongAudience);
        }
        jwt::check_qsh(claims, request, &self.context_path)
    }

    pub fn tenants(&self) -> &TenantCache {
        &self.tenants
    }
}

/// Puts the token's `iss`, not yet verified, on the current span as
/// `claimed_iss` (where the caller's span declares it), so that a refusal is
/// logged with the client key it claimed. Only short printable values: the claim
/// is attacker-controlled.
fn record_claimed_issuer(iss: &str) {
    if iss.len() <= 128 && iss.chars().all(|c| c.is_ascii_graphic()) {
        tracing::Span::current().record("claimed_iss", iss);
    }
}

/// A process-wide limiter of `per_second` events with bursts up to `burst`.
fn rate_limiter(per_second: NonZeroU32, burst: NonZeroU32) -> DefaultDirectRateLimiter {
    RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst))
}

/// The signature first, so that a forger learns nothing about the tenant's state.
fn check_tenant_token(
    token: &str,
    tenant: Option<Tenant>,
    product: Product,
) -> Result<(Tenant, Claims), AuthError> {
    // Only a Connect installation has a shared secret; the other kinds have
    // none (an empty one), and must never verify an HS256 token.
    let tenant = tenant
        .filter(|t| t.kind == TenantKind::Connect && !t.shared_secret.expose_secret().is_empty())
        .ok_or(AuthError::UnknownTenant)?;
    let key = DecodingKey::from_secret(tenant.shared_secret.expose_secret().as_bytes());
    let claims = jwt::verify_signature(token, &key, Algorithm::HS256)?;
    if tenant.state == TenantState::Uninstalled {
        return Err(AuthError::TenantUninstalled);
    }
    if tenant.product != product {
        return Err(AuthError::WrongProduct {
            installed_for: tenant.product,
        });
    }
    Ok((tenant, claims))
}
