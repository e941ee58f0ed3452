//! The broker events are published to: RabbitMQ ([`amqp`]) in production, or the
//! in-process broker ([`local`]) of the embedded default, behind one interface.
//!
//! Both route by topic (`jira.issue_created` against `jira.*`, `#`), both confirm
//! each publish or say why not, and both report their state through a
//! [`BrokerStatus`] watch so that `/readyz` and the publisher can see it. This
//! module never touches the outbox: that is the publisher's.

pub mod amqp;
pub mod local;

use std::sync::Arc;

use tokio::sync::watch;

use crate::domain::{Event, EventId};

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
    #[error("event cannot be serialised")]
    Envelope(#[from] serde_json::Error),
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
            PublishError::Envelope(_) => "envelope",
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

    /// Closes the connection, if there is one.
    pub async fn close(&self) {
        if let Broker::Amqp(b) = self {
            b.close().await;
        }
    }
}

/// A message as a consumer receives it.
#[derive(Debug, Clone)]
pub struct Message {
    pub event_id: EventId,
    pub routing_key: String,
    /// The event envelope, as JSON.
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
