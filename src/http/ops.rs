//! Operational endpoints: liveness, readiness and Prometheus metrics.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::broker::BrokerStatus;

/// The process is up and serving HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// The store answers and the broker is connected: 200, or 503 naming what is
/// down. Intake keeps working while only the broker is down (events wait in the
/// outbox); the 503 is for operators and orchestrators to see it.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store = match state.store.ping(Duration::from_secs(2)).await {
        Ok(()) => json!({"status": "up", "backend": state.store.backend()}),
        Err(e) => {
            tracing::warn!(error = ?e, "readiness: store unreachable");
            json!({"status": "down", "backend": state.store.backend()})
        }
    };
    let broker_status = state.broker.status().borrow().clone();
    let broker = match &broker_status {
        BrokerStatus::Up => json!({"status": "up", "kind": state.broker.kind()}),
        BrokerStatus::Connecting => json!({"status": "connecting", "kind": state.broker.kind()}),
        BrokerStatus::Down(reason) => {
            json!({"status": "down", "kind": state.broker.kind(), "reason": reason})
        }
    };
    let ready = store["status"] == "up" && broker_status.is_up();
    // Forge keys are reported, not required: Forge Remote is one source of
    // several, and a JWKS that cannot be fetched answers Forge 503 on its own.
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": store,
        "broker": broker,
        "forge": state.forge.status().await,
    });
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
