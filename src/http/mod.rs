//! The HTTP surface: routes, shared state, and the JSON error shape.
//!
//! Routes are registered at the root and, when `HOOKRELAY_BASE_URL` has a path,
//! under that path too, so hookrelay works behind a proxy that strips the context
//! path and behind one that does not.
//!
//! Every request is logged once when answered (target `hookrelay::access`, at
//! info) and counted in `/metrics` by its route pattern, never its raw path, so
//! that ids in paths cannot multiply the series.

pub(crate) mod admin;
pub(crate) mod bridge;
mod connect;
pub mod error;
pub(crate) mod openapi;
pub mod ops;
mod sources;
pub(crate) mod stream;
pub(crate) mod subscriptions;
pub(crate) mod triggers;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{web, HttpMessage, HttpResponse};
use metrics_exporter_prometheus::PrometheusHandle;
use tracing_actix_web::{DefaultRootSpanBuilder, RequestId, RootSpanBuilder, TracingLogger};

use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::config::Config;
use crate::publisher::Publisher;
use crate::store::Store;
use crate::telemetry::catalog::{HTTP_DURATION, HTTP_REQUESTS, INTAKE};
use error::ApiError;

/// Everything a handler needs, shared by all workers.
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub auth: Authenticator,
    pub metrics: PrometheusHandle,
    /// Where committed events are handed for publishing.
    pub publisher: Publisher,
    /// Only looked at for its state, by `/readyz`.
    pub broker: Arc<Broker>,
    /// Rung when deliveries become due (a replay, a re-enabled subscription),
    /// so that this process's relay claims them at once.
    pub relay_wake: Arc<tokio::sync::Notify>,
    /// What request bodies being read and handled may take, together.
    pub bodies: crate::budget::ByteBudget,
    /// Verifies Forge Invocation Tokens; `/readyz` reports its keys.
    pub forge: Arc<crate::sources::forge::ForgeVerifier>,
    /// Admin-webhook sources' secrets, by source id, for a few seconds.
    pub source_secrets: sources::SecretCache,
    /// The expiry of the app system token last kept per Forge installation, so
    /// that each event does not write it again.
    pub forge_tokens: sources::TokenCache,
    /// The one script runtime: web triggers and subscription transforms.
    pub scripts: crate::script::Engine,
    /// The client sync triggers forward with: the deliveries' guard against
    /// private destinations, no redirects.
    pub forward_client: reqwest::Client,
    /// Sync runs in flight per trigger.
    pub trigger_runs: Arc<crate::triggers::InFlight>,
    /// Calls tenants' product APIs as the app (the proxy, reconciliation).
    pub product: crate::product::ProductClient,
    /// What scripts call out with.
    pub script_calls: crate::product::ScriptCalls,
    /// API keys whose use was written down lately.
    pub key_touches: bridge::KeyTouches,
    /// Wrong admin tokens given to the inspector's sign-in, per address.
    pub wrong_tokens: crate::ui::WrongTokens,
}

/// Each source's reasons for refusing credentials, registered at zero on
/// start-up so that `hookrelay_auth_failures_total` has its series from start.
pub const AUTH_FAILURE_REASONS: &[(&str, &[&str])] = &[
    ("connect", connect::AUTH_REASONS),
    ("forge", sources::FORGE_AUTH_REASONS),
    ("jira-admin", sources::ADMIN_AUTH_REASONS),
    // A web trigger's refusal is labelled with the trigger's auth type.
    ("webtrigger", &["key", "hmac-sha256", "standard-webhooks"]),
    // The admin API's bearer token, the inspector's sign-in, the proxy's keys.
    ("admin", admin::AUTH_REASONS),
    ("inspector", &["wrong_token", "paused"]),
    ("api_key", bridge::API_KEY_AUTH_REASONS),
];

/// Counts a source's request that ended in an error answer, by why. (Stored
/// and duplicate events are counted by `intake::accept`, where that is known.)
fn count_refused<T>(source: &'static str, result: &Result<T, ApiError>) {
    let Err(e) = result else { return };
    let outcome = match e {
        ApiError::Unauthorized(_) | ApiError::BadKey(_) | ApiError::Forbidden(_) => "unauthorized",
        ApiError::PayloadTooLarge(_) => "too_large",
        ApiError::Unavailable(_)
        | ApiError::RateLimited(..)
        | ApiError::BadGateway(_)
        | ApiError::GatewayTimeout(_) => "unavailable",
        ApiError::Internal => "error",
        _ => "invalid",
    };
    metrics::counter!(INTAKE, "source" => source, "outcome" => outcome).increment(1);
}

pub use bridge::key_touches;
pub use sources::{forge_token_cache, source_secret_cache};

/// The route table.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(ops::routes)
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
        .route("/forge/events", web::post().to(sources::forge_events))
        .route("/in/{id}", web::post().to(sources::admin_webhook))
        .configure(triggers::call_routes)
        .configure(bridge::proxy_routes)
        .configure(admin::routes)
        .configure(crate::ui::routes);
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
    let probes = web::Data::new(ops::Probes {
        store: state.store.clone(),
        broker: state.broker.clone(),
        metrics: state.metrics.clone(),
        forge: Some(state.forge.clone()),
    });
    let mut app = actix_web::App::new()
        .app_data(state)
        .app_data(probes)
        .app_data(web::PathConfig::default().error_handler(|_, _| ApiError::NotFound.into()))
        .default_service(web::to(|| async {
            Err::<actix_web::HttpResponse, _>(ApiError::NotFound)
        }));
    if !context_path.is_empty() {
        app = app.service(web::scope(&context_path).configure(routes));
    }
    app.configure(routes)
        .wrap_fn(access)
        .wrap(ErrorHandlers::new().default_handler(json_error))
        .wrap(TracingLogger::<RedactedRootSpan>::new())
}

/// The access log line, the HTTP metrics and the `X-Request-Id` answer header
/// of each request; inside [`TracingLogger`], which assigns the id and finds
/// the route. Both the server's app and the worker's probes use it.
pub(crate) fn access<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<B>, actix_web::Error>> + 'static
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
{
    let started = Instant::now();
    let method = req.method().clone();
    // Echo the request id tracing-actix-web assigned, so a caller can quote it.
    let request_id = req
        .extensions()
        .get::<tracing_actix_web::RequestId>()
        .map(|id| id.to_string());
    let route = req.extensions_mut().remove::<MatchedRoute>();
    let fut = srv.call(req);
    async move {
        let result = fut.await;
        let status = match &result {
            Ok(response) => response.status(),
            Err(e) => e.as_response_error().status_code(),
        };
        let route = route.map_or(Cow::Borrowed(UNMATCHED), |r| Cow::Owned(r.0));
        answered(&method, route, status, started, request_id.as_deref());
        let mut response = result?;
        // A web trigger's script may set its own, which is its answer.
        let name = HeaderName::from_static("x-request-id");
        if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
            if !response.headers().contains_key(&name) {
                response.headers_mut().insert(name, id);
            }
        }
        Ok(response)
    }
}

/// The route label of a request no route matched (a 404).
const UNMATCHED: &str = "unmatched";

/// The route pattern a request matched, found once by the root span and taken
/// by [`answered`].
struct MatchedRoute(String);

/// The access log line and the HTTP metrics of one answered request.
fn answered(
    method: &actix_web::http::Method,
    route: Cow<'static, str>,
    status: actix_web::http::StatusCode,
    started: Instant,
    request_id: Option<&str>,
) {
    let elapsed = started.elapsed();
    // Outside the request's span, so that the line carries its fields once.
    tracing::info!(
        target: "hookrelay::access",
        parent: None,
        method = %method,
        route = %route,
        status = status.as_u16(),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        request_id = request_id.unwrap_or(""),
        "request answered"
    );
    metrics::histogram!(HTTP_DURATION, "route" => route.clone()).record(elapsed.as_secs_f64());
    metrics::counter!(HTTP_REQUESTS, "route" => route, "status" => status_label(status))
        .increment(1);
}

/// The status code as a label, without an allocation for the common ones.
fn status_label(status: actix_web::http::StatusCode) -> Cow<'static, str> {
    const COMMON: &[(u16, &str)] = &[
        (200, "200"),
        (201, "201"),
        (202, "202"),
        (204, "204"),
        (302, "302"),
        (303, "303"),
        (304, "304"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (409, "409"),
        (413, "413"),
        (429, "429"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    let code = status.as_u16();
    match COMMON.iter().find(|(c, _)| *c == code) {
        Some((_, label)) => Cow::Borrowed(label),
        None => Cow::Owned(code.to_string()),
    }
}

/// The request's root span: tracing-actix-web's, with the values of query
/// parameters that carry credentials (`jwt`, `token`, `access_token`, ...) left
/// out of `http.target`. A token in the log could be replayed.
pub struct RedactedRootSpan;

impl RootSpanBuilder for RedactedRootSpan {
    fn on_request_start(request: &ServiceRequest) -> tracing::Span {
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.to_string())
            .unwrap_or_default();
        let route = request
            .match_pattern()
            .unwrap_or_else(|| UNMATCHED.to_string());
        let client_ip = request
            .connection_info()
            .realip_remote_addr()
            .unwrap_or("")
            .to_string();
        let span = tracing::info_span!(
            "HTTP request",
            http.method = %request.method(),
            http.route = %route,
            http.target = %redacted_target(request.uri()),
            http.client_ip = %client_ip,
            request_id = %request_id,
            http.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            exception.message = tracing::field::Empty,
            exception.details = tracing::field::Empty,
        );
        request.extensions_mut().insert(MatchedRoute(route));
        span
    }

    fn on_request_end<B: MessageBody>(
        span: tracing::Span,
        outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

/// Path and query with the value of every parameter that can carry a
/// credential replaced (the key is compared decoded, as extractors read it).
fn redacted_target(uri: &actix_web::http::Uri) -> String {
    match uri.query() {
        None => uri.path().to_string(),
        Some(query) => {
            let query: Vec<String> = query
                .split('&')
                .map(
                    |pair| match form_urlencoded::parse(pair.as_bytes()).next() {
                        Some((key, _)) if is_credential(&key) => {
                            let raw_key = pair.split_once('=').map_or(pair, |(k, _)| k);
                            format!("{raw_key}=[redacted]")
                        }
                        _ => pair.to_string(),
                    },
                )
                .collect();
            format!("{}?{}", uri.path(), query.join("&"))
        }
    }
}

/// Whether a query parameter's name is one a credential travels in: a JWT,
/// bearer or API token, a key, a secret, a password, a signature, an OAuth code.
/// Generous on purpose: a harmless value redacted costs a little readability,
/// a token logged can be replayed.
fn is_credential(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase().replace('-', "_");
    const EXACT: &[&str] = &[
        "jwt", "key", "sig", "code", "auth", "pass", "pwd", "session",
    ];
    const PART: &[&str] = &[
        "token",
        "secret",
        "password",
        "passwd",
        "api_key",
        "apikey",
        "access_key",
        "private_key",
        "signature",
        "credential",
        "authorization",
        "jwt",
    ];
    EXACT.contains(&key.as_str()) || PART.iter().any(|part| key.contains(part))
}

/// Any error answer that did not come from [`ApiError`] (actix's own 405, a bad
/// query string, ...) is rewritten into the same JSON shape.
fn json_error<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    // A web trigger's handler chose this answer, body and all.
    let handler_answer = res
        .response()
        .extensions()
        .get::<triggers::HandlerAnswer>()
        .is_some();
    // The inspector's pages answer errors as pages.
    let is_html = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_json || handler_answer || is_html {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let reason = status.canonical_reason().unwrap_or("error");
    let (req, _) = res.into_parts();
    let response = HttpResponse::build(status).json(serde_json::json!({
        "error": reason.to_ascii_lowercase().replace(' ', "_"),
        "detail": reason,
    }));
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, response).map_into_right_body(),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_redacted_from_the_logged_target() {
        let uri: actix_web::http::Uri = "/a/b?x=1&jwt=secret.token.here&%6Awt=again&y=jwt\
             &token=t1&access_token=t2&Api-Key=t3&client_secret=t4&sig=t5&code=t6&password\
             &tenant=acme&limit=5"
            .parse()
            .unwrap();
        assert_eq!(
            super::redacted_target(&uri),
            "/a/b?x=1&jwt=[redacted]&%6Awt=[redacted]&y=jwt\
             &token=[redacted]&access_token=[redacted]&Api-Key=[redacted]\
             &client_secret=[redacted]&sig=[redacted]&code=[redacted]&password=[redacted]\
             &tenant=acme&limit=5"
        );
    }
}
