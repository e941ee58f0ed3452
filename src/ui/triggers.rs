//! Web triggers: the list, the create and edit forms with the script editor,
//! a test run (a sample request through the stored script, showing its
//! response and console output, as Script Master does) and the invocation log.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

use super::layout::{csrf, json as pretty, notice, or_dash, shell, tag};
use super::{api, body, page, refused, refused_by, text, with_status, Session, UiError};
use crate::domain::{EventId, InvocationId, TriggerId};
use crate::http::admin::Admin;
use crate::http::error::ApiError;
use crate::http::triggers as handlers;
use crate::http::AppState;

const EXAMPLE: &str = "export default async function (request, context) {\n  console.log(request.method, request.body);\n  return { statusCode: 200, headers: { 'content-type': ['application/json'] }, body: JSON.stringify({ ok: true }) };\n}\n";

pub async fn list(session: Session, state: web::Data<AppState>) -> Result<HttpResponse, UiError> {
    let all = api(handlers::list(Admin::signed_in(&session), state).await).await?;
    let empty = Vec::new();
    let all = all["data"].as_array().unwrap_or(&empty);
    Ok(page(shell(
        &session,
        "Triggers",
        "triggers",
        html! {
            p { a href=(session.href("/admin/triggers/new")) { "New trigger" } }
            table #triggers {
                thead { tr { th { "Name" } th { "Mode" } th { "Auth" } th { "Methods" } th { "URL" } th { "State" } } }
                tbody {
                    @for t in all {
                        tr {
                            td { a href=(session.href(&format!("/admin/triggers/{}", text(&t["id"])))) { (text(&t["name"])) } }
                            td { (text(&t["mode"])) }
                            td { (text(&t["auth"]["type"])) }
                            td { (t["methods"].as_array().map(|m| m.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                            td { code { (text(&t["url"])) } }
                            td { @if t["enabled"] == true { (tag("enabled")) } @else { (tag("disabled")) } }
                        }
                    }
                    @if all.is_empty() { tr { td colspan="6" .muted { "No triggers yet." } } }
                }
            }
        },
    )))
}

#[derive(Deserialize, Default, Clone)]
pub struct TriggerForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    methods: String,
    #[serde(default)]
    mode: String,
    /// On creation only: changing it makes a new secret.
    #[serde(default)]
    auth: String,
    #[serde(default)]
    script: String,
    #[serde(default)]
    forward: String,
    #[serde(default)]
    timeout_ms: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tenant: String,
}

impl TriggerForm {
    fn from_view(v: &Value) -> Self {
        TriggerForm {
            csrf: String::new(),
            name: text(&v["name"]).into(),
            methods: v["methods"]
                .as_array()
                .map(|m| m.iter().map(text).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            mode: text(&v["mode"]).into(),
            auth: text(&v["auth"]["type"]).into(),
            script: text(&v["script"]).into(),
            forward: text(&v["forward"]).into(),
            timeout_ms: v["timeout_ms"]
                .as_u64()
                .map(|n| n.to_string())
                .unwrap_or_default(),
            description: text(&v["description"]).into(),
            tenant: text(&v["tenant"]).into(),
        }
    }

    /// The admin API's body: empty optional fields cleared (`null`).
    fn changes(&self, with_auth: bool) -> Result<Value, ApiError> {
        let optional = |s: &str| {
            let s = s.trim();
            if s.is_empty() {
                Value::Null
            } else {
                Value::String(s.to_string())
            }
        };
        let methods: Vec<&str> = self
            .methods
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        let mut changes = json!({
            "name": self.name.trim(),
            "methods": methods,
            "mode": self.mode.trim(),
            "script": optional(&self.script),
            "forward": optional(&self.forward),
            "description": optional(&self.description),
            "tenant": optional(&self.tenant),
        });
        if !self.timeout_ms.trim().is_empty() {
            let timeout: u64 = self.timeout_ms.trim().parse().map_err(|_| {
                ApiError::BadRequest("timeout must be a whole number of milliseconds".into())
            })?;
            changes["timeout_ms"] = json!(timeout);
        }
        if with_auth {
            changes["auth"] = json!({"type": self.auth.trim()});
        }
        Ok(changes)
    }
}

fn form(session: &Session, action: &str, f: &TriggerForm, creating: bool) -> Markup {
    html! {
        form.stacked #trigger-form method="post" action=(action) {
            (csrf(session))
            label { "Name" small { "Lower-case letters, digits, - and _" }
                input name="name" value=(f.name) required pattern="[a-z0-9][a-z0-9_-]{0,63}"; }
            label { "Methods" small { "Comma-separated, or *" } input name="methods" value=(f.methods); }
            label { "Mode"
                select name="mode" {
                    option value="sync" selected[f.mode == "sync"] { "sync: the script's response is the answer" }
                    option value="async" selected[f.mode == "async"] { "async: 202 at once, the script runs queued" }
                }
            }
            @if creating {
                label { "Authentication"
                    select name="auth" {
                        @for a in ["none", "key", "hmac-sha256", "standard-webhooks"] {
                            option value=(a) selected[f.auth == a] { (a) }
                        }
                    }
                }
            }
            label { "Script" small { "export default async function (request, context) { … }" }
                textarea.code name="script" rows="16" spellcheck="false" { (f.script) } }
            label { "Forward URL" small { "Instead of a script: where sync calls are forwarded" }
                input name="forward" value=(f.forward); }
            label { "Timeout (ms)" input name="timeout_ms" value=(f.timeout_ms) inputmode="numeric"; }
            label { "Tenant" small { "The client key context.app.fetch acts on" } input name="tenant" value=(f.tenant); }
            label { "Description" input name="description" value=(f.description); }
            button type="submit" { @if creating { "Create" } @else { "Save" } }
        }
    }
}

pub async fn new(session: Session) -> HttpResponse {
    let f = TriggerForm {
        methods: "POST".into(),
        mode: "sync".into(),
        auth: "key".into(),
        script: EXAMPLE.into(),
        ..TriggerForm::default()
    };
    new_page(&session, &f, None)
}

fn new_page(session: &Session, f: &TriggerForm, error: Option<&str>) -> HttpResponse {
    page(shell(
        session,
        "New trigger",
        "triggers",
        html! {
            (notice(None, error))
            (form(session, &session.href("/admin/triggers"), f, true))
        },
    ))
}

pub async fn create(
    session: Session,
    state: web::Data<AppState>,
    f: web::Form<TriggerForm>,
) -> Result<HttpResponse, UiError> {
    session.check(&f.csrf)?;
    let mut changes = match f.changes(true) {
        Ok(c) => c,
        Err(e) => return Ok(refused(new_page(&session, &f, Some(&e.to_string())))),
    };
    if let Some(object) = changes.as_object_mut() {
        object.retain(|_, v| !v.is_null());
    }
    match api(handlers::create(Admin::signed_in(&session), state.clone(), body(&changes)).await)
        .await
    {
        Ok(t) => {
            let secret = t["key"].as_str().or(t["secret"].as_str());
            let message = match secret {
                Some(s) => format!(
                    "Created. Callers authenticate with header {}: {s} (shown this once).",
                    text(&t["auth"]["header"])
                ),
                None => "Created.".to_string(),
            };
            render(
                &session,
                &state,
                text(&t["id"]),
                Some(&message),
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

async fn render(
    session: &Session,
    state: &web::Data<AppState>,
    id: &str,
    ok: Option<&str>,
    error: Option<&str>,
    tested: Option<Markup>,
    edited: Option<&TriggerForm>,
) -> Result<HttpResponse, UiError> {
    let t = api(handlers::show(
        Admin::signed_in(session),
        state.clone(),
        web::Path::from(id.to_string()),
    )
    .await)
    .await?;
    let invocations = api(handlers::invocations(
        Admin::signed_in(session),
        state.clone(),
        web::Path::from(id.to_string()),
        super::query(&[("limit", "20")])?,
    )
    .await)
    .await?;
    let here = session.href(&format!("/admin/triggers/{id}"));
    let empty = Vec::new();
    Ok(page(shell(
        session,
        &format!("Trigger {}", text(&t["name"])),
        "triggers",
        html! {
            (notice(ok, error))
            dl.fields {
                dt { "URL" } dd { code #trigger-url { (text(&t["url"])) } }
                dt { "mode" } dd { (text(&t["mode"])) }
                dt { "authentication" } dd { (text(&t["auth"]["type"])) @if let Some(h) = t["auth"]["header"].as_str() { " (header " code { (h) } ")" } }
                dt { "version" } dd { (t["version"]) }
            }
            h2 { "Test run" }
            p.muted { "Sends this request through the saved script (calls it makes to the product are real); nothing is stored." }
            form.stacked #test-form method="post" action={ (here) "/test" } {
                (csrf(session))
                label { "Method" input name="method" value="POST"; }
                label { "Path after the trigger's URL" input name="path" placeholder="/optional/sub/path"; }
                label { "Headers" small { "One `Name: value` per line" } textarea name="headers" rows="2" { "content-type: application/json" } }
                label { "Body" textarea.code name="body" rows="4" { "{\"hello\": \"world\"}" } }
                button type="submit" { "Run" }
            }
            @if let Some(tested) = tested { section #test-result { (tested) } }
            h2 { "Edit" }
            (form(session, &here, &edited.cloned().unwrap_or_else(|| TriggerForm::from_view(&t)), false))
            h2 { "Invocations" }
            table #invocations {
                thead { tr { th { "When" } th { "State" } th { "Status" } th { "Duration" } th { "Request" } th { "Response" } th { "Console" } } }
                tbody {
                    @for i in invocations["data"].as_array().unwrap_or(&empty) {
                        tr {
                            td { a href=(session.href(&format!("/admin/events/{}", text(&i["event_id"])))) { (text(&i["created_at"])) } }
                            td { (tag(text(&i["state"]))) @if let Some(e) = i["error"].as_str() { div.muted { (e) } } }
                            td { (or_dash(&i["status_code"])) }
                            td { @if let Some(ms) = i["duration_ms"].as_i64() { (ms) " ms" } }
                            td.preview { (short(&i["request"])) }
                            td.preview { (short(&i["response"])) }
                            td.preview { (short(&i["console"])) }
                        }
                    }
                }
            }
        },
    )))
}

fn short(v: &Value) -> String {
    if v.is_null() {
        return String::new();
    }
    v.to_string().chars().take(160).collect()
}

pub async fn update(
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
    f: web::Form<TriggerForm>,
) -> Result<HttpResponse, UiError> {
    session.check(&f.csrf)?;
    let answer = match f.changes(false) {
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
    let page = session.href(&format!("/admin/triggers/{id}"));
    super::edited(answer, page, |why| async move {
        render(&session, &state, &id, None, Some(&why), None, Some(&f)).await
    })
    .await
}

#[derive(Deserialize)]
pub struct TestForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    method: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    headers: String,
    #[serde(default)]
    body: String,
}

/// `POST /admin/triggers/{id}/test`: runs the saved script on the sample
/// request and shows what it answered and logged.
pub async fn test_run(
    session: Session,
    state: web::Data<AppState>,
    id: web::Path<String>,
    f: web::Form<TestForm>,
) -> Result<HttpResponse, UiError> {
    session.check(&f.csrf)?;
    let trigger = state
        .store
        .trigger(&TriggerId(id.to_string()))
        .await?
        .ok_or(ApiError::NotFound)?;
    let Some(source) = &trigger.script else {
        return render(
            &session,
            &state,
            &id,
            None,
            Some("This trigger has no script to run."),
            None,
            None,
        )
        .await
        .map(refused);
    };
    let mut headers = actix_web::http::header::HeaderMap::new();
    for line in f.headers.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let parsed = line.split_once(':').and_then(|(name, value)| {
            Some((
                actix_web::http::header::HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
                actix_web::http::header::HeaderValue::from_str(value.trim()).ok()?,
            ))
        });
        match parsed {
            Some((name, value)) => headers.append(name, value),
            None => {
                let why = format!("header line `{line}` is not `Name: value`");
                return render(&session, &state, &id, None, Some(&why), None, None)
                    .await
                    .map(refused);
            }
        }
    }
    let method = match f.method.trim() {
        "" => "POST".to_string(),
        m => m.to_ascii_uppercase(),
    };
    let (path, query) = f.path.trim().split_once('?').unwrap_or((f.path.trim(), ""));
    let path = format!("/x1/{}{}", trigger.id, path);
    let request = crate::triggers::RequestObject::new(
        &method,
        &headers,
        f.body.as_bytes(),
        &path,
        query,
        None,
    )
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let Some(permit) = state.scripts.reserve() else {
        return render(
            &session,
            &state,
            &id,
            None,
            Some("The script engine is busy; try again."),
            None,
            None,
        )
        .await
        .map(|page| {
            let mut page = with_status(page, StatusCode::SERVICE_UNAVAILABLE);
            page.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from_static("1"),
            );
            page
        });
    };
    let bridge = state.script_calls.bridge(
        trigger.tenant.clone(),
        format!("a test run of trigger `{}`", trigger.name),
    );
    let started = Instant::now();
    let run = crate::triggers::run_script(
        permit,
        &trigger,
        source,
        serde_json::to_value(&request).unwrap_or_default(),
        EventId::new(),
        InvocationId::new(),
        bridge,
    )
    .await;
    let took = started.elapsed().as_millis();
    tracing::info!(trigger_id = %trigger.id, ok = run.outcome.is_ok(), "trigger test run");
    let tested = html! {
        p.muted { "Ran in " (took) " ms." }
        @match &run.outcome {
            Ok(value) => {
                h3 { "Response" }
                @match crate::triggers::HandlerResponse::from_value(value.as_ref()) {
                    Ok(answer) => {
                        dl.fields {
                            dt { "status" } dd #test-status { (answer.status) }
                            @for (name, value) in &answer.headers { dt { (name) } dd { (value) } }
                        }
                        pre #test-body { (answer.body) }
                    }
                    Err(why) => { p.error { "Not a valid response: " (why) } }
                }
                @if let Some(value) = value { details { summary { "As returned" } (pretty(value)) } }
            }
            Err(e) => { h3 { "Failed" } p.error #test-error { (e) } }
        }
        h3 { "Console" }
        @if run.console.is_empty() { p.muted { "Nothing logged." } }
        @else { pre #test-console { @for line in &run.console { (line.level) ": " (line.message) "\n" } } }
    };
    render(&session, &state, &id, None, None, Some(tested), None).await
}
