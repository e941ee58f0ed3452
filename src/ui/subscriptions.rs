//! Subscriptions: the list with each one's health over the last 24 h, the
//! create and edit forms, enabling and disabling, replaying dead deliveries,
//! and "try it": the filter and transform run against a stored event, with
//! nothing delivered.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::layout::{csrf, json as pretty, notice, or_dash, shell, tag};
use super::{api, body, page, refused, refused_by, see_other, text, Session, UiError};
use crate::domain::EventId;
use crate::http::admin::Admin;
use crate::http::error::ApiError;
use crate::http::subscriptions as handlers;
use crate::http::AppState;
use crate::relay::matching;

pub async fn list(session: Session, state: web::Data<AppState>) -> Result<HttpResponse, UiError> {
    let subs = api(handlers::list(Admin::signed_in(&session), state.clone()).await).await?;
    let health: HashMap<String, crate::store::Health> = state
        .store
        .subscription_health(chrono::Utc::now() - chrono::Duration::hours(24))
        .await?
        .into_iter()
        .map(|(id, h)| (id.to_string(), h))
        .collect();
    let empty = Vec::new();
    let subs = subs["data"].as_array().unwrap_or(&empty);
    Ok(page(shell(
        &session,
        "Subscriptions",
        "subscriptions",
        html! {
            p { a href=(session.href("/admin/subscriptions/new")) { "New subscription" } }
            table #subscriptions {
                thead { tr {
                    th { "URL" } th { "Events" } th { "State" }
                    th { "Attempts 24 h" } th { "Delivered" } th { "Last failure" }
                } }
                tbody {
                    @for s in subs {
                        @let h = health.get(text(&s["id"])).cloned().unwrap_or_default();
                        tr {
                            td { a href=(session.href(&format!("/admin/subscriptions/{}", text(&s["id"])))) { (text(&s["url"])) } }
                            td { (list_text(&s["events"])) }
                            td {
                                @if s["enabled"] == true { (tag("enabled")) } @else { (tag("disabled")) }
                                @if let Some(reason) = s["disabled_reason"].as_str() { div.muted { (reason) } }
                            }
                            td { (h.attempts) }
                            td {
                                @if h.attempts > 0 { (format!("{:.1} %", h.delivered as f64 * 100.0 / h.attempts as f64)) }
                                @else { span.muted { "–" } }
                            }
                            td { @match h.last_failure_at { Some(at) => (crate::domain::format_timestamp(at)), None => span.muted { "–" } } }
                        }
                    }
                    @if subs.is_empty() { tr { td colspan="6" .muted { "No subscriptions yet." } } }
                }
            }
        },
    )))
}

fn list_text(v: &Value) -> String {
    v.as_array()
        .map(|items| items.iter().map(text).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

/// The fields of the create and edit forms.
#[derive(Deserialize, Default, Clone)]
pub struct SubscriptionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    events: String,
    #[serde(default)]
    tenants: String,
    #[serde(default)]
    filter: String,
    #[serde(default)]
    headers: String,
    #[serde(default)]
    transform: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    max_concurrency: String,
    #[serde(default)]
    rate_limit: String,
}

fn split_list(text: &str) -> Vec<String> {
    text.split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

impl SubscriptionForm {
    fn from_view(v: &Value) -> Self {
        let headers = v["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| format!("{k}: {}", text(v)))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        let number = |v: &Value| v.as_u64().map(|n| n.to_string()).unwrap_or_default();
        SubscriptionForm {
            csrf: String::new(),
            url: text(&v["url"]).into(),
            events: list_text(&v["events"]),
            tenants: list_text(&v["tenants"]),
            filter: text(&v["filter"]).into(),
            headers,
            transform: text(&v["transform"]).into(),
            description: text(&v["description"]).into(),
            max_concurrency: number(&v["max_concurrency"]),
            rate_limit: number(&v["rate_limit"]),
        }
    }

    /// The admin API's body: every field, empty ones cleared (`null`).
    fn changes(&self) -> Result<Value, ApiError> {
        let optional = |s: &str| {
            let s = s.trim();
            if s.is_empty() {
                Value::Null
            } else {
                Value::String(s.to_string())
            }
        };
        let mut headers = Map::new();
        for line in self
            .headers
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let (name, value) = line.split_once(':').ok_or_else(|| {
                ApiError::BadRequest(format!("header line `{line}` is not `Name: value`"))
            })?;
            headers.insert(name.trim().to_string(), json!(value.trim()));
        }
        let number = |name: &str, s: &str| -> Result<Option<u64>, ApiError> {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            s.parse()
                .map(Some)
                .map_err(|_| ApiError::BadRequest(format!("{name} must be a whole number")))
        };
        let tenants = split_list(&self.tenants);
        let mut changes = json!({
            "url": self.url.trim(),
            "events": split_list(&self.events),
            "tenants": if tenants.is_empty() { Value::Null } else { json!(tenants) },
            "filter": optional(&self.filter),
            "headers": headers,
            "transform": optional(&self.transform),
            "description": optional(&self.description),
            "rate_limit": number("rate_limit", &self.rate_limit)?,
        });
        if let Some(n) = number("max_concurrency", &self.max_concurrency)? {
            changes["max_concurrency"] = json!(n);
        }
        Ok(changes)
    }
}

fn form(session: &Session, action: &str, f: &SubscriptionForm, submit: &str) -> Markup {
    html! {
        form.stacked #subscription-form method="post" action=(action) {
            (csrf(session))
            label { "URL" input name="url" type="url" value=(f.url) required placeholder="https://example.com/hooks"; }
            label { "Events" small { "Names or patterns with *, separated by commas" }
                input name="events" value=(f.events) required placeholder="jira:issue_*"; }
            label { "Tenants" small { "Client keys, separated by commas; empty for every tenant" }
                input name="tenants" value=(f.tenants); }
            label { "Filter" small { "A JSONPath (RFC 9535) query on the envelope; it matches when it selects something" }
                input name="filter" value=(f.filter) placeholder="$.payload.issue[?@.key == 'OPS-1']"; }
            label { "Headers" small { "One `Name: value` per line" }
                textarea name="headers" rows="3" { (f.headers) } }
            label { "Transform" small { "A JavaScript function of the envelope; what it returns is sent, null sends nothing" }
                textarea.code name="transform" rows="8" placeholder="(envelope) => ({ text: envelope.event })" { (f.transform) } }
            label { "Description" input name="description" value=(f.description); }
            label { "Max concurrency" input name="max_concurrency" value=(f.max_concurrency) inputmode="numeric"; }
            label { "Rate limit (per second)" input name="rate_limit" value=(f.rate_limit) inputmode="numeric"; }
            button type="submit" { (submit) }
        }
    }
}

pub async fn new(session: Session) -> HttpResponse {
    let f = SubscriptionForm {
        events: "jira:*".into(),
        ..SubscriptionForm::default()
    };
    new_page(&session, &f, None)
}

fn new_page(session: &Session, f: &SubscriptionForm, error: Option<&str>) -> HttpResponse {
    page(shell(
        session,
        "New subscription",
        "subscriptions",
        html! {
            (notice(None, error))
            (form(session, &session.href("/admin/subscriptions"), f, "Create"))
        },
    ))
}

/// `POST /admin/subscriptions`: creates, then shows the secret once.
pub async fn create(
    session: Session,
    state: web::Data<AppState>,
    f: web::Form<SubscriptionForm>,
) -> Result<HttpResponse, UiError> {
    session.check(&f.csrf)?;
    let mut changes = match f.changes() {
        Ok(c) => c,
        Err(e) => return Ok(refused(new_page(&session, &f, Some(&e.to_string())))),
    };
    // Creation leaves out what is empty rather than clearing it.
    if let Some(object) = changes.as_object_mut() {
        object.retain(|_, v| !v.is_null());
    }
    match api(handlers::create(Admin::signed_in(&session), state.clone(), body(&changes)).await)
        .await
    {
        Ok(sub) => {
            let id = text(&sub["id"]).to_string();
            let secret = text(&sub["secret"]).to_string();
            render(
                &session,
                &state,
                &id,
                Some(&format!(
                    "Created. Its signing secret, shown this once: {secret}"
                )),
                None,
                None,
                None,
            )
            .await
        }
        Err(UiError::Api(e)) => Ok(refused_by(new_page(&session, &f, Some(&e.to_string())), &e)),
        Err(e) => Err(e),
    }
}

pub async fn show(
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, UiError> {
    render(&session, &state, &id, None, None, None, None).await
}

/// The subscription's page, with a notice, an error or a "try it" result.
async fn render(
    session: &Session,
    state: &web::Data<AppState>,
    id: &str,
    ok: Option<&str>,
    error: Option<&str>,
    tried: Option<Markup>,
    edited: Option<&SubscriptionForm>,
) -> Result<HttpResponse, UiError> {
    let sub = api(handlers::show(
        Admin::signed_in(session),
        state.clone(),
        web::Path::from(id.to_string()),
    )
    .await)
    .await?;
    let f = edited
        .cloned()
        .unwrap_or_else(|| SubscriptionForm::from_view(&sub));
    let here = session.href(&format!("/admin/subscriptions/{id}"));
    let enabled = sub["enabled"] == true;
    let deliveries = api(handlers::deliveries(
        Admin::signed_in(session),
        state.clone(),
        web::Path::from(id.to_string()),
        super::query(&[("limit", "20")])?,
    )
    .await)
    .await?;
    let empty = Vec::new();
    Ok(page(shell(
        session,
        &format!("Subscription {}", text(&sub["url"])),
        "subscriptions",
        html! {
            (notice(ok, error))
            div.bar {
                @if enabled { (tag("enabled")) } @else { (tag("disabled")) }
                @if let Some(reason) = sub["disabled_reason"].as_str() { span.muted { (reason) } }
                form.inline method="post" action={ (here) "/enabled" } {
                    (csrf(session))
                    input type="hidden" name="enabled" value=(if enabled { "false" } else { "true" });
                    button.secondary type="submit" { @if enabled { "Disable" } @else { "Enable" } }
                }
                form.inline method="post" action={ (here) "/replay" } {
                    (csrf(session))
                    button.secondary type="submit" { "Replay dead deliveries" }
                }
            }
            dl.fields {
                dt { "id" } dd { code { (id) } }
                dt { "created" } dd { (or_dash(&sub["created_at"])) }
                dt { "updated" } dd { (or_dash(&sub["updated_at"])) }
            }
            h2 { "Try it" }
            p.muted { "Runs the filter and the transform on a stored event; nothing is delivered." }
            form.filters method="post" action={ (here) "/try" } {
                (csrf(session))
                label { "Event id" input name="event_id" required; }
                button type="submit" { "Try" }
            }
            @if let Some(tried) = tried { section #tried { (tried) } }
            h2 { "Edit" }
            (form(session, &here, &f, "Save"))
            h2 { "Recent deliveries" }
            table {
                thead { tr { th { "Event" } th { "State" } th { "Attempts" } th { "Last status" } th { "Updated" } } }
                tbody {
                    @for d in deliveries["data"].as_array().unwrap_or(&empty) {
                        tr {
                            td { a href=(session.href(&format!("/admin/events/{}", text(&d["event_id"])))) { code { (text(&d["event_id"])) } } }
                            td { (tag(text(&d["state"]))) }
                            td { (d["attempt_count"]) }
                            td { (or_dash(&d["last_status"])) }
                            td { (text(&d["updated_at"])) }
                        }
                    }
                }
            }
        },
    )))
}

/// `POST /admin/subscriptions/{id}`: saves the edit form.
pub async fn update(
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
    f: web::Form<SubscriptionForm>,
) -> Result<HttpResponse, UiError> {
    session.check(&f.csrf)?;
    let answer = match f.changes() {
        Ok(changes) => {
            handlers::update(
                Admin::signed_in(&session),
                state.clone(),
                web::Path::from(id.to_string()),
                body(&changes),
            )
            .await
        }
        Err(e) => Err(e),
    };
    let page = session.href(&format!("/admin/subscriptions/{id}"));
    super::edited(answer, page, |why| async move {
        render(&session, &state, &id, None, Some(&why), None, Some(&f)).await
    })
    .await
}

#[derive(Deserialize)]
pub struct EnabledForm {
    #[serde(default)]
    csrf: String,
    enabled: bool,
}

pub async fn set_enabled(
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
    f: web::Form<EnabledForm>,
) -> Result<HttpResponse, UiError> {
    session.check(&f.csrf)?;
    api(handlers::update(
        Admin::signed_in(&session),
        state,
        web::Path::from(id.to_string()),
        body(&json!({"enabled": f.enabled})),
    )
    .await)
    .await?;
    Ok(see_other(
        session.href(&format!("/admin/subscriptions/{id}")),
    ))
}

pub async fn replay(
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
    f: web::Form<super::session::CsrfForm>,
) -> Result<HttpResponse, UiError> {
    session.check(&f.csrf)?;
    let answer = handlers::replay_subscription(
        Admin::signed_in(&session),
        state.clone(),
        web::Path::from(id.to_string()),
        body(&json!({})),
    )
    .await;
    match api(answer).await {
        Ok(done) => {
            let message = format!("{} dead deliveries replayed.", done["replayed"]);
            render(&session, &state, &id, Some(&message), None, None, None).await
        }
        Err(UiError::Api(e)) if !matches!(e, ApiError::NotFound) => {
            let page = render(
                &session,
                &state,
                &id,
                None,
                Some(&e.to_string()),
                None,
                None,
            )
            .await?;
            Ok(refused_by(page, &e))
        }
        Err(e) => Err(e),
    }
}

#[derive(Deserialize)]
pub struct TryForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    event_id: String,
}

/// `POST /admin/subscriptions/{id}/try`: whether the event would be
/// delivered, and what the transform would send.
pub async fn try_it(
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
    f: web::Form<TryForm>,
) -> Result<HttpResponse, UiError> {
    session.check(&f.csrf)?;
    let sub = uuid::Uuid::parse_str(&id)
        .ok()
        .map(crate::domain::SubscriptionId)
        .ok_or(ApiError::NotFound)?;
    let sub = state
        .store
        .subscription(sub)
        .await?
        .ok_or(ApiError::NotFound)?;
    let event = match uuid::Uuid::parse_str(f.event_id.trim()) {
        Ok(event) => state.store.event(EventId(event)).await?,
        Err(_) => None,
    };
    let Some(event) = event else {
        return render(
            &session,
            &state,
            &id,
            None,
            Some("There is no stored event with that id."),
            None,
            None,
        )
        .await
        .map(refused);
    };
    let envelope_text = event.envelope_json();
    let verdict = matching::Matcher::new(&sub).and_then(|m| {
        matching::Candidate::new(&envelope_text)
            .map(|c| m.matches(&c))
            .map_err(|e| e.to_string())
    });
    let envelope: Value = serde_json::from_str(&envelope_text).unwrap_or(Value::Null);
    let events_match = sub
        .events
        .iter()
        .any(|p| matching::pattern_matches(p, &event.event));
    let filter_match = sub.filter.as_deref().map(|f| {
        matching::parse_filter(f)
            .map(|path| !path.query(&envelope).is_empty())
            .unwrap_or(false)
    });
    let transformed = match &sub.transform {
        None => None,
        Some(source) => {
            let run = crate::relay::deliver::transform(
                &state.scripts,
                &state.script_calls,
                &sub,
                source,
                &event,
                envelope.clone(),
            )
            .await;
            Some(run)
        }
    };
    let tried = html! {
        dl.fields {
            dt { "event" } dd { code { (event.id) } " " (event.event) }
            dt { "delivered?" } dd {
                @match &verdict {
                    Ok(true) => { (tag("delivered")) " it matches" }
                    Ok(false) => { (tag("filtered")) " it does not match" }
                    Err(e) => { (tag("failed")) " " (e) }
                }
            }
            dt { "event patterns" } dd { @if events_match { "match" } @else { "do not match" } }
            @if let Some(f) = filter_match { dt { "filter" } dd { @if f { "selects something" } @else { "selects nothing" } } }
        }
        @match &transformed {
            None => { h3 { "Body sent (no transform: the envelope)" } (pretty(&envelope)) }
            Some(run) => {
                @match &run.outcome {
                    Ok(None) | Ok(Some(Value::Null)) => { h3 { "Transform returned null: nothing would be sent" } }
                    Ok(Some(value)) => { h3 { "Body sent (the transform's result)" } (pretty(value)) }
                    Err(e) => { h3 { "Transform failed" } p.error { (e) } }
                }
                @if !run.console.is_empty() {
                    h3 { "Console" }
                    pre.console { @for line in &run.console { (line.level) ": " (line.message) "\n" } }
                }
            }
        }
    };
    render(&session, &state, &id, None, None, Some(tried), None).await
}
