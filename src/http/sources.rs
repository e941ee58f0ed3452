//! The sources beside Connect: Forge Remote at `POST /forge/events`, Jira admin
//! webhooks at `POST /in/{id}`, and the admin API that manages admin-webhook
//! sources.
//!
//! Each handler only proves who sent the request and builds the event;
//! [`crate::intake::accept`] stores and publishes it. Refusals are 401 with
//! the JSON error shape and a log line naming the reason (never a token or a
//! secret), and store nothing.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::admin::{Admin, AdminBody, List, Routes};
use super::connect::{
    accept, header, json_text, read_body, webhook_flow, webhook_identifier, webhook_retry,
};
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::domain::{format_timestamp, ClientKey, Event, EventId, Source, Tenant, TenantKind};
use crate::domain::{Product, TenantState};
use crate::sources::admin_webhook::{self, SignatureError, PREFIX_LEN};
use crate::sources::forge::{self, ForgeError};
use crate::sources::forge_events;
use crate::store::{ForgeInstallation, ForgeLifecycle, NewSource, SourceSecret, TokenUse};
use crate::telemetry::catalog::AUTH_FAILURES;

/// Admin-webhook secrets by source id. Changes made by this process clear
/// their entry; other processes' changes show within the TTL.
pub type SecretCache = moka::future::Cache<String, Arc<Vec<SecretString>>>;
/// The expiry of the app system token last kept, by installation.
pub type TokenCache = moka::future::Cache<String, Option<DateTime<Utc>>>;

const SECRET_TTL: Duration = Duration::from_secs(5);

pub fn source_secret_cache() -> SecretCache {
    moka::future::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(SECRET_TTL)
        .build()
}

pub fn forge_token_cache() -> TokenCache {
    moka::future::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(Duration::from_secs(300))
        .build()
}

/// Counts a request of `source` refused for its credentials, by the reason.
fn count(source: &'static str, reason: &'static str) {
    metrics::counter!(AUTH_FAILURES, "source" => source, "reason" => reason).increment(1);
}

/// Every reason a Forge request is refused for (`ForgeError::reason`, and the
/// checks made here), registered at zero on start-up.
pub(super) const FORGE_AUTH_REASONS: &[&str] = &[
    "not_configured",
    "missing_token",
    "malformed",
    "algorithm",
    "kid",
    "missing_claim",
    "issuer",
    "audience",
    "app_id",
    "expired",
    "not_yet_valid",
    "ic_label",
    "isolated_cloud",
    "unknown_kid",
    "signature",
    "replayed",
    "tenant_kind",
];

/// Every reason an admin webhook is refused for (`SignatureError::reason`, and
/// an unknown source).
pub(super) const ADMIN_AUTH_REASONS: &[&str] = &[
    "missing_signature",
    "signature_method",
    "malformed_signature",
    "signature",
    "unknown_source",
];

// ---------------------------------------------------------------- Forge Remote

pub async fn forge_events(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let span = tracing::info_span!(
        "forge_event",
        installation = tracing::field::Empty,
        forge_event = tracing::field::Empty,
        event_id = tracing::field::Empty,
    );
    let result = forge_event(&req, payload, &state).instrument(span).await;
    super::count_refused("forge", &result);
    result
}

async fn forge_event(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let authorization = header(req, "authorization");
    let invocation = match state.forge.verify(authorization).await {
        Ok(invocation) => invocation,
        Err(e) => return Err(forge_refused(e)),
    };
    let span = tracing::Span::current();
    span.record("installation", invocation.installation_id.as_str());

    let (body, _held) = read_body(req, payload, state.config.max_body_bytes, state).await?;
    let body = json_text(body)?;
    let event = forge::read_event(&body).map_err(|e| {
        tracing::warn!(reason = %e, "Forge event body refused");
        ApiError::BadRequest(e)
    })?;
    span.record("forge_event", event.event_type.as_str());
    // The token does not cover the body: it is accepted with this event only.
    let token_use = state
        .store
        .use_forge_token(
            &invocation.token_digest,
            &event.dedupe_key,
            invocation.token_expires_at,
        )
        .await?;
    if token_use == TokenUse::Conflict {
        count("forge", "replayed");
        tracing::warn!("Forge Invocation Token already used with another event; refused");
        return Err(ApiError::Unauthorized(
            "this invocation token was already used with another event".into(),
        ));
    }

    let product = forge_events::product_of(&event.event_type)
        .or_else(|| invocation.product())
        .unwrap_or(Product::Jira);
    // From the signed token only: the body is not covered by the signature.
    let site_url = invocation
        .site_url
        .clone()
        .or_else(|| invocation.api_base_url.clone())
        .unwrap_or_default();
    let installation = ForgeInstallation {
        installation_id: ClientKey(invocation.installation_id.clone()),
        product,
        site_url: site_url.clone(),
        cloud_id: invocation.cloud_id.clone(),
        api_base_url: invocation.api_base_url.clone(),
        environment: invocation.environment.clone(),
    };
    let lifecycle = match event.event_type.as_str() {
        "avi:forge:installed:app" => Some(TenantState::Installed),
        "avi:forge:uninstalled:app" => Some(TenantState::Uninstalled),
        _ => None,
    }
    .map(|state| ForgeLifecycle {
        state,
        at: invocation.issued_at,
    });
    record_installation(state, &installation, lifecycle).await?;
    // The system token header is not signed: it is taken only with a token's
    // first use, so a replayed invocation token cannot plant another one.
    if let (TokenUse::First, Some(token)) = (token_use, header(req, "x-forge-oauth-system")) {
        keep_system_token(state, &installation.installation_id, token).await?;
    }

    let connect = forge_events::connect_name(&event.event_type);
    let new_event = Event {
        id: EventId::new(),
        source: Source::Forge,
        product: Some(product),
        event: connect.unwrap_or(&event.event_type).to_string(),
        source_event: Some(event.event_type.clone()),
        client_key: Some(installation.installation_id.clone()),
        tenant_base_url: Some(site_url).filter(|s| !s.is_empty()),
        webhook_id: Some(event.dedupe_key.clone()),
        webhook_retry: event.retry,
        webhook_flow: None,
        recovered: false,
        received_at: crate::domain::now_millis(),
        payload: event.payload.to_string(),
    };
    accept(state, new_event).await
}

fn forge_refused(e: ForgeError) -> ApiError {
    // Keys that cannot be had are an outage (counted by intake as
    // `unavailable`), not a credential refused.
    if e.is_unavailable() {
        tracing::error!(reason = %e, "cannot verify Forge invocation tokens now");
        ApiError::Unavailable("cannot verify the request now, retry later".into())
    } else {
        count("forge", e.reason());
        tracing::warn!(reason = %e, "Forge request not authenticated");
        ApiError::Unauthorized(e.to_string())
    }
}

/// Creates or updates the installation's tenant when something changed: a
/// lifecycle event, or site details the cached tenant does not have.
async fn record_installation(
    state: &AppState,
    installation: &ForgeInstallation,
    lifecycle: Option<ForgeLifecycle>,
) -> Result<(), ApiError> {
    let key = &installation.installation_id.0;
    let (current, _) = state.auth.tenants().get(key).await?;
    let unchanged = current.as_ref().is_some_and(|t| {
        t.kind == TenantKind::Forge
            && t.base_url == installation.site_url
            && (installation.api_base_url.is_none() || t.api_base_url == installation.api_base_url)
    });
    if unchanged && lifecycle.is_none() {
        return Ok(());
    }
    let recorded = state
        .store
        .upsert_forge_installation(installation, lifecycle)
        .await?;
    state.auth.tenants().invalidate(key).await;
    if !recorded {
        count("forge", "tenant_kind");
        tracing::warn!("installation id names a tenant of another kind; refused");
        return Err(ApiError::Unauthorized(
            "this installation id belongs to another kind of tenant".into(),
        ));
    }
    if let Some(l) = lifecycle {
        tracing::info!(
            state = l.state.as_str(),
            "Forge installation lifecycle event"
        );
    }
    Ok(())
}

/// Keeps the app system token for the bridge, unless one expiring no sooner
/// was already kept by this process.
async fn keep_system_token(
    state: &AppState,
    installation: &ClientKey,
    token: &str,
) -> Result<(), ApiError> {
    if token.len() > 16 * 1024 {
        tracing::warn!("x-forge-oauth-system header too long; not kept");
        return Ok(());
    }
    let expires_at = forge::token_expiry(token);
    let kept = state.forge_tokens.get(&installation.0).await;
    let newer = match (kept, expires_at) {
        (None, _) => true,
        (Some(Some(old)), Some(new)) => new > old,
        (Some(_), _) => false,
    };
    if newer {
        state
            .store
            .save_forge_token(
                installation,
                &SecretString::from(token.to_string()),
                expires_at,
            )
            .await?;
        state
            .forge_tokens
            .insert(installation.0.clone(), expires_at)
            .await;
    }
    Ok(())
}

// -------------------------------------------------------- Jira admin webhooks

pub async fn admin_webhook(
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let webhook_id = webhook_identifier(&req);
    let span = tracing::info_span!(
        "admin_webhook",
        source_id = %id,
        webhook_id = webhook_id.as_ref().ok().and_then(Option::as_deref).unwrap_or(""),
        event = tracing::field::Empty,
        event_id = tracing::field::Empty,
    );
    let result = admin_event(&req, &id, webhook_id, payload, &state)
        .instrument(span)
        .await;
    super::count_refused("jira-admin", &result);
    result
}

async fn admin_event(
    req: &HttpRequest,
    id: &str,
    webhook_id: Result<Option<String>, ApiError>,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    // Source ids are UUIDs: anything else is unknown without a store read.
    if uuid::Uuid::parse_str(id).is_err() {
        count("jira-admin", "unknown_source");
        tracing::warn!("no such admin-webhook source");
        return Err(ApiError::NotFound);
    }
    let source = match state.auth.tenants().get(id).await?.0 {
        Some(t) if t.kind == TenantKind::JiraAdmin => t,
        _ => {
            count("jira-admin", "unknown_source");
            tracing::warn!("no such admin-webhook source");
            return Err(ApiError::NotFound);
        }
    };
    // The header's form is checked before the body is read.
    let digest = admin_webhook::parse_signature(header(req, "x-hub-signature"))
        .map_err(signature_refused)?;
    let webhook_id =
        webhook_id.inspect_err(|e| tracing::warn!(reason = %e, "bad webhook identifier"))?;
    let (body, _held) = read_body(req, payload, state.config.max_body_bytes, state).await?;
    let secrets = secrets(state, &source.client_key).await?;
    admin_webhook::verify(&digest, &body, secrets.iter()).map_err(signature_refused)?;

    let body = json_text(body)?;
    let event = webhook_event(&body)?;
    tracing::Span::current().record("event", event.as_str());
    let new_event = Event {
        id: EventId::new(),
        source: Source::JiraAdmin,
        product: Some(Product::Jira),
        event,
        source_event: None,
        client_key: Some(source.client_key.clone()),
        tenant_base_url: Some(source.base_url.clone()),
        webhook_id,
        webhook_retry: webhook_retry(req),
        webhook_flow: webhook_flow(req),
        recovered: false,
        received_at: crate::domain::now_millis(),
        payload: body,
    };
    accept(state, new_event).await
}

fn signature_refused(e: SignatureError) -> ApiError {
    count("jira-admin", e.reason());
    tracing::warn!(reason = %e, "admin webhook not authenticated");
    ApiError::Unauthorized(e.to_string())
}

/// `webhookEvent`, the event's name in every Jira admin webhook payload.
fn webhook_event(body: &str) -> Result<String, ApiError> {
    #[derive(Deserialize)]
    struct Named<'a> {
        // Raw: a large or deep `webhookEvent` is never built into a tree.
        #[serde(rename = "webhookEvent", borrow)]
        webhook_event: Option<&'a serde_json::value::RawValue>,
    }
    let named: Named<'_> = serde_json::from_str(body).map_err(|_| {
        ApiError::BadRequest("body is not a JSON object with `webhookEvent`".into())
    })?;
    named
        .webhook_event
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
        .filter(|name| crate::descriptor::valid_event_name(name))
        .ok_or_else(|| {
            tracing::warn!("admin webhook without a usable webhookEvent");
            ApiError::BadRequest("`webhookEvent` is missing or not an event name".into())
        })
}

async fn secrets(state: &AppState, source: &ClientKey) -> Result<Arc<Vec<SecretString>>, ApiError> {
    if let Some(secrets) = state.source_secrets.get(&source.0).await {
        return Ok(secrets);
    }
    let secrets: Vec<SecretString> = state
        .store
        .source_secrets(source)
        .await?
        .into_iter()
        .map(|s| s.secret)
        .collect();
    let secrets = Arc::new(secrets);
    state
        .source_secrets
        .insert(source.0.clone(), secrets.clone())
        .await;
    Ok(secrets)
}

// -------------------------------------------------------------- the admin API

pub(super) fn admin_routes(routes: Routes) -> Routes {
    routes
        .post("/sources", create_source)
        .get("/sources", list_sources)
        .get("/sources/{id}", get_source)
        .patch("/sources/{id}", update_source)
        .delete("/sources/{id}", delete_source)
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(create_source, list_sources, get_source, update_source, delete_source))]
pub(super) struct Doc;

/// A Jira admin-webhook source to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateSource {
    /// Always `jira-admin`.
    #[serde(rename = "type")]
    #[schema(pattern = "^jira-admin$")]
    kind: String,
    /// 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// The site's http(s) URL, without query or fragment.
    #[schema(format = "uri", pattern = "^https?://", max_length = 2048)]
    base_url: String,
}

/// Changes to a source; add a secret and retire one in two requests.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangeSource {
    #[schema(min_length = 1, max_length = 200)]
    name: Option<String>,
    /// Changing the site drops an attached API token.
    #[schema(format = "uri", pattern = "^https?://", max_length = 2048)]
    base_url: Option<String>,
    /// Make another secret (shown in this answer only), for rotation.
    #[serde(default)]
    add_secret: bool,
    /// Retire the secret with this prefix (not the last one).
    remove_secret: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct SecretView {
    /// The secret's first characters, to tell it apart.
    prefix: String,
    #[schema(format = DateTime)]
    created_at: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ApiTokenView {
    email: String,
    #[schema(format = DateTime)]
    created_at: String,
}

/// A Jira admin-webhook source: the URL to give Jira, and its secrets' prefixes.
#[derive(Serialize, utoipa::ToSchema)]
struct SourceView {
    id: String,
    /// Always `jira-admin`.
    #[serde(rename = "type")]
    kind: &'static str,
    name: Option<String>,
    base_url: String,
    /// Where Jira sends this source's webhooks.
    url: String,
    product: Product,
    secrets: Vec<SecretView>,
    /// The Atlassian API token product calls are made with, if attached
    /// (its email and when; never the token).
    api_token: Option<ApiTokenView>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    /// Only when a secret was just made: shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

fn source_url(state: &AppState, id: &str) -> String {
    format!(
        "{}/in/{}",
        state.config.base_url.as_str().trim_end_matches('/'),
        id
    )
}

async fn source_view(
    state: &AppState,
    tenant: Tenant,
    secret: Option<String>,
) -> Result<SourceView, ApiError> {
    let secrets = state
        .store
        .source_secrets(&tenant.client_key)
        .await?
        .into_iter()
        .map(|s| SecretView {
            prefix: s.prefix,
            created_at: format_timestamp(s.created_at),
        })
        .collect();
    let api_token = state
        .store
        .api_token(&tenant.client_key)
        .await?
        .map(|t| ApiTokenView {
            email: t.email,
            created_at: format_timestamp(t.created_at),
        });
    Ok(SourceView {
        api_token,
        url: source_url(state, &tenant.client_key.0),
        id: tenant.client_key.0,
        kind: TenantKind::JiraAdmin.as_str(),
        name: tenant.name,
        base_url: tenant.base_url,
        product: tenant.product,
        secrets,
        created_at: format_timestamp(tenant.installed_at),
        updated_at: format_timestamp(tenant.updated_at),
        secret,
    })
}

fn bad(detail: impl Into<String>) -> ApiError {
    ApiError::BadRequest(detail.into())
}

fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(bad(
            "`name` must be 1 to 200 characters, without control characters",
        ));
    }
    Ok(name.to_string())
}

fn check_base_url(url: &str) -> Result<String, ApiError> {
    let parsed =
        url::Url::parse(url.trim()).map_err(|e| bad(format!("`base_url` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https")
        || parsed.host_str().is_none()
        || parsed.query().is_some()
        || parsed.fragment().is_some()
        || url.len() > 2048
    {
        return Err(bad(
            "`base_url` must be an http(s) URL of the site, without query or fragment",
        ));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

fn new_secret() -> (SourceSecret, String) {
    let secret = admin_webhook::generate_secret();
    (
        SourceSecret {
            prefix: secret[..PREFIX_LEN].to_string(),
            secret: SecretString::from(secret.clone()),
            created_at: crate::domain::now_millis(),
        },
        secret,
    )
}

fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid body: {e}")))
}

#[utoipa::path(
    post,
    path = "/sources",
    tag = "sources",
    summary = "Create a Jira admin-webhook source",
    request_body = CreateSource,
    responses((status = 201, description = "Created; the answer holds the secret, this once", body = SourceView), (status = 400, description = "The body is not valid", body = ErrorBody))
)]
async fn create_source(
    _: Admin,
    state: web::Data<AppState>,
    AdminBody(body): AdminBody,
) -> Result<HttpResponse, ApiError> {
    let request: CreateSource = json(&body)?;
    if request.kind != TenantKind::JiraAdmin.as_str() {
        return Err(bad("`type` must be \"jira-admin\""));
    }
    let source = NewSource {
        id: ClientKey(uuid::Uuid::new_v4().to_string()),
        name: check_name(&request.name)?,
        base_url: check_base_url(&request.base_url)?,
    };
    let (secret, shown) = new_secret();
    state.store.create_source(&source, &secret).await?;
    tracing::info!(source_id = %source.id, name = %source.name, "admin-webhook source created");
    let tenant = state
        .store
        .source(&source.id)
        .await?
        .ok_or(ApiError::Internal)?;
    let view = source_view(&state, tenant, Some(shown)).await?;
    Ok(HttpResponse::Created().json(view))
}

#[utoipa::path(
    get,
    path = "/sources",
    tag = "sources",
    summary = "List admin-webhook sources",
    responses((status = 200, description = "Every source", body = List<SourceView>))
)]
async fn list_sources(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut views = Vec::new();
    for tenant in state
        .store
        .list_tenants(Some(TenantKind::JiraAdmin))
        .await?
    {
        views.push(source_view(&state, tenant, None).await?);
    }
    Ok(super::admin::list(views))
}

#[utoipa::path(
    get,
    path = "/sources/{id}",
    tag = "sources",
    summary = "One source",
    params(("id" = String, Path, description = "The source's id")),
    responses((status = 200, description = "The source", body = SourceView), (status = 404, description = "No such source", body = ErrorBody))
)]
async fn get_source(
    _: Admin,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = state
        .store
        .source(&ClientKey(id.into_inner()))
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(source_view(&state, tenant, None).await?))
}

#[utoipa::path(
    patch,
    path = "/sources/{id}",
    tag = "sources",
    summary = "Change a source, or rotate its secrets",
    params(("id" = String, Path, description = "The source's id")),
    request_body = ChangeSource,
    responses(
        (status = 200, description = "The source as changed", body = SourceView),
        (status = 400, description = "The body is not valid, or no secret has that prefix", body = ErrorBody),
        (status = 404, description = "No such source", body = ErrorBody),
        (status = 409, description = "That is the source's last secret", body = ErrorBody),
    )
)]
async fn update_source(
    _: Admin,
    id: web::Path<String>,
    state: web::Data<AppState>,
    AdminBody(body): AdminBody,
) -> Result<HttpResponse, ApiError> {
    let id = ClientKey(id.into_inner());
    let change: ChangeSource = json(&body)?;
    if change.add_secret && change.remove_secret.is_some() {
        return Err(bad("add a secret and remove one in two requests"));
    }
    let name = change.name.as_deref().map(check_name).transpose()?;
    let base_url = change.base_url.as_deref().map(check_base_url).transpose()?;
    if state.store.source(&id).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    // The removal first: it is the one change that can be refused, and a
    // refused request changes nothing.
    if let Some(prefix) = &change.remove_secret {
        match state.store.remove_source_secret(&id, prefix).await? {
            Some(true) => tracing::info!(source_id = %id, prefix = %prefix, "secret retired"),
            Some(false) => {
                return Err(ApiError::Conflict(
                    "this is the source's last secret: add another one first".into(),
                ))
            }
            None => return Err(bad(format!("no secret has the prefix `{prefix}`"))),
        }
    }
    match state
        .store
        .update_source(&id, name.as_deref(), base_url.as_deref())
        .await?
    {
        None => return Err(ApiError::NotFound),
        Some(true) => tracing::warn!(
            source_id = %id,
            "the source's site changed: its API token was dropped; attach one for the new site"
        ),
        Some(false) => {}
    }
    let mut shown = None;
    if change.add_secret {
        let (secret, plain) = new_secret();
        state.store.add_source_secret(&id, &secret).await?;
        tracing::info!(source_id = %id, prefix = %secret.prefix, "secret added");
        shown = Some(plain);
    }
    state.source_secrets.invalidate(&id.0).await;
    state.auth.tenants().invalidate(&id.0).await;
    let tenant = state.store.source(&id).await?.ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(source_view(&state, tenant, shown).await?))
}

#[utoipa::path(
    delete,
    path = "/sources/{id}",
    tag = "sources",
    summary = "Delete a source",
    params(("id" = String, Path, description = "The source's id")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such source", body = ErrorBody))
)]
async fn delete_source(
    _: Admin,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = ClientKey(id.into_inner());
    if !state.store.delete_source(&id).await? {
        return Err(ApiError::NotFound);
    }
    state.source_secrets.invalidate(&id.0).await;
    state.auth.tenants().invalidate(&id.0).await;
    tracing::info!(source_id = %id, "admin-webhook source deleted");
    Ok(HttpResponse::NoContent().finish())
}
