//! The admin API's relay half: subscriptions, their deliveries and attempts,
//! and replays. Every handler takes [`Admin`], the proof of the bearer token.
//!
//! A subscription's secret is in the answer to its creation only (and to a
//! PATCH that sets a new one); no read returns it, and it is never logged.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Deserializer, Serialize};

use super::admin::{cursor, limit, list as whole, page, Admin, AdminBody, List, Page, Routes};
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::domain::{
    format_timestamp, now_millis, Attempt, Delivery, DeliveryState, EventId, Subscription,
    SubscriptionId,
};
use crate::relay::{destination, matching, signing};
use crate::store::{AttemptFilter, DeliveryFilter};

const MAX_PATTERNS: usize = 100;
const MAX_HEADERS: usize = 32;
const MAX_URL: usize = 2048;
const MAX_RATE: u32 = 100_000;
const MAX_CONCURRENCY: u32 = 1_000;
/// Headers hookrelay sets itself, which a subscription may not replace.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

pub(super) fn routes(routes: Routes) -> Routes {
    routes
        .post("/subscriptions", create)
        .get("/subscriptions", list)
        .get("/subscriptions/{id}", show)
        .patch("/subscriptions/{id}", update)
        .delete("/subscriptions/{id}", delete)
        .get("/subscriptions/{id}/deliveries", deliveries)
        .get("/subscriptions/{id}/attempts", attempts)
        .post("/subscriptions/{id}/replay", replay_subscription)
        .post("/events/{id}/replay", replay_event)
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create,
    list,
    show,
    update,
    delete,
    deliveries,
    attempts,
    replay_subscription,
    replay_event
))]
pub(super) struct Doc;

/// A subscription as the API shows it: everything but the secret.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SubscriptionView<'a> {
    id: SubscriptionId,
    #[schema(format = "uri")]
    url: &'a str,
    events: &'a [String],
    tenants: Option<&'a [String]>,
    filter: Option<&'a str>,
    headers: &'a BTreeMap<String, String>,
    transform: Option<&'a str>,
    description: Option<&'a str>,
    rate_limit: Option<u32>,
    max_concurrency: u32,
    enabled: bool,
    /// Why hookrelay disabled it, when it did.
    disabled_reason: Option<&'a str>,
    #[schema(format = DateTime)]
    failing_since: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    /// Only when it was just set.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'a str>,
}

fn view<'a>(sub: &'a Subscription, secret: Option<&'a str>) -> SubscriptionView<'a> {
    SubscriptionView {
        id: sub.id,
        url: &sub.url,
        events: &sub.events,
        tenants: sub.tenants.as_deref(),
        filter: sub.filter.as_deref(),
        headers: &sub.headers,
        transform: sub.transform.as_deref(),
        description: sub.description.as_deref(),
        rate_limit: sub.rate_limit,
        max_concurrency: sub.max_concurrency,
        enabled: sub.enabled,
        disabled_reason: sub.disabled_reason.as_deref(),
        failing_since: sub.failing_since.map(format_timestamp),
        created_at: format_timestamp(sub.created_at),
        updated_at: format_timestamp(sub.updated_at),
        secret,
    }
}

/// A subscription's fields, to create one (`url` and `events` required) or to
/// change one (`PATCH`): absent leaves a field alone; `null` clears an
/// optional one.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SubscriptionChanges)]
struct Changes {
    /// Where deliveries are POSTed: http(s), public unless private
    /// destinations are allowed.
    #[schema(format = "uri", pattern = "^https?://", max_length = 2048)]
    url: Option<String>,
    /// Event names, or patterns with `*` for any run of characters.
    #[schema(min_items = 1, max_items = 100, value_type = Option<Vec<EventPattern>>)]
    events: Option<Vec<String>>,
    /// Only these tenants' events (client keys); `null` for every tenant.
    #[serde(default, deserialize_with = "present")]
    #[schema(min_items = 1, value_type = Option<Vec<ClientKeyText>>)]
    tenants: Option<Option<Vec<String>>>,
    /// A JSONPath (RFC 9535) query the envelope must match.
    #[serde(default, deserialize_with = "present")]
    filter: Option<Option<String>>,
    /// Extra request headers (at most 32; not the signature's or the body's).
    headers: Option<BTreeMap<String, String>>,
    /// The Standard Webhooks secret (`whsec_` and the base64 of a 24 to 64
    /// byte key); generated when left out at creation, and shown in that
    /// answer only.
    #[schema(
        pattern = "^whsec_(([A-Za-z0-9+/]{4}){8,21}|([A-Za-z0-9+/]{4}){8,20}([A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=|[A-Za-z0-9+/][AQgw]==)|([A-Za-z0-9+/]{4}){21}[A-Za-z0-9+/][AQgw]==)$"
    )]
    secret: Option<String>,
    /// A JavaScript function of the envelope giving the body to send, or
    /// `null` to skip the delivery.
    #[serde(default, deserialize_with = "present")]
    transform: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
    /// Deliveries per second, 1 to 100000; `null` for no limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(minimum = 1, maximum = 100_000)]
    rate_limit: Option<Option<u32>>,
    /// Deliveries in flight at once, 1 to 1000.
    #[schema(minimum = 1, maximum = 1_000)]
    max_concurrency: Option<u32>,
    /// `true` re-enables a subscription hookrelay disabled.
    enabled: Option<bool>,
}

/// An event name, or a pattern with `*` for any run of characters (the
/// document's item type for `events`).
#[derive(utoipa::ToSchema)]
#[schema(pattern = "^[A-Za-z0-9*:_./-]{1,200}$")]
struct EventPattern(#[allow(dead_code)] String);

/// A tenant's client key (the document's item type for `tenants`).
#[derive(utoipa::ToSchema)]
#[schema(pattern = "\\S")]
struct ClientKeyText(#[allow(dead_code)] String);

/// A field that is present, even as `null`, becomes `Some`.
pub(super) fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

pub(super) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))
}

/// A body that may be left empty, standing for `{}`.
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        json_body(body)
    }
}

fn bad(detail: impl Into<String>) -> ApiError {
    ApiError::BadRequest(detail.into())
}

/// Applies `changes` to `sub`, checking every field it sets. Returns the new
/// secret when one was set.
fn apply(
    sub: &mut Subscription,
    changes: Changes,
    state: &AppState,
) -> Result<Option<String>, ApiError> {
    if let Some(url) = changes.url {
        sub.url = check_url(&url, state.config.allow_private_destinations)?;
    }
    if let Some(events) = changes.events {
        if events.is_empty() || events.len() > MAX_PATTERNS {
            return Err(bad(format!(
                "events must list 1 to {MAX_PATTERNS} patterns"
            )));
        }
        if let Some(p) = events.iter().find(|p| !matching::valid_pattern(p)) {
            return Err(bad(format!(
                "event pattern `{p}` is not valid: use event names with `*` for any run of characters"
            )));
        }
        sub.events = events;
    }
    if let Some(tenants) = changes.tenants {
        if tenants
            .as_ref()
            .is_some_and(|t| t.is_empty() || t.iter().any(|k| k.trim().is_empty()))
        {
            return Err(bad(
                "tenants must list client keys; leave it out for every tenant",
            ));
        }
        sub.tenants = tenants;
    }
    if let Some(filter) = changes.filter {
        if let Some(f) = &filter {
            matching::parse_filter(f)
                .map_err(|e| bad(format!("filter is not a JSONPath (RFC 9535) query: {e}")))?;
        }
        sub.filter = filter;
    }
    if let Some(headers) = changes.headers {
        if headers.len() > MAX_HEADERS {
            return Err(bad(format!("at most {MAX_HEADERS} headers")));
        }
        for (name, value) in &headers {
            let lower = name.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("webhook-") {
                return Err(bad(format!("header `{name}` is set by hookrelay")));
            }
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(value).is_err()
            {
                return Err(bad(format!("header `{name}` is not a valid HTTP header")));
            }
        }
        sub.headers = headers;
    }
    if let Some(transform) = changes.transform {
        // Compiled by `check_transform` before this.
        sub.transform = transform;
    }
    let mut new_secret = None;
    if let Some(secret) = changes.secret {
        signing::key(&secret).map_err(|e| bad(e.to_string()))?;
        sub.secret = secret.clone().into();
        new_secret = Some(secret);
    }
    if let Some(description) = changes.description {
        sub.description = description;
    }
    if let Some(rate) = changes.rate_limit {
        if rate.is_some_and(|r| r == 0 || r > MAX_RATE) {
            return Err(bad(format!(
                "rate_limit must be 1 to {MAX_RATE} per second, or null"
            )));
        }
        sub.rate_limit = rate;
    }
    if let Some(n) = changes.max_concurrency {
        if n == 0 || n > MAX_CONCURRENCY {
            return Err(bad(format!(
                "max_concurrency must be 1 to {MAX_CONCURRENCY}"
            )));
        }
        sub.max_concurrency = n;
    }
    if let Some(enabled) = changes.enabled {
        if enabled && !sub.enabled {
            // A fresh start: the old failure streak no longer counts.
            sub.disabled_reason = None;
            sub.failing_since = None;
        }
        sub.enabled = enabled;
    }
    Ok(new_secret)
}

/// Compiles a transform being set, so that one that cannot run is refused now.
async fn check_transform(state: &AppState, changes: &Changes) -> Result<(), ApiError> {
    if let Some(Some(source)) = &changes.transform {
        if source.len() > super::triggers::MAX_SCRIPT {
            return Err(bad(format!(
                "transform is larger than {} bytes",
                super::triggers::MAX_SCRIPT
            )));
        }
        state
            .scripts
            .check(source)
            .await
            .map_err(|e| super::triggers::not_compiled("transform", e))?;
    }
    Ok(())
}

pub(super) fn check_url(url: &str, allow_private: bool) -> Result<String, ApiError> {
    if url.len() > MAX_URL {
        return Err(bad(format!("url is longer than {MAX_URL} bytes")));
    }
    let parsed = url::Url::parse(url).map_err(|e| bad(format!("url is not valid: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(bad("url must be http:// or https:// with a host"));
    }
    if !allow_private {
        // Names are checked when they are resolved, at delivery time.
        destination::check_literal(&parsed).map_err(|e| {
            bad(format!(
                "{e}; set HOOKRELAY_ALLOW_PRIVATE_DESTINATIONS to allow it"
            ))
        })?;
    }
    Ok(parsed.to_string())
}

fn subscription_id(s: &str) -> Result<SubscriptionId, ApiError> {
    uuid::Uuid::parse_str(s)
        .map(SubscriptionId)
        .map_err(|_| ApiError::NotFound)
}

async fn load(state: &AppState, id: &str) -> Result<Subscription, ApiError> {
    let id = subscription_id(id)?;
    state
        .store
        .subscription(id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// `POST /subscriptions`: `url` and `events` are required; the secret is
/// generated unless given, and returned this once.
#[utoipa::path(
    post,
    path = "/subscriptions",
    tag = "subscriptions",
    summary = "Create a subscription",
    request_body = Changes,
    responses(
        (status = 201, description = "Created; the answer holds the secret, this once", body = SubscriptionView),
        (status = 400, description = "The body or a parameter is not valid", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    _: Admin,
    state: web::Data<AppState>,
    AdminBody(body): AdminBody,
) -> Result<HttpResponse, ApiError> {
    let changes: Changes = json_body(&body)?;
    if changes.url.is_none() || changes.events.is_none() {
        return Err(bad("url and events are required"));
    }
    check_transform(&state, &changes).await?;
    let now = now_millis();
    let secret = signing::generate_secret();
    let mut sub = Subscription::new(
        String::new(),
        Vec::new(),
        secret.clone().into(),
        state.config.subscription_concurrency,
        now,
    );
    let secret = apply(&mut sub, changes, &state)?.unwrap_or(secret);
    state.store.insert_subscription(&sub).await?;
    // Only the host: paths and queries often carry tokens.
    let host = url::Url::parse(&sub.url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string));
    tracing::info!(subscription_id = %sub.id, host, events = ?sub.events, "subscription created");
    Ok(HttpResponse::Created()
        .insert_header((
            "Location",
            format!("/admin/api/v1/subscriptions/{}", sub.id),
        ))
        .json(view(&sub, Some(&secret))))
}

#[utoipa::path(
    get,
    path = "/subscriptions",
    tag = "subscriptions",
    summary = "List subscriptions",
    responses((status = 200, description = "Every subscription", body = List<SubscriptionView>))
)]
pub(crate) async fn list(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let subs = state.store.subscriptions(false).await?;
    Ok(whole(subs.iter().map(|s| view(s, None)).collect()))
}

#[utoipa::path(
    get,
    path = "/subscriptions/{id}",
    tag = "subscriptions",
    summary = "One subscription",
    params(("id" = String, Path, description = "The subscription's id")),
    responses((status = 200, description = "The subscription", body = SubscriptionView), (status = 404, description = "No such subscription", body = ErrorBody))
)]
pub(crate) async fn show(
    _: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let sub = load(&state, &id).await?;
    Ok(HttpResponse::Ok().json(view(&sub, None)))
}

/// `PATCH /subscriptions/{id}`: any field; `{"enabled": true}` re-enables one
/// that hookrelay disabled, and its pending deliveries resume.
#[utoipa::path(
    patch,
    path = "/subscriptions/{id}",
    tag = "subscriptions",
    summary = "Change a subscription",
    params(("id" = String, Path, description = "The subscription's id")),
    request_body = Changes,
    responses(
        (status = 200, description = "The subscription as changed", body = SubscriptionView),
        (status = 400, description = "The body or a parameter is not valid", body = ErrorBody),
        (status = 404, description = "No such subscription", body = ErrorBody),
        (status = 409, description = "Changed by someone else meanwhile; read it again", body = ErrorBody),
    )
)]
pub(crate) async fn update(
    _: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
    AdminBody(body): AdminBody,
) -> Result<HttpResponse, ApiError> {
    let changes: Changes = json_body(&body)?;
    check_transform(&state, &changes).await?;
    let mut sub = load(&state, &id).await?;
    let read_at = sub.updated_at;
    let secret = apply(&mut sub, changes, &state)?;
    sub.updated_at = now_millis().max(read_at + chrono::Duration::milliseconds(1));
    // Written only if nobody (an admin, or hookrelay disabling it) changed it
    // since it was read.
    if !state.store.update_subscription(&sub, read_at).await? {
        state
            .store
            .subscription(sub.id)
            .await?
            .ok_or(ApiError::NotFound)?;
        return Err(ApiError::Conflict(
            "subscription changed meanwhile; read it again and retry".into(),
        ));
    }
    tracing::info!(subscription_id = %sub.id, enabled = sub.enabled, "subscription updated");
    state.relay_wake.notify_one();
    Ok(HttpResponse::Ok().json(view(&sub, secret.as_deref())))
}

#[utoipa::path(
    delete,
    path = "/subscriptions/{id}",
    tag = "subscriptions",
    summary = "Delete a subscription",
    params(("id" = String, Path, description = "The subscription's id")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such subscription", body = ErrorBody))
)]
async fn delete(
    _: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = subscription_id(&id)?;
    if !state.store.delete_subscription(id).await? {
        return Err(ApiError::NotFound);
    }
    tracing::info!(subscription_id = %id, "subscription deleted");
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Deliveries in this state only (deliveries listing).
    #[param(value_type = Option<DeliveryState>)]
    state: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// The `next_cursor` of the page before.
    #[param(value_type = Option<String>, format = Uuid)]
    cursor: Option<String>,
}

/// `GET /subscriptions/{id}/deliveries?state=&limit=&cursor=`, newest first.
#[utoipa::path(
    get,
    path = "/subscriptions/{id}/deliveries",
    tag = "subscriptions",
    summary = "The subscription's deliveries, newest first",
    params(("id" = String, Path, description = "The subscription's id"), PageQuery),
    responses((status = 200, description = "A page of deliveries", body = Page<Delivery>), (status = 400, description = "The body or a parameter is not valid", body = ErrorBody), (status = 404, description = "No such subscription", body = ErrorBody))
)]
pub(crate) async fn deliveries(
    _: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let sub = load(&state, &id).await?;
    let limit = limit(query.limit.as_deref())?;
    let filter = DeliveryFilter {
        subscription: Some(sub.id),
        state: match query.state.as_deref() {
            None | Some("") => None,
            Some(s) => Some(DeliveryState::parse(s).ok_or_else(|| {
                bad("state must be pending, delivered, filtered, failed or dead")
            })?),
        },
        before: cursor(query.cursor.as_deref())?.map(crate::domain::DeliveryId),
        limit,
        ..DeliveryFilter::default()
    };
    let data = state.store.deliveries(&filter).await?;
    Ok(page(&data, limit, |d| d.id.0))
}

/// `GET /subscriptions/{id}/attempts?limit=&cursor=`: the attempt log, newest first.
#[utoipa::path(
    get,
    path = "/subscriptions/{id}/attempts",
    tag = "subscriptions",
    summary = "The subscription's attempt log, newest first",
    params(("id" = String, Path, description = "The subscription's id"), PageQuery),
    responses((status = 200, description = "A page of attempts", body = Page<Attempt>), (status = 400, description = "The body or a parameter is not valid", body = ErrorBody), (status = 404, description = "No such subscription", body = ErrorBody))
)]
async fn attempts(
    _: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let sub = load(&state, &id).await?;
    let limit = limit(query.limit.as_deref())?;
    let filter = AttemptFilter {
        subscription: Some(sub.id),
        before: cursor(query.cursor.as_deref())?,
        limit,
        ..AttemptFilter::default()
    };
    let data = state.store.attempts(&filter).await?;
    Ok(page(&data, limit, |a| a.id))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReplaySubscription {
    /// Which deliveries to reopen (not `pending`); dead ones by default.
    #[schema(min_items = 1, value_type = Option<Vec<FinishedState>>)]
    states: Option<Vec<DeliveryState>>,
}

/// The states a replay reopens deliveries from (the document's item type for
/// `states`: every [`DeliveryState`] but `pending`).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum FinishedState {
    Delivered,
    Filtered,
    Failed,
    Dead,
}

/// How many deliveries a replay reopened.
#[derive(Serialize, utoipa::ToSchema)]
struct Replayed {
    replayed: u64,
}

/// `POST /subscriptions/{id}/replay`: reopens the subscription's dead deliveries
/// (or those in `states`) as new rounds, due now.
#[utoipa::path(
    post,
    path = "/subscriptions/{id}/replay",
    tag = "subscriptions",
    summary = "Replay the subscription's dead (or other finished) deliveries",
    params(("id" = String, Path, description = "The subscription's id")),
    request_body(content = Option<ReplaySubscription>, description = "Optional"),
    responses(
        (status = 202, description = "Reopened, due now", body = Replayed),
        (status = 400, description = "The body or a parameter is not valid", body = ErrorBody),
        (status = 404, description = "No such subscription", body = ErrorBody),
        (status = 409, description = "The subscription is disabled", body = ErrorBody),
    )
)]
pub(crate) async fn replay_subscription(
    _: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
    AdminBody(body): AdminBody,
) -> Result<HttpResponse, ApiError> {
    let request: ReplaySubscription = optional_body(&body)?;
    let states = request.states.unwrap_or_else(|| vec![DeliveryState::Dead]);
    if states.is_empty() || states.contains(&DeliveryState::Pending) {
        return Err(bad(
            "states must name delivered, filtered, failed or dead deliveries",
        ));
    }
    let sub = load(&state, &id).await?;
    if !sub.enabled {
        return Err(ApiError::Conflict(
            "subscription is disabled; enable it first".into(),
        ));
    }
    let replayed = state.store.replay_subscription(sub.id, &states).await?;
    tracing::info!(subscription_id = %sub.id, replayed, "deliveries replayed");
    state.relay_wake.notify_one();
    Ok(HttpResponse::Accepted().json(Replayed { replayed }))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReplayEvent {
    /// Only to this subscription (which need not match the event).
    subscription_id: Option<String>,
}

/// The deliveries a replay of an event made.
#[derive(Serialize, utoipa::ToSchema)]
struct EventReplayed {
    deliveries: Vec<Delivery>,
    /// Present (`true`) when a web trigger's script runs again too.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    script_run: bool,
}

/// `POST /events/{id}/replay`: delivers the event again, with the same id, to
/// every enabled subscription that matches it now, or to the one named.
#[utoipa::path(
    post,
    path = "/events/{id}/replay",
    tag = "events",
    summary = "Deliver an event again",
    description = "With the same id, to every enabled subscription that matches it now, or to \
the one named (which need not match).",
    params(("id" = String, Path, description = "The event's id")),
    request_body(content = Option<ReplayEvent>, description = "Optional"),
    responses(
        (status = 202, description = "New deliveries, due now", body = EventReplayed),
        (status = 400, description = "The body or a parameter is not valid", body = ErrorBody),
        (status = 404, description = "No such event or subscription", body = ErrorBody),
        (status = 409, description = "The subscription is disabled", body = ErrorBody),
    )
)]
pub(crate) async fn replay_event(
    _: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
    AdminBody(body): AdminBody,
) -> Result<HttpResponse, ApiError> {
    let request: ReplayEvent = optional_body(&body)?;
    let request_all = request.subscription_id.is_none();
    let event_id = uuid::Uuid::parse_str(&id)
        .map(EventId)
        .map_err(|_| ApiError::NotFound)?;
    let event = state
        .store
        .event(event_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let targets = match request.subscription_id {
        Some(sid) => {
            let sub = load(&state, &sid).await?;
            if !sub.enabled {
                return Err(ApiError::Conflict(
                    "subscription is disabled; enable it first".into(),
                ));
            }
            vec![sub.id]
        }
        None => {
            let text = event.envelope_json();
            let envelope = matching::Candidate::new(&text).map_err(|e| {
                tracing::error!(event_id = %event.id, error = %e, "stored event has no readable envelope");
                ApiError::Internal
            })?;
            state
                .store
                .subscriptions(true)
                .await?
                .iter()
                .filter_map(|s| matching::Matcher::new(s).ok())
                .filter(|m| m.matches(&envelope))
                .map(|m| m.id)
                .collect()
        }
    };
    let deliveries = state.store.replay_deliveries(event.id, &targets).await?;
    // An async web trigger's script runs again too (unless only one
    // subscription was asked for).
    let script = event.source == crate::domain::Source::Webtrigger
        && request_all
        && state.store.replay_run(event.id).await?;
    tracing::info!(event_id = %event.id, deliveries = deliveries.len(), script, "event replayed");
    state.relay_wake.notify_one();
    Ok(HttpResponse::Accepted().json(EventReplayed {
        deliveries,
        script_run: script,
    }))
}

/// An event's deliveries, each with its attempts (oldest first), for
/// `GET /events/{id}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryWithAttempts {
    #[serde(flatten)]
    delivery: Delivery,
    attempts: Vec<Attempt>,
}

/// Most attempts shown with one event.
const EVENT_ATTEMPTS: i64 = 1_000;

pub async fn event_deliveries(
    state: &AppState,
    event: EventId,
) -> Result<Vec<DeliveryWithAttempts>, ApiError> {
    let deliveries = state
        .store
        .deliveries(&DeliveryFilter {
            event: Some(event),
            limit: i64::from(MAX_CONCURRENCY),
            ..DeliveryFilter::default()
        })
        .await?;
    let mut attempts = state
        .store
        .attempts(&AttemptFilter {
            event: Some(event),
            limit: EVENT_ATTEMPTS,
            ..AttemptFilter::default()
        })
        .await?;
    attempts.reverse();
    Ok(deliveries
        .into_iter()
        .rev()
        .map(|delivery| DeliveryWithAttempts {
            attempts: attempts
                .iter()
                .filter(|a| a.delivery_id == delivery.id)
                .cloned()
                .collect(),
            delivery,
        })
        .collect())
}
