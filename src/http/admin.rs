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

use super::error::ApiError;
use super::AppState;
use crate::domain::{ClientKey, Envelope, Event, EventId};
use crate::store::EventFilter;

const OPENAPI: &str = include_str!("openapi.json");
const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::bridge::admin_routes(super::triggers::admin_routes(
        super::subscriptions::routes(super::sources::admin_routes(
            web::scope("/admin/api/v1")
                .route("/openapi.json", web::get().to(openapi))
                .route("/events", web::get().to(list_events))
                .route("/events/stream", web::get().to(stream_events))
                .route("/events/{id}", web::get().to(get_event)),
        )),
    )));
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
        ready(
            check_admin(req).inspect_err(|e| tracing::warn!(reason = %e, "admin request refused")),
        )
    }
}

fn check_admin(req: &HttpRequest) -> Result<Admin, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or(ApiError::Internal)?;
    let Some(expected) = &state.config.admin_token else {
        return Err(ApiError::Unauthorized(
            "admin API disabled: set HOOKRELAY_ADMIN_TOKEN".into(),
        ));
    };
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
    if bool::from(
        given
            .trim()
            .as_bytes()
            .ct_eq(expected.expose_secret().as_bytes()),
    ) {
        Ok(Admin(()))
    } else {
        Err(ApiError::Unauthorized("wrong bearer token".into()))
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

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

#[derive(Deserialize, Default)]
pub(crate) struct ListQuery {
    /// An event name, or a pattern with `*`.
    pub event: Option<String>,
    pub tenant: Option<String>,
    pub source: Option<String>,
    pub webhook_id: Option<String>,
    /// RFC 3339 times: received at or after `since`, before `until`.
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<String>,
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
#[derive(Serialize)]
pub(crate) struct AdminEvent<'a> {
    #[serde(flatten)]
    envelope: Envelope<'a>,
    webhook_retry: Option<i32>,
    webhook_flow: Option<&'a str>,
}

#[derive(Serialize)]
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
    HttpResponse::Ok().json(serde_json::json!({"data": data, "next_cursor": next_cursor}))
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

/// `GET /events?event=&tenant=&source=&webhook_id=&since=&until=&limit=&cursor=`:
/// newest first, without payloads. `next_cursor` is set when there may be more.
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
async fn stream_events(
    _: Admin,
    state: web::Data<AppState>,
    query: web::Query<super::stream::TailQuery>,
) -> Result<HttpResponse, ApiError> {
    let tail = query.into_inner().tail()?;
    Ok(super::stream::events(&state, tail))
}

/// `GET /events/{id}`: one event with its payload, its deliveries and their attempts.
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
