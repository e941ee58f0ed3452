//! The Connect side: descriptors, lifecycle callbacks and webhook intake.
//!
//! Intake answers 2xx only after the event is committed. Authentication happens
//! before the body is read, so an unauthenticated request costs no more than its
//! headers and changes nothing.

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use tracing::Instrument;

use super::error::ApiError;
use super::AppState;
use crate::auth::{jwt, AuthError, SignedRequest};
use crate::budget::Held;
use crate::descriptor;
use crate::domain::{
    Event, EventId, InstallData, LifecycleChange, LifecycleOutcome, Product, Source, TenantState,
};
use crate::telemetry::catalog::{self, AUTH_FAILURES};

pub async fn descriptor_for(
    state: web::Data<AppState>,
    product: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let product = Product::parse(&product).ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(descriptor::render(&state.config, product)))
}

/// `/atlassian-connect.json`: the Jira descriptor, where Connect tooling looks first.
pub async fn default_descriptor(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(descriptor::render(&state.config, Product::Jira))
}

pub(super) fn signed_request(req: &HttpRequest) -> SignedRequest<'_> {
    SignedRequest {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query().unwrap_or(""),
        authorization: req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        peer: req.peer_addr().map(|a| a.ip()),
    }
}

/// Logs why authentication failed and turns it into the answer: 503 when the
/// failure is ours (store or key server), 401 otherwise. Only the caller's
/// failures count as auth failures; ours are an outage (intake counts them as
/// `unavailable`), so an alert on refused credentials does not fire for one.
fn auth_failure(e: AuthError) -> ApiError {
    if let Some(reason) = auth_reason(&e) {
        metrics::counter!(AUTH_FAILURES, "source" => "connect", "reason" => reason).increment(1);
    }
    match &e {
        AuthError::QshMismatch { canonical } => {
            tracing::warn!(reason = %e, canonical = %canonical, "request not authenticated")
        }
        AuthError::Store(source) => {
            tracing::error!(error = ?source, "store unavailable during authentication")
        }
        _ if e.is_unavailable() => tracing::error!(reason = %e, "cannot authenticate now"),
        _ => tracing::warn!(reason = %e, "request not authenticated"),
    }
    if e.is_unavailable() {
        // The cause (a URL, a driver error) stays in the log.
        ApiError::Unavailable("cannot verify the request now, retry later".into())
    } else {
        ApiError::Unauthorized(e.to_string())
    }
}

/// Every reason [`auth_reason`] gives, and `replayed` (a signed-install token
/// used twice), registered at zero on start-up.
pub(super) const AUTH_REASONS: &[&str] = &[
    "missing_token",
    "malformed",
    "algorithm",
    "signature",
    "expired",
    "not_yet_valid",
    "missing_claim",
    "qsh",
    "unknown_tenant",
    "uninstalled",
    "product",
    "issuer",
    "audience",
    "kid",
    "unknown_kid",
    "replayed",
];

fn auth_reason(e: &AuthError) -> Option<&'static str> {
    Some(match e {
        AuthError::MissingToken => "missing_token",
        AuthError::Malformed(_) => "malformed",
        AuthError::WrongAlgorithm => "algorithm",
        AuthError::BadSignature => "signature",
        AuthError::Expired => "expired",
        AuthError::NotYetValid(_) => "not_yet_valid",
        AuthError::MissingClaim(_) => "missing_claim",
        AuthError::QshMismatch { .. } => "qsh",
        AuthError::UnknownTenant => "unknown_tenant",
        AuthError::TenantUninstalled => "uninstalled",
        AuthError::WrongProduct { .. } => "product",
        AuthError::IssuerMismatch => "issuer",
        AuthError::WrongAudience => "audience",
        AuthError::BadKid => "kid",
        AuthError::UnknownKid => "unknown_kid",
        AuthError::KeyServer(_) | AuthError::Store(_) => return None,
    })
}

/// Lifecycle bodies are a few KiB; this is far more than any real one.
const LIFECYCLE_MAX_BODY: usize = 64 * 1024;

/// How long a body waits for room in the intake budget before the answer is
/// 503 (retry later).
const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads the body, refusing more than `limit` bytes (by Content-Length up front,
/// and while streaming for chunked bodies) and a body that has not wholly
/// arrived within the body timeout (a client that stops sending). Its bytes are
/// taken from the intake budget first, and held until the returned [`Held`]
/// is dropped; with no room for them the answer is 503.
pub(super) async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    state: &AppState,
) -> Result<(web::Bytes, Held), ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        tracing::warn!(declared, limit, "body too large");
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let busy = || {
        tracing::warn!(
            budget = state.bodies.total(),
            "request bodies in memory at their budget (HOOKRELAY_INTAKE_MEMORY); refused"
        );
        metrics::counter!(catalog::INTAKE_BUSY).increment(1);
        ApiError::Unavailable("too many request bodies in flight, retry later".into())
    };
    let mut held = Held::none();
    // Declared: taken at once. Chunked: taken as it comes.
    if let Some(len) = declared {
        held.add(
            state
                .bodies
                .take(len as usize, BUDGET_WAIT)
                .await
                .ok_or_else(busy)?,
        );
    }
    let timeout = state.config.body_timeout;
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                tracing::warn!(error = %e, "could not read request body");
                ApiError::BadRequest("could not read request body".into())
            })?;
            if body.len() + chunk.len() > limit {
                tracing::warn!(limit, "body too large");
                return Err(ApiError::PayloadTooLarge(limit));
            }
            if declared.is_none() {
                held.add(
                    state
                        .bodies
                        .take(chunk.len(), BUDGET_WAIT)
                        .await
                        .ok_or_else(busy)?,
                );
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(read) => Ok((read?, held)),
        Err(_) => {
            tracing::warn!(?timeout, declared, "body did not arrive in time");
            Err(ApiError::Timeout(timeout))
        }
    }
}

/// The body as text, if it is a payload (see [`crate::payload`]), or 400. The
/// text is stored as is.
pub(super) fn json_text(body: web::Bytes) -> Result<String, ApiError> {
    match crate::payload::accept(&body) {
        Ok(text) => Ok(text.to_string()),
        Err(e) => {
            tracing::warn!(reason = %e, bytes = body.len(), "body refused");
            Err(ApiError::BadRequest(e.to_string()))
        }
    }
}

pub(super) fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

pub async fn webhook(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (product, event) = path.into_inner();
    let product = Product::parse(&product).ok_or(ApiError::NotFound)?;
    if !descriptor::valid_event_name(&event) {
        return Err(ApiError::NotFound);
    }
    let webhook_id = webhook_identifier(&req);
    let span = tracing::info_span!(
        "webhook",
        product = %product,
        event = %event,
        webhook_id = webhook_id.as_ref().ok().and_then(Option::as_deref).unwrap_or(""),
        claimed_iss = tracing::field::Empty,
        client_key = tracing::field::Empty,
        event_id = tracing::field::Empty,
    );
    async move {
        let result = intake(&req, product, event, webhook_id, payload, &state).await;
        super::count_refused("connect", &result);
        result
    }
    .instrument(span)
    .await
}

/// `X-Atlassian-Webhook-Identifier`, if sent. One that is not a short visible
/// ASCII string is refused rather than dropped, since it is what deduplicates.
pub(super) fn webhook_identifier(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("X-Atlassian-Webhook-Identifier") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 255 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(|v| Some(v.to_string()))
        .ok_or_else(|| {
            ApiError::BadRequest(
                "X-Atlassian-Webhook-Identifier must be 1 to 255 visible ASCII characters".into(),
            )
        })
}

async fn intake(
    req: &HttpRequest,
    product: Product,
    event: String,
    webhook_id: Result<Option<String>, ApiError>,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let signed = signed_request(req);
    let verified = state
        .auth
        .verify_tenant_request(&signed, product)
        .await
        .map_err(auth_failure)?;
    let tenant = verified.get();
    tracing::Span::current().record("client_key", tenant.client_key.0.as_str());
    let webhook_id =
        webhook_id.inspect_err(|e| tracing::warn!(reason = %e, "bad webhook identifier"))?;

    let (body, _held) = read_body(req, payload, state.config.max_body_bytes, state).await?;
    let body = json_text(body)?;
    let new_event = Event {
        id: EventId::new(),
        source: Source::Connect,
        product: Some(product),
        event,
        source_event: None,
        client_key: Some(tenant.client_key.clone()),
        tenant_base_url: Some(tenant.base_url.clone()),
        webhook_id,
        webhook_retry: webhook_retry(req),
        webhook_flow: webhook_flow(req),
        recovered: false,
        received_at: crate::domain::now_millis(),
        payload: body,
    };
    accept(state, new_event).await
}

/// `X-Atlassian-Webhook-Retry`: how many times Jira has sent this webhook before.
pub(super) fn webhook_retry(req: &HttpRequest) -> Option<i32> {
    header(req, "X-Atlassian-Webhook-Retry").and_then(|v| v.parse().ok())
}

/// `X-Atlassian-Webhook-Flow`: "Primary" or "Secondary"; anything long is not
/// Atlassian's and not kept.
pub(super) fn webhook_flow(req: &HttpRequest) -> Option<String> {
    header(req, "X-Atlassian-Webhook-Flow")
        .filter(|v| v.len() <= 64)
        .map(str::to_string)
}

/// Hands `event` to the shared intake step; the answer, with the event's id,
/// goes back only after the commit.
pub(super) async fn accept(state: &AppState, event: Event) -> Result<HttpResponse, ApiError> {
    let stored = crate::intake::accept(&state.store, &state.publisher, event).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "id": stored.id,
        "duplicate": stored.duplicate,
    })))
}

/// The body Atlassian posts to every lifecycle URL. Only the fields we use.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LifecyclePayload {
    client_key: String,
    #[serde(default)]
    shared_secret: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    display_url: Option<String>,
    #[serde(default)]
    product_type: Option<String>,
}

pub async fn lifecycle(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (product, kind) = path.into_inner();
    let product = Product::parse(&product).ok_or(ApiError::NotFound)?;
    let target = TenantState::parse(&kind).ok_or(ApiError::NotFound)?;
    let span = tracing::info_span!(
        "lifecycle",
        product = %product,
        callback = target.as_str(),
        claimed_iss = tracing::field::Empty,
        client_key = tracing::field::Empty,
    );
    async move {
        let result = apply_callback(&req, product, target, payload, &state).await;
        let outcome = match &result {
            Ok(o) => match o {
                LifecycleOutcome::Applied => "applied",
                LifecycleOutcome::Stale => "stale",
                LifecycleOutcome::UnknownTenant => "unknown_tenant",
                LifecycleOutcome::Replayed => "replayed",
            },
            Err(ApiError::Unauthorized(_)) => "unauthorized",
            Err(_) => "rejected",
        };
        metrics::counter!(catalog::LIFECYCLE, "callback" => target.as_str(), "outcome" => outcome)
            .increment(1);
        result.map(|_| HttpResponse::NoContent().finish())
    }
    .instrument(span)
    .await
}

fn parse_lifecycle(body: web::Bytes) -> Result<LifecyclePayload, ApiError> {
    serde_json::from_slice(&body).map_err(|e| {
        tracing::warn!(error = %e, "lifecycle body is not the JSON expected");
        ApiError::BadRequest(format!("lifecycle body is not the JSON expected: {e}"))
    })
}

async fn apply_callback(
    req: &HttpRequest,
    product: Product,
    target: TenantState,
    payload: web::Payload,
    state: &AppState,
) -> Result<LifecycleOutcome, ApiError> {
    let signed = signed_request(req);
    // Nothing unauthenticated is read beyond the headers, except the small body
    // of an unsigned `enabled`/`disabled` (see below).
    let body = |payload| async move {
        let (body, _held) = read_body(req, payload, LIFECYCLE_MAX_BODY, state).await?;
        let body = parse_lifecycle(body)?;
        tracing::Span::current().record("client_key", body.client_key.as_str());
        Ok::<_, ApiError>(body)
    };
    let (client_key, at, install, token) = match target {
        TenantState::Installed | TenantState::Uninstalled => {
            let verified = state
                .auth
                .verify_signed_install(&signed)
                .await
                .map_err(auth_failure)?;
            let token = *verified.get();
            let body = body(payload).await?;
            let verified = verified
                .for_client(&body.client_key)
                .map_err(auth_failure)?;
            let install = if target == TenantState::Installed {
                Some(install_data(product, body)?)
            } else {
                None
            };
            (
                verified.get().clone(),
                verified.claims().issued_at(),
                install,
                Some(token),
            )
        }
        TenantState::Enabled | TenantState::Disabled => {
            // After an uninstall Atlassian may still send `disabled`, signed with a
            // secret it has forgotten or not at all: acknowledge it and change nothing.
            let verified = match state.auth.verify_tenant_request(&signed, product).await {
                Err(e) if !e.is_unavailable() => {
                    // Whose callback: the token's (unverified) issuer, or for an
                    // unsigned one the body's client key.
                    let claimed = match signed.token().ok().and_then(|t| jwt::peek(&t).ok()) {
                        Some((_, claims)) => claims.iss,
                        None => body(payload).await?.client_key,
                    };
                    let (current, _) = state.auth.tenants().get(&claimed).await?;
                    if current.is_none_or(|t| t.state == TenantState::Uninstalled) {
                        tracing::info!("callback for an unknown or uninstalled tenant, ignored");
                        return Ok(LifecycleOutcome::UnknownTenant);
                    }
                    return Err(auth_failure(e));
                }
                other => other.map_err(auth_failure)?,
            };
            let body = body(payload).await?;
            if verified.get().client_key.0 != body.client_key {
                return Err(auth_failure(AuthError::IssuerMismatch));
            }
            (
                verified.get().client_key.clone(),
                verified.claims().issued_at(),
                None,
                None,
            )
        }
    };
    // Callbacks are ordered by `iat`; one without it cannot be placed.
    let at = at.ok_or_else(|| auth_failure(AuthError::MissingClaim("iat")))?;
    let change = LifecycleChange {
        client_key,
        product,
        state: target,
        at,
        install,
        token,
    };
    let outcome = state.store.apply_lifecycle(&change).await?;
    state.auth.tenants().invalidate(&change.client_key.0).await;
    match outcome {
        LifecycleOutcome::Applied => tracing::info!("lifecycle callback applied"),
        LifecycleOutcome::Stale => {
            tracing::info!("not newer than the newest callback applied, ignored")
        }
        LifecycleOutcome::UnknownTenant => tracing::info!("no such tenant, ignored"),
        LifecycleOutcome::Replayed => {
            metrics::counter!(AUTH_FAILURES, "source" => "connect", "reason" => "replayed")
                .increment(1);
            tracing::warn!("signed-install token already used; refused");
            return Err(ApiError::Unauthorized(
                "this signed-install token was already used".into(),
            ));
        }
    }
    Ok(outcome)
}

fn install_data(product: Product, body: LifecyclePayload) -> Result<InstallData, ApiError> {
    if let Some(declared) = body.product_type.as_deref() {
        if declared != product.as_str() {
            return Err(ApiError::BadRequest(format!(
                "productType `{declared}` posted to the {product} lifecycle URL"
            )));
        }
    }
    let shared_secret = body
        .shared_secret
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::BadRequest("installed callback without sharedSecret".into()))?;
    let base_url = body
        .base_url
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::BadRequest("installed callback without baseUrl".into()))?;
    Ok(InstallData {
        base_url,
        display_url: body.display_url,
        shared_secret: shared_secret.into(),
    })
}
