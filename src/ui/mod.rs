//! The inspector: a server-rendered web UI under `/admin/` over the same
//! handlers as the admin API.
//!
//! Pages are HTML made with maud; the little script they use (the live tail's
//! `EventSource`, refreshing panels, pausing) and the stylesheet are compiled
//! into the binary, so the UI has no build step and works offline. Every page
//! needs a [`Session`]; every form that changes something carries the
//! session's CSRF token. Reads and writes go through the admin API's own
//! handlers (called in-process with [`Admin::signed_in`]), so the UI can do
//! nothing the API cannot and checks input exactly as the API does.
//!
//! [`Admin::signed_in`]: crate::http::admin::Admin::signed_in

mod events;
mod layout;
mod overview;
mod session;
mod subscriptions;
mod tenants;
mod triggers;

use actix_web::http::StatusCode;
use actix_web::{middleware, web, HttpResponse, ResponseError};
use maud::Markup;
use serde_json::Value;

use crate::http::error::ApiError;

pub use session::{wrong_tokens, Session, WrongTokens};

/// The inspector's routes, under `/admin/` (after the admin API's scope).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin")
            .wrap(security_headers())
            .route("", web::get().to(session::to_overview))
            .route("/", web::get().to(overview::page))
            .route("/overview/panel", web::get().to(overview::panel))
            .route("/login", web::get().to(session::login_form))
            .route("/login", web::post().to(session::login))
            .route("/logout", web::post().to(session::logout))
            .route("/static/{file}", web::get().to(layout::asset))
            .route("/tail", web::get().to(events::tail))
            .route("/tail/stream", web::get().to(events::tail_stream))
            .route("/events", web::get().to(events::list))
            .route("/events/{id}", web::get().to(events::show))
            .route("/events/{id}/replay", web::post().to(events::replay))
            .route("/subscriptions", web::get().to(subscriptions::list))
            .route("/subscriptions", web::post().to(subscriptions::create))
            .route("/subscriptions/new", web::get().to(subscriptions::new))
            .route("/subscriptions/{id}", web::get().to(subscriptions::show))
            .route("/subscriptions/{id}", web::post().to(subscriptions::update))
            .route(
                "/subscriptions/{id}/enabled",
                web::post().to(subscriptions::set_enabled),
            )
            .route(
                "/subscriptions/{id}/replay",
                web::post().to(subscriptions::replay),
            )
            .route(
                "/subscriptions/{id}/try",
                web::post().to(subscriptions::try_it),
            )
            .route("/triggers", web::get().to(triggers::list))
            .route("/triggers", web::post().to(triggers::create))
            .route("/triggers/new", web::get().to(triggers::new))
            .route("/triggers/{id}", web::get().to(triggers::show))
            .route("/triggers/{id}", web::post().to(triggers::update))
            .route("/triggers/{id}/test", web::post().to(triggers::test_run))
            .route("/tenants", web::get().to(tenants::list)),
    );
}

/// Headers on every inspector answer: the pages load only their own script,
/// stylesheet and stream (no inline script, so injected markup cannot run),
/// are never framed (no clickjacking) and keep their URLs to themselves.
fn security_headers() -> middleware::DefaultHeaders {
    middleware::DefaultHeaders::new()
        .add((
            "Content-Security-Policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ))
        .add(("X-Frame-Options", "DENY"))
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("Referrer-Policy", "same-origin"))
}

/// Why a page could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// No session (or an expired one): to the sign-in form.
    #[error("sign in first")]
    SignIn(String),
    /// A form without its session's CSRF token.
    #[error(
        "this form has expired or did not come from this inspector: reload the page and try again"
    )]
    Csrf,
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<crate::store::StoreError> for UiError {
    fn from(e: crate::store::StoreError) -> Self {
        UiError::Api(e.into())
    }
}

impl ResponseError for UiError {
    fn status_code(&self) -> StatusCode {
        match self {
            UiError::SignIn(_) => StatusCode::SEE_OTHER,
            UiError::Csrf => StatusCode::FORBIDDEN,
            UiError::Api(e) => e.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            UiError::SignIn(login) => HttpResponse::SeeOther()
                .insert_header(("Location", login.as_str()))
                .finish(),
            e => HttpResponse::build(e.status_code())
                .content_type("text/html; charset=utf-8")
                .body(layout::bare("hookrelay", &e.to_string()).into_string()),
        }
    }
}

/// A page answer.
fn page(markup: Markup) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(markup.into_string())
}

/// After a form: to `location` (303, so a reload does not post again).
fn see_other(location: String) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header(("Location", location))
        .finish()
}

/// The JSON an admin API handler answered with.
async fn api(answer: Result<HttpResponse, ApiError>) -> Result<Value, UiError> {
    let body = actix_web::body::to_bytes(answer?.into_body())
        .await
        .map_err(|_| ApiError::Internal)?;
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body).map_err(|_| UiError::Api(ApiError::Internal))
}

/// A request body for an admin API handler.
fn body(value: &Value) -> crate::http::admin::AdminBody {
    crate::http::admin::AdminBody(web::Bytes::from(value.to_string()))
}

/// `pairs` as a query string, leaving out empty values.
fn query_string<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            pairs
                .iter()
                .filter(|(_, v)| !v.as_ref().is_empty())
                .map(|(k, v)| (k.as_ref(), v.as_ref())),
        )
        .finish()
}

/// A query for an admin API handler's query extractor.
fn query<T: serde::de::DeserializeOwned>(pairs: &[(&str, &str)]) -> Result<web::Query<T>, UiError> {
    web::Query::from_query(&query_string(pairs))
        .map_err(|e| UiError::Api(ApiError::BadRequest(e.to_string())))
}

/// Where an edit form's post leads: back to `page` when the API took the
/// change; the form's page again, with why, when it refused it.
async fn edited<Fut>(
    answer: Result<HttpResponse, ApiError>,
    page: String,
    again: impl FnOnce(String) -> Fut,
) -> Result<HttpResponse, UiError>
where
    Fut: std::future::Future<Output = Result<HttpResponse, UiError>>,
{
    match api(answer).await {
        Ok(_) => Ok(see_other(page)),
        Err(UiError::Api(e)) if !matches!(e, ApiError::NotFound) => {
            Ok(refused_by(again(e.to_string()).await?, &e))
        }
        Err(e) => Err(e),
    }
}

/// A form shown again with why it was refused.
fn refused(response: HttpResponse) -> HttpResponse {
    with_status(response, StatusCode::UNPROCESSABLE_ENTITY)
}

/// A page shown again with why the admin API did not do what was asked: 422
/// when it refused the input, its own status when it failed (a store that is
/// away is a 503, not a refusal), so nothing that failed is answered 2xx.
fn refused_by(response: HttpResponse, e: &ApiError) -> HttpResponse {
    let status = e.status_code();
    if status.is_server_error() {
        with_status(response, status)
    } else {
        refused(response)
    }
}

fn with_status(mut response: HttpResponse, status: StatusCode) -> HttpResponse {
    *response.status_mut() = status;
    response
}

/// A text field of a JSON value, or "".
fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}
