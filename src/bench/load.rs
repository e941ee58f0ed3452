//! The load: signed webhooks posted to intake, closed-loop (a fixed number in
//! flight, each worker sending its next request when its last is answered) or
//! open-loop (a fixed rate, sends scheduled by the clock whatever the answers).
//!
//! In open loop each request's latency runs from the moment it was *due*, not
//! from when it went out: a server that stalls delays the requests queued
//! behind the stall, and that wait is counted (no coordinated omission). At
//! most [`MAX_IN_FLIGHT`] requests are out at once; a request that waits for
//! room still counts its latency from when it was due.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::sink::{histogram, Tracker};
use super::EVENT;
use crate::dev::site::{unix_now, Site};

/// Most requests in flight at once in open loop.
pub const MAX_IN_FLIGHT: usize = 4096;

/// How the load is paced.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// `concurrency` workers, each with one request in flight.
    Closed { concurrency: usize },
    /// `rate` requests a second, by the clock.
    Open { rate: f64 },
}

/// What one request ended as.
#[derive(Default)]
pub struct Counts {
    pub sent: u64,
    pub accepted: u64,
    /// By status code, or `timeout`, `connect`, `error` (no answer).
    pub failed: BTreeMap<String, u64>,
}

impl Counts {
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

/// Intake as the bench saw it.
pub struct Outcome {
    /// Requests sent after the warm-up.
    pub measured: Counts,
    /// Requests sent during the warm-up.
    pub warmup: Counts,
    /// Latency of the measured requests, in microseconds.
    pub latency: Histogram<u64>,
    /// From the end of the warm-up to the answer of the last measured request.
    pub elapsed: Duration,
}

struct Stats {
    measured: Counts,
    warmup: Counts,
    latency: Histogram<u64>,
    last_answer: Option<Instant>,
}

/// Sends the run's webhooks and keeps count.
pub struct Sender {
    client: reqwest::Client,
    url: String,
    qsh: String,
    site: Arc<Site>,
    body: Bytes,
    /// The webhook identifier of request `n` is `<prefix><n>`.
    prefix: String,
    tracker: Option<Arc<Tracker>>,
    next: AtomicU64,
    stats: Mutex<Stats>,
}

impl Sender {
    pub fn new(
        client: reqwest::Client,
        url: String,
        qsh: String,
        site: Arc<Site>,
        body: Vec<u8>,
        prefix: String,
        tracker: Option<Arc<Tracker>>,
    ) -> Self {
        Self {
            client,
            url,
            qsh,
            site,
            body: Bytes::from(body),
            prefix,
            tracker,
            next: AtomicU64::new(0),
            stats: Mutex::new(Stats {
                measured: Counts::default(),
                warmup: Counts::default(),
                latency: histogram(),
                last_answer: None,
            }),
        }
    }

    /// One webhook, due at `due`; counted when `measured`.
    async fn send(&self, due: Instant, measured: bool) {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let webhook_id = format!("{}{seq}", self.prefix);
        let request = self
            .site
            .webhook_request(&self.client, &self.url, &self.qsh, &webhook_id);
        let result = match request {
            Ok(request) => {
                if let Some(tracker) = &self.tracker {
                    tracker.sent(seq, measured);
                }
                request
                    .body(self.body.clone())
                    .send()
                    .await
                    .map_err(|e| classify(&e))
            }
            Err(_) => Err("error"),
        };
        let outcome = match result {
            Ok(response) => {
                let status = response.status();
                // Read to the end, so that the connection is reused.
                let _ = response.bytes().await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(status.as_str().to_string())
                }
            }
            Err(kind) => Err(kind.to_string()),
        };
        let answered = Instant::now();
        if outcome.is_ok() {
            if let Some(tracker) = &self.tracker {
                tracker.accepted(seq);
            }
        }
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = if measured {
            stats
                .latency
                .saturating_record((answered.duration_since(due).as_micros() as u64).max(1));
            stats.last_answer = Some(stats.last_answer.map_or(answered, |t| t.max(answered)));
            &mut stats.measured
        } else {
            &mut stats.warmup
        };
        counts.sent += 1;
        match outcome {
            Ok(()) => counts.accepted += 1,
            Err(kind) => *counts.failed.entry(kind).or_default() += 1,
        }
    }

    /// Runs the load: `warmup`, then `duration` measured, or until `stop`.
    /// Requests in flight at the end are waited for (each is bounded by the
    /// client's timeout).
    pub async fn run(
        self: Arc<Self>,
        mode: Mode,
        warmup: Duration,
        duration: Duration,
        stop: CancellationToken,
    ) -> Outcome {
        let start = Instant::now();
        let measure_from = start + warmup;
        let end = measure_from + duration;
        match mode {
            Mode::Closed { concurrency } => {
                let mut workers = tokio::task::JoinSet::new();
                for _ in 0..concurrency {
                    let (sender, stop) = (self.clone(), stop.clone());
                    workers.spawn(async move {
                        loop {
                            let now = Instant::now();
                            if now >= end || stop.is_cancelled() {
                                break;
                            }
                            sender.send(now, now >= measure_from).await;
                        }
                    });
                }
                while workers.join_next().await.is_some() {}
            }
            Mode::Open { rate } => {
                let room = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
                for n in 0u64.. {
                    let due = start + Duration::from_secs_f64(n as f64 / rate);
                    if due >= end {
                        break;
                    }
                    if due > Instant::now() {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep_until(due.into()) => {}
                        }
                    } else if stop.is_cancelled() {
                        break;
                    }
                    let permit = tokio::select! {
                        _ = stop.cancelled() => break,
                        permit = room.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => break,
                        },
                    };
                    let sender = self.clone();
                    tokio::spawn(async move {
                        sender.send(due, due >= measure_from).await;
                        drop(permit);
                    });
                }
                // Every request has answered once all the room is free again.
                let _ = room.acquire_many(MAX_IN_FLIGHT as u32).await;
            }
        }
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = stats.last_answer.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(measure_from)
        });
        Outcome {
            measured: std::mem::take(&mut stats.measured),
            warmup: std::mem::take(&mut stats.warmup),
            latency: stats.latency.clone(),
            elapsed,
        }
    }
}

/// A request that got no answer, by why.
fn classify(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "error"
    }
}

/// A `jira:issue_created` body as Jira Cloud sends it from the site at
/// `base`, `size` bytes long:
/// the issue's description is padded to reach it. A `size` below the
/// unpadded body gives the unpadded body.
pub fn issue_created_body(base: &str, size: usize) -> Vec<u8> {
    let account = "557058:6a3c1b5e-4d1f-9c0a-hookrelay-bench";
    let user = json!({
        "self": format!("{base}/rest/api/2/user?accountId={account}"),
        "accountId": account,
        "displayName": "hookrelay bench",
        "active": true,
        "timeZone": "Etc/UTC",
        "accountType": "atlassian",
    });
    let body = |description: &str| {
        json!({
            "timestamp": unix_now() * 1000,
            "webhookEvent": EVENT,
            "issue_event_type_name": "issue_created",
            "user": user,
            "issue": {
                "id": "10042",
                "self": format!("{base}/rest/api/2/10042"),
                "key": "BENCH-42",
                "fields": {
                    "issuetype": {"id": "10001", "name": "Task", "subtask": false},
                    "project": {
                        "id": "10000",
                        "key": "BENCH",
                        "name": "Bench",
                        "projectTypeKey": "software",
                    },
                    "priority": {"id": "3", "name": "Medium"},
                    "status": {
                        "id": "10000",
                        "name": "To Do",
                        "statusCategory": {"id": 2, "key": "new", "name": "To Do"},
                    },
                    "summary": "Checkout fails with a timeout on large carts",
                    "description": description,
                    "labels": ["bench"],
                    "reporter": {"accountId": account, "displayName": "hookrelay bench"},
                    "assignee": null,
                    "created": "2026-01-15T10:00:00.000+0000",
                    "updated": "2026-01-15T10:00:00.000+0000",
                },
            },
        })
        .to_string()
    };
    let unpadded = body("").len();
    // ASCII without anything JSON escapes: each character is one byte.
    const TEXT: &str = "Steps to reproduce: add forty items to the cart, open the \
                        checkout and pay by card. Expected: the order is placed. \
                        Actual: the page spins and times out after thirty seconds. ";
    let padding: String = TEXT
        .chars()
        .cycle()
        .take(size.saturating_sub(unpadded))
        .collect();
    body(&padding).into_bytes()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn bodies_have_the_size_asked_for_and_are_json() {
        for size in [0, 100, 2048, 10_000] {
            let body = issue_created_body("https://bench.atlassian.invalid", size);
            let parsed: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(parsed["webhookEvent"], EVENT);
            if size >= 1500 {
                assert_eq!(body.len(), size);
            }
        }
    }
}
