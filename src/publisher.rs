//! The outbox publisher: moves committed events to the broker, and lets an event
//! leave the outbox only once the broker has confirmed it.
//!
//! Two ways in. The fast path: intake reserves a slot before it commits, takes a
//! short claim on the new outbox row in the same commit, and hands the event over
//! here, so that it is published within milliseconds. The sweeper: every second
//! (and as soon as the broker comes back) it claims whatever is due from the
//! outbox: events accepted while the broker was away, events whose publish
//! failed, and events claimed by a process that died before the broker confirmed
//! them. Claims are leases in the store, so several processes sweep one database
//! without publishing an event twice while they live, and any of them may die
//! without losing one.
//!
//! This module never blocks intake: reserving a slot is `try_reserve`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerStatus};
use crate::budget::{ByteBudget, Held};
use crate::config::Config;
use crate::domain::{now_millis, Event, EventId};
use crate::store::Store;
use crate::telemetry::catalog::{PUBLISHES, PUBLISH_CONFIRMS, PUBLISH_DELAY};

/// How often the outbox is swept for due rows.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// The longest wait before a message the broker refused (unroutable, nacked) is
/// tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Intake's handle on the publisher. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    fast: mpsc::Sender<(Event, Held)>,
    /// What events waiting on the fast path may take.
    fast_bytes: ByteBudget,
    status: watch::Receiver<BrokerStatus>,
    lease: Duration,
    /// Where committed events are announced to the live tail.
    feed: crate::feed::Feed,
}

/// A place on the fast path, with the bytes of its event.
pub struct Slot {
    place: mpsc::OwnedPermit<(Event, Held)>,
    bytes: Held,
}

impl Slot {
    /// Hands the committed event over.
    pub fn send(self, event: Event) {
        self.place.send((event, self.bytes));
    }
}

impl Publisher {
    /// A slot on the fast path for an event of `bytes`, to be filled once it is
    /// committed. `None` when the broker is down or the publisher is busy (no
    /// place, or no room in its byte budget): the event then waits in the
    /// outbox for the sweeper, which reads it back when it has room.
    pub fn reserve(&self, bytes: usize) -> Option<Slot> {
        if !self.status.borrow().is_up() {
            return None;
        }
        let bytes = self.fast_bytes.try_take(bytes)?;
        let place = self.fast.clone().try_reserve_owned().ok()?;
        Some(Slot { place, bytes })
    }

    /// The live feed committed events are announced on.
    pub fn feed(&self) -> &crate::feed::Feed {
        &self.feed
    }

    /// How long a claim on an outbox row lasts.
    pub fn lease(&self) -> Duration {
        self.lease
    }
}

/// The running publisher, to be stopped after intake has stopped.
pub struct PublisherTask {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl PublisherTask {
    /// Publishes what intake already handed over, then stops.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.handle.await {
            tracing::error!(error = %e, "publisher task failed");
        }
    }
}

pub fn start(store: Store, broker: Arc<Broker>, config: &Config) -> (Publisher, PublisherTask) {
    let batch = config.publish_batch_size as usize;
    let (fast, rx) = mpsc::channel(batch * 4);
    let status = broker.status();
    let stop = CancellationToken::new();
    let worker = Worker {
        store,
        broker,
        status: status.clone(),
        batch,
        batch_bytes: config.publish_memory as u64,
        lease: config.republish_after,
        store_failing: false,
    };
    let handle = tokio::spawn(worker.run(rx, stop.clone()));
    (
        Publisher {
            fast,
            fast_bytes: ByteBudget::new(config.publish_memory),
            status,
            lease: config.republish_after,
            feed: crate::feed::Feed::new(),
        },
        PublisherTask { stop, handle },
    )
}

struct Worker {
    store: Store,
    broker: Arc<Broker>,
    status: watch::Receiver<BrokerStatus>,
    batch: usize,
    /// Most payload bytes one claim from the outbox may bring.
    batch_bytes: u64,
    lease: Duration,
    /// Whether the last outbox read failed, so that a store outage is logged
    /// when it starts and ends rather than every second.
    store_failing: bool,
}

impl Worker {
    async fn run(mut self, mut fast: mpsc::Receiver<(Event, Held)>, stop: CancellationToken) {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some((first, held)) = fast.recv() => {
                    let mut events = vec![first];
                    let mut held = vec![held];
                    while events.len() < self.batch {
                        match fast.try_recv() {
                            Ok((event, bytes)) => {
                                events.push(event);
                                held.push(bytes);
                            }
                            Err(_) => break,
                        }
                    }
                    // Never claimed from the outbox, so never tried before.
                    self.publish(&events, &vec![0; events.len()]).await;
                    drop(held);
                }
                changed = self.status.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if self.status.borrow_and_update().is_up() {
                        self.sweep(&stop).await;
                    }
                }
                _ = sweep.tick() => self.sweep(&stop).await,
            }
        }
        // Intake has stopped: publish what it handed over. Whatever fails stays in
        // the outbox for the next process.
        fast.close();
        let mut rest = Vec::new();
        while let Ok((event, _bytes)) = fast.try_recv() {
            rest.push(event);
        }
        if !rest.is_empty() {
            self.publish(&rest, &vec![0; rest.len()]).await;
        }
    }

    /// Claims and publishes due outbox rows until none are left, the broker fails,
    /// or the publisher is stopped.
    async fn sweep(&mut self, stop: &CancellationToken) {
        while self.status.borrow().is_up() && !stop.is_cancelled() {
            let claimed = match self
                .store
                .claim_outbox(self.batch as u32, self.batch_bytes, self.lease)
                .await
            {
                Ok(claimed) => {
                    if std::mem::replace(&mut self.store_failing, false) {
                        tracing::info!("the outbox is readable again");
                    }
                    claimed
                }
                Err(e) => {
                    if !std::mem::replace(&mut self.store_failing, true) {
                        tracing::warn!(error = ?e, "cannot read the outbox; trying every second");
                    }
                    return;
                }
            };
            // A batch cut short by its byte budget is full too: more may be due.
            let bytes: usize = claimed.iter().map(|c| c.event.payload.len()).sum();
            let full = claimed.len() == self.batch || bytes as u64 * 2 > self.batch_bytes;
            if claimed.is_empty() {
                return;
            }
            let attempts: Vec<i32> = claimed.iter().map(|c| c.attempts).collect();
            let events: Vec<Event> = claimed.into_iter().map(|c| c.event).collect();
            if !self.publish(&events, &attempts).await || !full {
                return;
            }
        }
    }

    /// Publishes the events, deletes the confirmed ones from the outbox and makes
    /// the others due again. `attempts[i]` is how often `events[i]` was claimed,
    /// for the backoff. Returns whether all of them were confirmed.
    async fn publish(&self, events: &[Event], attempts: &[i32]) -> bool {
        metrics::counter!(PUBLISHES).increment(events.len() as u64);
        let results = self.broker.publish(events).await;
        let now = now_millis();
        let mut confirmed: Vec<EventId> = Vec::with_capacity(events.len());
        // Failures grouped by kind, so that a broker outage is one log line.
        let mut failed: BTreeMap<&'static str, Failed> = BTreeMap::new();
        for ((event, attempts), result) in events.iter().zip(attempts).zip(results) {
            match result {
                Ok(()) => {
                    tracing::debug!(event_id = %event.id, routing_key = %event.routing_key(), "published");
                    let delay = (now - event.received_at).to_std().unwrap_or_default();
                    metrics::histogram!(PUBLISH_DELAY).record(delay.as_secs_f64());
                    confirmed.push(event.id);
                }
                Err(e) => {
                    let group = failed.entry(e.kind()).or_insert_with(|| Failed {
                        ids: Vec::new(),
                        first: event.clone(),
                        attempts: 0,
                        error: e.to_string(),
                        transient: e.is_transient(),
                    });
                    group.ids.push(event.id);
                    group.attempts = group.attempts.max(*attempts);
                }
            }
        }
        metrics::counter!(PUBLISH_CONFIRMS, "result" => "ack").increment(confirmed.len() as u64);
        if let Err(e) = self.store.complete_outbox(&confirmed).await {
            // The claims run out and the events are published again: a duplicate,
            // never a loss. Consumers deduplicate on the message id.
            tracing::warn!(error = ?e, count = confirmed.len(), "published, but the outbox could not be updated");
        }
        let all_confirmed = failed.is_empty();
        for (kind, group) in failed {
            metrics::counter!(PUBLISH_CONFIRMS, "result" => kind).increment(group.ids.len() as u64);
            let delay = if group.transient {
                Duration::ZERO
            } else {
                backoff(group.attempts)
            };
            let retry_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
            tracing::warn!(
                reason = kind,
                error = %group.error,
                count = group.ids.len(),
                event_id = %group.first.id,
                routing_key = %group.first.routing_key(),
                retry_in = %humantime::format_duration(delay),
                "not published; kept in the outbox"
            );
            if let Err(e) = self
                .store
                .release_outbox(&group.ids, retry_at, Some(&group.error))
                .await
            {
                tracing::warn!(error = ?e, "cannot release outbox claims; they expire on their own");
            }
        }
        all_confirmed
    }
}

struct Failed {
    ids: Vec<EventId>,
    /// The first event of the group, named in the log line.
    first: Event,
    attempts: i32,
    error: String,
    transient: bool,
}

/// 1s, 2s, 4s … up to a minute, by how often the event was tried.
fn backoff(attempts: i32) -> Duration {
    let exp = attempts.clamp(0, 6) as u32;
    (Duration::from_secs(1) * 2u32.pow(exp)).min(MAX_BACKOFF)
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_minute() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(6), Duration::from_secs(60));
        assert_eq!(backoff(100), Duration::from_secs(60));
    }
}
