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
use actix_web::{web, HttpResponse, ResponseError};
use maud::Markup;
use serde_json::Value;

use crate::http::error::ApiError;

pub use session::{wrong_tokens, Session, WrongTokens};

/// The inspector's routes, under `/admin/` (after the admin API's scope).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin", web::get().to(session::to_overview))
        .route("/admin/", web::get().to(overview::page))
        .route("/admin/overview/panel", web::get().to(overview::panel))
        .route("/admin/login", web::get().to(session::login_form))
        .route("/admin/login", web::post().to(session::login))
        .route("/admin/logout", web::post().to(session::logout))
        .route("/admin/static/{file}", web::get().to(layout::asset))
        .route("/admin/tail", web::get().to(events::tail))
        .route("/admin/tail/stream", web::get().to(events::tail_stream))
        .route("/admin/events", web::get().to(events::list))
        .route("/admin/events/{id}", web::get().to(events::show))
        .route("/admin/events/{id}/replay", web::post().to(events::replay))
        .route("/admin/subscriptions", web::get().to(subscriptions::list))
        .route(
            "/admin/subscriptions",
            web::post().to(subscriptions::create),
        )
        .route(
            "/admin/subscriptions/new",
            web::get().to(subscriptions::new),
        )
        .route(
            "/admin/subscriptions/{id}",
            web::get().to(subscriptions::show),
        )
        .route(
            "/admin/subscriptions/{id}",
            web::post().to(subscriptions::update),
        )
        .route(
            "/admin/subscriptions/{id}/enabled",
            web::post().to(subscriptions::set_enabled),
        )
        .route(
            "/admin/subscriptions/{id}/replay",
            web::post().to(subscriptions::replay),
        )
        .route(
            "/admin/subscriptions/{id}/try",
            web::post().to(subscriptions::try_it),
        )
        .route("/admin/triggers", web::get().to(triggers::list))
        .route("/admin/triggers", web::post().to(triggers::create))
        .route("/admin/triggers/new", web::get().to(triggers::new))
        .route("/admin/triggers/{id}", web::get().to(triggers::show))
        .route("/admin/triggers/{id}", web::post().to(triggers::update))
        .route(
            "/admin/triggers/{id}/test",
            web::post().to(triggers::test_run),
        )
        .route("/admin/tenants", web::get().to(tenants::list));
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
            Ok(refused(again(e.to_string()).await?))
        }
        Err(e) => Err(e),
    }
}

/// A form shown again with why it was refused.
fn refused(mut response: HttpResponse) -> HttpResponse {
    *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    response
}

/// A text field of a JSON value, or "".
fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}
