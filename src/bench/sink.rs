//! The bench's own subscriber: an HTTP server on loopback that answers every
//! delivery 204, subscribed to the run's site through the admin API, and the
//! ledger that ties each delivery back to the request that produced it.
//!
//! Every webhook the bench sends carries its own `X-Atlassian-Webhook-Identifier`,
//! `<prefix><n>`, which hookrelay keeps in the envelope's `webhook_id`. The sink
//! reads it back, so it needs no answer from intake to match a delivery (one
//! may arrive before the answer does). With `--subscriptions N` the sink is
//! subscribed N times, at `<url>/<i>`, and each request is owed N deliveries.
//! Each delivery's Standard Webhooks signature is checked with its
//! subscription's secret, by hookrelay's own [`crate::relay::signing::verify`].

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use actix_web::dev::ServerHandle;
use actix_web::{web, HttpRequest, HttpResponse};
use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::dev::receiver::signed;
use crate::dev::site::{bind, serve};
use crate::relay::signing;

/// Largest delivery the sink reads: above hookrelay's largest body and its envelope.
const SINK_MAX_BODY: usize = 64 * 1024 * 1024;

/// A latency histogram in microseconds, from 1 µs to an hour, 3 significant digits.
pub(super) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid bounds")
}

/// Most subscriptions of the sink (a request's deliveries are a bit mask).
pub const MAX_FAN: u32 = 64;

/// What the ledger knows of one request.
#[derive(Clone, Copy, Default)]
struct Slot {
    /// Microseconds from the ledger's start to the moment it was sent.
    sent_us: u64,
    /// Bit i: delivered to subscription i.
    delivered_to: u64,
    sent: bool,
    accepted: bool,
    /// Sent after the warm-up: its end-to-end latency counts.
    measured: bool,
}

struct Ledger {
    slots: Vec<Slot>,
    /// Accepted and not yet delivered to every subscription.
    pending: u64,
    /// Deliveries after the first of a request to a subscription.
    duplicates: u64,
    /// Deliveries of this run's requests, first ones only.
    deliveries: u64,
    /// When the first and the last of them arrived, in µs from the start.
    first_us: Option<u64>,
    last_us: u64,
    /// Deliveries that name no request of this run.
    unmatched: u64,
    /// Deliveries whose signature did not verify.
    bad_signatures: u64,
    latency: Histogram<u64>,
}

/// Every request of the run by its number, and what was delivered for it.
pub struct Tracker {
    prefix: String,
    /// Subscriptions each request is owed a delivery by.
    fan: u32,
    start: Instant,
    ledger: Mutex<Ledger>,
}

/// The ledger's counts at the end of the run, in deliveries (a request to
/// N subscriptions owes N). Losses and duplicates count the warm-up's
/// requests too.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    /// Deliveries owed: requests accepted by intake, times the subscriptions.
    pub expected: u64,
    /// Of them, made at least once.
    pub delivered: u64,
    /// Owed and never made.
    pub losses: u64,
    /// Deliveries beyond the first of a request to a subscription.
    pub duplicates: u64,
    /// Deliveries that named no request of this run.
    pub unmatched: u64,
    /// Deliveries whose Standard Webhooks signature did not verify.
    pub bad_signatures: u64,
    /// Requests the bench saw fail (a timeout) that were delivered all the
    /// same: hookrelay had committed them, but its answer did not arrive.
    pub delivered_not_accepted: u64,
}

pub struct Tally {
    pub counts: Counts,
    /// First deliveries a second, from the first to the last that arrived.
    pub per_sec: Option<f64>,
    /// From a measured request's sending to each of its first deliveries.
    pub latency: Histogram<u64>,
}

impl Tracker {
    /// A ledger for webhook identifiers `<prefix><n>`, each owed a delivery
    /// by `fan` subscriptions (1 to [`MAX_FAN`]).
    pub fn new(prefix: String, fan: u32) -> Self {
        Self {
            prefix,
            fan: fan.clamp(1, MAX_FAN),
            start: Instant::now(),
            ledger: Mutex::new(Ledger {
                slots: Vec::new(),
                pending: 0,
                duplicates: 0,
                deliveries: 0,
                first_us: None,
                last_us: 0,
                unmatched: 0,
                bad_signatures: 0,
                latency: histogram(),
            }),
        }
    }

    /// The mask of a request delivered to every subscription.
    fn all(&self) -> u64 {
        u64::MAX >> (64 - self.fan)
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
        if slot.delivered_to != self.all() {
            ledger.pending += 1;
        }
    }

    /// A delivery arrived from subscription `sub`, for the request whose
    /// webhook identifier it names.
    fn delivered(&self, webhook_id: Option<&str>, sub: usize, signed: bool) {
        let now_us = self.start.elapsed().as_micros() as u64;
        let seq = webhook_id
            .and_then(|id| id.strip_prefix(self.prefix.as_str()))
            .and_then(|n| n.parse::<usize>().ok());
        let all = self.all();
        let mut ledger = self.ledger();
        if !signed {
            ledger.bad_signatures += 1;
        }
        let bit = u32::try_from(sub)
            .ok()
            .filter(|&i| i < self.fan)
            .map(|i| 1u64 << i);
        let (Some(bit), Some(slot)) = (
            bit,
            seq.and_then(|i| ledger.slots.get_mut(i)).filter(|s| s.sent),
        ) else {
            ledger.unmatched += 1;
            return;
        };
        if slot.delivered_to & bit != 0 {
            ledger.duplicates += 1;
            return;
        }
        slot.delivered_to |= bit;
        let (accepted, measured, sent_us) = (slot.accepted, slot.measured, slot.sent_us);
        let complete = slot.delivered_to == all;
        if accepted && complete {
            ledger.pending = ledger.pending.saturating_sub(1);
        }
        ledger.deliveries += 1;
        ledger.first_us.get_or_insert(now_us);
        ledger.last_us = now_us;
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
        let fan = u64::from(self.fan);
        let mut counts = Counts {
            duplicates: ledger.duplicates,
            unmatched: ledger.unmatched,
            bad_signatures: ledger.bad_signatures,
            ..Counts::default()
        };
        for slot in ledger.slots.iter().filter(|s| s.sent) {
            let made = u64::from(slot.delivered_to.count_ones());
            if slot.accepted {
                counts.expected += fan;
                counts.delivered += made;
                counts.losses += fan - made;
            } else if made > 0 {
                counts.delivered_not_accepted += 1;
            }
        }
        let per_sec = ledger.first_us.and_then(|first| {
            let span = ledger.last_us.saturating_sub(first);
            (span > 0 && ledger.deliveries > 1)
                .then(|| (ledger.deliveries - 1) as f64 / (span as f64 / 1e6))
        });
        Tally {
            counts,
            per_sec,
            latency: ledger.latency.clone(),
        }
    }
}

struct SinkState {
    tracker: Arc<Tracker>,
    /// Each subscription's signing key, once they are known.
    keys: OnceLock<Vec<Vec<u8>>>,
    /// Closed: deliveries are held unanswered (`--backlog`).
    open: tokio::sync::watch::Receiver<bool>,
}

/// The fields of the envelope the sink reads.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    webhook_id: Option<String>,
}

/// The HTTP server deliveries arrive at.
pub struct Sink {
    /// Subscription i's `url` is `<url>/<i>`.
    pub url: String,
    state: Arc<SinkState>,
    gate: tokio::sync::watch::Sender<bool>,
    handle: ServerHandle,
}

impl Sink {
    /// Listens on `listen`; `public` is the URL hookrelay reaches it at, when
    /// not the listen address. A sink started `held` answers nothing until
    /// [`Sink::release`].
    pub fn start(
        listen: &str,
        public: Option<&Url>,
        run: &str,
        tracker: Arc<Tracker>,
        held: bool,
    ) -> anyhow::Result<Self> {
        let (listener, url) = bind(listen, public)
            .with_context(|| format!("cannot listen on {listen} for the sink (--sink-listen)"))?;
        let url = format!(
            "{}/hookrelay-bench/{run}",
            url?.as_str().trim_end_matches('/')
        );
        let (gate, open) = tokio::sync::watch::channel(!held);
        let state = Arc::new(SinkState {
            tracker,
            keys: OnceLock::new(),
            open,
        });
        let handle = serve(listener, state.clone(), SINK_MAX_BODY, 2, receive, "sink")?;
        Ok(Self {
            url,
            state,
            gate,
            handle,
        })
    }

    /// The URL of subscription `i`.
    pub fn url_of(&self, i: usize) -> String {
        format!("{}/{i}", self.url)
    }

    /// The subscriptions' secrets, in order, that deliveries are signed with.
    pub fn set_secrets(&self, secrets: &[String]) -> anyhow::Result<()> {
        let keys = secrets
            .iter()
            .map(|secret| signing::key(secret))
            .collect::<Result<Vec<_>, _>>()
            .context("a subscription's secret is not whsec_…")?;
        let _ = self.state.keys.set(keys);
        Ok(())
    }

    /// Answers the deliveries held so far, and those to come.
    pub fn release(&self) {
        let _ = self.gate.send(true);
    }

    pub async fn stop(self) {
        self.release();
        self.handle.stop(false).await;
    }
}

/// Every request is a delivery: checked, matched, answered 204. Its
/// subscription is the last segment of the path.
async fn receive(req: HttpRequest, body: web::Bytes, state: web::Data<SinkState>) -> HttpResponse {
    let sub = req
        .path()
        .rsplit('/')
        .next()
        .and_then(|i| i.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    let key = state.keys.get().and_then(|keys| keys.get(sub));
    let signed = signed(key, &req, &body);
    let webhook_id = serde_json::from_slice::<Envelope>(&body)
        .ok()
        .and_then(|e| e.webhook_id);
    // Held: counted when answered, so that a backlog's drain is timed.
    let mut open = state.open.clone();
    let _ = open.wait_for(|open| *open).await;
    state.tracker.delivered(webhook_id.as_deref(), sub, signed);
    HttpResponse::NoContent().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_matched_counted_and_timed() {
        let tracker = Tracker::new("run-".into(), 1);
        // Request 0 is of the warm-up.
        for seq in 0..4 {
            tracker.sent(seq, seq > 0);
        }
        tracker.accepted(0);
        tracker.accepted(1);
        // Delivered before intake's answer was read.
        tracker.delivered(Some("run-2"), 0, true);
        tracker.accepted(2);
        assert_eq!(tracker.pending(), 2);
        tracker.delivered(Some("run-1"), 0, true);
        tracker.delivered(Some("run-1"), 0, true);
        assert_eq!(tracker.pending(), 1);
        // Never accepted (a timeout at the bench), delivered all the same.
        tracker.delivered(Some("run-3"), 0, false);
        tracker.delivered(Some("other-1"), 0, true);
        tracker.delivered(Some("run-99"), 0, true);
        tracker.delivered(None, 0, true);
        // From a subscription the bench did not make.
        tracker.delivered(Some("run-0"), 1, true);
        let tally = tracker.tally();
        let c = tally.counts;
        assert_eq!(c.expected, 3);
        assert_eq!(c.delivered, 2);
        assert_eq!(c.losses, 1);
        assert_eq!(c.duplicates, 1);
        assert_eq!(c.unmatched, 4);
        assert_eq!(c.bad_signatures, 1);
        assert_eq!(c.delivered_not_accepted, 1);
        assert_eq!(tally.latency.len(), 3);
    }

    #[test]
    fn a_request_is_owed_a_delivery_by_every_subscription() {
        let tracker = Tracker::new("run-".into(), 3);
        for seq in 0..2 {
            tracker.sent(seq, true);
            tracker.accepted(seq);
        }
        assert_eq!(tracker.pending(), 2);
        for sub in [0, 2, 1] {
            tracker.delivered(Some("run-0"), sub, true);
        }
        tracker.delivered(Some("run-1"), 1, true);
        tracker.delivered(Some("run-1"), 1, true);
        tracker.delivered(Some("run-1"), 3, true);
        assert_eq!(tracker.pending(), 1);
        let tally = tracker.tally();
        let c = tally.counts;
        assert_eq!((c.expected, c.delivered, c.losses), (6, 4, 2));
        assert_eq!((c.duplicates, c.unmatched), (1, 1));
        assert_eq!(tally.latency.len(), 4);
        assert!(tally.per_sec.is_some());

        // All 64 bits of the mask.
        let tracker = Tracker::new("run-".into(), MAX_FAN);
        tracker.sent(0, true);
        tracker.accepted(0);
        for sub in 0..MAX_FAN as usize {
            tracker.delivered(Some("run-0"), sub, true);
        }
        assert_eq!(tracker.pending(), 0);
        assert_eq!(tracker.tally().counts.losses, 0);
    }
}
