//! The HTTP surface: routes, shared state, and the JSON error shape.
//!
//! Routes are registered at the root and, when `HOOKRELAY_BASE_URL` has a path,
//! under that path too, so hookrelay works behind a proxy that strips the context
//! path and behind one that does not.

mod admin;
mod connect;
pub mod error;
mod ops;

use std::sync::Arc;

use actix_web::dev::Service;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpMessage};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::store::Store;
use error::ApiError;

/// Everything a handler needs, shared by all workers.
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub auth: Authenticator,
    pub metrics: PrometheusHandle,
}

/// The route table.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(ops::healthz))
        .route("/readyz", web::get().to(ops::readyz))
        .route("/metrics", web::get().to(ops::metrics))
        .route(
            "/atlassian-connect.json",
            web::get().to(connect::default_descriptor),
        )
        .route(
            "/{product}/atlassian-connect.json",
            web::get().to(connect::descriptor_for),
        )
        .route(
            "/{product}/lifecycle/{callback}",
            web::post().to(connect::lifecycle),
        )
        .route(
            "/{product}/events/{event}",
            web::post().to(connect::webhook),
        )
        .configure(admin::routes);
}

/// Builds the actix `App` for `state`; used by the server and nothing else, so
/// tests exercise exactly what runs.
pub fn app(
    state: web::Data<AppState>,
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let context_path = state.config.context_path.clone();
    let mut app = actix_web::App::new()
        .app_data(state)
        .app_data(web::PathConfig::default().error_handler(|_, _| ApiError::NotFound.into()))
        .default_service(web::to(|| async {
            Err::<actix_web::HttpResponse, _>(ApiError::NotFound)
        }));
    if !context_path.is_empty() {
        app = app.service(web::scope(&context_path).configure(routes));
    }
    app.configure(routes)
        .wrap_fn(|req, srv| {
            // Echo the request id tracing-actix-web assigned, so a caller can quote it.
            let request_id = req
                .extensions()
                .get::<tracing_actix_web::RequestId>()
                .map(|id| id.to_string());
            let fut = srv.call(req);
            async move {
                let mut response = fut.await?;
                if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
                    response
                        .headers_mut()
                        .insert(HeaderName::from_static("x-request-id"), id);
                }
                Ok(response)
            }
        })
        .wrap(tracing_actix_web::TracingLogger::default())
}
