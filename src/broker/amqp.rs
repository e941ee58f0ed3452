//! RabbitMQ through lapin: one connection, one channel in confirm mode, and a task
//! that keeps them alive.
//!
//! The task connects with backoff, declares the topology (idempotently) on every
//! new connection, and watches for the connection or channel to fail. A publish
//! that fails on the channel (a closed channel, a confirm that never comes) asks
//! the task to start over, so that a deleted exchange is redeclared and a
//! half-open connection is dropped. Nothing here retries a message: a failed
//! publish is reported to the publisher, which leaves the event in the outbox.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{BrokerStatus, PublishError};
use crate::config::{Config, QueueSpec};
use crate::domain::Event;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often an idle connection's state is looked at.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// The channel publishes go to, tagged with the connection it belongs to, so that
/// a failure reported late against an old connection cannot tear down a new one.
#[derive(Clone)]
struct Link {
    generation: u64,
    channel: Channel,
}

struct Shared {
    config: Arc<Config>,
    link: watch::Sender<Option<Link>>,
    status: watch::Sender<BrokerStatus>,
    /// A publish saw the channel fail: (generation, reason).
    broken: mpsc::Sender<(u64, String)>,
    stop: CancellationToken,
}

pub struct AmqpBroker {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl AmqpBroker {
    /// Starts the connection task and returns at once: publishing begins when the
    /// broker is reachable, and hookrelay runs (and stores events) until then.
    pub fn start(config: Arc<Config>) -> Self {
        let (broken_tx, broken_rx) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            config,
            link: watch::Sender::new(None),
            status: watch::Sender::new(BrokerStatus::Connecting),
            broken: broken_tx,
            stop: CancellationToken::new(),
        });
        let task = tokio::spawn(maintain(shared.clone(), broken_rx));
        Self {
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    pub fn status(&self) -> watch::Receiver<BrokerStatus> {
        self.shared.status.subscribe()
    }

    /// Stops reconnecting and closes the connection.
    pub async fn close(&self) {
        self.shared.stop.cancel();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }

    pub async fn publish(&self, events: &[Event]) -> Vec<Result<(), PublishError>> {
        let link = self.shared.link.borrow().clone();
        let Some(link) = link else {
            let reason = match &*self.shared.status.borrow() {
                BrokerStatus::Down(reason) => reason.clone(),
                _ => "not connected yet".to_string(),
            };
            return events
                .iter()
                .map(|_| Err(PublishError::Unavailable(reason.clone())))
                .collect();
        };
        let exchange = &self.shared.config.exchange;
        // Everything goes out before any confirm is awaited: one round trip for
        // the batch, not one per event.
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            pending.push(send(&link.channel, exchange, event).await);
        }
        let deadline = tokio::time::Instant::now() + self.shared.config.publish_timeout;
        let mut results = Vec::with_capacity(events.len());
        let mut broken = None;
        for sent in pending {
            let result = match sent {
                Err(e) => Err(e),
                Ok(confirm) => match tokio::time::timeout_at(deadline, confirm).await {
                    Err(_) => Err(PublishError::Timeout),
                    Ok(Err(e)) => Err(PublishError::Channel(e.to_string())),
                    Ok(Ok(Confirmation::Ack(None))) => Ok(()),
                    Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(PublishError::Unroutable(
                        returned.delivery.routing_key.to_string(),
                    )),
                    Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
                    Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Channel(
                        "the channel is not in confirm mode".into(),
                    )),
                },
            };
            if let Err(e @ (PublishError::Timeout | PublishError::Channel(_))) = &result {
                broken.get_or_insert_with(|| e.to_string());
            }
            results.push(result);
        }
        if let Some(reason) = broken {
            // Full means a report is already waiting; one is enough.
            let _ = self.shared.broken.try_send((link.generation, reason));
        }
        results
    }
}

/// Puts one event on the wire; the returned future resolves to its confirm.
async fn send(
    channel: &Channel,
    exchange: &str,
    event: &Event,
) -> Result<lapin::PublisherConfirm, PublishError> {
    let body = event.envelope_json()?;
    let mut headers = FieldTable::default();
    headers.insert("event".into(), text(&event.event));
    headers.insert("source".into(), text(event.source.as_str()));
    if let Some(product) = event.product {
        headers.insert("product".into(), text(product.as_str()));
    }
    if let Some(key) = &event.client_key {
        headers.insert("tenant".into(), text(&key.0));
    }
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2) // persistent
        .with_message_id(event.id.to_string().into())
        .with_timestamp(event.received_at.timestamp().max(0) as u64)
        .with_type(ShortString::from(event.event.as_str()))
        .with_app_id("hookrelay".into())
        .with_headers(headers);
    channel
        .basic_publish(
            exchange.into(),
            event.routing_key().into(),
            // Unroutable messages come back instead of vanishing.
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body.as_bytes(),
            properties,
        )
        .await
        .map_err(|e| PublishError::Channel(e.to_string()))
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

impl Shared {
    /// Records a state change, logging only when the broker goes up or down (not
    /// on every failed attempt while it stays down).
    fn set_status(&self, status: BrokerStatus) {
        self.status.send_if_modified(|current| {
            let flipped = std::mem::discriminant(current) != std::mem::discriminant(&status);
            if flipped {
                match &status {
                    BrokerStatus::Up => tracing::info!(exchange = %self.config.exchange, "broker connected"),
                    BrokerStatus::Down(reason) => {
                        tracing::warn!(%reason, "broker unreachable: events are stored and will be published when it returns")
                    }
                    BrokerStatus::Connecting => {}
                }
                metrics::gauge!("hookrelay_broker_up").set(if status.is_up() { 1.0 } else { 0.0 });
            }
            let changed = *current != status;
            *current = status;
            changed
        });
    }
}

async fn maintain(shared: Arc<Shared>, mut broken: mpsc::Receiver<(u64, String)>) {
    let mut delay = MIN_BACKOFF;
    let mut generation = 0u64;
    loop {
        let opened = tokio::select! {
            _ = shared.stop.cancelled() => return,
            opened = tokio::time::timeout(shared.config.amqp_connect_timeout, open(&shared.config)) => opened,
        };
        match opened {
            Ok(Ok((connection, channel))) => {
                generation += 1;
                shared.link.send_replace(Some(Link {
                    generation,
                    channel: channel.clone(),
                }));
                shared.set_status(BrokerStatus::Up);
                delay = MIN_BACKOFF;
                let failure =
                    watch_link(&shared, &connection, &channel, generation, &mut broken).await;
                shared.link.send_replace(None);
                let closing = connection.close(200, "hookrelay reconnecting or stopping".into());
                let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
                match failure {
                    Some(reason) => shared.set_status(BrokerStatus::Down(reason)),
                    None => return,
                }
            }
            Ok(Err(e)) => shared.set_status(BrokerStatus::Down(e.to_string())),
            Err(_) => shared.set_status(BrokerStatus::Down(format!(
                "no connection within {}",
                humantime::format_duration(shared.config.amqp_connect_timeout)
            ))),
        }
        // Jitter keeps several processes from reconnecting in lockstep.
        let jitter = delay.mul_f64(rand::random::<f64>() * 0.5);
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(delay + jitter) => {}
        }
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}

/// Waits until the link fails (returns why) or the broker is stopped (`None`).
async fn watch_link(
    shared: &Shared,
    connection: &Connection,
    channel: &Channel,
    generation: u64,
    broken: &mut mpsc::Receiver<(u64, String)>,
) -> Option<String> {
    let mut events = connection.events_listener();
    let mut check = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return None,
            report = broken.recv() => match report {
                Some((g, reason)) if g == generation => return Some(reason),
                Some(_) => {} // about an earlier connection
                None => return None,
            },
            event = events.next() => {
                if let Some(lapin::Event::Error(e)) = event {
                    return Some(e.to_string());
                }
            }
            _ = check.tick() => {
                if !connection.status().connected() {
                    return Some("connection closed".into());
                }
                if !channel.status().connected() {
                    return Some("channel closed by the broker".into());
                }
            }
        }
    }
}

/// Connects, declares the topology and turns on publisher confirms.
async fn open(config: &Config) -> Result<(Connection, Channel), lapin::Error> {
    let url = config
        .amqp_url
        .as_ref()
        .map(|u| u.expose_secret().to_string())
        .unwrap_or_default();
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("hookrelay pid {}", std::process::id()).into());
    let connection = Connection::connect(&url, properties).await?;
    let ready = async {
        let channel = connection.create_channel().await?;
        declare_topology(&channel, config).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok::<_, lapin::Error>(channel)
    }
    .await;
    match ready {
        Ok(channel) => Ok((connection, channel)),
        Err(e) => {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                connection.close(200, "topology declaration failed".into()),
            )
            .await;
            Err(e)
        }
    }
}

/// The name of the exchange dead letters go to.
pub fn dead_letter_exchange(exchange: &str) -> String {
    format!("{exchange}.dead")
}

/// Declares the exchange, the dead-letter exchange, the relay's queue and the
/// `[[queues]]`. Declaring what exists with the same arguments changes nothing;
/// a queue that exists with other arguments makes the broker close the channel,
/// and the error names it.
async fn declare_topology(channel: &Channel, config: &Config) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let dead = dead_letter_exchange(&config.exchange);
    for exchange in [config.exchange.as_str(), dead.as_str()] {
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
    }
    for queue in std::iter::once(&config.relay_queue).chain(&config.queues) {
        declare_queue(channel, queue, &config.exchange, &dead).await?;
    }
    Ok(())
}

async fn declare_queue(
    channel: &Channel,
    spec: &QueueSpec,
    exchange: &str,
    dead_exchange: &str,
) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let millis = |d: Duration| AMQPValue::LongLongInt(d.as_millis().min(i64::MAX as u128) as i64);

    let mut common = FieldTable::default();
    common.insert("x-queue-type".into(), text(spec.kind.as_str()));
    if let Some(expires) = spec.expires {
        common.insert("x-expires".into(), millis(expires));
    }

    let mut args = common.clone();
    args.insert("x-dead-letter-exchange".into(), text(dead_exchange));
    args.insert("x-dead-letter-routing-key".into(), text(&spec.name));
    if let Some(max) = spec.max_length {
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(max.min(i64::MAX as u64) as i64),
        );
    }
    if let Some(ttl) = spec.message_ttl {
        args.insert("x-message-ttl".into(), millis(ttl));
    }
    channel
        .queue_declare(spec.name.as_str().into(), durable, args)
        .await?;
    for pattern in &spec.bindings {
        channel
            .queue_bind(
                spec.name.as_str().into(),
                exchange.into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }

    // Where this queue's rejected, expired and overflowing messages go.
    let dead_queue = format!("{}.dead", spec.name);
    channel
        .queue_declare(dead_queue.as_str().into(), durable, common)
        .await?;
    channel
        .queue_bind(
            dead_queue.as_str().into(),
            dead_exchange.into(),
            spec.name.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}
