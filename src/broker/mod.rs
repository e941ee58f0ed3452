//! The broker events are published to: RabbitMQ ([`amqp`]) in production, or the
//! in-process broker ([`local`]) of the embedded default, behind one interface.
//!
//! Both route by topic (`jira.issue_created` against `jira.*`, `#`), both confirm
//! each publish or say why not, and both report their state through a
//! [`BrokerStatus`] watch so that `/readyz` and the publisher can see it. Both
//! hand out queued messages to a [`Consumer`] at least once, with manual
//! acknowledgements. This module never touches the outbox (the publisher's) and
//! never decides what a message means (the relay's).

pub mod amqp;
pub mod local;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::{Event, EventId};
use crate::store::StoreError;

/// How long a consumer of the in-process broker waits before reading the store
/// again after it failed.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Whether the broker can take publishes right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerStatus {
    /// The first connection attempt has not finished yet.
    Connecting,
    Up,
    /// Not reachable, with the reason last seen.
    Down(String),
}

impl BrokerStatus {
    pub fn is_up(&self) -> bool {
        matches!(self, BrokerStatus::Up)
    }
}

/// Why one event was not published. Every variant leaves it in the outbox.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// No queue is bound for the routing key (a mandatory publish came back).
    #[error("unroutable: no queue is bound for routing key `{0}`")]
    Unroutable(String),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("no confirm from the broker in time")]
    Timeout,
    #[error("channel failed: {0}")]
    Channel(String),
    #[error("in-process queue write failed: {0}")]
    Store(String),
}

impl PublishError {
    /// A short label for metrics and for grouping failures in one log line.
    pub fn kind(&self) -> &'static str {
        match self {
            PublishError::Unavailable(_) => "unavailable",
            PublishError::Unroutable(_) => "unroutable",
            PublishError::Nacked => "nacked",
            PublishError::Timeout => "timeout",
            PublishError::Channel(_) => "channel",
            PublishError::Store(_) => "store",
        }
    }

    /// Failures of the connection rather than of the message: retried as soon
    /// as the broker is back, without backing off.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PublishError::Unavailable(_) | PublishError::Timeout | PublishError::Channel(_)
        )
    }
}

/// The broker this process publishes to.
pub enum Broker {
    Amqp(amqp::AmqpBroker),
    Local(Arc<local::LocalBroker>),
}

impl Broker {
    pub fn kind(&self) -> &'static str {
        match self {
            Broker::Amqp(_) => "rabbitmq",
            Broker::Local(_) => "in-process",
        }
    }

    pub fn status(&self) -> watch::Receiver<BrokerStatus> {
        match self {
            Broker::Amqp(b) => b.status(),
            Broker::Local(b) => b.status(),
        }
    }

    /// Publishes each event and waits for the broker to take it. The result for
    /// `events[i]` is `results[i]`; only `Ok` means the event may leave the outbox.
    pub async fn publish(&self, events: &[Event]) -> Vec<Result<(), PublishError>> {
        match self {
            Broker::Amqp(b) => b.publish(events).await,
            Broker::Local(b) => b.publish(events).await,
        }
    }

    /// A consumer of `queue` holding at most `prefetch` unacknowledged messages.
    /// It survives reconnects (AMQP): it resumes on the next connection.
    /// Unacknowledged messages of a lost connection are redelivered by the
    /// broker. Its [`Consumer::next`] returns `None` once the broker is closed.
    ///
    /// On RabbitMQ the queue must exist (hookrelay declares the relay's queue and
    /// `[[queues]]` on each connection); while it does not, the consumer retries
    /// every second. On the in-process broker a queue that was never declared
    /// is logged as an error and the consumer yields nothing until closed.
    pub fn consume(&self, queue: &str, prefetch: u16) -> Consumer {
        self.consume_with(queue, prefetch, usize::MAX)
    }

    /// As [`Broker::consume`], but a message whose body is longer than
    /// `max_body` is handed over with an empty body (see [`Message::body`]), so
    /// that prefetched messages hold at most `prefetch × max_body` bytes.
    pub fn consume_with(&self, queue: &str, prefetch: u16, max_body: usize) -> Consumer {
        let inner = match self {
            Broker::Amqp(b) => ConsumerInner::Amqp(b.consume(queue, prefetch, max_body)),
            Broker::Local(b) => {
                let stop = b.stopped();
                match b.consume(queue, prefetch.into(), max_body) {
                    Some(consumer) => ConsumerInner::Local {
                        consumer,
                        stop,
                        failing: false,
                        queue: queue.to_string(),
                    },
                    None => {
                        tracing::error!(%queue, "cannot consume an in-process queue that was never declared");
                        ConsumerInner::Undeclared { stop }
                    }
                }
            }
        };
        Consumer { inner }
    }

    /// Closes the connection, if there is one, and ends the consumers.
    pub async fn close(&self) {
        match self {
            Broker::Amqp(b) => b.close().await,
            Broker::Local(b) => b.close(),
        }
    }
}

/// Reads one queue of either broker; see [`Broker::consume`].
pub struct Consumer {
    inner: ConsumerInner,
}

enum ConsumerInner {
    Amqp(amqp::AmqpConsumer),
    Local {
        consumer: local::LocalConsumer,
        /// The broker's: [`local::LocalConsumer`] itself never ends.
        stop: CancellationToken,
        /// The last read failed: an outage is logged once, not every second.
        failing: bool,
        /// For the log.
        queue: String,
    },
    /// An in-process queue that does not exist: nothing ever arrives.
    Undeclared {
        stop: CancellationToken,
    },
}

impl Consumer {
    /// The next message; waits until there is one. Returns `None` only once the
    /// broker has been closed. Store and connection failures do not end it: it
    /// logs them and keeps trying.
    pub async fn next(&mut self) -> Option<Delivery> {
        match &mut self.inner {
            ConsumerInner::Amqp(consumer) => consumer.next().await.map(|d| Delivery {
                inner: DeliveryInner::Amqp(d),
            }),
            ConsumerInner::Local {
                consumer,
                stop,
                failing,
                queue,
            } => loop {
                let next = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return None,
                    next = consumer.next() => next,
                };
                match next {
                    Ok(d) => {
                        if std::mem::replace(failing, false) {
                            tracing::info!(%queue, "the in-process queue is readable again");
                        }
                        return Some(Delivery {
                            inner: DeliveryInner::Local(d),
                        });
                    }
                    Err(e) => {
                        if !std::mem::replace(failing, true) {
                            tracing::warn!(%queue, error = ?e, "cannot read the in-process queue; trying every second");
                        }
                        tokio::select! {
                            _ = stop.cancelled() => return None,
                            _ = tokio::time::sleep(STORE_RETRY) => {}
                        }
                    }
                }
            },
            ConsumerInner::Undeclared { stop } => {
                stop.cancelled().await;
                None
            }
        }
    }
}

impl Consumer {
    /// A message already received or claimed, if there is one. Never waits and
    /// never does I/O, so, unlike dropping a pending [`Consumer::next`], it
    /// cannot leave a message claimed with nobody holding it.
    pub fn try_next(&mut self) -> Option<Delivery> {
        let inner = match &mut self.inner {
            ConsumerInner::Amqp(consumer) => DeliveryInner::Amqp(consumer.try_next()?),
            ConsumerInner::Local { consumer, .. } => DeliveryInner::Local(consumer.try_next()?),
            ConsumerInner::Undeclared { .. } => return None,
        };
        Some(Delivery { inner })
    }
}

/// A message handed to a [`Consumer`], to be settled once: acknowledged,
/// requeued or rejected. Dropped unsettled, it goes back to the queue (at once on
/// RabbitMQ, after its lease in-process).
pub struct Delivery {
    inner: DeliveryInner,
}

enum DeliveryInner {
    Amqp(amqp::AmqpDelivery),
    Local(local::LocalDelivery),
}

impl Delivery {
    pub fn message(&self) -> &Message {
        match &self.inner {
            DeliveryInner::Amqp(d) => &d.message,
            DeliveryInner::Local(d) => &d.message,
        }
    }

    /// Done with: the message leaves the queue. An error means it was not
    /// removed and will be handed out again.
    pub async fn ack(self) -> Result<(), ConsumeError> {
        match self.inner {
            DeliveryInner::Amqp(d) => d.ack().await,
            DeliveryInner::Local(d) => Ok(d.ack().await?),
        }
    }

    /// Not done with: the queue hands it out again (marked redelivered).
    pub async fn requeue(self) -> Result<(), ConsumeError> {
        match self.inner {
            DeliveryInner::Amqp(d) => d.requeue().await,
            DeliveryInner::Local(d) => Ok(d.requeue().await?),
        }
    }

    /// Unprocessable: on RabbitMQ it is dead-lettered into `<queue>.dead`; the
    /// in-process broker has no dead letters and drops it. The caller logs why.
    pub async fn reject(self) -> Result<(), ConsumeError> {
        match self.inner {
            DeliveryInner::Amqp(d) => d.reject().await,
            DeliveryInner::Local(d) => Ok(d.ack().await?),
        }
    }
}

/// Why a delivery could not be settled. The message stays queued and is handed
/// out again, so a caller that does its work idempotently may only log this.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("in-process queue update failed")]
    Store(#[from] StoreError),
    #[error("channel failed")]
    Channel(#[source] lapin::Error),
    /// The connection or channel the message came on has closed; RabbitMQ has
    /// put the message back.
    #[error("the message's channel is closed")]
    ChannelClosed,
    /// The broker did not take the acknowledgement in time (a silent link);
    /// the message comes back once the broker drops the connection.
    #[error("the broker did not take the acknowledgement in time")]
    Timeout,
}

/// A message as a consumer receives it.
#[derive(Debug, Clone)]
pub struct Message {
    pub event_id: EventId,
    pub routing_key: String,
    /// The event envelope, as JSON; empty when the consumer asked for bodies
    /// up to a size and this one was longer (the event is in the store).
    pub body: String,
    /// True when this message was handed out before and not acknowledged.
    pub redelivered: bool,
}

/// A topic pattern RabbitMQ accepts: dot-separated words, each `*`, `#`, or a
/// word without either.
pub fn valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= 255
        && pattern
            .split('.')
            .all(|w| matches!(w, "*" | "#") || !(w.contains('*') || w.contains('#')))
}

/// RabbitMQ's topic matching: `*` is exactly one word, `#` zero or more.
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(w), Some(kw)) if w == kw => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = routing_key.split('.').collect();
    go(&p, &k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_matching_follows_rabbitmq() {
        for (pattern, key, expected) in [
            ("#", "jira.issue_created", true),
            ("jira.*", "jira.issue_created", true),
            ("jira.*", "confluence.page_updated", false),
            ("*.page_updated", "confluence.page_updated", true),
            ("jira.#", "jira", true),
            ("jira.*", "jira", false),
            ("#.issue_created", "jira.issue_created", true),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
            ("jira.issue_created", "jira.issue_created", true),
            ("jira.issue_created", "jira.issue_created.x", false),
            ("webtrigger.*", "webtrigger.deploy-hook", true),
        ] {
            assert_eq!(
                topic_matches(pattern, key),
                expected,
                "{pattern} against {key}"
            );
        }
    }

    #[test]
    fn patterns_are_checked() {
        assert!(valid_pattern("jira.*"));
        assert!(valid_pattern("#"));
        assert!(valid_pattern("confluence.page_updated"));
        assert!(!valid_pattern(""));
        assert!(!valid_pattern("jira.issue_*"));
        assert!(!valid_pattern("jira.#x"));
    }
}
