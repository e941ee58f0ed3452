//! What a run reports, as text or as JSON (`--json`), and the server's
//! resident memory.
//!
//! The JSON object's fields are those of [`Report`] and the structs it holds,
//! named as below; durations are in seconds (`*_secs`) or milliseconds
//! (`latency_ms`), sizes in bytes. A value that could not be had is `null`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;
use url::Url;

use super::sink::Counts;

/// One run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The hookrelay measured (`--url`).
    pub url: String,
    /// `closed` (fixed concurrency) or `open` (fixed rate).
    pub mode: &'static str,
    /// Requests in flight at once, in closed loop.
    pub concurrency: Option<usize>,
    /// Requests a second asked for, in open loop.
    pub rate: Option<f64>,
    /// The measured time asked for (`--duration`), after the warm-up.
    pub duration_secs: f64,
    pub warmup_secs: f64,
    /// The size of each webhook body.
    pub body_bytes: usize,
    /// The client key of the run's site (`jira:hookrelay-bench-<run>`).
    pub client_key: String,
    /// Stopped early by Ctrl-C: the load was cut short and the drain skipped.
    pub interrupted: bool,
    /// Whether the site was uninstalled at the end.
    pub site_uninstalled: bool,
    pub intake: IntakeReport,
    /// `null` with `--no-sink`.
    pub delivery: Option<DeliveryReport>,
    pub server_rss: RssReport,
}

/// Intake as the bench saw it: the requests sent after the warm-up.
#[derive(Debug, Serialize)]
pub struct IntakeReport {
    pub sent: u64,
    /// Answered 2xx: committed by hookrelay.
    pub accepted: u64,
    /// Not answered 2xx.
    pub failed: u64,
    /// The failures by status code, or `timeout`, `connect` and `error` for
    /// requests that got no answer.
    pub failed_by_status: BTreeMap<String, u64>,
    /// Requests sent during the warm-up, not counted above.
    pub warmup_sent: u64,
    /// From the end of the warm-up to the last answer.
    pub elapsed_secs: f64,
    /// `sent` over `elapsed_secs`.
    pub requests_per_sec: Option<f64>,
    /// `accepted` over `elapsed_secs`.
    pub accepted_per_sec: Option<f64>,
    /// From the moment a request was due (open loop) or sent (closed loop) to
    /// its answer.
    pub latency_ms: Option<Latency>,
}

/// Deliveries to the bench's sink, of every request accepted (the warm-up's
/// included).
#[derive(Debug, Serialize)]
pub struct DeliveryReport {
    /// The sink's subscriptions (`--subscriptions`).
    pub subscription_ids: Vec<String>,
    /// Whether every one was deleted at the end.
    pub subscriptions_deleted: bool,
    /// The sink held its answers until the load ended (`--backlog`).
    pub backlog: bool,
    #[serde(flatten)]
    pub counts: Counts,
    /// Deliveries a second, from the first to the last that arrived.
    pub per_sec: Option<f64>,
    /// How long the bench waited after the load for the last deliveries.
    pub drain_secs: f64,
    /// From the moment a measured request was sent to each of its first
    /// deliveries.
    pub latency_ms: Option<Latency>,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    /// How many latencies were recorded.
    pub count: u64,
}

impl Latency {
    /// The percentiles of `micros`, a histogram in microseconds; `None` when empty.
    pub fn of(micros: &Histogram<u64>) -> Option<Self> {
        if micros.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Self {
            p50: ms(micros.value_at_quantile(0.50)),
            p90: ms(micros.value_at_quantile(0.90)),
            p99: ms(micros.value_at_quantile(0.99)),
            p999: ms(micros.value_at_quantile(0.999)),
            max: ms(micros.max()),
            mean: micros.mean() / 1000.0,
            count: micros.len(),
        })
    }
}

/// The server's resident memory before the load and after the drain.
#[derive(Debug, Serialize, Default)]
pub struct RssReport {
    /// `metrics` (`process_resident_memory_bytes` of its `/metrics`), `proc`
    /// (`/proc/<pid>/status` of `--pid`), or `null`: unknown.
    pub source: Option<&'static str>,
    pub start_bytes: Option<u64>,
    pub end_bytes: Option<u64>,
    /// The peak so far (VmHWM), from `/proc` only.
    pub peak_bytes: Option<u64>,
}

/// One reading of the server's resident memory.
pub struct RssSample {
    pub source: &'static str,
    pub bytes: u64,
    pub peak: Option<u64>,
}

/// The server's resident memory: from its `/metrics` if it reports it, else
/// from `/proc/<pid>/status`, else `None`.
pub async fn server_rss(
    client: &reqwest::Client,
    url: &Url,
    pid: Option<u32>,
) -> Option<RssSample> {
    let metrics = format!("{}/metrics", url.as_str().trim_end_matches('/'));
    if let Ok(response) = client.get(&metrics).send().await {
        if response.status().is_success() {
            if let Ok(text) = response.text().await {
                if let Some(bytes) = metric_value(&text, "process_resident_memory_bytes") {
                    return Some(RssSample {
                        source: "metrics",
                        bytes: bytes as u64,
                        peak: None,
                    });
                }
            }
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let kib = |field: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    };
    Some(RssSample {
        source: "proc",
        bytes: kib("VmRSS:")?,
        peak: kib("VmHWM:"),
    })
}

/// The value of the first sample of `name` in a Prometheus text exposition.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let rest = match rest.strip_prefix('{') {
            Some(labelled) => labelled.split_once('}')?.1,
            None if rest.starts_with(' ') => rest,
            None => return None,
        };
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `n` with thousands separated: 12,345.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn latency_line(latency: &Option<Latency>) -> String {
    match latency {
        Some(l) => format!(
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            l.p50, l.p90, l.p99, l.p999, l.max
        ),
        None => "none recorded".into(),
    }
}

impl Report {
    /// The report as lines of text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let pace = match (self.mode, self.concurrency, self.rate) {
            ("open", _, Some(rate)) => format!("open loop at {rate} req/s"),
            (_, Some(c), _) => format!("closed loop, {c} in flight"),
            _ => self.mode.to_string(),
        };
        let _ = writeln!(
            out,
            "hookrelay bench: {} — {pace}, {:.1} s measured after {:.1} s of warm-up, \
             {}-byte jira:issue_created bodies{}",
            self.url,
            self.duration_secs,
            self.warmup_secs,
            count(self.body_bytes as u64),
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            },
        );
        let _ = writeln!(out, "site:       {}", self.client_key);
        let i = &self.intake;
        let mut failed = String::new();
        if i.failed > 0 {
            let by: Vec<String> = i
                .failed_by_status
                .iter()
                .map(|(k, v)| format!("{k}: {}", count(*v)))
                .collect();
            failed = format!(" ({})", by.join(", "));
        }
        let _ = writeln!(
            out,
            "intake:     {} sent, {} accepted, {} failed{failed}",
            count(i.sent),
            count(i.accepted),
            count(i.failed),
        );
        if let (Some(rps), Some(aps)) = (i.requests_per_sec, i.accepted_per_sec) {
            let _ = writeln!(
                out,
                "            {rps:.1} req/s ({aps:.1} accepted/s) over {:.2} s",
                i.elapsed_secs
            );
        }
        let _ = writeln!(out, "  latency   {}", latency_line(&i.latency_ms));
        match &self.delivery {
            None => {
                let _ = writeln!(out, "delivery:   not measured (--no-sink)");
            }
            Some(d) => {
                let lost = if self.interrupted {
                    "undelivered (interrupted: the drain was skipped)".to_string()
                } else {
                    format!("lost (drained for {:.2} s)", d.drain_secs)
                };
                let c = &d.counts;
                let fan = match d.subscription_ids.len() {
                    1 => String::new(),
                    n => format!(" to {n} subscriptions"),
                };
                let _ = writeln!(
                    out,
                    "delivery:   {} of {} owed{} delivered{fan}, {} duplicates, {} {lost}",
                    count(c.delivered),
                    count(c.expected),
                    if self.warmup_secs > 0.0 {
                        " (warm-up included)"
                    } else {
                        ""
                    },
                    count(c.duplicates),
                    count(c.losses),
                );
                if let Some(rate) = d.per_sec {
                    let _ = writeln!(
                        out,
                        "            {rate:.1} deliveries/s{}",
                        if d.backlog {
                            " draining the backlog (held until the load ended)"
                        } else {
                            ""
                        }
                    );
                }
                let odd: Vec<String> = [
                    (c.unmatched, "unmatched"),
                    (c.bad_signatures, "with a bad signature"),
                    (c.delivered_not_accepted, "delivered though not accepted"),
                ]
                .iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, what)| format!("{} {what}", count(*n)))
                .collect();
                if !odd.is_empty() {
                    let _ = writeln!(out, "            {}", odd.join(", "));
                }
                let _ = writeln!(out, "  end2end   {}", latency_line(&d.latency_ms));
                if !d.subscriptions_deleted {
                    let _ = writeln!(
                        out,
                        "            subscriptions NOT all deleted: delete by hand those of {}",
                        d.subscription_ids.join(", ")
                    );
                }
            }
        }
        let r = &self.server_rss;
        let rss = match (r.source, r.start_bytes, r.end_bytes) {
            (Some(source), start, Some(end)) => {
                let mut line = format!("{} after the drain", mib(end));
                if let Some(start) = start {
                    line = format!("{} before the load, {line}", mib(start));
                }
                if let Some(peak) = r.peak_bytes {
                    line.push_str(&format!(", peak {}", mib(peak)));
                }
                let source = match source {
                    "metrics" => "its /metrics",
                    _ => "/proc",
                };
                format!("{line} (from {source})")
            }
            _ => "unknown (its /metrics has no process_resident_memory_bytes: pass --pid)".into(),
        };
        let _ = writeln!(out, "server rss: {rss}");
        if !self.site_uninstalled {
            let _ = writeln!(out, "site {} NOT uninstalled", self.client_key);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_are_read_with_or_without_labels() {
        let text = "# HELP x\nprocess_resident_memory_bytes_total 1\n\
                    process_resident_memory_bytes 4.5e7\n";
        assert_eq!(
            metric_value(text, "process_resident_memory_bytes"),
            Some(4.5e7)
        );
        let text = "process_resident_memory_bytes{instance=\"a b\"} 123\n";
        assert_eq!(
            metric_value(text, "process_resident_memory_bytes"),
            Some(123.0)
        );
        assert_eq!(
            metric_value("other 1\n", "process_resident_memory_bytes"),
            None
        );
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
    }
}
