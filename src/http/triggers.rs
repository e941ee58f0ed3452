//! Web triggers over HTTP: the admin API under `/admin/api/v1/triggers`, and
//! the invocation route `ANY /x1/{id}[/{tail}]`.
//!
//! A call is checked in this order, and nothing is stored for a refusal:
//! trigger known and enabled (404), method allowed (405), body within the
//! limit (413), credentials (401), body UTF-8 (400). Then the request is
//! stored as an event through the shared intake step, and only then does a
//! script run (sync) or the caller get `202` (async).

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Instrument as _;

use super::admin::{cursor, limit, list as whole, page, Admin, AdminBody, List, Page, Routes};
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::domain::{
    format_timestamp, now_millis, Event, EventId, Invocation, InvocationId, InvocationState,
    Source, Trigger, TriggerAuthType, TriggerId, TriggerMode,
};
use crate::script::RunError;
use crate::telemetry::catalog::{AUTH_FAILURES, TRIGGER_INVOCATIONS};
use crate::triggers::{self, CallError, HandlerResponse, RequestObject};

/// Largest script accepted.
pub(super) const MAX_SCRIPT: usize = 256 * 1024;
const MAX_TIMEOUT_MS: u64 = 55_000;
const DEFAULT_TIMEOUT_MS: u32 = 10_000;
const MAX_METHODS: usize = 16;

pub(super) fn admin_routes(routes: Routes) -> Routes {
    routes
        .post("/triggers", create)
        .get("/triggers", list)
        .get("/triggers/{id}", show)
        .patch("/triggers/{id}", update)
        .delete("/triggers/{id}", delete)
        .get("/triggers/{id}/invocations", invocations)
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(create, list, show, update, delete, invocations))]
pub(super) struct Doc;

pub fn call_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/x1/{id}", web::route().to(call))
        .route("/x1/{id}/{tail:.*}", web::route().to(call));
}

// ---------------------------------------------------------------------------
// Admin API

/// A trigger as the API shows it: everything but its secrets.
#[derive(Serialize, utoipa::ToSchema)]
struct TriggerView<'a> {
    id: &'a str,
    name: &'a str,
    url: String,
    methods: &'a [String],
    mode: TriggerMode,
    auth: AuthView<'a>,
    script: Option<&'a str>,
    forward: Option<&'a str>,
    timeout_ms: u32,
    enabled: bool,
    description: Option<&'a str>,
    /// The tenant `context.app.fetch` acts on.
    tenant: Option<&'a str>,
    version: i64,
    created_at: String,
    updated_at: String,
    /// Only when just generated (creation, or a new auth).
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    forward_secret: Option<&'a str>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct AuthView<'a> {
    #[serde(rename = "type")]
    kind: TriggerAuthType,
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<&'a str>,
}

/// The secrets a create or update just set, shown in that answer only.
#[derive(Default)]
struct NewSecrets {
    auth: Option<String>,
    forward: Option<String>,
}

fn view<'a>(state: &AppState, t: &'a Trigger, new: &'a NewSecrets) -> TriggerView<'a> {
    let header = matches!(t.auth, TriggerAuthType::Key | TriggerAuthType::HmacSha256)
        .then(|| triggers::auth_header(t));
    let (key, secret) = match t.auth {
        TriggerAuthType::Key => (new.auth.as_deref(), None),
        _ => (None, new.auth.as_deref()),
    };
    TriggerView {
        id: &t.id.0,
        name: &t.name,
        url: trigger_url(state, &t.id),
        methods: &t.methods,
        mode: t.mode,
        auth: AuthView {
            kind: t.auth,
            header,
        },
        script: t.script.as_deref(),
        forward: t.forward_url.as_deref(),
        timeout_ms: t.timeout_ms,
        enabled: t.enabled,
        description: t.description.as_deref(),
        tenant: t.tenant.as_ref().map(|k| k.0.as_str()),
        version: t.version,
        created_at: format_timestamp(t.created_at),
        updated_at: format_timestamp(t.updated_at),
        key,
        secret,
        forward_secret: new.forward.as_deref(),
    }
}

fn trigger_url(state: &AppState, id: &TriggerId) -> String {
    format!(
        "{}/x1/{}",
        state.config.base_url.as_str().trim_end_matches('/'),
        id
    )
}

/// Create and `PATCH` fields: absent leaves a field alone; `null` clears an
/// optional one.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TriggerChanges)]
struct Changes {
    /// 1 to 64 of a-z, 0-9, `_` and `-`, starting with a letter or digit;
    /// unique. Required at creation.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    name: Option<String>,
    /// HTTP methods the trigger answers (1 to 16), or `["*"]` for any;
    /// `["POST"]` when left out.
    #[schema(min_items = 1, max_items = 16)]
    methods: Option<Vec<String>>,
    /// `sync` answers with the script's response; `async` (the default)
    /// answers 202 and runs it later.
    #[schema(value_type = Option<TriggerMode>)]
    mode: Option<String>,
    /// How callers prove themselves; `none` when left out.
    auth: Option<AuthChange>,
    /// The JavaScript handler (at most 256 KiB); a trigger has a script or
    /// a `forward` URL, or neither (async: the request is only stored).
    #[serde(default, deserialize_with = "super::subscriptions::present")]
    script: Option<Option<String>>,
    /// A URL each request is forwarded to, signed, instead of a script.
    #[serde(default, deserialize_with = "super::subscriptions::present")]
    #[schema(format = "uri", pattern = "^https?://")]
    forward: Option<Option<String>>,
    /// How long the script may run, in milliseconds (10000 when left out).
    #[schema(minimum = 1, maximum = 55000)]
    timeout_ms: Option<u64>,
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "super::subscriptions::present")]
    description: Option<Option<String>>,
    /// The client key `context.app.fetch` acts on.
    #[serde(default, deserialize_with = "super::subscriptions::present")]
    tenant: Option<Option<String>>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AuthChange {
    #[serde(rename = "type")]
    #[schema(value_type = TriggerAuthType)]
    kind: String,
    header: Option<String>,
    /// A secret of the caller's own (for a sender that already has one);
    /// generated when left out.
    secret: Option<String>,
}

fn bad(detail: impl Into<String>) -> ApiError {
    ApiError::BadRequest(detail.into())
}

fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

fn methods(given: Vec<String>) -> Result<Vec<String>, ApiError> {
    if given.is_empty() || given.len() > MAX_METHODS {
        return Err(bad(format!(
            "methods must list 1 to {MAX_METHODS} HTTP methods, or [\"*\"]"
        )));
    }
    if given.iter().any(|m| m == "*") {
        return if given.len() == 1 {
            Ok(given)
        } else {
            Err(bad("methods: \"*\" stands alone"))
        };
    }
    let mut out: Vec<String> = Vec::new();
    for m in given {
        let upper = m.to_ascii_uppercase();
        if upper.is_empty() || upper.len() > 20 || !upper.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(bad(format!("method `{m}` is not an HTTP method")));
        }
        if !out.contains(&upper) {
            out.push(upper);
        }
    }
    Ok(out)
}

/// Applies `changes` to `t`, checking every field; compiles a new script.
async fn apply(
    state: &AppState,
    t: &mut Trigger,
    changes: Changes,
) -> Result<NewSecrets, ApiError> {
    let mut new = NewSecrets::default();
    if let Some(name) = changes.name {
        if !valid_name(&name) {
            return Err(bad(
                "name must be 1 to 64 of a-z, 0-9, `_` and `-`, starting with a letter or digit",
            ));
        }
        t.name = name;
    }
    if let Some(given) = changes.methods {
        t.methods = methods(given)?;
    }
    if let Some(mode) = changes.mode {
        t.mode = TriggerMode::parse(&mode).ok_or_else(|| bad("mode must be sync or async"))?;
    }
    if let Some(auth) = changes.auth {
        let kind = TriggerAuthType::parse(&auth.kind)
            .ok_or_else(|| bad("auth.type must be none, key, hmac-sha256 or standard-webhooks"))?;
        if let Some(header) = &auth.header {
            if kind.default_header().is_none() {
                return Err(bad("auth.header applies to key and hmac-sha256 only"));
            }
            if actix_web::http::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(bad(format!("auth.header `{header}` is not a header name")));
            }
        }
        let secret = match (kind, auth.secret) {
            (TriggerAuthType::None, None) => String::new(),
            (TriggerAuthType::None, Some(_)) => {
                return Err(bad("auth.secret does not apply to auth none"))
            }
            (TriggerAuthType::StandardWebhooks, Some(s)) => {
                crate::relay::signing::key(&s).map_err(|e| bad(format!("auth.secret: {e}")))?;
                s
            }
            (_, Some(s)) if s.len() < 16 || s.len() > 256 || s.trim() != s => {
                return Err(bad(
                    "auth.secret must be 16 to 256 characters without surrounding spaces",
                ))
            }
            (_, Some(s)) => s,
            (TriggerAuthType::Key, None) => generate_key(),
            (TriggerAuthType::HmacSha256, None) => crate::sources::admin_webhook::generate_secret(),
            (TriggerAuthType::StandardWebhooks, None) => crate::relay::signing::generate_secret(),
        };
        t.auth = kind;
        t.auth_header = auth.header;
        if kind != TriggerAuthType::None {
            new.auth = Some(secret.clone());
        }
        t.secret = SecretString::from(secret);
    }
    if let Some(forward) = changes.forward {
        t.forward_url = match forward {
            Some(url) => Some(super::subscriptions::check_url(
                &url,
                state.config.allow_private_destinations,
            )?),
            None => None,
        };
        if t.forward_url.is_some() {
            let secret = crate::relay::signing::generate_secret();
            new.forward = Some(secret.clone());
            t.forward_secret = SecretString::from(secret);
        } else {
            t.forward_secret = SecretString::from(String::new());
        }
    }
    if let Some(ms) = changes.timeout_ms {
        if ms == 0 || ms > MAX_TIMEOUT_MS {
            return Err(bad(format!("timeout_ms must be 1 to {MAX_TIMEOUT_MS}")));
        }
        t.timeout_ms = ms as u32;
    }
    if let Some(enabled) = changes.enabled {
        t.enabled = enabled;
    }
    if let Some(description) = changes.description {
        t.description = description;
    }
    if let Some(tenant) = changes.tenant {
        t.tenant = match tenant {
            Some(key) => {
                let key = crate::domain::ClientKey(key);
                if state.store.tenant(&key).await?.is_none() {
                    return Err(bad(format!(
                        "tenant `{}` is not a tenant hookrelay knows (GET /admin/api/v1/tenants)",
                        key.0
                    )));
                }
                Some(key)
            }
            None => None,
        };
    }
    if let Some(script) = changes.script {
        if let Some(source) = &script {
            if source.len() > MAX_SCRIPT {
                return Err(bad(format!("script is larger than {MAX_SCRIPT} bytes")));
            }
            state
                .scripts
                .check(source)
                .await
                .map_err(|e| not_compiled("script", e))?;
        }
        t.script = script;
    }
    match (t.mode, t.script.is_some(), t.forward_url.is_some()) {
        (_, true, true) => Err(bad("give a script or a forward URL, not both")),
        (TriggerMode::Sync, false, false) => {
            Err(bad("a sync trigger needs a script or a forward URL"))
        }
        (TriggerMode::Async, _, true) => Err(bad("forward applies to sync triggers only")),
        _ => Ok(new),
    }
}

/// The answer to a `what` (script or transform) that [`crate::script::Engine::check`]
/// did not accept: 400 when it is the script's fault, 503 when no runtime
/// could look at it.
pub(super) fn not_compiled(what: &str, error: crate::script::CheckError) -> ApiError {
    match error {
        crate::script::CheckError::Script(e) => {
            bad(format!("{what} does not compile: {}", compile_message(&e)))
        }
        crate::script::CheckError::Engine(e) => {
            tracing::warn!(error = %e, "{what} not checked: no script runtime");
            ApiError::Unavailable(format!("no script runtime could check the {what}: {e}"))
        }
    }
}

fn compile_message(e: &crate::script::CompileError) -> String {
    match (e.line, e.column) {
        (Some(line), Some(column)) => format!("{} (line {line}, column {column})", e.message),
        (Some(line), None) => format!("{} (line {line})", e.message),
        _ => e.message.clone(),
    }
}

/// A new trigger id: 144 random bits, base64url (24 characters).
fn new_trigger_id() -> TriggerId {
    use base64::Engine as _;
    let bytes: [u8; 18] = rand::random();
    TriggerId(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// A generated key: 32 random bytes, base64url.
fn generate_key() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[utoipa::path(
    post,
    path = "/triggers",
    tag = "triggers",
    summary = "Create a trigger",
    request_body = Changes,
    responses(
        (status = 201, description = "Created; the answer holds the generated key or secret, this once", body = TriggerView),
        (status = 400, description = "The body is not valid, or the script does not compile", body = ErrorBody),
        (status = 409, description = "A trigger of that name exists", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    _: Admin,
    state: web::Data<AppState>,
    AdminBody(body): AdminBody,
) -> Result<HttpResponse, ApiError> {
    let mut changes: Changes = super::subscriptions::json_body(&body)?;
    if changes.name.is_none() {
        return Err(bad("name is required"));
    }
    // Defaults: POST, async, no auth.
    let now = now_millis();
    let mut t = Trigger {
        id: new_trigger_id(),
        name: String::new(),
        methods: vec!["POST".into()],
        mode: TriggerMode::Async,
        auth: TriggerAuthType::None,
        auth_header: None,
        secret: SecretString::from(String::new()),
        script: None,
        forward_url: None,
        forward_secret: SecretString::from(String::new()),
        timeout_ms: DEFAULT_TIMEOUT_MS,
        enabled: true,
        description: None,
        tenant: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    if changes.auth.is_none() {
        changes.auth = Some(AuthChange {
            kind: "none".into(),
            header: None,
            secret: None,
        });
    }
    let new = apply(&state, &mut t, changes).await?;
    if !state.store.insert_trigger(&t).await? {
        return Err(ApiError::Conflict(format!(
            "a trigger named `{}` exists",
            t.name
        )));
    }
    tracing::info!(trigger_id = %t.id, name = %t.name, mode = t.mode.as_str(), auth = t.auth.as_str(), "trigger created");
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/admin/api/v1/triggers/{}", t.id)))
        .json(view(&state, &t, &new)))
}

async fn load(state: &AppState, id: &str) -> Result<Trigger, ApiError> {
    state
        .store
        .trigger(&TriggerId(id.to_string()))
        .await?
        .ok_or(ApiError::NotFound)
}

#[utoipa::path(
    get,
    path = "/triggers",
    tag = "triggers",
    summary = "List triggers",
    responses((status = 200, description = "Every trigger", body = List<TriggerView>))
)]
pub(crate) async fn list(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let all = state.store.triggers().await?;
    let none = NewSecrets::default();
    let data: Vec<_> = all.iter().map(|t| view(&state, t, &none)).collect();
    Ok(whole(data))
}

#[utoipa::path(
    get,
    path = "/triggers/{id}",
    tag = "triggers",
    summary = "One trigger",
    params(("id" = String, Path, description = "The trigger's id")),
    responses((status = 200, description = "The trigger", body = TriggerView), (status = 404, description = "No such trigger", body = ErrorBody))
)]
pub(crate) async fn show(
    _: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let t = load(&state, &id).await?;
    Ok(HttpResponse::Ok().json(view(&state, &t, &NewSecrets::default())))
}

#[utoipa::path(
    patch,
    path = "/triggers/{id}",
    tag = "triggers",
    summary = "Change a trigger",
    params(("id" = String, Path, description = "The trigger's id")),
    request_body = Changes,
    responses(
        (status = 200, description = "The trigger as changed; a new auth's key or secret shown this once", body = TriggerView),
        (status = 400, description = "The body is not valid, or the script does not compile", body = ErrorBody),
        (status = 404, description = "No such trigger", body = ErrorBody),
        (status = 409, description = "A trigger of that name exists, or it changed meanwhile", body = ErrorBody),
    )
)]
pub(crate) async fn update(
    _: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
    AdminBody(body): AdminBody,
) -> Result<HttpResponse, ApiError> {
    let changes: Changes = super::subscriptions::json_body(&body)?;
    let mut t = load(&state, &id).await?;
    let read_version = t.version;
    let new = apply(&state, &mut t, changes).await?;
    t.version = read_version + 1;
    t.updated_at = now_millis().max(t.updated_at);
    match state.store.update_trigger(&t, read_version).await? {
        Some(true) => {}
        Some(false) => {
            return Err(ApiError::Conflict(format!(
                "a trigger named `{}` exists",
                t.name
            )))
        }
        None => {
            load(&state, &id).await?;
            return Err(ApiError::Conflict(
                "trigger changed meanwhile; read it again and retry".into(),
            ));
        }
    }
    tracing::info!(trigger_id = %t.id, version = t.version, enabled = t.enabled, "trigger updated");
    Ok(HttpResponse::Ok().json(view(&state, &t, &new)))
}

#[utoipa::path(
    delete,
    path = "/triggers/{id}",
    tag = "triggers",
    summary = "Delete a trigger",
    params(("id" = String, Path, description = "The trigger's id")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such trigger", body = ErrorBody))
)]
async fn delete(
    _: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if !state
        .store
        .delete_trigger(&TriggerId(id.to_string()))
        .await?
    {
        return Err(ApiError::NotFound);
    }
    tracing::info!(trigger_id = %id, "trigger deleted");
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// The `next_cursor` of the page before.
    #[param(value_type = Option<String>, format = Uuid)]
    cursor: Option<String>,
}

/// An invocation as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct InvocationView {
    id: InvocationId,
    trigger_id: String,
    event_id: EventId,
    mode: TriggerMode,
    state: InvocationState,
    attempts: i32,
    next_attempt_at: Option<String>,
    status_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<serde_json::Value>,
    /// Set when the request is too large to list; the event holds it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    request_omitted: bool,
    response: Option<serde_json::Value>,
    error: Option<String>,
    console: serde_json::Value,
    duration_ms: Option<i32>,
    created_at: String,
    updated_at: String,
}

/// Largest request shown in an invocation listing: a page of them must stay
/// small; a larger one is read from its event.
const LISTED_REQUEST: usize = 64 * 1024;

pub fn invocation_view(i: Invocation, request: Option<&str>) -> InvocationView {
    let parse = |text: Option<&str>| text.and_then(|t| serde_json::from_str(t).ok());
    let request_omitted = request.is_some_and(|r| r.len() > LISTED_REQUEST);
    let request = request.filter(|_| !request_omitted);
    InvocationView {
        id: i.id,
        trigger_id: i.trigger_id.0,
        event_id: i.event_id,
        mode: i.mode,
        state: i.state,
        attempts: i.attempts,
        next_attempt_at: i
            .next_attempt_at
            .filter(|_| i.state == InvocationState::Pending)
            .map(format_timestamp),
        status_code: i.status_code,
        request: parse(request),
        request_omitted,
        // Cut responses are kept as text.
        response: i.response.as_deref().map(|r| {
            serde_json::from_str(r).unwrap_or_else(|_| serde_json::Value::String(r.to_string()))
        }),
        error: i.error,
        console: parse(i.console.as_deref()).unwrap_or_else(|| json!([])),
        duration_ms: i.duration_ms,
        created_at: format_timestamp(i.created_at),
        updated_at: format_timestamp(i.updated_at),
    }
}

/// `GET /triggers/{id}/invocations?limit=&cursor=`, newest first, each with
/// its request.
#[utoipa::path(
    get,
    path = "/triggers/{id}/invocations",
    tag = "triggers",
    summary = "The trigger's invocations, newest first, each with its request",
    params(("id" = String, Path, description = "The trigger's id"), PageQuery),
    responses(
        (status = 200, description = "A page of invocations", body = Page<InvocationView>),
        (status = 400, description = "A parameter is not valid", body = ErrorBody),
        (status = 404, description = "No such trigger", body = ErrorBody),
    )
)]
pub(crate) async fn invocations(
    _: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let t = load(&state, &id).await?;
    let limit = limit(query.limit.as_deref())?;
    let before = cursor(query.cursor.as_deref())?.map(InvocationId);
    let rows = state.store.invocations(&t.id, before, limit).await?;
    let data: Vec<InvocationView> = rows
        .into_iter()
        .map(|r| invocation_view(r.invocation, Some(&r.request)))
        .collect();
    Ok(page(&data, limit, |i| i.id.0))
}

// ---------------------------------------------------------------------------
// Invocation

/// A failed call's answer: the JSON error shape, with the ids to look it up by.
fn failure(
    status: StatusCode,
    error: &str,
    detail: &str,
    ids: Option<(EventId, InvocationId)>,
) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.insert_header(("Retry-After", "1"));
    }
    let mut body = json!({"error": error, "detail": detail});
    if let Some((event_id, invocation_id)) = ids {
        body["event_id"] = json!(event_id);
        body["invocation_id"] = json!(invocation_id);
    }
    response.json(body)
}

/// `ANY /x1/{id}[/{tail}]`.
pub async fn call(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = req.match_info().get("id").unwrap_or_default().to_string();
    let span = tracing::info_span!("trigger", trigger_id = %id, event_id = tracing::field::Empty);
    let result = call_inner(req, payload, state, id).instrument(span).await;
    super::count_refused("webtrigger", &result);
    result
}

async fn call_inner(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    id: String,
) -> Result<HttpResponse, ApiError> {
    let method = req.method().as_str().to_string();
    let trigger = match state.store.trigger(&TriggerId(id)).await? {
        Some(t) if t.enabled => t,
        found => {
            tracing::info!(
                disabled = found.is_some(),
                "web trigger call refused: unknown or disabled"
            );
            count(None, "not_found");
            return Err(ApiError::NotFound);
        }
    };
    if !trigger.allows(&method) {
        tracing::info!(%method, "web trigger call refused: method not allowed");
        count(Some(&trigger), "method_not_allowed");
        return Ok(HttpResponse::MethodNotAllowed()
            .insert_header(("Allow", trigger.methods.join(", ")))
            .json(json!({
                "error": "method_not_allowed",
                "detail": format!("this trigger takes {}", trigger.methods.join(", ")),
            })));
    }
    let (body, _held) =
        match super::connect::read_body(&req, payload, state.config.trigger_max_body, &state).await
        {
            Ok(read) => read,
            Err(e) => {
                count(Some(&trigger), "refused");
                return Err(e);
            }
        };
    let now = now_millis();
    if let Err(e) = triggers::authenticate(&trigger, req.headers(), &body, now.timestamp()) {
        tracing::warn!(reason = %e, "web trigger call refused: credentials");
        count(Some(&trigger), "unauthorized");
        metrics::counter!(
            AUTH_FAILURES,
            "source" => "webtrigger",
            "reason" => trigger.auth.as_str(),
        )
        .increment(1);
        return Err(ApiError::Unauthorized(e.to_string()));
    }
    let path = crate::auth::qsh::strip_context_path(req.uri().path(), &state.config.context_path);
    let hide = (trigger.auth == TriggerAuthType::Key).then(|| triggers::auth_header(&trigger));
    let request = match RequestObject::new(
        &method,
        req.headers(),
        &body,
        path,
        req.uri().query().unwrap_or(""),
        hide,
    ) {
        Ok(r) => r,
        Err(CallError::NotUtf8) => {
            count(Some(&trigger), "refused");
            return Err(bad("request body is not UTF-8"));
        }
        Err(CallError::Unauthorized(reason)) => return Err(ApiError::Unauthorized(reason)),
    };
    let payload = serde_json::to_string(&request).map_err(|_| ApiError::Internal)?;
    // The relay and the publisher carry events of up to max_body_bytes.
    if payload.len() > state.config.max_body_bytes {
        count(Some(&trigger), "refused");
        return Err(ApiError::PayloadTooLarge(state.config.max_body_bytes));
    }
    // A sync call needs a runtime: taken before anything is stored, so that a
    // busy answer leaves nothing behind. One trigger may hold at most half of
    // them, so that the others keep being answered. A call waits its turn in
    // a bounded line, first for its trigger's share and then for a runtime,
    // both within the engine's one wait; past the line's length or that wait
    // it is answered busy.
    let runtime = match (trigger.mode, trigger.script.is_some()) {
        (TriggerMode::Sync, true) => {
            let cap = (state.scripts.capacity() / 2).max(1);
            let (wait, max_waiting) = state.scripts.patience();
            let started = Instant::now();
            let taken = match state
                .trigger_runs
                .take(&trigger.id, cap, max_waiting, wait)
                .await
            {
                Some(guard) => state
                    .scripts
                    .reserve_waiting(wait.saturating_sub(started.elapsed()))
                    .await
                    .map(|permit| (permit, guard)),
                None => None,
            };
            if taken.is_none() {
                tracing::warn!("web trigger call refused: no free script runtime");
                count(Some(&trigger), "busy");
                return Ok(failure(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "every script runtime this trigger may use is busy; retry shortly",
                    None,
                ));
            }
            taken
        }
        _ => None,
    };
    let event = Event {
        id: EventId::new(),
        source: Source::Webtrigger,
        product: None,
        event: trigger.event_name(),
        source_event: None,
        client_key: None,
        tenant_base_url: None,
        webhook_id: None,
        webhook_retry: None,
        webhook_flow: None,
        recovered: false,
        received_at: now,
        payload,
    };
    let stored = crate::intake::accept(&state.store, &state.publisher, event).await?;
    tracing::Span::current().record("event_id", tracing::field::display(stored.id));
    match trigger.mode {
        TriggerMode::Async => {
            tracing::info!(name = %trigger.name, "web trigger call accepted");
            count(Some(&trigger), "accepted");
            Ok(HttpResponse::Accepted().json(json!({ "id": stored.id })))
        }
        TriggerMode::Sync => Ok(run_sync(&state, &trigger, stored.id, &request, runtime).await),
    }
}

fn count(trigger: Option<&Trigger>, outcome: &'static str) {
    let (name, mode) = trigger.map_or(("", ""), |t| (t.name.as_str(), t.mode.as_str()));
    metrics::counter!(
        TRIGGER_INVOCATIONS,
        "trigger" => name.to_string(),
        "mode" => mode,
        "outcome" => outcome,
    )
    .increment(1);
}

/// Marks an answer a script or forward endpoint gave, which the server
/// sends as it is (the JSON error shape is not put on its 4xx and 5xx).
pub struct HandlerAnswer;

/// What a sync handler (script or forward) came to.
struct Outcome {
    answer: Result<HandlerResponse, (StatusCode, &'static str, String)>,
    response_json: Option<String>,
    console: Option<String>,
}

async fn run_sync(
    state: &AppState,
    trigger: &Trigger,
    event_id: EventId,
    request: &RequestObject,
    runtime: Option<(crate::script::Permit, crate::triggers::InFlightGuard)>,
) -> HttpResponse {
    let invocation_id = InvocationId::new();
    let started = Instant::now();
    let timeout = Duration::from_millis(u64::from(trigger.timeout_ms));
    let outcome = match (runtime, &trigger.script, &trigger.forward_url) {
        (Some((permit, _counted)), Some(source), _) => {
            let request = serde_json::to_value(request).unwrap_or_default();
            let bridge = state.script_calls.bridge(
                trigger.tenant.clone(),
                format!("trigger `{}`", trigger.name),
            );
            let run = triggers::run_script(
                permit,
                trigger,
                source,
                request,
                event_id,
                invocation_id,
                bridge,
            )
            .await;
            script_outcome(run)
        }
        (_, _, Some(url)) => forward(state, trigger, url, event_id, request, timeout).await,
        _ => Outcome {
            answer: Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "no_handler",
                "this trigger has neither a script nor a forward URL".into(),
            )),
            response_json: None,
            console: None,
        },
    };
    let duration_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
    let (status, error) = match &outcome.answer {
        Ok(r) => (r.status, None),
        Err((status, code, detail)) => (status.as_u16(), Some(format!("{code}: {detail}"))),
    };
    let now = now_millis();
    let invocation = Invocation {
        id: invocation_id,
        trigger_id: trigger.id.clone(),
        event_id,
        mode: TriggerMode::Sync,
        state: if error.is_none() {
            InvocationState::Completed
        } else {
            InvocationState::Failed
        },
        attempts: 1,
        next_attempt_at: None,
        status_code: Some(i32::from(status)),
        response: outcome
            .response_json
            .map(|r| triggers::cut(r, triggers::RECORD_LIMIT)),
        error: error.clone(),
        console: outcome.console,
        duration_ms: Some(duration_ms),
        created_at: now,
        updated_at: now,
    };
    if let Err(e) = state.store.insert_invocation(&invocation).await {
        tracing::error!(%invocation_id, error = %crate::relay::deliver::chain(&e), "invocation not recorded");
    }
    match outcome.answer {
        Ok(response) => {
            tracing::info!(%invocation_id, status, duration_ms, "web trigger answered");
            count(Some(trigger), "ok");
            let mut answer = HttpResponse::build(
                StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK),
            );
            for (name, value) in response.headers {
                answer.append_header((name, value));
            }
            let mut answer = answer.body(response.body);
            answer.extensions_mut().insert(HandlerAnswer);
            answer
        }
        Err((status, code, detail)) => {
            tracing::warn!(%invocation_id, status = status.as_u16(), error = code, %detail, duration_ms, "web trigger handler failed");
            count(Some(trigger), code);
            failure(status, code, &detail, Some((event_id, invocation_id)))
        }
    }
}

/// What a script run means for the caller: its response, or the status and
/// error it is answered with.
fn script_outcome(run: crate::script::Run) -> Outcome {
    let console = serde_json::to_string(&run.console).ok();
    let (answer, response_json) = match run.outcome {
        Ok(value) => {
            let json = value.as_ref().map(|v| v.to_string());
            let answer = HandlerResponse::from_value(value.as_ref()).map_err(|detail| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "invalid handler response",
                    detail,
                )
            });
            (answer, json)
        }
        Err(e) => (Err(run_error(&e)), None),
    };
    Outcome {
        answer,
        response_json,
        console,
    }
}

/// The answer a failed run gets, and its error code.
pub fn run_error(e: &RunError) -> (StatusCode, &'static str, String) {
    let (status, code) = match e {
        RunError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        RunError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        RunError::NeverSettled => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        RunError::OutOfMemory => (StatusCode::INTERNAL_SERVER_ERROR, "out_of_memory"),
        RunError::Threw { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "script_error"),
        RunError::Compile(_) | RunError::NotAFunction => {
            (StatusCode::INTERNAL_SERVER_ERROR, "script_error")
        }
        RunError::InvalidValue(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "invalid handler response",
        ),
        RunError::Crashed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    (status, code, e.to_string())
}

/// A sync trigger's forward: the request object POSTed to its URL, signed
/// the Standard Webhooks way with the trigger's forward secret; the JSON it
/// answers is the response, under the same rules as a script's.
async fn forward(
    state: &AppState,
    trigger: &Trigger,
    url: &str,
    event_id: EventId,
    request: &RequestObject,
    timeout: Duration,
) -> Outcome {
    let fail = |status: StatusCode, code: &'static str, detail: String| Outcome {
        answer: Err((status, code, detail)),
        response_json: None,
        console: None,
    };
    let body = match serde_json::to_vec(request) {
        Ok(b) => b,
        Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    };
    let parsed = match url::Url::parse(url) {
        Ok(u) => u,
        Err(e) => {
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "forward_failed",
                e.to_string(),
            )
        }
    };
    if !state.config.allow_private_destinations {
        if let Err(refused) = crate::relay::destination::check_literal(&parsed) {
            return fail(
                StatusCode::BAD_GATEWAY,
                "forward_failed",
                refused.to_string(),
            );
        }
    }
    let key = match crate::relay::signing::key(trigger.forward_secret.expose_secret()) {
        Ok(k) => k,
        Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    };
    let timestamp = now_millis().timestamp();
    let id = event_id.to_string();
    let signature = crate::relay::signing::sign(&key, &id, timestamp, &body);
    let sent = state
        .forward_client
        .post(parsed)
        .timeout(timeout)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    // A timeout is the forward endpoint's 504; anything else a 502.
    let failed = |e: reqwest::Error| {
        if e.is_timeout() {
            fail(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the forward endpoint did not answer in time".into(),
            )
        } else {
            fail(
                StatusCode::BAD_GATEWAY,
                "forward_failed",
                crate::relay::deliver::chain(&e.without_url()),
            )
        }
    };
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let limit = state.config.trigger_max_body;
    let mut kept = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if kept.len() + chunk.len() <= limit => kept.extend_from_slice(&chunk),
            Ok(Some(_)) => {
                return fail(
                    StatusCode::BAD_GATEWAY,
                    "forward_failed",
                    format!("the forward endpoint answered more than {limit} bytes"),
                )
            }
            Ok(None) => break,
            Err(e) => return failed(e),
        }
    }
    let value: Option<serde_json::Value> = serde_json::from_slice(&kept).ok();
    let answer = HandlerResponse::from_value(value.as_ref()).map_err(|detail| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "invalid handler response",
            format!("the forward endpoint's answer: {detail}"),
        )
    });
    Outcome {
        answer,
        response_json: Some(String::from_utf8_lossy(&kept).into_owned()),
        console: None,
    }
}
