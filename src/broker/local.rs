//! The in-process broker of the embedded default: topic routing into durable
//! queues kept in the store, and at-least-once delivery to consumers in this
//! process.
//!
//! A publish writes one row per (bound queue, event) and counts as confirmed
//! once that commit returns, so the outbox row can go. A consumer claims rows for
//! a lease and deletes them when it acknowledges; a message not acknowledged in
//! time (its consumer died, or the process did) is handed out again. Nothing is
//! held in memory beyond a consumer's prefetch.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{topic_matches, BrokerStatus, Message, PublishError};
use crate::config::Config;
use crate::domain::{Event, EventId};
use crate::store::{Claimed, LocalRoute, Store, StoreError};

/// How often an idle consumer looks for messages whose lease ran out, or that
/// another process queued.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Most payload bytes one claim reads from the store (one message at least).
const CLAIM_BYTES: u64 = 8 * 1024 * 1024;

struct LocalQueue {
    name: String,
    bindings: Vec<String>,
    /// Woken when messages are queued or a delivery is settled.
    ready: Arc<Notify>,
}

pub struct LocalBroker {
    store: Store,
    queues: RwLock<Vec<LocalQueue>>,
    /// A consumer that holds a message this long without settling it loses it to
    /// the next claim.
    lease: Duration,
    /// Always `Up`: kept so that receivers never see a closed channel.
    status: watch::Sender<BrokerStatus>,
    /// Cancelled by [`LocalBroker::close`]: consumers of [`super::Consumer`]
    /// see it and end.
    stop: CancellationToken,
}

impl LocalBroker {
    /// The broker with the relay's queue declared. `[[queues]]` are RabbitMQ
    /// queues for services outside this process, so they are not declared here.
    pub fn new(store: Store, config: &Config) -> Self {
        let broker = Self {
            store,
            queues: RwLock::new(Vec::new()),
            lease: config.republish_after,
            status: watch::Sender::new(BrokerStatus::Up),
            stop: CancellationToken::new(),
        };
        broker.declare(&config.relay_queue.name, &config.relay_queue.bindings);
        metrics::gauge!(crate::telemetry::catalog::BROKER_UP).set(1.0);
        if !config.queues.is_empty() {
            tracing::warn!(
                queues = config.queues.len(),
                "[[queues]] are declared on RabbitMQ only; without HOOKRELAY_AMQP_URL they are ignored"
            );
        }
        broker
    }

    pub fn status(&self) -> watch::Receiver<BrokerStatus> {
        self.status.subscribe()
    }

    /// Ends the consumers made through [`super::Broker::consume`]. Queued
    /// messages stay in the store; a [`LocalConsumer`] used directly is not
    /// affected.
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// Cancelled once the broker is closed.
    pub(super) fn stopped(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Declares a queue, or replaces its bindings. Messages published from now on
    /// are routed to it; what is already queued for it stays.
    pub fn declare(&self, name: &str, bindings: &[String]) {
        let mut queues = self.queues.write().unwrap_or_else(|e| e.into_inner());
        match queues.iter_mut().find(|q| q.name == name) {
            Some(q) => q.bindings = bindings.to_vec(),
            None => queues.push(LocalQueue {
                name: name.to_string(),
                bindings: bindings.to_vec(),
                ready: Arc::new(Notify::new()),
            }),
        }
    }

    pub async fn publish(&self, events: &[Event]) -> Vec<Result<(), PublishError>> {
        let keys: Vec<String> = events.iter().map(Event::routing_key).collect();
        let mut results = Vec::with_capacity(events.len());
        let mut routes: Vec<(String, EventId)> = Vec::new();
        let mut woken: Vec<Arc<Notify>> = Vec::new();
        {
            let queues = self.queues.read().unwrap_or_else(|e| e.into_inner());
            for (i, event) in events.iter().enumerate() {
                let before = routes.len();
                for queue in queues.iter() {
                    if queue.bindings.iter().any(|p| topic_matches(p, &keys[i])) {
                        routes.push((queue.name.clone(), event.id));
                        if !woken.iter().any(|n| Arc::ptr_eq(n, &queue.ready)) {
                            woken.push(queue.ready.clone());
                        }
                    }
                }
                results.push(if routes.len() > before {
                    Ok(())
                } else {
                    Err(PublishError::Unroutable(keys[i].clone()))
                });
            }
        }
        let rows: Vec<LocalRoute<'_>> = routes
            .iter()
            .map(|(queue, event_id)| LocalRoute {
                queue,
                event_id: *event_id,
            })
            .collect();
        if let Err(e) = self.store.enqueue_local(&rows).await {
            let reason = e.to_string();
            for result in results.iter_mut().filter(|r| r.is_ok()) {
                *result = Err(PublishError::Store(reason.clone()));
            }
            return results;
        }
        for ready in woken {
            ready.notify_one();
        }
        results
    }

    /// A consumer of `queue` holding at most `prefetch` unsettled messages.
    /// `None` if the queue was never declared.
    pub fn consume(
        self: &Arc<Self>,
        queue: &str,
        prefetch: u32,
        max_body: usize,
    ) -> Option<LocalConsumer> {
        let ready = self
            .queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|q| q.name == queue)?
            .ready
            .clone();
        Some(LocalConsumer {
            broker: self.clone(),
            queue: queue.to_string(),
            ready,
            permits: Arc::new(Semaphore::new(prefetch.max(1) as usize)),
            buffered: VecDeque::new(),
            max_body,
        })
    }
}

/// Reads one in-process queue.
pub struct LocalConsumer {
    broker: Arc<LocalBroker>,
    queue: String,
    ready: Arc<Notify>,
    /// One permit per unsettled delivery: the prefetch bound.
    permits: Arc<Semaphore>,
    buffered: VecDeque<LocalDelivery>,
    /// Longer envelopes are handed over with an empty body.
    max_body: usize,
}

impl LocalConsumer {
    /// A message already claimed, if there is one; never touches the store.
    pub fn try_next(&mut self) -> Option<LocalDelivery> {
        self.buffered.pop_front()
    }

    /// The next message, waiting until there is one.
    pub async fn next(&mut self) -> Result<LocalDelivery, StoreError> {
        loop {
            if let Some(delivery) = self.buffered.pop_front() {
                return Ok(delivery);
            }
            let free = self.permits.available_permits();
            if free > 0 {
                let claimed = self
                    .broker
                    .store
                    .claim_local(&self.queue, free as u32, CLAIM_BYTES, self.broker.lease)
                    .await?;
                for row in claimed {
                    let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                        break;
                    };
                    self.buffered.push_back(LocalDelivery {
                        message: delivery(row, self.max_body),
                        store: self.broker.store.clone(),
                        queue: self.queue.clone(),
                        ready: self.ready.clone(),
                        _permit: permit,
                    });
                }
                if !self.buffered.is_empty() {
                    continue;
                }
            }
            tokio::select! {
                _ = self.ready.notified() => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }
}

fn delivery(row: Claimed, max_body: usize) -> Message {
    let body = if row.event.payload.len() > max_body {
        String::new()
    } else {
        row.event.envelope_json()
    };
    Message {
        event_id: row.event.id,
        // Routing keys follow from the event, so the queue does not keep them.
        routing_key: row.event.routing_key(),
        body,
        redelivered: row.attempts > 1,
    }
}

/// A message handed to a consumer, to be acknowledged or requeued. Dropping it
/// unsettled frees its prefetch slot; the message comes back after the lease.
pub struct LocalDelivery {
    pub message: Message,
    store: Store,
    queue: String,
    ready: Arc<Notify>,
    _permit: OwnedSemaphorePermit,
}

impl LocalDelivery {
    /// Done with: the message leaves the queue.
    pub async fn ack(self) -> Result<(), StoreError> {
        self.settle(None).await
    }

    /// Not done with: hand it out again now.
    pub async fn requeue(self) -> Result<(), StoreError> {
        self.settle(Some(crate::domain::now_millis())).await
    }

    async fn settle(
        self,
        requeue_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), StoreError> {
        let LocalDelivery {
            message,
            store,
            queue,
            ready,
            _permit,
        } = self;
        let result = store
            .settle_local(&queue, message.event_id, requeue_at)
            .await;
        // Free the prefetch slot before waking the consumer, so that it can claim.
        drop(_permit);
        ready.notify_one();
        result
    }
}
