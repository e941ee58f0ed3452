//! Events: the live tail, the search, and one event with its deliveries,
//! their attempt timelines and the replay buttons.

use actix_web::http::StatusCode;
use actix_web::ResponseError as _;
use actix_web::{web, HttpResponse};
use maud::html;
use serde::Deserialize;
use serde_json::Value;

use super::layout::{csrf, json, notice, or_dash, shell, tag};
use super::{api, body, page, query, see_other, text, with_status, Session, UiError};
use crate::http::admin::{self, Admin, ListQuery};
use crate::http::stream::TailQuery;
use crate::http::AppState;

/// `GET /admin/tail`: the page; its script reads `/admin/tail/stream`.
pub async fn tail(session: Session, filters: web::Query<TailFilters>) -> HttpResponse {
    let stream = format!(
        "{}?{}",
        session.href("/admin/tail/stream"),
        super::query_string(&[
            ("event", &filters.event),
            ("tenant", &filters.tenant),
            ("source", &filters.source),
        ])
    );
    page(shell(
        &session,
        "Live tail",
        "tail",
        html! {
            form.filters method="get" {
                label { "Event (pattern)" input name="event" value=(filters.event) placeholder="jira:issue_*"; }
                label { "Tenant" input name="tenant" value=(filters.tenant); }
                label { "Source" (source_select(&filters.source)) }
                button type="submit" { "Apply" }
            }
            section #tail data-stream=(stream) data-base=(session.base) {
                div.bar {
                    button.secondary type="button" data-pause { "Pause" }
                    span.muted data-status { "connecting…" }
                }
                table {
                    thead { tr { th { "Received" } th { "Source" } th { "Event" } th { "Tenant" } th { "Payload" } } }
                    tbody {}
                }
            }
        },
    ))
}

#[derive(Deserialize, Default)]
pub struct TailFilters {
    #[serde(default)]
    event: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    source: String,
}

fn source_select(current: &str) -> maud::Markup {
    html! {
        select name="source" {
            option value="" { "any" }
            @for s in ["connect", "forge", "jira-admin", "webtrigger"] {
                option value=(s) selected[current == s] { (s) }
            }
        }
    }
}

/// `GET /admin/tail/stream`: the live tail's events, for as long as the
/// session lasts (signing out elsewhere or its expiry ends the stream with a
/// `signed-out` message).
pub async fn tail_stream(
    session: Session,
    state: web::Data<AppState>,
    filters: web::Query<TailQuery>,
) -> Result<HttpResponse, UiError> {
    let tail = filters.into_inner().tail()?;
    let ended = session.ended(state.clone());
    Ok(crate::http::stream::events(&state, tail, ended))
}

#[derive(Deserialize, Default)]
pub struct Search {
    #[serde(default)]
    event: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    webhook_id: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    cursor: String,
}

/// `GET /admin/events`: the search, newest first, 50 to a page.
pub async fn list(
    session: Session,
    state: web::Data<AppState>,
    search: web::Query<Search>,
) -> Result<HttpResponse, UiError> {
    let pairs = |cursor: &'_ str| {
        [
            ("event", search.event.clone()),
            ("tenant", search.tenant.clone()),
            ("source", search.source.clone()),
            ("webhook_id", search.webhook_id.clone()),
            ("since", search.since.clone()),
            ("until", search.until.clone()),
            ("cursor", cursor.to_string()),
        ]
    };
    let mut asked: Vec<(&str, &str)> = Vec::new();
    let given = pairs(&search.cursor);
    asked.extend(given.iter().map(|(k, v)| (*k, v.as_str())));
    asked.push(("limit", "50"));
    let q: web::Query<ListQuery> = query(&asked)?;
    // A search the API refused (400) or could not run (a store away: 503)
    // is shown with why, under the API's status.
    let (found, status, error) =
        match api(admin::list_events(Admin::signed_in(&session), state, q).await).await {
            Ok(found) => (found, StatusCode::OK, None),
            Err(UiError::Api(e)) => (Value::Null, e.status_code(), Some(e.to_string())),
            Err(e) => return Err(e),
        };
    let next = found["next_cursor"]
        .as_str()
        .map(|cursor| format!("?{}", super::query_string(&pairs(cursor))));
    let empty = Vec::new();
    let events = found["data"].as_array().unwrap_or(&empty);
    Ok(with_status(
        page(shell(
            &session,
            "Events",
            "events",
            html! {
                form.filters method="get" {
                    label { "Event" input name="event" value=(search.event) placeholder="jira:issue_*"; }
                    label { "Tenant" input name="tenant" value=(search.tenant); }
                    label { "Source" (source_select(&search.source)) }
                    label { "Webhook id" input name="webhook_id" value=(search.webhook_id); }
                    label { "Since (RFC 3339)" input name="since" value=(search.since) placeholder="2026-12-01T00:00:00Z"; }
                    label { "Until" input name="until" value=(search.until); }
                    button type="submit" { "Search" }
                }
                (notice(None, error.as_deref()))
                table #events {
                    thead { tr { th { "Received" } th { "Event" } th { "Source" } th { "Tenant" } th { "Webhook id" } } }
                    tbody {
                        @for e in events {
                            tr {
                                td { (text(&e["received_at"])) }
                                td { a href=(session.href(&format!("/admin/events/{}", text(&e["id"])))) { (text(&e["event"])) } }
                                td { (text(&e["source"])) }
                                td { (or_dash(&e["tenant"]["client_key"])) }
                                td { (or_dash(&e["webhook_id"])) }
                            }
                        }
                        @if events.is_empty() { tr { td colspan="5" .muted { "No events match." } } }
                    }
                }
                @if let Some(next) = next { p { a href=(next) { "Older →" } } }
            },
        )),
        status,
    ))
}

#[derive(Deserialize, Default)]
pub struct Flash {
    #[serde(default)]
    replayed: Option<usize>,
}

/// `GET /admin/events/{id}`.
pub async fn show(
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
    flash: web::Query<Flash>,
) -> Result<HttpResponse, UiError> {
    let event = api(admin::get_event(Admin::signed_in(&session), state, id).await).await?;
    let id = text(&event["id"]).to_string();
    let empty = Vec::new();
    let deliveries = event["deliveries"].as_array().unwrap_or(&empty);
    let mut envelope = event.clone();
    if let Some(object) = envelope.as_object_mut() {
        object.remove("payload");
        object.remove("deliveries");
    }
    let replay_action = session.href(&format!("/admin/events/{id}/replay"));
    let ok = flash
        .replayed
        .map(|n| format!("Replayed: {n} deliveries queued."));
    Ok(page(shell(
        &session,
        &format!("Event {}", text(&event["event"])),
        "events",
        html! {
            (notice(ok.as_deref(), None))
            div.bar {
                form.inline method="post" action=(replay_action) {
                    (csrf(&session))
                    button type="submit" data-replay="all" { "Replay to every matching subscription" }
                }
            }
            h2 { "Envelope" }
            (json(&envelope))
            h2 { "Payload" }
            (json(&event["payload"]))
            h2 { "Deliveries" }
            @if deliveries.is_empty() { p.muted { "No subscription matched this event." } }
            @for d in deliveries {
                section.delivery data-delivery=(text(&d["id"])) {
                    div.bar {
                        strong { "Subscription " a href=(session.href(&format!("/admin/subscriptions/{}", text(&d["subscription_id"])))) { code { (text(&d["subscription_id"])) } } }
                        (tag(text(&d["state"])))
                        span.muted { (d["attempt_count"]) " attempts this round" }
                        @if text(&d["state"]) == "pending" {
                            span.muted { "next attempt " (text(&d["next_attempt_at"])) }
                        }
                        form.inline method="post" action=(replay_action) {
                            (csrf(&session))
                            input type="hidden" name="subscription_id" value=(text(&d["subscription_id"]));
                            button.secondary type="submit" { "Replay this delivery" }
                        }
                    }
                    ol.timeline {
                        @for a in d["attempts"].as_array().unwrap_or(&empty) {
                            li.attempt {
                                (tag(text(&a["outcome"]))) " "
                                (text(&a["attempted_at"])) " · "
                                @if a["status_code"].is_null() { "no response" } @else { "HTTP " (a["status_code"]) }
                                " · " (a["duration_ms"]) " ms"
                                @if let Some(error) = a["error"].as_str() { div.muted { (error) } }
                                @if let Some(body) = a["response_body"].as_str().filter(|b| !b.is_empty()) {
                                    pre { (body.chars().take(400).collect::<String>()) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )))
}

#[derive(Deserialize)]
pub struct ReplayForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    subscription_id: String,
}

/// `POST /admin/events/{id}/replay`: the whole event, or one subscription's delivery.
pub async fn replay(
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<ReplayForm>,
) -> Result<HttpResponse, UiError> {
    session.check(&form.csrf)?;
    let request = if form.subscription_id.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::json!({"subscription_id": form.subscription_id})
    };
    let event = id.into_inner();
    let answer = api(crate::http::subscriptions::replay_event(
        Admin::signed_in(&session),
        state,
        web::Path::from(event.clone()),
        body(&request),
    )
    .await)
    .await?;
    let replayed = answer["deliveries"].as_array().map_or(0, Vec::len);
    Ok(see_other(session.href(&format!(
        "/admin/events/{event}?replayed={replayed}"
    ))))
}
