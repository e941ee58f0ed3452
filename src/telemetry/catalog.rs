//! Every series `/metrics` exports: its name, its help text, its histogram
//! buckets, and the label values known in advance. Code that records a series
//! names it by the constant here, so that a series is renamed in one place and
//! the README's list can be checked against [`SERIES`].
//!
//! Names follow Prometheus conventions: the `hookrelay_` prefix, `_total` on
//! counters, base units (`_seconds`). Labelled series whose label values are
//! known up front are registered at zero on start-up, so that a dashboard or an
//! alert sees `0` rather than no data before the first event.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

pub const BUILD_INFO: &str = "hookrelay_build_info";

pub const HTTP_REQUESTS: &str = "hookrelay_http_requests_total";
pub const HTTP_DURATION: &str = "hookrelay_http_request_duration_seconds";

pub const INTAKE: &str = "hookrelay_intake_requests_total";
pub const INTAKE_BUSY: &str = "hookrelay_intake_busy_total";
pub const AUTH_FAILURES: &str = "hookrelay_auth_failures_total";
pub const LIFECYCLE: &str = "hookrelay_lifecycle_total";

pub const OUTBOX_BACKLOG: &str = "hookrelay_outbox_backlog";
pub const OUTBOX_OLDEST_AGE: &str = "hookrelay_outbox_oldest_age_seconds";
pub const PUBLISHES: &str = "hookrelay_publishes_total";
pub const PUBLISH_CONFIRMS: &str = "hookrelay_publish_confirms_total";
pub const PUBLISH_DELAY: &str = "hookrelay_publish_delay_seconds";
pub const BROKER_UP: &str = "hookrelay_broker_up";
pub const BROKER_RECONNECTS: &str = "hookrelay_broker_reconnects_total";

pub const DELIVERY_ATTEMPTS: &str = "hookrelay_delivery_attempts_total";
pub const DELIVERY_DURATION: &str = "hookrelay_delivery_duration_seconds";
pub const DELIVERIES_DUE: &str = "hookrelay_deliveries_due";
pub const DELIVERIES_DEAD: &str = "hookrelay_deliveries_dead";
pub const SUBSCRIPTIONS_DISABLED: &str = "hookrelay_subscriptions_disabled";

pub const TRIGGER_INVOCATIONS: &str = "hookrelay_trigger_invocations_total";
pub const SCRIPT_RUNS: &str = "hookrelay_script_runs_total";
pub const SCRIPT_DURATION: &str = "hookrelay_script_run_duration_seconds";
pub const SCRIPT_ACTIVE: &str = "hookrelay_script_runs_active";
pub const SCRIPT_CAPACITY: &str = "hookrelay_script_capacity";

pub const DB_POOL_CONNECTIONS: &str = "hookrelay_db_pool_connections";
pub const DB_POOL_MAX: &str = "hookrelay_db_pool_max_connections";
pub const DB_POOL_TIMEOUTS: &str = "hookrelay_db_pool_timeouts_total";
pub const STORE_BATCH_SIZE: &str = "hookrelay_store_batch_size";

pub const BRIDGE_CALLS: &str = "hookrelay_bridge_calls_total";
pub const BRIDGE_DURATION: &str = "hookrelay_bridge_call_duration_seconds";
pub const PROXY_REQUESTS: &str = "hookrelay_proxy_requests_total";
pub const RECONCILE_RECOVERED: &str = "hookrelay_reconcile_recovered_total";

/// Series whose label values are known only once they are used (a trigger's
/// name, a status code, a route, a batched write): they appear with their first
/// sample. Every other series is present from start-up.
pub const PRESENT_WHEN_USED: &[&str] = &[
    HTTP_REQUESTS,
    HTTP_DURATION,
    TRIGGER_INVOCATIONS,
    PROXY_REQUESTS,
    STORE_BATCH_SIZE,
];

/// What kind of series a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported series: name, kind, help, label names.
#[derive(Debug)]
pub struct Series {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

const fn series(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Series {
    Series {
        name,
        kind,
        help,
        labels,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// Every series, in the order the README lists them.
pub const SERIES: &[Series] = &[
    series(
        BUILD_INFO,
        Gauge,
        &["version"],
        "Always 1; the label carries the running version.",
    ),
    series(
        HTTP_REQUESTS,
        Counter,
        &["route", "status"],
        "HTTP requests answered, by matched route pattern and status code.",
    ),
    series(
        HTTP_DURATION,
        Histogram,
        &["route"],
        "Time from request received to response ready, by matched route pattern.",
    ),
    series(
        INTAKE,
        Counter,
        &["source", "outcome"],
        "Inbound events by source and outcome: stored, duplicate (already stored), or why refused.",
    ),
    series(
        INTAKE_BUSY,
        Counter,
        &[],
        "Requests refused with 503 because request bodies in memory were at their budget.",
    ),
    series(
        AUTH_FAILURES,
        Counter,
        &["source", "reason"],
        "Requests refused for their credentials, by source and reason.",
    ),
    series(
        LIFECYCLE,
        Counter,
        &["callback", "outcome"],
        "Connect lifecycle callbacks by callback and outcome.",
    ),
    series(
        OUTBOX_BACKLOG,
        Gauge,
        &[],
        "Events stored and not yet confirmed by the broker (sampled).",
    ),
    series(
        OUTBOX_OLDEST_AGE,
        Gauge,
        &[],
        "Age of the oldest event not yet confirmed by the broker; 0 when none (sampled).",
    ),
    series(PUBLISHES, Counter, &[], "Events handed to the broker."),
    series(
        PUBLISH_CONFIRMS,
        Counter,
        &["result"],
        "Broker answers to publishes: ack, nack, or the failure seen instead.",
    ),
    series(
        PUBLISH_DELAY,
        Histogram,
        &[],
        "Time from an event's receipt to its broker confirm.",
    ),
    series(BROKER_UP, Gauge, &[], "1 while the broker is connected."),
    series(
        BROKER_RECONNECTS,
        Counter,
        &[],
        "Broker connections re-established after a loss.",
    ),
    series(
        DELIVERY_ATTEMPTS,
        Counter,
        &["outcome"],
        "HTTP delivery attempts by outcome.",
    ),
    series(
        DELIVERY_DURATION,
        Histogram,
        &[],
        "Duration of one HTTP delivery attempt.",
    ),
    series(
        DELIVERIES_DUE,
        Gauge,
        &[],
        "Deliveries pending whose next attempt is due now (sampled).",
    ),
    series(
        DELIVERIES_DEAD,
        Gauge,
        &[],
        "Deliveries given up on, failed or out of retries (sampled).",
    ),
    series(
        SUBSCRIPTIONS_DISABLED,
        Gauge,
        &[],
        "Subscriptions disabled, by an admin or after failing too long (sampled).",
    ),
    series(
        TRIGGER_INVOCATIONS,
        Counter,
        &["trigger", "mode", "outcome"],
        "Web trigger calls by trigger, mode and outcome.",
    ),
    series(
        SCRIPT_RUNS,
        Counter,
        &["kind", "outcome"],
        "Script runs by kind (trigger, transform) and outcome.",
    ),
    series(
        SCRIPT_DURATION,
        Histogram,
        &["kind"],
        "Duration of one script run.",
    ),
    series(SCRIPT_ACTIVE, Gauge, &[], "Script runs in progress."),
    series(
        SCRIPT_CAPACITY,
        Gauge,
        &[],
        "Script runtimes available in all.",
    ),
    series(
        DB_POOL_CONNECTIONS,
        Gauge,
        &["pool", "state"],
        "Database connections by pool and state (in_use, idle) (sampled).",
    ),
    series(
        DB_POOL_MAX,
        Gauge,
        &["pool"],
        "Most connections each database pool may open.",
    ),
    series(
        DB_POOL_TIMEOUTS,
        Counter,
        &[],
        "Database connection acquisitions that waited the whole acquire timeout and failed.",
    ),
    series(
        STORE_BATCH_SIZE,
        Histogram,
        &["write"],
        "Writes committed together in one shared commit.",
    ),
    series(
        BRIDGE_CALLS,
        Counter,
        &["caller", "outcome"],
        "Calls to tenants' product APIs by caller and outcome.",
    ),
    series(
        BRIDGE_DURATION,
        Histogram,
        &["caller"],
        "Duration of one call to a tenant's product API.",
    ),
    series(
        PROXY_REQUESTS,
        Counter,
        &["status"],
        "Requests through the product proxy by status code.",
    ),
    series(
        RECONCILE_RECOVERED,
        Counter,
        &[],
        "Events recovered from Jira's failed-webhook list.",
    ),
];

/// Sources of inbound events (the envelope's `source`).
pub const SOURCES: &[&str] = &["connect", "forge", "jira-admin", "webtrigger"];

/// Intake outcomes: `stored` and `duplicate` are answered 2xx.
pub const INTAKE_OUTCOMES: &[&str] = &[
    "stored",
    "duplicate",
    "unauthorized",
    "invalid",
    "too_large",
    "unavailable",
    "error",
];

/// Broker answers besides `ack` (see `PublishError::kind`).
const CONFIRM_RESULTS: &[&str] = &[
    "ack",
    "nacked",
    "unroutable",
    "unavailable",
    "timeout",
    "channel",
    "store",
];

const LIFECYCLE_CALLBACKS: &[&str] = &["installed", "enabled", "disabled", "uninstalled"];

const LIFECYCLE_OUTCOMES: &[&str] = &[
    "applied",
    "stale",
    "unknown_tenant",
    "replayed",
    "unauthorized",
    "rejected",
];

const BRIDGE_CALLERS: &[&str] = &["script", "proxy", "reconcile"];

const DELIVERY_OUTCOMES: &[&str] = &["delivered", "retry", "failed", "dead", "filtered"];

const SCRIPT_KINDS: &[&str] = &["trigger", "transform"];

const SCRIPT_OUTCOMES: &[&str] = &[
    "ok",
    "busy",
    "timeout",
    "never_settled",
    "out_of_memory",
    "threw",
    "compile",
    "not_a_function",
    "invalid",
    "crashed",
];

/// Buckets for request-sized latencies (HTTP, scripts): 1 ms to 60 s, since
/// a script may run up to 55 s (and a sync trigger's request with it).
const FAST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets for outbound calls and publish delays: 5 ms to 60 s.
const SLOW_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets for batch sizes (a count, not a time).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The buckets of each histogram.
pub fn buckets(name: &str) -> &'static [f64] {
    match name {
        HTTP_DURATION | SCRIPT_DURATION => FAST_BUCKETS,
        STORE_BATCH_SIZE => BATCH_BUCKETS,
        _ => SLOW_BUCKETS,
    }
}

/// Gives every series its `# HELP` and unit, and registers at zero each series
/// whose label values are known, so that all of them are present from start.
pub fn describe_and_register() {
    for s in SERIES {
        let unit = if s.name.ends_with("_seconds") {
            Some(Unit::Seconds)
        } else {
            None
        };
        match (s.kind, unit) {
            (Counter, _) => describe_counter!(s.name, s.help),
            (Gauge, Some(unit)) => describe_gauge!(s.name, unit, s.help),
            (Gauge, None) => describe_gauge!(s.name, s.help),
            (Histogram, Some(unit)) => describe_histogram!(s.name, unit, s.help),
            (Histogram, None) => describe_histogram!(s.name, s.help),
        }
    }

    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for &source in SOURCES {
        for &outcome in INTAKE_OUTCOMES {
            metrics::counter!(INTAKE, "source" => source, "outcome" => outcome).absolute(0);
        }
    }
    for &(source, reasons) in crate::http::AUTH_FAILURE_REASONS {
        for &reason in reasons {
            metrics::counter!(AUTH_FAILURES, "source" => source, "reason" => reason).absolute(0);
        }
    }
    for &callback in LIFECYCLE_CALLBACKS {
        for &outcome in LIFECYCLE_OUTCOMES {
            metrics::counter!(LIFECYCLE, "callback" => callback, "outcome" => outcome).absolute(0);
        }
    }
    for &caller in BRIDGE_CALLERS {
        for &outcome in crate::product::CALL_OUTCOMES {
            metrics::counter!(BRIDGE_CALLS, "caller" => caller, "outcome" => outcome).absolute(0);
        }
        let _ = metrics::histogram!(BRIDGE_DURATION, "caller" => caller);
    }
    for &result in CONFIRM_RESULTS {
        metrics::counter!(PUBLISH_CONFIRMS, "result" => result).absolute(0);
    }
    for &outcome in DELIVERY_OUTCOMES {
        metrics::counter!(DELIVERY_ATTEMPTS, "outcome" => outcome).absolute(0);
    }
    for &kind in SCRIPT_KINDS {
        for &outcome in SCRIPT_OUTCOMES {
            metrics::counter!(SCRIPT_RUNS, "kind" => kind, "outcome" => outcome).absolute(0);
        }
    }
    for name in [
        INTAKE_BUSY,
        PUBLISHES,
        BROKER_RECONNECTS,
        DB_POOL_TIMEOUTS,
        RECONCILE_RECOVERED,
    ] {
        metrics::counter!(name).absolute(0);
    }
    for name in [
        OUTBOX_BACKLOG,
        OUTBOX_OLDEST_AGE,
        BROKER_UP,
        DELIVERIES_DUE,
        DELIVERIES_DEAD,
        SUBSCRIPTIONS_DISABLED,
        SCRIPT_ACTIVE,
    ] {
        // `increment(0)` registers without overwriting a value set already.
        metrics::gauge!(name).increment(0.0);
    }
    // A histogram registered without a sample renders with its buckets at zero.
    for name in [PUBLISH_DELAY, DELIVERY_DURATION] {
        let _ = metrics::histogram!(name);
    }
    for &kind in SCRIPT_KINDS {
        let _ = metrics::histogram!(SCRIPT_DURATION, "kind" => kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        for s in SERIES {
            assert!(s.name.starts_with("hookrelay_"), "{}", s.name);
            assert_eq!(s.kind == Counter, s.name.ends_with("_total"), "{}", s.name);
            if s.kind == Histogram && s.name != STORE_BATCH_SIZE {
                assert!(s.name.ends_with("_seconds"), "{}", s.name);
            }
            assert!(!s.help.is_empty());
        }
        let mut names: Vec<_> = SERIES.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SERIES.len(), "a series is listed twice");
    }

    #[test]
    fn the_readme_lists_every_series_with_its_type_and_labels() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## Metrics\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .unwrap_or_default();
        for s in SERIES {
            let kind = match s.kind {
                Counter => "counter",
                Gauge => "gauge",
                Histogram => "histogram",
            };
            let labels: Vec<String> = s.labels.iter().map(|l| format!("`{l}`")).collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!(" {}", labels.join(", "))
            };
            let row = format!("| `{}` | {kind} |{labels} |", s.name);
            assert!(section.contains(&row), "README's Metrics lacks {row}");
        }
    }
}
