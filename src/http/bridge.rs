//! The bridge's HTTP surface: the proxy external systems call the product
//! through (`ANY /proxy/{clientKey}/{path…}`), the API keys they call it
//! with, the tenants as the admin API shows them, reconciliation on demand,
//! and the API tokens attached to admin-webhook sources.
//!
//! The proxy answers with the product's status, headers (less hop-by-hop
//! ones and cookies) and body as they came. Its own refusals are the JSON
//! error shape: 401 a missing or wrong key, 403 outside the key's scope,
//! 404 an unknown or uninstalled tenant, 400 a path that could leave the
//! site, 409 a tenant hookrelay holds no credentials for, 429 the tenant's
//! rate limit, 502 the product unreachable, 504 no answer in time. Each call
//! is logged with the key id, tenant, method, path and status.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::admin::{Admin, AdminBody, List, Routes};
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::domain::{format_timestamp, ClientKey, Product, Tenant, TenantKind, TenantState};
use crate::product::reconcile::ReconcileError;
use crate::product::{self, Call, CallError, Caller};
use crate::store::{Activity, ApiKey, ApiToken};

/// Where API keys start: easy to grep for in a leaked log or repository.
const KEY_PREFIX: &str = "hrk_";
/// Characters of a key kept to recognise it by.
const SHOWN_PREFIX: usize = 12;
/// Most entries in one scope list.
const MAX_SCOPE: usize = 100;
/// How often a key's `last_used_at` is written, at most, per process.
const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// API keys whose use this process wrote down in the last minute.
pub type KeyTouches = moka::future::Cache<String, ()>;

pub fn key_touches() -> KeyTouches {
    moka::future::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(TOUCH_EVERY)
        .build()
}

pub(super) fn admin_routes(routes: Routes) -> Routes {
    routes
        .get("/tenants", list_tenants)
        .post("/tenants/{key:.+}/reconcile", reconcile)
        .get("/tenants/{key:.+}", get_tenant)
        .post("/api-keys", create_key)
        .get("/api-keys", list_keys)
        .get("/api-keys/{id}", get_key)
        .delete("/api-keys/{id}", delete_key)
        .put("/sources/{id}/api-token", set_api_token)
        .delete("/sources/{id}/api-token", delete_api_token)
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(
    list_tenants,
    reconcile,
    get_tenant,
    create_key,
    list_keys,
    get_key,
    delete_key,
    set_api_token,
    delete_api_token
))]
pub(super) struct Doc;

pub fn proxy_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/proxy/{key}", web::route().to(proxy))
        .route("/proxy/{key}/{tail:.*}", web::route().to(proxy));
}

fn bad(detail: impl Into<String>) -> ApiError {
    ApiError::BadRequest(detail.into())
}

// ------------------------------------------------------------------ tenants

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TenantQuery {
    /// Tenants of this kind only.
    #[param(value_type = Option<TenantKind>)]
    kind: Option<String>,
}

/// An installed site (Connect or Forge) or an admin-webhook source, with its activity.
#[derive(Serialize, utoipa::ToSchema)]
struct TenantView {
    client_key: String,
    #[schema(value_type = TenantKind)]
    kind: &'static str,
    product: Product,
    base_url: String,
    #[schema(value_type = TenantState)]
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    display_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cloud_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_base_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<String>,
    #[schema(format = DateTime)]
    installed_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    /// Received time of the newest event stored for it.
    #[schema(format = DateTime)]
    last_event_at: Option<String>,
    /// Events stored for it.
    event_count: i64,
    /// Connect Jira tenants: where reconciliation stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    reconcile: Option<ReconcileView>,
}

/// Where reconciliation of Jira's failed webhooks stands for a tenant.
#[derive(Serialize, Default, utoipa::ToSchema)]
struct ReconcileView {
    cursor: Option<String>,
    #[schema(format = DateTime)]
    last_run_at: Option<String>,
    last_error: Option<String>,
    recovered: i64,
}

fn tenant_view(t: Tenant, activity: Activity, reconcile: Option<ReconcileView>) -> TenantView {
    TenantView {
        client_key: t.client_key.0,
        kind: t.kind.as_str(),
        product: t.product,
        base_url: t.base_url,
        state: t.state.as_str(),
        name: t.name,
        display_url: t.display_url,
        cloud_id: t.cloud_id,
        api_base_url: t.api_base_url,
        environment: t.environment,
        installed_at: format_timestamp(t.installed_at),
        updated_at: format_timestamp(t.updated_at),
        last_event_at: activity.last_event_at.map(format_timestamp),
        event_count: activity.event_count,
        reconcile,
    }
}

#[utoipa::path(
    get,
    path = "/tenants",
    tag = "tenants",
    summary = "List tenants",
    params(TenantQuery),
    responses(
        (status = 200, description = "Every tenant", body = List<TenantView>),
        (status = 400, description = "`kind` is not valid", body = ErrorBody),
    )
)]
pub(crate) async fn list_tenants(
    _: Admin,
    query: web::Query<TenantQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let kind = match query.kind.as_deref() {
        None | Some("") => None,
        Some(k) => Some(
            TenantKind::parse(k)
                .ok_or_else(|| bad("`kind` must be connect, forge or jira-admin"))?,
        ),
    };
    let tenants = state.store.list_tenants(kind).await?;
    let mut activity = state.store.activity().await?;
    let data: Vec<TenantView> = tenants
        .into_iter()
        .map(|t| {
            let seen = activity.remove(&t.client_key.0).unwrap_or_default();
            tenant_view(t, seen, None)
        })
        .collect();
    Ok(super::admin::list(data))
}

#[utoipa::path(
    get,
    path = "/tenants/{key}",
    tag = "tenants",
    summary = "One tenant",
    params(("key" = String, Path, description = "The tenant's client key")),
    responses(
        (status = 200, description = "The tenant", body = TenantView),
        (status = 404, description = "No such tenant", body = ErrorBody),
    )
)]
async fn get_tenant(
    _: Admin,
    key: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = ClientKey(key.into_inner());
    let tenant = state
        .store
        .tenant(&key)
        .await?
        .ok_or_else(|| ApiError::Missing(format!("there is no tenant `{}`", key.0)))?;
    let activity = state.store.tenant_activity(&key).await?;
    let reconcile = if tenant.kind == TenantKind::Connect && tenant.product == Product::Jira {
        let kept = state.store.reconcile_state(&key).await?;
        Some(kept.map_or_else(ReconcileView::default, |s| ReconcileView {
            cursor: s.cursor,
            last_run_at: s.last_run_at.map(format_timestamp),
            last_error: s.last_error,
            recovered: s.recovered,
        }))
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(tenant_view(tenant, activity, reconcile)))
}

#[utoipa::path(
    post,
    path = "/tenants/{key}/reconcile",
    tag = "tenants",
    summary = "Recover the webhooks Jira failed to deliver, now",
    params(("key" = String, Path, description = "The tenant's client key")),
    responses(
        (status = 200, description = "What the run found", body = crate::product::reconcile::Summary),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "Not a tenant that can be reconciled", body = ErrorBody),
        (status = 502, description = "Jira could not be reached or answered nothing usable", body = ErrorBody),
        (status = 504, description = "Jira did not answer in time", body = ErrorBody),
    )
)]
async fn reconcile(
    _: Admin,
    key: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = ClientKey(key.into_inner());
    let reconciler = crate::product::reconcile::Reconciler::new(
        state.product.clone(),
        state.store.clone(),
        state.publisher.clone(),
        state.config.clone(),
    );
    match reconciler.reconcile_now(&key).await {
        Ok(summary) => Ok(HttpResponse::Ok().json(summary)),
        Err(ReconcileError::UnknownTenant(_)) => {
            Err(ApiError::Missing(format!("there is no tenant `{}`", key.0)))
        }
        Err(ReconcileError::NotReconcilable(why)) => Err(ApiError::Conflict(why)),
        Err(ReconcileError::Call(e)) => Err(call_error(e)),
        Err(ReconcileError::Answer(why)) => Err(ApiError::BadGateway(why)),
        Err(ReconcileError::Store(e)) => Err(e.into()),
    }
}

// ----------------------------------------------------------------- API keys

/// An API key for the proxy, scoped to tenants, methods and paths (each left
/// out for any).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewKey {
    /// Required: 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    name: Option<String>,
    /// Client keys.
    #[schema(min_items = 1, max_items = 100)]
    tenants: Option<Vec<String>>,
    /// HTTP methods.
    #[schema(min_items = 1, max_items = 100)]
    methods: Option<Vec<String>>,
    /// Path patterns, such as `/rest/api/3/issue/*`.
    #[schema(min_items = 1, max_items = 100)]
    paths: Option<Vec<String>>,
    /// RFC 3339; the key is refused after it.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
}

/// An API key as the API shows it: never the key but in the answer to its creation.
#[derive(Serialize, utoipa::ToSchema)]
struct KeyView<'a> {
    id: &'a str,
    name: &'a str,
    prefix: &'a str,
    tenants: Option<&'a [String]>,
    methods: Option<&'a [String]>,
    paths: Option<&'a [String]>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// The last call made with it, to the minute.
    #[schema(format = DateTime)]
    last_used_at: Option<String>,
    /// Only in the answer to its creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
}

fn key_view<'a>(key: &'a ApiKey, secret: Option<&'a str>) -> KeyView<'a> {
    KeyView {
        id: &key.id,
        name: &key.name,
        prefix: &key.prefix,
        tenants: key.tenants.as_deref(),
        methods: key.methods.as_deref(),
        paths: key.paths.as_deref(),
        created_at: format_timestamp(key.created_at),
        expires_at: key.expires_at.map(format_timestamp),
        last_used_at: key.last_used_at.map(format_timestamp),
        key: secret,
    }
}

/// The stored form of a key: hex SHA-256.
fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn scope(
    what: &str,
    given: Option<Vec<String>>,
    check: impl Fn(&str) -> Result<String, String>,
) -> Result<Option<Vec<String>>, ApiError> {
    let Some(given) = given else {
        return Ok(None);
    };
    if given.is_empty() || given.len() > MAX_SCOPE {
        return Err(bad(format!(
            "`{what}` must list 1 to {MAX_SCOPE} entries, or be left out for any"
        )));
    }
    let mut out: Vec<String> = Vec::new();
    for entry in given {
        let entry = check(&entry).map_err(|why| bad(format!("`{what}`: {why}")))?;
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    Ok(Some(out))
}

#[utoipa::path(
    post,
    path = "/api-keys",
    tag = "api-keys",
    summary = "Create an API key for the proxy",
    request_body = NewKey,
    responses(
        (status = 201, description = "Created; the answer holds the key, this once", body = KeyView),
        (status = 400, description = "The body is not valid", body = ErrorBody),
    )
)]
async fn create_key(
    _: Admin,
    state: web::Data<AppState>,
    AdminBody(body): AdminBody,
) -> Result<HttpResponse, ApiError> {
    let given: NewKey = super::subscriptions::json_body(&body)?;
    let name = given
        .name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty() && n.chars().count() <= 200 && !n.chars().any(char::is_control))
        .ok_or_else(|| bad("`name` is required: 1 to 200 characters"))?;
    let tenants = scope("tenants", given.tenants, |t| {
        if t.is_empty() || t.len() > 255 || t.chars().any(char::is_control) {
            Err(format!("`{t}` is not a client key"))
        } else {
            Ok(t.to_owned())
        }
    })?;
    let methods = scope("methods", given.methods, |m| {
        let upper = m.to_ascii_uppercase();
        match upper.as_str() {
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => Ok(upper),
            _ => Err(format!(
                "`{m}` is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
            )),
        }
    })?;
    let paths = scope("paths", given.paths, |p| {
        product::check_path(p)
            .map_err(|why| format!("`{p}`: {why}"))
            .and_then(|()| {
                if p.contains('?') {
                    Err(format!("`{p}`: a path prefix takes no query"))
                } else {
                    Ok(p.to_owned())
                }
            })
    })?;
    let expires_at = match given.expires_at.as_deref() {
        None => None,
        Some(text) => {
            let at = chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|e| bad(format!("`expires_at` is not an RFC 3339 time: {e}")))?
                .with_timezone(&chrono::Utc);
            if at <= chrono::Utc::now() {
                return Err(bad("`expires_at` must be in the future"));
            }
            // `9999-12-31T23:59:59-23:00` parses, but is in the year 10000
            // in UTC, which RFC 3339 cannot write back.
            if chrono::Datelike::year(&at) > 9999 {
                return Err(bad("`expires_at` must be before the year 10000 in UTC"));
            }
            Some(at)
        }
    };
    let secret = {
        use base64::Engine as _;
        let bytes: [u8; 32] = rand::random();
        format!(
            "{KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )
    };
    let key = ApiKey {
        id: uuid::Uuid::now_v7().to_string(),
        name,
        prefix: secret[..SHOWN_PREFIX].to_owned(),
        tenants,
        methods,
        paths,
        created_at: crate::domain::now_millis(),
        expires_at,
        last_used_at: None,
    };
    state.store.insert_api_key(&key, &key_hash(&secret)).await?;
    tracing::info!(api_key_id = %key.id, name = %key.name, "API key created");
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/admin/api/v1/api-keys/{}", key.id)))
        .json(key_view(&key, Some(&secret))))
}

#[utoipa::path(
    get,
    path = "/api-keys",
    tag = "api-keys",
    summary = "List API keys",
    responses((status = 200, description = "Every key", body = List<KeyView>))
)]
async fn list_keys(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let keys = state.store.api_keys().await?;
    Ok(super::admin::list(
        keys.iter().map(|k| key_view(k, None)).collect(),
    ))
}

#[utoipa::path(
    get,
    path = "/api-keys/{id}",
    tag = "api-keys",
    summary = "One API key",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The key", body = KeyView),
        (status = 404, description = "No such key", body = ErrorBody),
    )
)]
async fn get_key(
    _: Admin,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = state.store.api_key(&id).await?.ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(key_view(&key, None)))
}

#[utoipa::path(
    delete,
    path = "/api-keys/{id}",
    tag = "api-keys",
    summary = "Revoke an API key",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such key", body = ErrorBody),
    )
)]
async fn delete_key(
    _: Admin,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if !state.store.delete_api_key(&id).await? {
        return Err(ApiError::NotFound);
    }
    tracing::info!(api_key_id = %id, "API key deleted");
    Ok(HttpResponse::NoContent().finish())
}

// ------------------------------------------------- sources' API tokens

/// An Atlassian API token (with its account's email) for a source's product calls.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    #[schema(format = Email, max_length = 320)]
    email: String,
    #[schema(value_type = String, min_length = 1, max_length = 1024)]
    token: SecretString,
}

#[utoipa::path(
    put,
    path = "/sources/{id}/api-token",
    tag = "sources",
    summary = "Attach an Atlassian API token to an admin-webhook source",
    params(("id" = String, Path, description = "The source's id")),
    request_body = NewToken,
    responses(
        (status = 204, description = "Attached"),
        (status = 400, description = "The body is not valid", body = ErrorBody),
        (status = 404, description = "No such source", body = ErrorBody),
    )
)]
async fn set_api_token(
    _: Admin,
    id: web::Path<String>,
    state: web::Data<AppState>,
    AdminBody(body): AdminBody,
) -> Result<HttpResponse, ApiError> {
    use secrecy::ExposeSecret;
    let id = ClientKey(id.into_inner());
    let given: NewToken = super::subscriptions::json_body(&body)?;
    let email = given.email.trim().to_owned();
    if email.is_empty() || email.len() > 320 || !email.contains('@') || email.contains(':') {
        return Err(bad("`email` must be the Atlassian account's email address"));
    }
    let token = given.token.expose_secret();
    if token.is_empty() || token.len() > 1024 || token.chars().any(char::is_control) {
        return Err(bad("`token` must be an Atlassian API token"));
    }
    if state.store.source(&id).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    let token = ApiToken {
        email,
        token: given.token,
        created_at: crate::domain::now_millis(),
    };
    if !state.store.set_api_token(&id, &token).await? {
        return Err(ApiError::NotFound);
    }
    tracing::info!(source_id = %id.0, "API token attached to source");
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(
    delete,
    path = "/sources/{id}/api-token",
    tag = "sources",
    summary = "Remove a source's API token",
    params(("id" = String, Path, description = "The source's id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such source, or it has no token", body = ErrorBody),
    )
)]
async fn delete_api_token(
    _: Admin,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = ClientKey(id.into_inner());
    if state.store.source(&id).await?.is_none() || !state.store.delete_api_token(&id).await? {
        return Err(ApiError::NotFound);
    }
    tracing::info!(source_id = %id.0, "API token removed from source");
    Ok(HttpResponse::NoContent().finish())
}

// -------------------------------------------------------------------- proxy

/// `ANY /proxy/{clientKey}/{path…}`: the request, signed as the app, to the
/// tenant; the product's answer back.
async fn proxy(
    req: HttpRequest,
    path: web::Path<(String,)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = ClientKey(path.into_inner().0);
    let span = tracing::info_span!(
        "proxy",
        client_key = %tenant.0,
        method = %req.method(),
        path = tracing::field::Empty,
        api_key_id = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    async move {
        let result = proxy_inner(&req, &tenant, payload, &state).await;
        let status = match &result {
            Ok(response) => response.status(),
            Err(e) => actix_web::ResponseError::status_code(e),
        };
        tracing::Span::current().record("status", status.as_u16());
        match &result {
            Ok(_) => tracing::info!("proxied"),
            Err(e) => tracing::warn!(reason = %e, "proxy call refused or failed"),
        }
        metrics::counter!(crate::telemetry::catalog::PROXY_REQUESTS, "status" => status.as_u16().to_string())
            .increment(1);
        result
    }
    .instrument(span)
    .await
}

/// The `reason` labels of the proxy's API key refusals in the auth failure
/// counter.
pub(crate) const API_KEY_AUTH_REASONS: &[&str] = &["missing", "unknown", "expired", "not_allowed"];

/// `e`, counted as an API key refused for `reason`.
fn key_refused(reason: &'static str, e: ApiError) -> ApiError {
    metrics::counter!(
        crate::telemetry::catalog::AUTH_FAILURES,
        "source" => "api_key",
        "reason" => reason
    )
    .increment(1);
    e
}

async fn proxy_inner(
    req: &HttpRequest,
    tenant: &ClientKey,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            key_refused(
                "missing",
                ApiError::BadKey("missing `Authorization: Bearer <API key>`".into()),
            )
        })?;
    let key = state
        .store
        .api_key_by_hash(&key_hash(presented))
        .await?
        .ok_or_else(|| key_refused("unknown", ApiError::BadKey("unknown API key".into())))?;
    tracing::Span::current().record("api_key_id", key.id.as_str());
    if let Some(expired) = key.expires_at.filter(|at| *at <= chrono::Utc::now()) {
        return Err(key_refused(
            "expired",
            ApiError::BadKey(format!(
                "this API key expired at {}",
                format_timestamp(expired)
            )),
        ));
    }
    if !state.key_touches.contains_key(&key.id) {
        state.key_touches.insert(key.id.clone(), ()).await;
        if let Err(e) = state
            .store
            .touch_api_key(&key.id, crate::domain::now_millis())
            .await
        {
            tracing::warn!(error = %e, "cannot note the API key's use; going on");
        }
    }

    let path = raw_tail(req, &state.config.context_path)
        .ok_or_else(|| bad("the proxy path is `/proxy/{clientKey}/{path}`"))?;
    tracing::Span::current().record("path", path.as_str());
    product::check_path(&path).map_err(|why| bad(format!("path `{path}`: {why}")))?;
    let method = req.method().clone();
    if let Some(tenants) = &key.tenants {
        if !tenants.contains(&tenant.0) {
            return Err(key_refused(
                "not_allowed",
                ApiError::Forbidden(format!("this API key may not call tenant `{}`", tenant.0)),
            ));
        }
    }
    if let Some(methods) = &key.methods {
        if !methods.iter().any(|m| m == method.as_str()) {
            return Err(key_refused(
                "not_allowed",
                ApiError::Forbidden(format!("this API key may not use {method}")),
            ));
        }
    }
    if let Some(prefixes) = &key.paths {
        if !prefixes.iter().any(|prefix| under(&path, prefix)) {
            return Err(key_refused(
                "not_allowed",
                ApiError::Forbidden(format!("this API key may not call `{path}`")),
            ));
        }
    }
    let (body, _held) =
        super::connect::read_body(req, payload, state.config.max_body_bytes, state).await?;
    let mut target = path;
    if let Some(query) = req.uri().query() {
        target.push('?');
        target.push_str(query);
    }
    let headers = req
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            let name = reqwest::header::HeaderName::from_bytes(name.as_str().as_bytes()).ok()?;
            let value = reqwest::header::HeaderValue::from_bytes(value.as_bytes()).ok()?;
            Some((name, value))
        })
        .collect();
    let call = Call {
        method: reqwest::Method::from_bytes(method.as_str().as_bytes())
            .map_err(|_| bad("unknown method"))?,
        path: target,
        headers,
        body: body.to_vec(),
    };
    let answer = state
        .product
        .call(tenant, call, Caller::Proxy)
        .await
        .map_err(call_error)?;
    let status = StatusCode::from_u16(answer.status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = HttpResponse::build(status);
    for (name, value) in &answer.headers {
        response.append_header((name.as_str(), value.as_bytes()));
    }
    // A HEAD answer has no body, but says how long the GET's would be.
    let size = match method {
        actix_web::http::Method::HEAD => answer.declared_length.unwrap_or(0),
        _ => answer.body.len() as u64,
    };
    let mut response = response.body(HeldBody {
        size,
        bytes: web::Bytes::from(answer.body),
        _held: answer.held,
    });
    // The product's answer, even an error, is not to be reshaped.
    response
        .extensions_mut()
        .insert(super::triggers::HandlerAnswer);
    Ok(response)
}

/// The product's answer on its way to the caller, keeping its share of the
/// answers' byte budget until the last of it is handed to the connection. It
/// goes in slices, which the server takes only as the connection drains, so
/// a slow reader cannot make the bytes leave the budget early.
struct HeldBody {
    /// What `content-length` says: the bytes' length, or for a HEAD the
    /// product's.
    size: u64,
    bytes: web::Bytes,
    _held: crate::budget::Held,
}

/// Bytes handed to the connection at a time.
const SLICE: usize = 64 * 1024;

impl actix_web::body::MessageBody for HeldBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> actix_web::body::BodySize {
        actix_web::body::BodySize::Sized(self.size)
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<web::Bytes, Self::Error>>> {
        let this = self.get_mut();
        if this.bytes.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let slice = this.bytes.split_to(this.bytes.len().min(SLICE));
        std::task::Poll::Ready(Some(Ok(slice)))
    }
}

/// `{path…}` as it arrived (still percent-encoded), with a leading `/`.
fn raw_tail(req: &HttpRequest, context_path: &str) -> Option<String> {
    let path = crate::auth::qsh::strip_context_path(req.uri().path(), context_path);
    let rest = path.strip_prefix("/proxy/")?;
    let tail = match rest.split_once('/') {
        Some((_, tail)) => tail,
        None => "",
    };
    Some(format!("/{tail}"))
}

/// Whether `path` lies under `prefix` on a segment boundary.
fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

/// What a failed product call answers.
fn call_error(error: CallError) -> ApiError {
    match error {
        CallError::UnknownTenant(_) | CallError::NotInstalled(..) => {
            ApiError::Missing(error.to_string())
        }
        CallError::NoCredentials(why) => ApiError::Conflict(why),
        CallError::BadPath(why) => ApiError::BadRequest(why),
        CallError::BadMethod(_) => ApiError::BadRequest(error.to_string()),
        CallError::RateLimited(wait) => {
            let seconds = wait.as_secs().max(1);
            ApiError::RateLimited(error.to_string(), seconds)
        }
        CallError::Unreachable(_) | CallError::TooLarge(_) => {
            ApiError::BadGateway(error.to_string())
        }
        CallError::Timeout(_) => ApiError::GatewayTimeout(error.to_string()),
        CallError::Busy => ApiError::Unavailable(error.to_string()),
        CallError::Store(e) => e.into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_scopes_match_whole_segments() {
        use super::under;
        assert!(under("/rest/api/3/issue", "/rest/api/3/issue"));
        assert!(under("/rest/api/3/issue/10001", "/rest/api/3/issue"));
        assert!(under("/rest/api/3/issue/10001", "/rest/api/3/issue/"));
        assert!(!under("/rest/api/3/issuetype", "/rest/api/3/issue"));
        assert!(!under("/rest/api/2/issue", "/rest/api/3/issue"));
        assert!(under("/anything", "/"));
    }
}
