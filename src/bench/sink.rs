//! The bench's own subscriber: an HTTP server on loopback that answers every
//! delivery 204, subscribed to the run's site through the admin API, and the
//! ledger that ties each delivery back to the request that produced it.
//!
//! Every webhook the bench sends carries its own `X-Atlassian-Webhook-Identifier`,
//! `<prefix><n>`, which hookrelay keeps in the envelope's `webhook_id`. The sink
//! reads it back, so it needs no answer from intake to match a delivery (one
//! may arrive before the answer does). Each delivery's Standard Webhooks
//! signature is checked with the subscription's secret, by hookrelay's own
//! [`crate::relay::signing::verify`].

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use actix_web::dev::ServerHandle;
use actix_web::{web, HttpRequest, HttpResponse, HttpServer};
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

use super::site::{answer_detail, bind, EVENT};
use crate::relay::signing;

/// Largest delivery the sink reads: above hookrelay's largest body and its envelope.
const SINK_MAX_BODY: usize = 64 * 1024 * 1024;

/// A latency histogram in microseconds, from 1 µs to an hour, 3 significant digits.
pub(super) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid bounds")
}

/// What the ledger knows of one request.
#[derive(Clone, Copy, Default)]
struct Slot {
    /// Microseconds from the ledger's start to the moment it was sent.
    sent_us: u64,
    deliveries: u32,
    sent: bool,
    accepted: bool,
    /// Sent after the warm-up: its end-to-end latency counts.
    measured: bool,
}

struct Ledger {
    slots: Vec<Slot>,
    /// Accepted and not yet delivered.
    pending: u64,
    /// Deliveries after the first of a request.
    duplicates: u64,
    /// Deliveries that name no request of this run.
    unmatched: u64,
    /// Deliveries whose signature did not verify.
    bad_signatures: u64,
    latency: Histogram<u64>,
}

/// Every request of the run by its number, and what was delivered for it.
pub struct Tracker {
    prefix: String,
    start: Instant,
    ledger: Mutex<Ledger>,
}

/// The ledger's counts at the end of the run. Losses and duplicates count the
/// warm-up's requests too; the latency only those sent after it.
pub struct Tally {
    /// Requests accepted by intake.
    pub expected: u64,
    /// Of them, delivered at least once.
    pub delivered: u64,
    /// Accepted and never delivered.
    pub losses: u64,
    pub duplicates: u64,
    pub unmatched: u64,
    pub bad_signatures: u64,
    /// Requests the bench saw fail that were delivered all the same: hookrelay
    /// committed them, but its answer did not arrive (a timeout).
    pub delivered_not_accepted: u64,
    pub latency: Histogram<u64>,
}

impl Tracker {
    /// A ledger for webhook identifiers `<prefix><n>`.
    pub fn new(prefix: String) -> Self {
        Self {
            prefix,
            start: Instant::now(),
            ledger: Mutex::new(Ledger {
                slots: Vec::new(),
                pending: 0,
                duplicates: 0,
                unmatched: 0,
                bad_signatures: 0,
                latency: histogram(),
            }),
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic elsewhere cannot leave the counts half-updated in a way that matters.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Request `seq` goes out now.
    pub fn sent(&self, seq: u64, measured: bool) {
        let sent_us = self.start.elapsed().as_micros() as u64;
        let Ok(index) = usize::try_from(seq) else {
            return;
        };
        let mut ledger = self.ledger();
        if index >= ledger.slots.len() {
            ledger.slots.resize(index + 1, Slot::default());
        }
        let slot = &mut ledger.slots[index];
        slot.sent = true;
        slot.sent_us = sent_us;
        slot.measured = measured;
    }

    /// Intake accepted request `seq`.
    pub fn accepted(&self, seq: u64) {
        let mut ledger = self.ledger();
        let Some(slot) = usize::try_from(seq)
            .ok()
            .and_then(|i| ledger.slots.get_mut(i))
        else {
            return;
        };
        slot.accepted = true;
        if slot.deliveries == 0 {
            ledger.pending += 1;
        }
    }

    /// A delivery arrived, for the request whose webhook identifier it names.
    fn delivered(&self, webhook_id: Option<&str>, signed: bool) {
        let now_us = self.start.elapsed().as_micros() as u64;
        let seq = webhook_id
            .and_then(|id| id.strip_prefix(self.prefix.as_str()))
            .and_then(|n| n.parse::<usize>().ok());
        let mut ledger = self.ledger();
        if !signed {
            ledger.bad_signatures += 1;
        }
        let Some(slot) = seq.and_then(|i| ledger.slots.get_mut(i)).filter(|s| s.sent) else {
            ledger.unmatched += 1;
            return;
        };
        slot.deliveries = slot.deliveries.saturating_add(1);
        if slot.deliveries > 1 {
            ledger.duplicates += 1;
            return;
        }
        let (accepted, measured, sent_us) = (slot.accepted, slot.measured, slot.sent_us);
        if accepted {
            ledger.pending = ledger.pending.saturating_sub(1);
        }
        if measured {
            ledger
                .latency
                .saturating_record(now_us.saturating_sub(sent_us).max(1));
        }
    }

    /// Accepted requests not yet delivered.
    pub fn pending(&self) -> u64 {
        self.ledger().pending
    }

    pub fn tally(&self) -> Tally {
        let ledger = self.ledger();
        let mut tally = Tally {
            expected: 0,
            delivered: 0,
            losses: 0,
            duplicates: ledger.duplicates,
            unmatched: ledger.unmatched,
            bad_signatures: ledger.bad_signatures,
            delivered_not_accepted: 0,
            latency: ledger.latency.clone(),
        };
        for slot in ledger.slots.iter().filter(|s| s.sent) {
            match (slot.accepted, slot.deliveries > 0) {
                (true, true) => {
                    tally.expected += 1;
                    tally.delivered += 1;
                }
                (true, false) => {
                    tally.expected += 1;
                    tally.losses += 1;
                }
                (false, true) => tally.delivered_not_accepted += 1,
                (false, false) => {}
            }
        }
        tally
    }
}

struct SinkState {
    tracker: Arc<Tracker>,
    /// The subscription's signing key, once it is known.
    key: OnceLock<Vec<u8>>,
}

/// The fields of the envelope the sink reads.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    webhook_id: Option<String>,
}

/// The HTTP server deliveries arrive at.
pub struct Sink {
    /// What the subscription's `url` is.
    pub url: String,
    state: Arc<SinkState>,
    handle: ServerHandle,
}

impl Sink {
    /// Listens on `listen`; `public` is the URL hookrelay reaches it at, when
    /// not the listen address.
    pub fn start(
        listen: &str,
        public: Option<&Url>,
        run: &str,
        tracker: Arc<Tracker>,
    ) -> anyhow::Result<Self> {
        let (listener, url) = bind(listen, public)
            .with_context(|| format!("cannot listen on {listen} for the sink (--sink-listen)"))?;
        let url = format!(
            "{}/hookrelay-bench/{run}",
            url?.as_str().trim_end_matches('/')
        );
        let state = Arc::new(SinkState {
            tracker,
            key: OnceLock::new(),
        });
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            actix_web::App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(SINK_MAX_BODY))
                .default_service(web::to(receive))
        })
        .workers(2)
        .disable_signals()
        .listen(listener)
        .context("cannot start the sink")?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self { url, state, handle })
    }

    /// The subscription's secret, that deliveries are signed with.
    pub fn set_secret(&self, secret: &str) -> anyhow::Result<()> {
        let key = signing::key(secret).context("the subscription's secret is not whsec_…")?;
        let _ = self.state.key.set(key);
        Ok(())
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// Every request is a delivery: checked, matched, answered 204.
async fn receive(req: HttpRequest, body: web::Bytes, state: web::Data<SinkState>) -> HttpResponse {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let signed = match (
        state.key.get(),
        header("webhook-id"),
        header("webhook-timestamp").and_then(|t| t.trim().parse::<i64>().ok()),
        header("webhook-signature"),
    ) {
        (Some(key), Some(id), Some(timestamp), Some(signature)) => {
            signing::verify(key, id, timestamp, &body, signature)
        }
        _ => false,
    };
    let webhook_id = serde_json::from_slice::<Envelope>(&body)
        .ok()
        .and_then(|e| e.webhook_id);
    state.tracker.delivered(webhook_id.as_deref(), signed);
    HttpResponse::NoContent().finish()
}

/// The admin API of the hookrelay under test.
pub struct AdminApi {
    pub client: reqwest::Client,
    /// `<url>/admin/api/v1`
    pub base: String,
    pub token: String,
}

/// The subscription the bench made.
pub struct Subscription {
    pub id: String,
    pub secret: String,
}

impl AdminApi {
    /// Subscribes `sink` to the run's `jira:issue_created` events of `client_key`.
    pub async fn subscribe(
        &self,
        sink: &Sink,
        client_key: &str,
        max_concurrency: Option<u32>,
    ) -> anyhow::Result<Subscription> {
        let mut body = json!({
            "url": sink.url,
            "events": [EVENT],
            "tenants": [client_key],
            "description": format!("hookrelay bench sink for {client_key}; safe to delete"),
        });
        if let Some(n) = max_concurrency {
            body["max_concurrency"] = json!(n);
        }
        let url = format!("{}/subscriptions", self.base);
        let response = self
            .client
            .post(&url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("cannot reach hookrelay (POST {url})"))?;
        let status = response.status();
        if !status.is_success() {
            let detail = answer_detail(response).await;
            if status == reqwest::StatusCode::UNAUTHORIZED {
                bail!(
                    "the admin API refused the bench ({status}: {detail}): pass the server's \
                     HOOKRELAY_ADMIN_TOKEN with --admin-token or in the environment, or run \
                     with --no-sink"
                );
            }
            if detail.contains("ALLOW_PRIVATE_DESTINATIONS") {
                bail!(
                    "hookrelay refuses to deliver to the bench's sink at {} ({detail}): start \
                     hookrelay with HOOKRELAY_ALLOW_PRIVATE_DESTINATIONS=true, or run with --no-sink",
                    sink.url
                );
            }
            bail!("hookrelay refused the sink's subscription ({status}: {detail})");
        }
        let created: Value = response
            .json()
            .await
            .context("the answer to the subscription is not JSON")?;
        match (created["id"].as_str(), created["secret"].as_str()) {
            (Some(id), Some(secret)) => Ok(Subscription {
                id: id.to_string(),
                secret: secret.to_string(),
            }),
            _ => bail!("the answer to the subscription has no id or secret: {created}"),
        }
    }

    /// Deletes subscription `id`, with its deliveries.
    pub async fn unsubscribe(&self, id: &str) -> anyhow::Result<()> {
        let url = format!("{}/subscriptions/{id}", self.base);
        let response = self
            .client
            .delete(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach hookrelay (DELETE {url})"))?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "hookrelay did not delete the subscription ({status}: {})",
                answer_detail(response).await
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_matched_counted_and_timed() {
        let tracker = Tracker::new("run-".into());
        // Request 0 is of the warm-up.
        for seq in 0..4 {
            tracker.sent(seq, seq > 0);
        }
        tracker.accepted(0);
        tracker.accepted(1);
        // Delivered before intake's answer was read.
        tracker.delivered(Some("run-2"), true);
        tracker.accepted(2);
        assert_eq!(tracker.pending(), 2);
        tracker.delivered(Some("run-1"), true);
        tracker.delivered(Some("run-1"), true);
        assert_eq!(tracker.pending(), 1);
        // Never accepted (a timeout at the bench), delivered all the same.
        tracker.delivered(Some("run-3"), false);
        tracker.delivered(Some("other-1"), true);
        tracker.delivered(Some("run-99"), true);
        tracker.delivered(None, true);
        let tally = tracker.tally();
        assert_eq!(tally.expected, 3);
        assert_eq!(tally.delivered, 2);
        assert_eq!(tally.losses, 1);
        assert_eq!(tally.duplicates, 1);
        assert_eq!(tally.unmatched, 3);
        assert_eq!(tally.bad_signatures, 1);
        assert_eq!(tally.delivered_not_accepted, 1);
        assert_eq!(tally.latency.len(), 3);
    }
}
