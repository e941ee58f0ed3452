//! Forge Remote: verifying the Forge Invocation Token (FIT) a Forge app's
//! trigger sends with each product event, and reading the event it carries.
//!
//! A token is accepted only when all of these hold (checked in this order, so
//! that a token failing the cheap checks never costs a key fetch):
//! - header `alg` is `RS256` and `kid` is present;
//! - `iss` is `forge/invocation-token`; `aud` (string or array) contains a
//!   configured app id, and `app.id` equals it; `app.installationId` is present;
//! - `iat`, `nbf`, `exp` and `jti` are present; `exp` and `nbf` hold within the
//!   leeway;
//! - `icLabel`, when present, matches `^[a-z0-9_-]{1,50}$` and an Isolated
//!   Cloud JWKS template is configured (its keys then come from there);
//! - the signature verifies with the JWKS key named by `kid`.
//!
//! Keys are cached per JWKS URL for `HOOKRELAY_FORGE_JWKS_TTL`. An unknown
//! `kid` refetches the JWKS, at most once per
//! `HOOKRELAY_FORGE_JWKS_REFETCH_INTERVAL` for all URLs together, so a flood
//! of made-up `kid`s (or Isolated Cloud labels) costs at most that. A JWKS that
//! cannot be fetched, with no key for the `kid`, fails closed: 503, so that
//! Forge retries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, RwLock};

use crate::config::ForgeSettings;
use crate::domain::Product;

/// The FIT issuer.
pub const ISSUER: &str = "forge/invocation-token";
/// Most bytes of JWKS read: Atlassian's is a few KiB.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most Isolated Cloud JWKS URLs cached at once.
const MAX_JWKS_URLS: usize = 64;

/// Why a Forge request was refused. Everything but [`ForgeError::Jwks`] is
/// the caller's fault and answers 401.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("Forge Remote is not configured (HOOKRELAY_FORGE_APP_IDS is empty)")]
    NotConfigured,
    #[error("no Forge Invocation Token (Authorization: Bearer <token>)")]
    MissingToken,
    #[error("malformed Forge Invocation Token: {0}")]
    Malformed(&'static str),
    #[error("token algorithm must be RS256")]
    Algorithm,
    #[error("token header has no `kid`")]
    MissingKid,
    #[error("token lacks the `{0}` claim")]
    MissingClaim(&'static str),
    #[error("token `iss` is not forge/invocation-token")]
    Issuer,
    #[error("token `aud` names no app configured in HOOKRELAY_FORGE_APP_IDS")]
    Audience,
    #[error("token `app.id` does not equal its `aud`")]
    AppId,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (`nbf`)")]
    NotYetValid,
    #[error("token `icLabel` is not a valid Isolated Cloud label")]
    BadIcLabel,
    #[error("Isolated Cloud tokens are not accepted (HOOKRELAY_FORGE_IC_JWKS_TEMPLATE is unset)")]
    IsolatedCloud,
    #[error("no key in the JWKS has this token's `kid`")]
    UnknownKid,
    #[error("token signature does not verify")]
    Signature,
    #[error("the Forge JWKS cannot be fetched: {0}")]
    Jwks(String),
}

impl ForgeError {
    /// True when the failure is ours (the keys cannot be had): answer 503.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ForgeError::Jwks(_))
    }

    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ForgeError::NotConfigured => "not_configured",
            ForgeError::MissingToken => "missing_token",
            ForgeError::Malformed(_) => "malformed",
            ForgeError::Algorithm => "algorithm",
            ForgeError::MissingKid => "kid",
            ForgeError::MissingClaim(_) => "missing_claim",
            ForgeError::Issuer => "issuer",
            ForgeError::Audience => "audience",
            ForgeError::AppId => "app_id",
            ForgeError::Expired => "expired",
            ForgeError::NotYetValid => "not_yet_valid",
            ForgeError::BadIcLabel => "ic_label",
            ForgeError::IsolatedCloud => "isolated_cloud",
            ForgeError::UnknownKid => "unknown_kid",
            ForgeError::Signature => "signature",
            ForgeError::Jwks(_) => "jwks",
        }
    }
}

/// `aud`: a string or an array of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, id: &str) -> bool {
        match self {
            Audience::One(a) => a == id,
            Audience::Many(all) => all.iter().any(|a| a == id),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct FitClaims {
    iss: Option<String>,
    aud: Option<Audience>,
    iat: Option<i64>,
    nbf: Option<i64>,
    exp: Option<i64>,
    jti: Option<String>,
    app: Option<FitApp>,
    #[serde(default)]
    context: Option<FitContext>,
    #[serde(rename = "icLabel")]
    ic_label: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FitApp {
    id: Option<String>,
    installation_id: Option<String>,
    api_base_url: Option<String>,
    #[serde(default)]
    environment: Option<FitEnvironment>,
}

#[derive(Debug, Clone, Deserialize)]
struct FitEnvironment {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FitContext {
    cloud_id: Option<String>,
    site_url: Option<String>,
}

/// A verified invocation: who sent it, for which installation.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub app_id: String,
    /// `app.installationId`: the tenant.
    pub installation_id: String,
    pub api_base_url: Option<String>,
    pub cloud_id: Option<String>,
    pub site_url: Option<String>,
    /// `app.environment.type`: DEVELOPMENT, STAGING or PRODUCTION.
    pub environment: Option<String>,
    /// `iat`: orders lifecycle events.
    pub issued_at: DateTime<Utc>,
    /// SHA-256 of what the token's signature covers (header and claims), so
    /// that the token is accepted with one event only.
    pub token_digest: [u8; 32],
    /// When the token stops being accepted anyway: `exp` plus the leeway.
    pub token_expires_at: DateTime<Utc>,
}

impl Invocation {
    /// The product the installation belongs to, from its API base URL
    /// (`…/ex/jira/<cloudId>`, `…/ex/confluence/<cloudId>`).
    pub fn product(&self) -> Option<Product> {
        let url = self.api_base_url.as_deref()?;
        if url.contains("/ex/jira/") {
            Some(Product::Jira)
        } else if url.contains("/ex/confluence/") {
            Some(Product::Confluence)
        } else {
            None
        }
    }
}

/// One JWKS URL's keys, as last fetched.
#[derive(Default)]
struct KeySet {
    keys: HashMap<String, DecodingKey>,
    /// When the keys were fetched (wall clock, to compare with a token's `iat`).
    fetched_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
}

/// One JWKS URL: its keys, one fetch at a time, and its own refetch budget,
/// so that fetches for one URL (say, made-up Isolated Cloud labels) never use
/// up another's.
struct Jwks {
    url: String,
    keys: RwLock<KeySet>,
    fetching: Mutex<()>,
    fetches: DefaultDirectRateLimiter,
}

impl Jwks {
    fn new(url: String, interval: Duration) -> Self {
        Jwks {
            url,
            keys: RwLock::default(),
            fetching: Mutex::new(()),
            fetches: RateLimiter::direct(per_interval(interval)),
        }
    }
}

fn per_interval(interval: Duration) -> Quota {
    Quota::with_period(interval.max(Duration::from_millis(1))).expect("period is at least 1 ms")
}

/// Verifies Forge Invocation Tokens against the published keys.
pub struct ForgeVerifier {
    settings: ForgeSettings,
    leeway: Duration,
    http: reqwest::Client,
    /// `HOOKRELAY_FORGE_JWKS_URL`'s keys: always kept.
    main: Arc<Jwks>,
    /// Isolated Cloud keys, by URL; at most [`MAX_JWKS_URLS`], the least
    /// recently fetched forgotten first.
    isolated: RwLock<HashMap<String, Arc<Jwks>>>,
    /// New Isolated Cloud URLs taken on, for all labels together.
    new_isolated: DefaultDirectRateLimiter,
}

impl ForgeVerifier {
    pub fn new(settings: ForgeSettings, leeway: Duration, http: reqwest::Client) -> Self {
        let interval = settings.jwks_refetch_interval;
        Self {
            main: Arc::new(Jwks::new(settings.jwks_url.to_string(), interval)),
            isolated: RwLock::new(HashMap::new()),
            new_isolated: RateLimiter::direct(per_interval(interval)),
            settings,
            leeway,
            http,
        }
    }

    pub fn is_configured(&self) -> bool {
        !self.settings.app_ids.is_empty()
    }

    /// Verifies `authorization` (the whole header) and returns the invocation.
    pub async fn verify(&self, authorization: Option<&str>) -> Result<Invocation, ForgeError> {
        if !self.is_configured() {
            return Err(ForgeError::NotConfigured);
        }
        let token = authorization
            .map(str::trim)
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or(ForgeError::MissingToken)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| ForgeError::Malformed("header"))?;
        if header.alg != Algorithm::RS256 {
            return Err(ForgeError::Algorithm);
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty() && k.len() <= 256)
            .ok_or(ForgeError::MissingKid)?;
        // The claims are checked before any key is fetched.
        let unverified = peek(token)?;
        let jwks = self.check(&unverified)?;
        let jwks = match jwks {
            None => self.main.clone(),
            Some(url) => self.isolated(url).await?,
        };
        let key = self.key(&jwks, &kid, unverified.iat.unwrap_or(0)).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        // Checked by `check`, with our own leeway and messages.
        validation.required_spec_claims = Default::default();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<FitClaims>(token, &key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => ForgeError::Signature,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => ForgeError::Algorithm,
                _ => ForgeError::Malformed("token could not be decoded"),
            })?
            .claims;
        self.check(&claims)?;
        invocation(token, claims, self.leeway)
    }

    /// Every claim rule; returns the Isolated Cloud JWKS URL the token's key
    /// comes from, or `None` for the main one.
    fn check(&self, claims: &FitClaims) -> Result<Option<String>, ForgeError> {
        if claims.iss.as_deref() != Some(ISSUER) {
            return Err(ForgeError::Issuer);
        }
        let aud = claims.aud.as_ref().ok_or(ForgeError::MissingClaim("aud"))?;
        let app_id = self
            .settings
            .app_ids
            .iter()
            .find(|id| aud.contains(id))
            .ok_or(ForgeError::Audience)?;
        let app = claims.app.as_ref().ok_or(ForgeError::MissingClaim("app"))?;
        if app.id.as_deref() != Some(app_id.as_str()) {
            return Err(ForgeError::AppId);
        }
        app.installation_id
            .as_deref()
            .filter(|id| !id.is_empty())
            .ok_or(ForgeError::MissingClaim("app.installationId"))?;
        claims.iat.ok_or(ForgeError::MissingClaim("iat"))?;
        let nbf = claims.nbf.ok_or(ForgeError::MissingClaim("nbf"))?;
        let exp = claims.exp.ok_or(ForgeError::MissingClaim("exp"))?;
        claims
            .jti
            .as_deref()
            .filter(|j| !j.is_empty())
            .ok_or(ForgeError::MissingClaim("jti"))?;
        let now = Utc::now().timestamp();
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX);
        if now > exp.saturating_add(leeway) {
            return Err(ForgeError::Expired);
        }
        if nbf > now.saturating_add(leeway) {
            return Err(ForgeError::NotYetValid);
        }
        match &claims.ic_label {
            None => Ok(None),
            Some(label) => {
                if !valid_ic_label(label) {
                    return Err(ForgeError::BadIcLabel);
                }
                let template = self
                    .settings
                    .ic_jwks_template
                    .as_deref()
                    .ok_or(ForgeError::IsolatedCloud)?;
                Ok(Some(template.replace("{icLabel}", label)))
            }
        }
    }

    /// The key `kid` of `jwks`: cached, or fetched (rate-limited). A token
    /// issued after the last fetch whose `kid` is unknown while a refetch is
    /// not yet allowed may carry a key rotated since: 503, so Forge retries.
    async fn key(&self, jwks: &Jwks, kid: &str, iat: i64) -> Result<DecodingKey, ForgeError> {
        let ttl = self.settings.jwks_ttl;
        let cached = |keys: &KeySet| {
            let fresh = keys.fetched_at.is_some_and(|at| age(at) < ttl);
            keys.keys.get(kid).filter(|_| fresh).cloned()
        };
        if let Some(key) = cached(&*jwks.keys.read().await) {
            return Ok(key);
        }
        let _one_at_a_time = jwks.fetching.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(key) = cached(&*jwks.keys.read().await) {
            return Ok(key);
        }
        if jwks.fetches.check().is_err() {
            let keys = jwks.keys.read().await;
            return match keys.keys.get(kid) {
                // Stale but known: better than refusing a good token.
                Some(key) => Ok(key.clone()),
                None if keys.fetched_at.is_none() => Err(ForgeError::Jwks(
                    keys.last_error
                        .clone()
                        .unwrap_or_else(|| "fetches are rate-limited".into()),
                )),
                None if keys
                    .fetched_at
                    .is_some_and(|at| iat >= at.timestamp().saturating_sub(1)) =>
                {
                    tracing::warn!(
                        kid,
                        "unknown kid in a token newer than the JWKS; refetch not yet allowed"
                    );
                    Err(ForgeError::Jwks(
                        "unknown kid, possibly rotated since the last fetch; retry later".into(),
                    ))
                }
                None => {
                    tracing::warn!(kid, "unknown kid; JWKS refetch is rate-limited");
                    Err(ForgeError::UnknownKid)
                }
            };
        }
        let fetched = self.fetch(&jwks.url).await;
        let mut keys = jwks.keys.write().await;
        match fetched {
            Ok(new_keys) => {
                tracing::info!(url = %jwks.url, keys = new_keys.len(), "Forge JWKS fetched");
                keys.keys = new_keys;
                keys.fetched_at = Some(Utc::now());
                keys.last_error = None;
                keys.keys.get(kid).cloned().ok_or(ForgeError::UnknownKid)
            }
            Err(e) => {
                tracing::error!(url = %jwks.url, error = %e, "cannot fetch the Forge JWKS");
                keys.last_error = Some(e.clone());
                match keys.keys.get(kid) {
                    Some(key) => Ok(key.clone()),
                    None => Err(ForgeError::Jwks(e)),
                }
            }
        }
    }

    /// The Isolated Cloud JWKS at `url`, taken on if new (a bounded number per
    /// interval; when the table is full the least recently fetched goes).
    async fn isolated(&self, url: String) -> Result<Arc<Jwks>, ForgeError> {
        if let Some(jwks) = self.isolated.read().await.get(&url) {
            return Ok(jwks.clone());
        }
        let mut isolated = self.isolated.write().await;
        if let Some(jwks) = isolated.get(&url) {
            return Ok(jwks.clone());
        }
        if self.new_isolated.check().is_err() {
            tracing::warn!("new Isolated Cloud JWKS URLs are rate-limited");
            return Err(ForgeError::Jwks(
                "new Isolated Cloud labels are rate-limited; retry later".into(),
            ));
        }
        if isolated.len() >= MAX_JWKS_URLS {
            let oldest = isolated
                .iter()
                .min_by_key(|(_, jwks)| {
                    jwks.keys
                        .try_read()
                        .map(|k| k.fetched_at.unwrap_or(DateTime::<Utc>::MIN_UTC))
                        .unwrap_or(DateTime::<Utc>::MAX_UTC)
                })
                .map(|(url, _)| url.clone());
            if let Some(oldest) = oldest {
                isolated.remove(&oldest);
            }
        }
        let jwks = Arc::new(Jwks::new(url.clone(), self.settings.jwks_refetch_interval));
        isolated.insert(url, jwks.clone());
        Ok(jwks)
    }

    async fn fetch(&self, url: &str) -> Result<HashMap<String, DecodingKey>, String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err("JWKS too large".into());
        }
        // Read in chunks, so that a JWKS server sending without end is cut off.
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("body could not be read: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err("JWKS too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?;
        let keys: HashMap<String, DecodingKey> = set
            .keys
            .iter()
            .filter(|jwk| matches!(jwk.algorithm, AlgorithmParameters::RSA(_)))
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|key| (kid, key))
            })
            .collect();
        if keys.is_empty() {
            return Err("the JWKS holds no RSA key with a kid".into());
        }
        Ok(keys)
    }

    /// For `/readyz`: each JWKS URL with how many keys it holds, how old they
    /// are, and the last fetch error.
    pub async fn status(&self) -> serde_json::Value {
        let mut all = vec![self.main.clone()];
        all.extend(self.isolated.read().await.values().cloned());
        let mut out = Vec::new();
        for jwks in all {
            let keys = jwks.keys.read().await;
            out.push(serde_json::json!({
                "url": jwks.url,
                "keys": keys.keys.len(),
                "age_secs": keys.fetched_at.map(|at| age(at).as_secs()),
                "last_error": keys.last_error,
            }));
        }
        serde_json::json!({
            "configured": self.is_configured(),
            "jwks": out,
        })
    }
}

/// How long ago `at` was (zero if the clock went back).
fn age(at: DateTime<Utc>) -> Duration {
    (Utc::now() - at).to_std().unwrap_or_default()
}

/// The claims of a token, before its signature is checked.
fn peek(token: &str) -> Result<FitClaims, ForgeError> {
    let mut parts = token.split('.');
    let (Some(_), Some(claims), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ForgeError::Malformed("not three segments"));
    };
    let json = URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .map_err(|_| ForgeError::Malformed("claims are not base64url"))?;
    serde_json::from_slice(&json)
        .map_err(|_| ForgeError::Malformed("claims are not the JSON expected"))
}

/// The invocation a verified token stands for, `token` itself identified by
/// the SHA-256 of what its signature covers, until `exp` plus `leeway`.
fn invocation(token: &str, claims: FitClaims, leeway: Duration) -> Result<Invocation, ForgeError> {
    let app = claims.app.ok_or(ForgeError::MissingClaim("app"))?;
    let context = claims.context.unwrap_or_default();
    let issued_at = claims
        .iat
        .and_then(|iat| DateTime::from_timestamp(iat, 0))
        .ok_or(ForgeError::MissingClaim("iat"))?;
    let token_expires_at = claims
        .exp
        .and_then(|exp| DateTime::from_timestamp(exp, 0))
        .ok_or(ForgeError::MissingClaim("exp"))?
        .checked_add_signed(chrono::Duration::from_std(leeway).unwrap_or_default())
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let signed = token.rsplit_once('.').map_or(token, |(signed, _)| signed);
    Ok(Invocation {
        app_id: app.id.ok_or(ForgeError::MissingClaim("app.id"))?,
        installation_id: app
            .installation_id
            .ok_or(ForgeError::MissingClaim("app.installationId"))?,
        api_base_url: app.api_base_url,
        cloud_id: context.cloud_id,
        site_url: context.site_url,
        environment: app.environment.and_then(|e| e.kind),
        issued_at,
        token_digest: Sha256::digest(signed.as_bytes()).into(),
        token_expires_at,
    })
}

/// `^[a-z0-9_-]{1,50}$`.
pub fn valid_ic_label(label: &str) -> bool {
    (1..=50).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The expiry of an app system token, when it is a JWT with `exp`; `None`
/// when it is opaque. Read without verifying: it is only kept, never trusted.
pub fn token_expiry(token: &str) -> Option<DateTime<Utc>> {
    #[derive(Deserialize)]
    struct Exp {
        exp: Option<i64>,
    }
    let claims = token.split('.').nth(1)?;
    let json = URL_SAFE_NO_PAD.decode(claims.trim_end_matches('=')).ok()?;
    let exp: Exp = serde_json::from_slice(&json).ok()?;
    DateTime::from_timestamp(exp.exp?, 0)
}

/// What the body of a Forge event carries: `{"payload": {"eventType": …, …}}`.
#[derive(Debug)]
pub struct ForgeEvent<'a> {
    /// `payload.eventType`.
    pub event_type: String,
    /// The body's `payload`, exactly as received.
    pub payload: &'a str,
    /// `payload.retryContext.retryCount`, on Forge's retries.
    pub retry: Option<i32>,
    /// Identifies the event across Forge's retries: the SHA-256 of the
    /// payload's top-level members but `retryContext`, in key order.
    pub dedupe_key: String,
}

/// Most top-level members of a Forge payload (Forge sends about ten): each
/// costs a key and a slice in memory, so their number is bounded.
const MAX_MEMBERS: usize = 1024;

/// A payload's top-level members in key order, each value as sent.
struct Members<'a>(Vec<(String, &'a serde_json::value::RawValue)>);

impl Members<'_> {
    fn get(&self, key: &str) -> Option<&serde_json::value::RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    fn iter(&self) -> impl Iterator<Item = &(String, &serde_json::value::RawValue)> {
        self.0.iter()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Members<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if members.len() == MAX_MEMBERS {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_MEMBERS} top-level members"
                        )));
                    }
                    let value: &'de serde_json::value::RawValue = map.next_value()?;
                    members.push((key, value));
                }
                members.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(Members(members))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// Reads a Forge event body (already checked to be a payload, see
/// [`crate::payload`]).
pub fn read_event(body: &str) -> Result<ForgeEvent<'_>, String> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        payload: Option<&'a serde_json::value::RawValue>,
    }
    let body: Body<'_> =
        serde_json::from_str(body).map_err(|e| format!("body is not the JSON expected: {e}"))?;
    let raw = body.payload.ok_or("body has no `payload`")?;
    // Only the top level is split: each member's value stays raw text, so a
    // large payload costs its top-level members, never a tree of it.
    let members: Members<'_> = serde_json::from_str(raw.get()).map_err(|e| {
        if e.is_data() {
            format!("`payload`: {e}")
        } else {
            "`payload` is not an object".to_string()
        }
    })?;
    let event_type = members
        .get("eventType")
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
        .filter(|s| crate::descriptor::valid_event_name(s))
        .ok_or("`payload.eventType` is missing or not an event name")?;
    #[derive(Deserialize)]
    struct Retry {
        #[serde(rename = "retryCount")]
        retry_count: Option<i64>,
    }
    let retry = members
        .get("retryContext")
        .and_then(|v| serde_json::from_str::<Retry>(v.get()).ok())
        .and_then(|r| r.retry_count)
        .and_then(|c| i32::try_from(c).ok());
    // The identity: every member but `retryContext`, in key order, each
    // value as sent (a retry re-sends the same event with one member added).
    let mut digest = Sha256::new();
    for (key, value) in members.iter().filter(|(k, _)| k != "retryContext") {
        for part in [key.as_bytes(), value.get().as_bytes()] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
    }
    let dedupe_key = format!("forge:{}", hex::encode(digest.finalize()));
    Ok(ForgeEvent {
        event_type,
        payload: raw.get(),
        retry,
        dedupe_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ic_labels() {
        assert!(valid_ic_label("abc-1_x"));
        assert!(!valid_ic_label(""));
        assert!(!valid_ic_label("ABC"));
        assert!(!valid_ic_label("a.b"));
        assert!(!valid_ic_label(&"a".repeat(51)));
        assert!(valid_ic_label(&"a".repeat(50)));
    }

    #[test]
    fn retries_share_a_dedupe_key() {
        let first =
            r#"{"payload":{"eventType":"avi:jira:created:issue","issue":{"id":"1","key":"A-1"}}}"#;
        let retry = r#"{"payload":{"issue":{"id":"1","key":"A-1"},"retryContext":{"retryCount":2,"retryReason":"FUNCTION_ERROR"},"eventType":"avi:jira:created:issue"}}"#;
        let other =
            r#"{"payload":{"eventType":"avi:jira:created:issue","issue":{"id":"2","key":"A-2"}}}"#;
        let (a, b, c) = (
            read_event(first).unwrap(),
            read_event(retry).unwrap(),
            read_event(other).unwrap(),
        );
        assert_eq!(a.dedupe_key, b.dedupe_key);
        assert_ne!(a.dedupe_key, c.dedupe_key);
        assert_eq!(b.retry, Some(2));
        assert_eq!(a.retry, None);
        assert!(b.payload.contains("retryContext"));
        // Members are length-prefixed: moving bytes between key and value
        // gives another identity.
        let shifted = r#"{"payload":{"eventType":"avi:jira:created:issue","issue":{"id":"1","key":"A-1"},"x":"\"y"}}"#;
        let moved = r#"{"payload":{"eventType":"avi:jira:created:issue","issue":{"id":"1","key":"A-1"},"x\"":"y"}}"#;
        assert_ne!(
            read_event(shifted).unwrap().dedupe_key,
            read_event(moved).unwrap().dedupe_key
        );
    }

    #[test]
    fn payloads_with_too_many_members_are_refused() {
        let members: Vec<String> = (0..=MAX_MEMBERS).map(|i| format!("\"k{i}\":0")).collect();
        let body = format!(
            r#"{{"payload":{{"eventType":"avi:jira:created:issue",{}}}}}"#,
            members.join(",")
        );
        let err = read_event(&body).unwrap_err();
        assert!(err.contains("top-level members"), "{err}");
        let body = format!(
            r#"{{"payload":{{"eventType":"avi:jira:created:issue",{}}}}}"#,
            members[..MAX_MEMBERS - 1].join(",")
        );
        assert!(read_event(&body).is_ok());
    }

    #[test]
    fn bodies_without_an_event_type_are_refused() {
        for body in [
            r#"{}"#,
            r#"{"payload": 1}"#,
            r#"{"payload": {}}"#,
            r#"{"payload": {"eventType": ""}}"#,
            r#"{"payload": {"eventType": "a b"}}"#,
            r#"[1]"#,
            r#"{"payload": [1]}"#,
        ] {
            assert!(read_event(body).is_err(), "{body}");
        }
    }
}
