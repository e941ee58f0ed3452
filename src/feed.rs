//! The live feed of stored events: what the inspector's live tail and
//! `hookrelay tail` watch.
//!
//! Intake announces each event it stored (not its duplicates) once the commit
//! is done. Watchers get them through a bounded broadcast ring: one that falls
//! more than [`CAPACITY`] events behind is told how many it missed and is
//! dropped by its stream. The ring is bounded in bytes too: the payloads it
//! holds for watchers that have not read them yet stay under
//! [`PAYLOAD_BUDGET`]; an event announced beyond it goes out without its
//! payload (`payload_omitted`), which `events show` has. So a slow browser
//! costs at most the budget and the ring's events, never more. With no
//! watcher, announcing is one atomic read.
//!
//! The feed is this process's: a deployment with several `serve` processes
//! behind a balancer shows each watcher the events of the process it reached.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::domain::Event;

/// Events a watcher may fall behind by before it is dropped.
pub const CAPACITY: usize = 512;

/// Payload bytes the ring may hold, in all, for watchers yet to read them.
pub const PAYLOAD_BUDGET: usize = 32 * 1024 * 1024;

/// An event as the feed hands it out.
pub struct Announced {
    /// The event; its payload is `null` when `payload_omitted`.
    pub event: Event,
    /// The payload was left out: the ring held its budget of payloads.
    pub payload_omitted: bool,
    /// Gives the payload's bytes back to the budget when the last watcher
    /// is done with it.
    _held: Option<Held>,
}

struct Held {
    bytes: usize,
    total: Arc<AtomicUsize>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[derive(Clone)]
pub struct Feed {
    events: broadcast::Sender<Arc<Announced>>,
    /// Payload bytes held by announced events some watcher has not read.
    held: Arc<AtomicUsize>,
    budget: usize,
    /// Cancelled at shutdown, so that open streams end and let the server stop.
    closed: CancellationToken,
}

impl Default for Feed {
    fn default() -> Self {
        Self::new()
    }
}

impl Feed {
    pub fn new() -> Self {
        Self::with_budget(PAYLOAD_BUDGET)
    }

    /// A feed whose ring holds at most `budget` payload bytes.
    pub fn with_budget(budget: usize) -> Self {
        let (events, _) = broadcast::channel(CAPACITY);
        Feed {
            events,
            held: Arc::new(AtomicUsize::new(0)),
            budget,
            closed: CancellationToken::new(),
        }
    }

    /// Hands a committed event to the watchers, if there are any: with its
    /// payload while the budget has room for it, without it otherwise.
    pub fn announce(&self, event: &Event) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let bytes = event.payload.len();
        let reserved = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held + bytes <= self.budget).then_some(held + bytes)
            })
            .is_ok();
        let announced = if reserved {
            Announced {
                event: event.clone(),
                payload_omitted: false,
                _held: Some(Held {
                    bytes,
                    total: self.held.clone(),
                }),
            }
        } else {
            Announced {
                event: without_payload(event),
                payload_omitted: true,
                _held: None,
            }
        };
        // An error only means the last watcher left meanwhile (and drops
        // the event, giving its bytes back).
        let _ = self.events.send(Arc::new(announced));
    }

    /// Payload bytes the ring holds now.
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// A new watcher, seeing the events announced from now on.
    pub fn watch(&self) -> Watcher {
        Watcher {
            events: self.events.subscribe(),
            closed: self.closed.clone(),
        }
    }

    /// Ends every watcher's stream (at shutdown).
    pub fn close(&self) {
        self.closed.cancel();
    }
}

/// `event` with `null` for its payload, without copying the payload.
fn without_payload(event: &Event) -> Event {
    Event {
        id: event.id,
        source: event.source,
        product: event.product,
        event: event.event.clone(),
        source_event: event.source_event.clone(),
        client_key: event.client_key.clone(),
        tenant_base_url: event.tenant_base_url.clone(),
        webhook_id: event.webhook_id.clone(),
        webhook_retry: event.webhook_retry,
        webhook_flow: event.webhook_flow.clone(),
        received_at: event.received_at,
        recovered: event.recovered,
        payload: "null".into(),
    }
}

pub struct Watcher {
    events: broadcast::Receiver<Arc<Announced>>,
    closed: CancellationToken,
}

/// What a watcher gets next.
pub enum Next {
    Event(Arc<Announced>),
    /// It fell behind: this many events were dropped for it.
    Lagged(u64),
    /// The feed was closed.
    Closed,
}

impl Watcher {
    pub async fn next(&mut self) -> Next {
        tokio::select! {
            biased;
            _ = self.closed.cancelled() => Next::Closed,
            received = self.events.recv() => match received {
                Ok(event) => Next::Event(event),
                Err(broadcast::error::RecvError::Lagged(n)) => Next::Lagged(n),
                Err(broadcast::error::RecvError::Closed) => Next::Closed,
            },
        }
    }
}
