//! Operational endpoints: liveness, readiness and Prometheus metrics. Served by
//! `serve` beside everything else, and by `worker` on their own
//! ([`ops_app`]), from the same handlers.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use super::error::ApiError;
use crate::broker::{Broker, BrokerStatus};
use crate::sources::forge::ForgeVerifier;
use crate::store::Store;

/// What the probes look at: a few handles, shared with the rest of the process.
pub struct Probes {
    pub store: Store,
    pub broker: Arc<Broker>,
    pub metrics: PrometheusHandle,
    /// Reported by `/readyz` where Forge Remote is served (`serve` only).
    pub forge: Option<Arc<ForgeVerifier>>,
}

/// The probe routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

/// The probes alone, for a process that serves nothing else (`worker`).
pub fn ops_app(
    probes: web::Data<Probes>,
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    actix_web::App::new()
        .app_data(probes)
        .configure(routes)
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(ApiError::NotFound)
        }))
        .wrap_fn(super::access)
        .wrap(tracing_actix_web::TracingLogger::<super::RedactedRootSpan>::new())
}

/// The process is up and serving HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// The store answers and the broker is connected: 200, or 503 naming what is
/// down. Intake keeps working while only the broker is down (events wait in the
/// outbox); the 503 is for operators and orchestrators to see it.
pub async fn readyz(probes: web::Data<Probes>) -> HttpResponse {
    let store = match probes.store.ping(Duration::from_secs(2)).await {
        Ok(()) => json!({"status": "up", "backend": probes.store.backend()}),
        Err(e) => {
            tracing::warn!(error = ?e, "readiness: store unreachable");
            json!({"status": "down", "backend": probes.store.backend()})
        }
    };
    let broker_status = probes.broker.status().borrow().clone();
    let broker = match &broker_status {
        BrokerStatus::Up => json!({"status": "up", "kind": probes.broker.kind()}),
        BrokerStatus::Connecting => json!({"status": "connecting", "kind": probes.broker.kind()}),
        BrokerStatus::Down(reason) => {
            json!({"status": "down", "kind": probes.broker.kind(), "reason": reason})
        }
    };
    let ready = store["status"] == "up" && broker_status.is_up();
    let mut body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": store,
        "broker": broker,
    });
    // Forge keys are reported, not required: Forge Remote is one source of
    // several, and a JWKS that cannot be fetched answers Forge 503 on its own.
    if let Some(forge) = &probes.forge {
        body["forge"] = forge.status().await;
    }
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub async fn metrics(probes: web::Data<Probes>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(probes.metrics.render())
}
