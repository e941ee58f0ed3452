//! The live feed of stored events: what the inspector's live tail and
//! `hookrelay tail` watch.
//!
//! Intake announces each event it stored (not its duplicates) once the commit
//! is done. Watchers get them through a bounded broadcast ring: one that falls
//! more than [`CAPACITY`] events behind is told how many it missed and is
//! dropped by its stream, so a slow browser costs the ring's memory, never
//! more. With no watcher, announcing is one atomic read.
//!
//! The feed is this process's: a deployment with several `serve` processes
//! behind a balancer shows each watcher the events of the process it reached.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::domain::Event;

/// Events a watcher may fall behind by before it is dropped.
pub const CAPACITY: usize = 512;

#[derive(Clone)]
pub struct Feed {
    events: broadcast::Sender<Arc<Event>>,
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
        let (events, _) = broadcast::channel(CAPACITY);
        Feed {
            events,
            closed: CancellationToken::new(),
        }
    }

    /// Hands a committed event to the watchers, if there are any.
    pub fn announce(&self, event: &Event) {
        if self.events.receiver_count() > 0 {
            // An error only means the last watcher left meanwhile.
            let _ = self.events.send(Arc::new(event.clone()));
        }
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

pub struct Watcher {
    events: broadcast::Receiver<Arc<Event>>,
    closed: CancellationToken,
}

/// What a watcher gets next.
pub enum Next {
    Event(Arc<Event>),
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
