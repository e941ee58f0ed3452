//! The admin API under `/admin/api/v1`: stored events here, subscriptions,
//! deliveries and replays in `subscriptions.rs`.
//!
//! Every route but the OpenAPI document needs `Authorization: Bearer
//! $HOOKRELAY_ADMIN_TOKEN`; a handler proves it by taking an [`Admin`] argument.
//! With no token configured the API is closed, not open.

use std::future::{ready, Ready};

use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::error::{ApiError, ErrorBody};
use super::stream::TailQuery;
use super::AppState;
use crate::domain::{ClientKey, Envelope, Event, EventId};
use crate::store::EventFilter;
use crate::telemetry::catalog::AUTH_FAILURES;

const DEFAULT_LIMIT: i64 = 20;
pub(crate) const MAX_LIMIT: i64 = 100;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(api_routes().scope);
}

/// Every route of the admin API, each module adding its own.
pub(crate) fn api_routes() -> Routes {
    let routes = Routes {
        scope: web::scope("/admin/api/v1"),
        listed: Vec::new(),
    }
    .get("/openapi.json", openapi)
    .get("/events", list_events)
    .get("/events/stream", stream_events)
    .get("/events/{id}", get_event);
    super::bridge::admin_routes(super::triggers::admin_routes(super::subscriptions::routes(
        super::sources::admin_routes(routes),
    )))
}

/// The admin API's routes as they are registered, and a list of them (method
/// and path) made by the same calls, so that a test can hold the OpenAPI
/// document against what the server really serves.
pub(crate) struct Routes {
    scope: actix_web::Scope,
    pub(crate) listed: Vec<(&'static str, &'static str)>,
}

macro_rules! route_methods {
    ($($method:ident),*) => {$(
        pub(crate) fn $method<F, Args>(mut self, path: &'static str, handler: F) -> Self
        where
            F: actix_web::Handler<Args>,
            Args: FromRequest + 'static,
            F::Output: actix_web::Responder + 'static,
        {
            self.scope = self.scope.route(path, web::$method().to(handler));
            self.listed.push((stringify!($method), path));
            self
        }
    )*};
}

impl Routes {
    route_methods!(get, post, put, patch, delete);
}

/// Proof that the request carried the admin bearer token, or came from a
/// signed-in inspector session.
pub struct Admin(());

impl Admin {
    /// The inspector acts for its signed-in admin through the same handlers.
    pub(crate) fn signed_in(_session: &crate::ui::Session) -> Admin {
        Admin(())
    }
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return ready(Err(ApiError::Internal));
        };
        ready(check_admin(req, state).map_err(|(reason, e)| {
            tracing::warn!(reason = %e, "admin request refused");
            metrics::counter!(AUTH_FAILURES, "source" => "admin", "reason" => reason).increment(1);
            e
        }))
    }
}

/// The `reason` labels of the admin API's refusals in the auth failure counter.
pub(crate) const AUTH_REASONS: &[&str] = &["missing_token", "wrong_token", "disabled"];

/// The admin, or why not: one of [`AUTH_REASONS`] and the answer.
fn check_admin(req: &HttpRequest, state: &AppState) -> Result<Admin, (&'static str, ApiError)> {
    let refused = |reason, why: &str| (reason, ApiError::Unauthorized(why.into()));
    let Some(expected) = &state.config.admin_token else {
        return Err(refused(
            "disabled",
            "admin API disabled: set HOOKRELAY_ADMIN_TOKEN",
        ));
    };
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| refused("missing_token", "missing bearer token"))?;
    if bool::from(
        given
            .trim()
            .as_bytes()
            .ct_eq(expected.expose_secret().as_bytes()),
    ) {
        Ok(Admin(()))
    } else {
        Err(refused("wrong_token", "wrong bearer token"))
    }
}

/// Largest admin request body: a subscription is a few KiB, a trigger's
/// script up to 256 KiB (more once escaped in JSON).
const ADMIN_MAX_BODY: usize = 1024 * 1024;

/// An admin request's body, read like intake's: within the body timeout and
/// the intake budget, at most 256 KiB. Taken after [`Admin`] in a handler's
/// arguments, so an unauthenticated request's body is never read.
pub struct AdminBody(pub web::Bytes);

impl FromRequest for AdminBody {
    type Error = ApiError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        let payload = web::Payload::from_request(&req, payload).into_inner();
        Box::pin(async move {
            let payload = payload.map_err(|_| ApiError::BadRequest("no body".into()))?;
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or(ApiError::Internal)?
                .clone();
            let (body, _held) =
                super::connect::read_body(&req, payload, ADMIN_MAX_BODY, &state).await?;
            Ok(AdminBody(body))
        })
    }
}

/// `GET /openapi.json`: the document generated from the handlers (see
/// [`super::openapi`]); the one route without the token.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    summary = "This document",
    security(()),
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
async fn openapi() -> HttpResponse {
    // Built once: the route needs no token, so each call must stay cheap.
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = DOCUMENT.get_or_init(|| {
        serde_json::to_string(&super::openapi::document()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the OpenAPI document could not be written");
            String::new()
        })
    });
    if body.is_empty() {
        return actix_web::ResponseError::error_response(&ApiError::Internal);
    }
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body.as_str())
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// An event name, or a pattern with `*`.
    pub event: Option<String>,
    /// A tenant's client key.
    pub tenant: Option<String>,
    /// connect, forge, jira-admin or webtrigger.
    #[param(pattern = "^(connect|forge|jira-admin|webtrigger)?$")]
    pub source: Option<String>,
    /// The sender's own id of the webhook (Jira's `X-Atlassian-Webhook-Identifier`).
    pub webhook_id: Option<String>,
    /// Received at or after this RFC 3339 time.
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<String>,
    /// Received before this RFC 3339 time.
    #[param(value_type = Option<String>, format = DateTime)]
    pub until: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// The `next_cursor` of the page before.
    #[param(value_type = Option<String>, format = Uuid)]
    pub cursor: Option<String>,
}

impl ListQuery {
    /// The store's filter for this query, checking each parameter.
    pub(crate) fn filter(&self) -> Result<EventFilter, ApiError> {
        fn given(v: &Option<String>) -> Option<&str> {
            v.as_deref().map(str::trim).filter(|v| !v.is_empty())
        }
        let event = given(&self.event).map(str::to_string);
        if let Some(event) = &event {
            if !crate::relay::matching::valid_pattern(event) {
                return Err(ApiError::BadRequest(
                    "event must be an event name, with `*` for any run of characters".into(),
                ));
            }
        }
        let source = given(&self.source)
            .map(|s| {
                crate::domain::Source::parse(s).ok_or_else(|| {
                    ApiError::BadRequest(
                        "source must be connect, forge, jira-admin or webtrigger".into(),
                    )
                })
            })
            .transpose()?;
        let time = |name: &str, v: &Option<String>| {
            given(v)
                .map(|t| {
                    chrono::DateTime::parse_from_rfc3339(t)
                        .map(|t| EventId::first_at(t.with_timezone(&chrono::Utc)))
                        .map_err(|_| {
                            ApiError::BadRequest(format!(
                                "{name} must be an RFC 3339 time, such as 2026-11-22T10:00:00Z"
                            ))
                        })
                })
                .transpose()
        };
        let until = time("until", &self.until)?;
        let before = cursor(self.cursor.as_deref())?.map(EventId);
        Ok(EventFilter {
            event,
            client_key: given(&self.tenant).map(|t| ClientKey(t.to_string())),
            source: source.map(|s| s.as_str().to_string()),
            webhook_id: given(&self.webhook_id).map(str::to_string),
            before: match (before, until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            from: time("since", &self.since)?,
            limit: limit(self.limit.as_deref())?,
        })
    }
}

/// An event as the admin API shows it: the envelope plus what Jira said about
/// its delivery attempt.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AdminEvent<'a> {
    #[serde(flatten)]
    envelope: Envelope<'a>,
    /// Jira's retry number of the webhook, when it said.
    webhook_retry: Option<i32>,
    webhook_flow: Option<&'a str>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct EventDetail<'a> {
    #[serde(flatten)]
    event: AdminEvent<'a>,
    deliveries: Vec<super::subscriptions::DeliveryWithAttempts>,
}

pub(crate) fn admin_event(event: &Event, with_payload: bool) -> Result<AdminEvent<'_>, ApiError> {
    let mut envelope = event.envelope().map_err(|e| {
        tracing::error!(event_id = %event.id, error = %e, "stored payload is not JSON");
        ApiError::Internal
    })?;
    if !with_payload {
        envelope.payload = None;
    }
    Ok(AdminEvent {
        envelope,
        webhook_retry: event.webhook_retry,
        webhook_flow: event.webhook_flow.as_deref(),
    })
}

/// The `limit` query parameter of a listing.
pub(super) fn limit(given: Option<&str>) -> Result<i64, ApiError> {
    match given {
        None | Some("") => Ok(DEFAULT_LIMIT),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| ApiError::BadRequest(format!("limit must be 1 to {MAX_LIMIT}"))),
    }
}

/// A page of a listing: `data`, and the cursor of the next page when this one
/// is full (there may be more).
pub(super) fn page<T: Serialize>(
    data: &[T],
    limit: i64,
    id: impl Fn(&T) -> uuid::Uuid,
) -> HttpResponse {
    let next_cursor = (data.len() as i64 == limit)
        .then(|| data.last().map(id))
        .flatten();
    HttpResponse::Ok().json(Page { data, next_cursor })
}

/// A page of a listing.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Page<'a, T> {
    pub data: &'a [T],
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<uuid::Uuid>,
}

/// A whole listing (the lists that are not paged).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct List<T> {
    pub data: Vec<T>,
}

/// A whole listing as the answer.
pub(super) fn list<T: Serialize>(data: Vec<T>) -> HttpResponse {
    HttpResponse::Ok().json(List { data })
}

/// The `cursor` query parameter of a listing: the id of the last item seen.
pub(super) fn cursor(given: Option<&str>) -> Result<Option<uuid::Uuid>, ApiError> {
    match given {
        None | Some("") => Ok(None),
        Some(c) => uuid::Uuid::parse_str(c)
            .map(Some)
            .map_err(|_| ApiError::BadRequest("invalid cursor".into())),
    }
}

fn parse_event_id(s: &str) -> Option<EventId> {
    uuid::Uuid::parse_str(s).ok().map(EventId)
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(openapi, list_events, stream_events, get_event))]
pub(super) struct Doc;

/// `GET /events?event=&tenant=&source=&webhook_id=&since=&until=&limit=&cursor=`:
/// newest first, without payloads. `next_cursor` is set when there may be more.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    summary = "List stored events",
    description = "Newest first, without payloads.",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of events", body = Page<AdminEvent>),
        (status = 400, description = "A parameter is not valid", body = ErrorBody),
    )
)]
pub(crate) async fn list_events(
    _: Admin,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let filter = query.filter()?;
    let events = state.store.list_events(&filter).await?;
    let data = events
        .iter()
        .map(|e| admin_event(e, false))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page(&data, filter.limit, |e| e.envelope.id.0))
}

/// `GET /events/stream?event=&tenant=&source=`: the events stored from now on,
/// as Server-Sent Events (see [`super::stream`]).
#[utoipa::path(
    get,
    path = "/events/stream",
    tag = "events",
    summary = "Follow events as they are stored",
    description = "Server-Sent Events: an `event` message per stored event (its envelope with a \
payload preview), `lagged` when this client fell behind and missed some, and a comment every \
15 s to keep the connection alive. A client that stops reading is dropped.",
    params(TailQuery),
    responses(
        (status = 200, description = "The stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "A parameter is not valid", body = ErrorBody),
    )
)]
async fn stream_events(
    _: Admin,
    state: web::Data<AppState>,
    query: web::Query<TailQuery>,
) -> Result<HttpResponse, ApiError> {
    let tail = query.into_inner().tail()?;
    // Open until the client leaves or falls behind; the token it showed is
    // the server's until a restart.
    Ok(super::stream::events(&state, tail, std::future::pending()))
}

/// `GET /events/{id}`: one event with its payload, its deliveries and their attempts.
#[utoipa::path(
    get,
    path = "/events/{id}",
    tag = "events",
    summary = "One event, with its payload and deliveries",
    params(("id" = String, Path, description = "The event's id")),
    responses(
        (status = 200, description = "The event", body = EventDetail),
        (status = 404, description = "No such event", body = ErrorBody),
    )
)]
pub(crate) async fn get_event(
    _: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_event_id(&id).ok_or(ApiError::NotFound)?;
    let event = state.store.event(id).await?.ok_or(ApiError::NotFound)?;
    let deliveries = super::subscriptions::event_deliveries(&state, id).await?;
    Ok(HttpResponse::Ok().json(EventDetail {
        event: admin_event(&event, true)?,
        deliveries,
    }))
}
