//! Operational endpoints: liveness, readiness and Prometheus metrics.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;

/// The process is up and serving HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// The store answers (and, once a broker is configured, the broker): 200, or 503
/// naming what is down, so a load balancer stops sending traffic here.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store = match state.store.ping(Duration::from_secs(2)).await {
        Ok(()) => json!({"status": "up", "backend": state.store.backend()}),
        Err(e) => {
            tracing::warn!(error = ?e, "readiness: store unreachable");
            json!({"status": "down", "backend": state.store.backend()})
        }
    };
    let ready = store["status"] == "up";
    let body = json!({"status": if ready { "ready" } else { "not_ready" }, "store": store});
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
