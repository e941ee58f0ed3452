//! Logging and metrics set-up.
//!
//! Logs go to stderr through `tracing`: human-readable lines by default, one JSON
//! object per line with `HOOKRELAY_LOG_FORMAT=json`. The level comes from `HOOKRELAY_LOG` or
//! `RUST_LOG` (default `info`).
//!
//! The Prometheus recorder is the one process-wide object here: the `metrics`
//! facade has a single global recorder by design. It is installed once, on first
//! use ([`metrics_handle`]), and every `Application` or `Worker` in the process
//! renders from it. [`catalog`] names every series; [`spawn_sampler`] keeps the
//! gauges read from the store up to date.

pub mod catalog;

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global tracing subscriber. Call once, from `main`.
pub fn init_tracing(format: LogFormat) {
    let filter = std::env::var("HOOKRELAY_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let json = format == LogFormat::Json;
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    if let Err(e) = result {
        eprintln!("hookrelay: logging was already set up: {e}");
    }
}

/// The process's Prometheus recorder, installed on first call with every
/// series described and, where its labels are known, present at zero. Both
/// `serve` and `worker` render `/metrics` from this handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = histogram_buckets().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "histogram buckets refused; histograms become summaries");
                PrometheusBuilder::new()
            });
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            catalog::describe_and_register();
            handle
        })
        .clone()
}

/// Every histogram with its buckets, so that none is rendered as a summary
/// (summaries cannot be aggregated across processes).
fn histogram_buckets() -> Result<PrometheusBuilder, BuildError> {
    let mut builder = PrometheusBuilder::new();
    for series in catalog::SERIES {
        if series.kind == catalog::Kind::Histogram {
            let matcher = Matcher::Full(series.name.to_string());
            builder = builder.set_buckets_for_metric(matcher, catalog::buckets(series.name))?;
        }
    }
    Ok(builder)
}

/// How often the gauges read from the store are refreshed. Each read is one
/// statement, so this keeps their cost at a few queries a minute per process.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Starts refreshing the store's gauges (outbox backlog and age, deliveries due
/// and given up on, disabled subscriptions, pool use) every few seconds, and the
/// recorder's upkeep. It stops when the returned guard is dropped.
pub fn spawn_sampler(store: crate::store::Store) -> DropGuard {
    // The pools' gauges are there from the start: reading them costs no query.
    sample_pools(&store);
    let stop = CancellationToken::new();
    tokio::spawn(sample(store, metrics_handle(), stop.clone()));
    stop.drop_guard()
}

fn sample_pools(store: &crate::store::Store) {
    use catalog::{DB_POOL_CONNECTIONS, DB_POOL_MAX};
    for pool in store.pool_stats() {
        metrics::gauge!(DB_POOL_CONNECTIONS, "pool" => pool.name, "state" => "in_use")
            .set(pool.in_use);
        metrics::gauge!(DB_POOL_CONNECTIONS, "pool" => pool.name, "state" => "idle").set(pool.idle);
        metrics::gauge!(DB_POOL_MAX, "pool" => pool.name).set(pool.max);
    }
}

async fn sample(store: crate::store::Store, handle: PrometheusHandle, stop: CancellationToken) {
    use catalog::*;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Without a scrape, histogram samples would pile up until the next one.
        handle.run_upkeep();
        sample_pools(&store);
        let now = crate::domain::now_millis();
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            read = tokio::time::timeout(SAMPLE_EVERY, store.ops_stats(now)) => read,
        };
        match read {
            Ok(Ok(stats)) => {
                metrics::gauge!(OUTBOX_BACKLOG).set(stats.outbox_len as f64);
                let age = stats
                    .outbox_oldest
                    .and_then(|at| (now - at).to_std().ok())
                    .unwrap_or_default();
                metrics::gauge!(OUTBOX_OLDEST_AGE).set(age.as_secs_f64());
                metrics::gauge!(DELIVERIES_DUE).set(stats.deliveries_due as f64);
                metrics::gauge!(DELIVERIES_DEAD).set(stats.deliveries_dead as f64);
                metrics::gauge!(SUBSCRIPTIONS_DISABLED).set(stats.subscriptions_disabled as f64);
            }
            // The gauges keep their last values; /readyz reports the store.
            Ok(Err(e)) => tracing::debug!(error = ?e, "metrics: cannot read the store's numbers"),
            Err(_) => tracing::debug!("metrics: reading the store's numbers timed out"),
        }
    }
}
