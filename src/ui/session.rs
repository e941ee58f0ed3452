//! Signing in to the inspector: the admin token, posted once, opens a session
//! kept in the store; its cookie is `HttpOnly`, `SameSite=Strict` and, over
//! HTTPS, `Secure`. The store keeps only the cookie's hash, the session's CSRF
//! token and a fingerprint of the admin token, so changing the token ends
//! every session, and signing out ends this one everywhere.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use rand::RngCore;
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{layout, UiError};
use crate::http::AppState;
use crate::store::UiSession;
use crate::telemetry::catalog::AUTH_FAILURES;

const COOKIE: &str = "hookrelay_session";
/// How long a session lasts from sign-in.
const LIFETIME_HOURS: i64 = 12;
/// Wrong tokens one address may try before sign-in from it pauses.
const MAX_WRONG_TOKENS: u32 = 10;
/// How long sign-in from an address stays paused after its last wrong token.
const SIGN_IN_PAUSE: Duration = Duration::from_secs(60);
/// Addresses whose wrong tokens are counted at once, at most.
const MAX_COUNTED: u64 = 10_000;

/// Wrong tokens per address (the TCP peer), forgotten a minute after the last.
pub type WrongTokens = moka::future::Cache<IpAddr, u32>;

pub fn wrong_tokens() -> WrongTokens {
    moka::future::Cache::builder()
        .max_capacity(MAX_COUNTED)
        .time_to_live(SIGN_IN_PAUSE)
        .build()
}

/// How often an open live tail checks that its session still is.
const RECHECK: Duration = Duration::from_secs(5);

/// A signed-in admin, with the CSRF token their forms carry.
pub struct Session {
    id_hash: String,
    /// When it expires (Unix milliseconds).
    expires_at: i64,
    pub csrf: String,
    /// The context path links start with.
    pub base: String,
}

impl Session {
    /// Refuses a form whose `csrf` field is not this session's token.
    pub fn check(&self, given: &str) -> Result<(), UiError> {
        if bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes())) && !given.is_empty() {
            Ok(())
        } else {
            tracing::warn!("inspector form refused: wrong or missing CSRF token");
            Err(UiError::Csrf)
        }
    }

    /// Resolves when this session ends: at its expiry, or at the first check
    /// (every [`RECHECK`]) that finds it signed out, opened with an admin
    /// token that is no longer the one, or the store unable to say. What
    /// stays open after sign-in (the live tail) ends with it.
    pub fn ended(&self, state: web::Data<AppState>) -> impl Future<Output = ()> + 'static {
        let id_hash = self.id_hash.clone();
        let expires_at = self.expires_at;
        async move {
            loop {
                let left = expires_at - chrono::Utc::now().timestamp_millis();
                let Ok(left) = u64::try_from(left) else {
                    return;
                };
                tokio::time::sleep(RECHECK.min(Duration::from_millis(left))).await;
                if !matches!(current(&state, &id_hash).await, Ok(Some(_))) {
                    return;
                }
            }
        }
    }

    /// `path` (from `/admin/`) behind the context path.
    pub fn href(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

fn hash(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// Which admin token a session was opened with, without keeping the token.
fn token_print(token: &str) -> String {
    hash(&format!("hookrelay-inspector:{token}"))[..32].to_string()
}

fn state(req: &HttpRequest) -> Result<web::Data<AppState>, UiError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or(UiError::Api(crate::http::error::ApiError::Internal))
}

impl FromRequest for Session {
    type Error = UiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, UiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = state(&req)?;
            let base = state.config.context_path.clone();
            let sign_in = || UiError::SignIn(format!("{base}/admin/login"));
            let Some(cookie) = req.cookie(COOKIE) else {
                return Err(sign_in());
            };
            let id_hash = hash(cookie.value());
            let Some(session) = current(&state, &id_hash).await? else {
                return Err(sign_in());
            };
            Ok(Session {
                id_hash,
                expires_at: session.expires_at,
                csrf: session.csrf,
                base: base.clone(),
            })
        })
    }
}

/// The session whose cookie hashes to `id_hash`, if it is open: not expired,
/// and opened with the admin token now configured.
async fn current(state: &AppState, id_hash: &str) -> Result<Option<UiSession>, UiError> {
    let Some(token) = &state.config.admin_token else {
        return Ok(None);
    };
    let Some(session) = state.store.ui_session(id_hash).await? else {
        return Ok(None);
    };
    let print = token_print(token.expose_secret());
    let open = session.expires_at > chrono::Utc::now().timestamp_millis()
        && bool::from(session.token_print.as_bytes().ct_eq(print.as_bytes()));
    Ok(open.then_some(session))
}

/// `GET /admin`: to the overview.
pub async fn to_overview(state: web::Data<AppState>) -> HttpResponse {
    super::see_other(format!("{}/admin/", state.config.context_path))
}

pub async fn login_form(state: web::Data<AppState>) -> HttpResponse {
    super::page(layout::login(
        &state.config.context_path,
        state
            .config
            .admin_token
            .is_none()
            .then_some("The inspector is closed: set HOOKRELAY_ADMIN_TOKEN and restart hookrelay."),
    ))
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn secure(req: &HttpRequest, state: &AppState) -> bool {
    state.config.base_url.scheme() == "https" || req.connection_info().scheme() == "https"
}

/// `POST /admin/login`: the admin token as field `token`.
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, UiError> {
    let base = &state.config.context_path;
    let refuse = |why: &str| {
        tracing::warn!(reason = why, "inspector sign-in refused");
        HttpResponse::Unauthorized()
            .content_type("text/html; charset=utf-8")
            .body(layout::login(base, Some(why)).into_string())
    };
    let Some(token) = &state.config.admin_token else {
        return Ok(refuse(
            "The inspector is closed: set HOOKRELAY_ADMIN_TOKEN.",
        ));
    };
    // Guessing is paused for an address after a few wrong tokens: a right one
    // is not even compared then.
    let peer = req
        .peer_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    if state.wrong_tokens.get(&peer).await.unwrap_or(0) >= MAX_WRONG_TOKENS {
        tracing::warn!(%peer, "inspector sign-in refused: too many wrong tokens from this address");
        metrics::counter!(AUTH_FAILURES, "source" => "inspector", "reason" => "paused")
            .increment(1);
        return Ok(HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", SIGN_IN_PAUSE.as_secs().to_string()))
            .content_type("text/html; charset=utf-8")
            .body(
                layout::login(
                    base,
                    Some("Too many wrong tokens from this address: wait a minute and try again."),
                )
                .into_string(),
            ));
    }
    let given = form.token.trim();
    if !bool::from(given.as_bytes().ct_eq(token.expose_secret().as_bytes())) {
        state
            .wrong_tokens
            .entry(peer)
            .and_upsert_with(|seen| async move { seen.map_or(1, |n| n.into_value() + 1) })
            .await;
        metrics::counter!(AUTH_FAILURES, "source" => "inspector", "reason" => "wrong_token")
            .increment(1);
        return Ok(refuse("That is not the admin token."));
    }
    let id = random_token();
    let expires_at = chrono::Utc::now() + chrono::Duration::hours(LIFETIME_HOURS);
    state
        .store
        .create_ui_session(
            &hash(&id),
            &UiSession {
                csrf: random_token(),
                token_print: token_print(token.expose_secret()),
                expires_at: expires_at.timestamp_millis(),
            },
            chrono::Utc::now().timestamp_millis(),
        )
        .await?;
    tracing::info!("inspector session opened");
    let cookie = Cookie::build(COOKIE, id)
        .path(format!("{base}/admin"))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure(&req, &state))
        .max_age(time::Duration::hours(LIFETIME_HOURS))
        .finish();
    Ok(HttpResponse::SeeOther()
        .insert_header(("Location", format!("{base}/admin/")))
        .cookie(cookie)
        .finish())
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// `POST /admin/logout`: ends the session here and everywhere its cookie went.
pub async fn logout(
    req: HttpRequest,
    session: Session,
    state: web::Data<AppState>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, UiError> {
    session.check(&form.csrf)?;
    state.store.delete_ui_session(&session.id_hash).await?;
    tracing::info!("inspector session closed");
    let mut gone = Cookie::build(COOKIE, "")
        .path(format!("{}/admin", session.base))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure(&req, &state))
        .finish();
    gone.make_removal();
    Ok(HttpResponse::SeeOther()
        .insert_header(("Location", session.href("/admin/login")))
        .cookie(gone)
        .finish())
}
