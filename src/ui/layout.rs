//! The page shell, the sign-in form, the compiled-in assets and the small
//! pieces pages share (a CSRF field, formatted JSON, an SVG bar chart).

use actix_web::{web, HttpResponse};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

use super::Session;

const CSS: &str = include_str!("static/ui.css");
const JS: &str = include_str!("static/ui.js");

/// `GET /admin/static/{file}`: the stylesheet and the script, cached for an
/// hour (they change only with the binary).
pub async fn asset(file: web::Path<String>) -> HttpResponse {
    let (body, kind) = match file.as_str() {
        "ui.css" => (CSS, "text/css; charset=utf-8"),
        "ui.js" => (JS, "text/javascript; charset=utf-8"),
        _ => {
            return HttpResponse::NotFound()
                .content_type("text/html; charset=utf-8")
                .body(bare("Not found", "There is no such file.").into_string())
        }
    };
    HttpResponse::Ok()
        .content_type(kind)
        .insert_header(("Cache-Control", "public, max-age=3600"))
        .body(body)
}

fn head(base: &str, title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · hookrelay" }
            link rel="stylesheet" href={ (base) "/admin/static/ui.css" };
            script src={ (base) "/admin/static/ui.js" } defer {}
        }
    }
}

/// A page of the signed-in inspector: navigation, sign-out, `body`.
pub fn shell(session: &Session, title: &str, current: &str, body: Markup) -> Markup {
    let nav = [
        ("overview", "/admin/", "Overview"),
        ("tail", "/admin/tail", "Live tail"),
        ("events", "/admin/events", "Events"),
        ("subscriptions", "/admin/subscriptions", "Subscriptions"),
        ("triggers", "/admin/triggers", "Triggers"),
        ("tenants", "/admin/tenants", "Tenants"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(&session.base, title))
            body {
                header.top {
                    a.brand href=(session.href("/admin/")) { "hookrelay" }
                    nav {
                        @for (key, path, label) in nav {
                            a href=(session.href(path)) class=[(key == current).then_some("current")] { (label) }
                        }
                    }
                    form.logout method="post" action=(session.href("/admin/logout")) {
                        (csrf(session))
                        button type="submit" { "Sign out" }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page outside the session: errors.
pub fn bare(title: &str, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (title) } }
            body { main { h1 { (title) } p.error { (message) } } }
        }
    }
}

pub fn login(base: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(base, "Sign in"))
            body.login {
                main {
                    h1 { "hookrelay" }
                    @if let Some(error) = error { p.error role="alert" { (error) } }
                    form method="post" action={ (base) "/admin/login" } {
                        label for="token" { "Admin token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        button type="submit" { "Sign in" }
                    }
                    p.hint { "The value of HOOKRELAY_ADMIN_TOKEN." }
                }
            }
        }
    }
}

/// The hidden field every state-changing form carries.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A banner for what a form did or why it was refused.
pub fn notice(ok: Option<&str>, error: Option<&str>) -> Markup {
    html! {
        @if let Some(ok) = ok { p.ok role="status" { (ok) } }
        @if let Some(error) = error { p.error role="alert" { (error) } }
    }
}

/// JSON, indented, in a `<pre>`.
pub fn json(value: &Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    html! { pre.json { (text) } }
}

/// A cell for a value that may be missing.
pub fn or_dash(value: &Value) -> Markup {
    match value {
        Value::Null => html! { span.muted { "–" } },
        Value::String(s) => html! { (s) },
        other => html! { (other.to_string()) },
    }
}

/// A state or outcome as a coloured tag.
pub fn tag(value: &str) -> Markup {
    let class = match value {
        "delivered" | "completed" | "installed" | "enabled" | "ok" | "up" => "tag good",
        "pending" | "retry" | "filtered" | "running" => "tag wait",
        "" => "tag",
        _ => "tag bad",
    };
    html! { span class=(class) { (value) } }
}

/// Bars for `points` (label, value), oldest first: a small SVG chart.
pub fn bars(points: &[(String, i64)], caption: &str) -> Markup {
    const W: usize = 600;
    const H: i64 = 120;
    let max = points.iter().map(|p| p.1).max().unwrap_or(0).max(1);
    let step = W / points.len().max(1);
    let mut svg = format!(
        r#"<svg viewBox="0 0 {W} {H}" preserveAspectRatio="none" role="img" aria-label="{caption}" class="chart">"#
    );
    for (i, (label, value)) in points.iter().enumerate() {
        let h = value * (H - 10) / max;
        let x = i * step;
        svg.push_str(&format!(
            r#"<rect x="{x}" y="{}" width="{}" height="{h}"><title>{} {value}</title></rect>"#,
            H - h,
            step.saturating_sub(1).max(1),
            maud::html! { (label) }.into_string(),
        ));
    }
    svg.push_str("</svg>");
    html! { figure { (PreEscaped(svg)) figcaption { (caption) } } }
}
