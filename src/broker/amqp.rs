//! RabbitMQ through lapin: one connection, one channel in confirm mode for
//! publishing, a channel of its own for each consumer, and a task that keeps the
//! connection alive.
//!
//! The task connects with backoff, declares the topology (idempotently) on every
//! new connection, and watches for the connection or channel to fail. A publish
//! that fails on the channel (a closed channel, a confirm that never comes) asks
//! the task to start over, so that a deleted exchange is redeclared and a
//! half-open connection is dropped. Nothing here retries a message: a failed
//! publish is reported to the publisher, which leaves the event in the outbox.
//!
//! Each event is published twice on the channel: to the topic exchange, for
//! downstream consumers, and straight to the relay's queue through the default
//! exchange, `mandatory`, so that an event is counted as published only once the
//! relay queue holds it. A publish that comes back unroutable, or a consumer whose
//! queue is gone, makes the task declare the topology again.
//!
//! Liveness: the connection asks for a short heartbeat
//! (`HOOKRELAY_AMQP_HEARTBEAT`), so that both sides drop a silent link, and the
//! broker hands a dead consumer's unacknowledged messages to another, within
//! two heartbeats; and the task probes the broker every second, so that a
//! stalled link is reported down within a few seconds.
//!
//! Consumers follow the connection: each has a task that opens a channel on
//! whatever connection is current and moves to the next one when it is replaced.
//! What a consumer held unacknowledged on a lost connection is handed out again
//! by RabbitMQ, not by this module.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Acker;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{BrokerStatus, ConsumeError, Message, PublishError};
use crate::config::{Config, QueueSpec};
use crate::domain::{Event, EventId};
use crate::telemetry::catalog;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often an idle connection's state is looked at.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How often the broker is asked a question it must answer, and how long it has.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an acknowledgement may take to be written.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest payload whose envelope the relay queue's copy carries.
const RELAY_INLINE: usize = 64 * 1024;
/// How long a consumer waits before trying again on the same connection after
/// its channel failed (a queue that does not exist closes the channel at once).
const CONSUME_RETRY: Duration = Duration::from_secs(1);

/// The current connection and the channel publishes go to, tagged with the
/// connection's generation, so that a failure reported late against an old
/// connection cannot tear down a new one.
#[derive(Clone)]
struct Link {
    generation: u64,
    /// Consumers open their own channels on it: acknowledgements must not share
    /// a channel with confirm-mode publishing, whose failure restarts the link.
    connection: Arc<Connection>,
    channel: Channel,
}

struct Shared {
    config: Arc<Config>,
    link: watch::Sender<Option<Link>>,
    status: watch::Sender<BrokerStatus>,
    /// A publish saw the channel fail: (generation, reason).
    broken: mpsc::Sender<(u64, String)>,
    /// A publish came back unroutable or a consumer's queue went away: the
    /// topology is declared again on the current connection.
    redeclare: tokio::sync::Notify,
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
            redeclare: tokio::sync::Notify::new(),
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

    /// A consumer of `queue` with at most `prefetch` unacknowledged messages
    /// (at least 1: AMQP's 0 would mean no limit). It starts when the broker is
    /// reachable and moves to each new connection; it ends when the broker is
    /// closed or the consumer is dropped. Spawns its task, so it must be called
    /// inside the Tokio runtime.
    pub fn consume(&self, queue: &str, prefetch: u16, max_body: usize) -> AmqpConsumer {
        let prefetch = prefetch.max(1);
        let tag = format!(
            "hookrelay-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        );
        let (tx, deliveries) = mpsc::channel(prefetch.into());
        let span = tracing::info_span!("amqp_consumer", queue = %queue, consumer_tag = %tag);
        let reader = Reader {
            shared: self.shared.clone(),
            links: self.shared.link.subscribe(),
            queue: queue.to_string(),
            tag,
            prefetch,
            max_body,
            deliveries: tx,
        };
        tokio::spawn(reader.run().instrument(span));
        AmqpConsumer {
            deliveries,
            stop: self.shared.stop.clone(),
        }
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
        let config = &self.shared.config;
        // Everything goes out before any confirm is awaited: one round trip for
        // the batch, not one per event.
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let topic = send(&link.channel, Route::Exchange(config), event).await;
            let relay = send(&link.channel, Route::RelayQueue(config), event).await;
            pending.push((topic, relay));
        }
        let deadline = tokio::time::Instant::now() + config.publish_timeout;
        let mut results = Vec::with_capacity(events.len());
        let mut broken = None;
        let mut unroutable = false;
        for (topic, relay) in pending {
            let topic = confirmed(topic, deadline).await;
            let relay = confirmed(relay, deadline).await;
            // Both, or the event stays in the outbox (and its topic message may
            // be published again: at least once).
            let result = relay.and(topic);
            match &result {
                Err(e @ (PublishError::Timeout | PublishError::Channel(_))) => {
                    broken.get_or_insert_with(|| e.to_string());
                }
                Err(PublishError::Unroutable(_)) => unroutable = true,
                _ => {}
            }
            results.push(result);
        }
        if let Some(reason) = broken {
            // Full means a report is already waiting; one is enough.
            let _ = self.shared.broken.try_send((link.generation, reason));
        } else if unroutable {
            self.shared.redeclare.notify_one();
        }
        results
    }
}

/// What became of one publish.
async fn confirmed(
    sent: Result<lapin::PublisherConfirm, PublishError>,
    deadline: tokio::time::Instant,
) -> Result<(), PublishError> {
    match tokio::time::timeout_at(deadline, sent?).await {
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
    }
}

/// Reads one queue; fed by a task that follows the connection (see the module
/// doc). Dropping it cancels the consumer on the broker.
pub struct AmqpConsumer {
    /// Bounded by the prefetch: the broker never has more than that many
    /// unacknowledged messages out to this consumer anyway.
    deliveries: mpsc::Receiver<AmqpDelivery>,
    /// The broker's: once it is closed nothing can be settled any more.
    stop: CancellationToken,
}

impl AmqpConsumer {
    /// The next message; waits until there is one. `None` once the broker has
    /// been closed.
    pub async fn next(&mut self) -> Option<AmqpDelivery> {
        loop {
            let delivery = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return None,
                delivery = self.deliveries.recv() => delivery?,
            };
            if delivery.acker.usable() {
                return Some(delivery);
            }
            // Its channel has gone since it was received: RabbitMQ hands it out
            // again on the next one, so working on it now would only duplicate.
            tracing::debug!(event_id = %delivery.message.event_id, "skipping a message of a lost channel");
        }
    }

    /// A message already received, if there is one; never waits.
    pub fn try_next(&mut self) -> Option<AmqpDelivery> {
        while let Ok(delivery) = self.deliveries.try_recv() {
            if delivery.acker.usable() {
                return Some(delivery);
            }
        }
        None
    }
}

/// A message received from RabbitMQ, to be settled once. Dropped unsettled, it
/// is handed back to the queue (as by [`AmqpDelivery::requeue`]), so that a
/// failed worker does not hold a prefetch slot for good.
pub struct AmqpDelivery {
    pub message: Message,
    acker: Acker,
    /// Keeps the channel open until this message is settled, even after its
    /// consumer was dropped: closing it would hand the message out again.
    _channel: Channel,
}

impl AmqpDelivery {
    /// Done with: the message leaves the queue.
    pub async fn ack(self) -> Result<(), ConsumeError> {
        settle_within(self.acker.ack(Default::default())).await
    }

    /// Not done with: the queue hands it out again.
    pub async fn requeue(self) -> Result<(), ConsumeError> {
        settle_within(self.acker.reject(BasicRejectOptions { requeue: true })).await
    }

    /// Unprocessable: the queue's dead-letter exchange takes it, into
    /// `<queue>.dead`.
    pub async fn reject(self) -> Result<(), ConsumeError> {
        settle_within(self.acker.reject(BasicRejectOptions { requeue: false })).await
    }
}

impl Drop for AmqpDelivery {
    fn drop(&mut self) {
        // Not usable once settled, or once its channel is gone (and with it the
        // broker's record of the delivery).
        if !self.acker.usable() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime left: the channel closes with the process
        };
        let acker = self.acker.clone();
        runtime.spawn(async move {
            let _ = acker.reject(BasicRejectOptions { requeue: true }).await;
        });
    }
}

/// Settles with a deadline: on a silent link the write may never complete, and
/// a consumer waiting on it would stop consuming for good.
async fn settle_within(
    settling: impl std::future::Future<Output = Result<bool, lapin::Error>>,
) -> Result<(), ConsumeError> {
    match tokio::time::timeout(SETTLE_TIMEOUT, settling).await {
        Ok(result) => settled(result),
        Err(_) => Err(ConsumeError::Timeout),
    }
}

/// lapin answers `Ok(false)` when the delivery's channel has closed: the broker
/// has already put the message back.
fn settled(result: Result<bool, lapin::Error>) -> Result<(), ConsumeError> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(ConsumeError::ChannelClosed),
        Err(e) => Err(ConsumeError::Channel(e)),
    }
}

/// The task behind one [`AmqpConsumer`].
struct Reader {
    shared: Arc<Shared>,
    links: watch::Receiver<Option<Link>>,
    queue: String,
    /// One tag for the consumer's whole life, so that it can be followed in
    /// RabbitMQ's management UI and in the log across reconnects.
    tag: String,
    prefetch: u16,
    /// Longer bodies are dropped on arrival (see [`super::Message::body`]).
    max_body: usize,
    deliveries: mpsc::Sender<AmqpDelivery>,
}

/// Why a [`Reader`] left a channel.
enum Left {
    /// The broker was closed or the consumer dropped: the task ends.
    Stopped,
    /// The connection was replaced: go to the new one at once.
    Replaced,
    /// The channel failed while its connection stayed: try again after a pause.
    Failed(String),
}

impl Reader {
    async fn run(mut self) {
        // The last failure logged, so that a queue missing for minutes is one
        // warning, not one a second.
        let mut failing: Option<String> = None;
        loop {
            let link = tokio::select! {
                _ = self.shared.stop.cancelled() => return,
                _ = self.deliveries.closed() => return,
                link = self.links.wait_for(Option::is_some) => match link {
                    Ok(link) => link.clone(),
                    Err(_) => return, // the broker is gone
                },
            };
            let Some(link) = link else { continue };
            match self.read(&link, &mut failing).await {
                Left::Stopped => return,
                Left::Replaced => {
                    tracing::debug!("connection replaced; consuming on the next one");
                }
                Left::Failed(reason) => {
                    if !link.connection.status().connected() {
                        // The connection's task reports this one.
                        tracing::debug!(%reason, "connection lost; consuming on the next one");
                    } else if failing.as_ref() != Some(&reason) {
                        tracing::warn!(%reason, "cannot consume; retrying");
                        failing = Some(reason);
                    } else {
                        tracing::debug!(%reason, "cannot consume; retrying");
                    }
                    if !self.pause(link.generation).await {
                        return;
                    }
                }
            }
        }
    }

    /// Waits [`CONSUME_RETRY`], or less if the connection is replaced meanwhile.
    /// False if the task should end.
    async fn pause(&mut self, generation: u64) -> bool {
        let retry = tokio::time::sleep(CONSUME_RETRY);
        tokio::pin!(retry);
        loop {
            tokio::select! {
                _ = self.shared.stop.cancelled() => return false,
                _ = self.deliveries.closed() => return false,
                _ = &mut retry => return true,
                changed = self.links.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                    if current_generation(&self.links) != Some(generation) {
                        return true;
                    }
                }
            }
        }
    }

    /// Consumes on one connection until it is replaced, the channel fails or the
    /// task should end.
    async fn read(&mut self, link: &Link, failing: &mut Option<String>) -> Left {
        let open = async {
            let channel = link.connection.create_channel().await?;
            channel
                .basic_qos(self.prefetch, BasicQosOptions { global: false })
                .await?;
            let consumer = channel
                .basic_consume(
                    self.queue.as_str().into(),
                    self.tag.as_str().into(),
                    BasicConsumeOptions::default(), // manual acknowledgements
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((channel, consumer))
        };
        // A half-open connection can leave these unanswered.
        let limit = self.shared.config.amqp_connect_timeout;
        let (channel, mut consumer) = tokio::select! {
            _ = self.shared.stop.cancelled() => return Left::Stopped,
            opened = tokio::time::timeout(limit, open) => match opened {
                Ok(Ok(opened)) => opened,
                Ok(Err(e)) => {
                    if is_not_found(&e) {
                        self.shared.redeclare.notify_one();
                    }
                    return Left::Failed(e.to_string());
                }
                Err(_) => return Left::Failed(format!(
                    "no answer within {}", humantime::format_duration(limit)
                )),
            },
        };
        if failing.take().is_some() {
            tracing::info!("consuming again");
        } else {
            tracing::debug!(generation = link.generation, "consuming");
        }
        loop {
            let delivery = tokio::select! {
                _ = self.shared.stop.cancelled() => return Left::Stopped,
                _ = self.deliveries.closed() => return Left::Stopped,
                changed = self.links.changed() => {
                    if changed.is_err() {
                        return Left::Stopped;
                    }
                    if current_generation(&self.links) != Some(link.generation) {
                        return Left::Replaced;
                    }
                    continue;
                }
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return Left::Failed(e.to_string()),
                    None => {
                        // The queue was deleted (or the broker cancelled us for
                        // another reason): have it declared again.
                        self.shared.redeclare.notify_one();
                        return Left::Failed("the broker cancelled the consumer".into());
                    }
                },
            };
            let Some(delivery) = accept(delivery, &channel, self.max_body).await else {
                continue;
            };
            tokio::select! {
                _ = self.shared.stop.cancelled() => return Left::Stopped,
                sent = self.deliveries.send(delivery) => if sent.is_err() {
                    return Left::Stopped;
                },
            }
        }
    }
}

fn current_generation(links: &watch::Receiver<Option<Link>>) -> Option<u64> {
    links.borrow().as_ref().map(|link| link.generation)
}

/// The delivery as a [`Message`], or `None` after dead-lettering it if it cannot
/// be one: hookrelay publishes every message with its event id and a JSON body,
/// so anything else was put on the queue by someone else, and would only come
/// back if requeued.
async fn accept(
    mut delivery: lapin::message::Delivery,
    channel: &Channel,
    max_body: usize,
) -> Option<AmqpDelivery> {
    if delivery.data.len() > max_body {
        delivery.data = Vec::new();
    }
    let raw_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_string());
    let event_id = raw_id
        .as_deref()
        .and_then(|id| uuid::Uuid::parse_str(id).ok())
        .map(EventId);
    let body = String::from_utf8(std::mem::take(&mut delivery.data));
    // Straight to a queue (the relay's copy), the routing key is the queue's
    // name; the event's own key is in a header.
    let header_key = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("routing_key"))
        .and_then(|v| match v {
            AMQPValue::LongString(s) => Some(s.to_string()),
            _ => None,
        });
    let routing_key = match header_key {
        Some(key) if delivery.exchange.as_str().is_empty() => key,
        _ => delivery.routing_key.to_string(),
    };
    let problem = match (event_id, body) {
        (Some(event_id), Ok(body)) => {
            return Some(AmqpDelivery {
                message: Message {
                    event_id,
                    routing_key,
                    body,
                    redelivered: delivery.redelivered,
                },
                acker: delivery.acker,
                _channel: channel.clone(),
            })
        }
        (None, _) => "no event id in its message_id",
        (Some(_), Err(_)) => "its body is not UTF-8",
    };
    tracing::error!(
        message_id = raw_id.as_deref().unwrap_or(""),
        routing_key = %routing_key,
        "unusable message dead-lettered: {problem}"
    );
    if let Err(e) =
        settle_within(delivery.acker.reject(BasicRejectOptions { requeue: false })).await
    {
        // It comes back on the next channel, and is rejected there.
        tracing::warn!(error = ?e, "cannot reject an unusable message");
    }
    None
}

/// Where one copy of an event goes.
#[derive(Clone, Copy)]
enum Route<'a> {
    /// The topic exchange, under the event's routing key, for downstream
    /// consumers. `mandatory` when hookrelay declares queues for them, so that
    /// an event no declared queue took comes back.
    Exchange(&'a Config),
    /// The relay's queue, through the default exchange: always `mandatory`.
    RelayQueue(&'a Config),
}

/// Puts one copy of an event on the wire; the returned future resolves to its
/// confirm.
async fn send(
    channel: &Channel,
    route: Route<'_>,
    event: &Event,
) -> Result<lapin::PublisherConfirm, PublishError> {
    // The relay reads a large event from the store when its turn comes, so its
    // copy carries the envelope only when it is small: a backlog of large
    // events does not pass through the relay's prefetch.
    let body = match route {
        Route::RelayQueue(_) if event.payload.len() > RELAY_INLINE => String::new(),
        _ => event.envelope_json(),
    };
    let mut headers = FieldTable::default();
    // The relay's copy travels under its queue's name: the key goes along.
    headers.insert("routing_key".into(), text(&event.routing_key()));
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
    let (exchange, routing_key, mandatory) = match route {
        Route::Exchange(config) => (
            config.exchange.as_str(),
            event.routing_key(),
            !config.queues.is_empty(),
        ),
        Route::RelayQueue(config) => ("", config.relay_queue.name.clone(), true),
    };
    channel
        .basic_publish(
            exchange.into(),
            routing_key.as_str().into(),
            // Unroutable messages come back instead of vanishing.
            BasicPublishOptions {
                mandatory,
                ..BasicPublishOptions::default()
            },
            body.as_bytes(),
            properties,
        )
        .await
        .map_err(|e| PublishError::Channel(e.to_string()))
}

/// A channel closed because a queue or exchange does not exist (404).
fn is_not_found(e: &lapin::Error) -> bool {
    e.to_string().contains("NOT_FOUND")
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
                metrics::gauge!(catalog::BROKER_UP).set(if status.is_up() { 1.0 } else { 0.0 });
                if status.is_up() && matches!(current, BrokerStatus::Down(_)) {
                    metrics::counter!(catalog::BROKER_RECONNECTS).increment(1);
                }
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
                let connection = Arc::new(connection);
                shared.link.send_replace(Some(Link {
                    generation,
                    connection: connection.clone(),
                    channel: channel.clone(),
                }));
                shared.set_status(BrokerStatus::Up);
                delay = MIN_BACKOFF;
                let failure =
                    watch_link(&shared, &connection, &channel, generation, &mut broken).await;
                shared.link.send_replace(None);
                if let Some(reason) = &failure {
                    shared.set_status(BrokerStatus::Down(reason.clone()));
                }
                // On a dead link the close cannot complete; the heartbeat then
                // ends the connection's socket on both sides.
                let closing = connection.close(200, "hookrelay reconnecting or stopping".into());
                let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
                if failure.is_none() {
                    return;
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
    let mut probe = tokio::time::interval(PROBE_INTERVAL);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return None,
            _ = shared.redeclare.notified() => {
                let declared =
                    tokio::time::timeout(PROBE_TIMEOUT * 2, declare_topology(channel, &shared.config)).await;
                match declared {
                    Ok(Ok(())) => tracing::warn!("a queue had gone: topology declared again"),
                    Ok(Err(e)) => return Some(format!("declaring the topology again: {e}")),
                    Err(_) => return Some("no answer while declaring the topology again".into()),
                }
            }
            _ = probe.tick() => {
                // A question the broker must answer: a silent link shows here
                // within seconds, long before TCP or a heartbeat gives up.
                let passive = ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() };
                let asked = channel.exchange_declare(
                    shared.config.exchange.as_str().into(),
                    ExchangeKind::Topic,
                    passive,
                    FieldTable::default(),
                );
                match tokio::time::timeout(PROBE_TIMEOUT, asked).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Some(e.to_string()),
                    Err(_) => return Some(format!(
                        "the broker did not answer within {}",
                        humantime::format_duration(PROBE_TIMEOUT)
                    )),
                }
            }
            report = broken.recv() => match report {
                Some((g, reason)) if g == generation => return Some(reason),
                Some(_) => {} // about an earlier connection
                None => return None,
            },
            event = events.next() => {
                if let Some(lapin::Event::Error(e)) = event {
                    // Every channel's errors are reported here. One that closed
                    // only a consumer's channel (a queue not found) is that
                    // consumer's to handle, and leaves publishing alone.
                    if !e.is_amqp_soft_error() || !channel.status().connected() {
                        return Some(e.to_string());
                    }
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
    let connection = match url.parse::<lapin::uri::AMQPUri>() {
        Ok(mut uri) => {
            // A heartbeat in the URL wins; otherwise ours (the broker's default,
            // 60 s, holds a dead consumer's messages for two minutes).
            if uri.query.heartbeat.is_none() {
                let secs = config.amqp_heartbeat.as_secs().clamp(1, u16::MAX.into());
                uri.query.heartbeat = Some(secs as u16);
            }
            Connection::connect_uri(uri, properties).await?
        }
        // lapin says what is wrong with the URL.
        Err(_) => Connection::connect(&url, properties).await?,
    };
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
    // The relay's queue gets every event straight from the publisher, not
    // through a binding; one left by an older version would double its messages.
    declare_queue(channel, &config.relay_queue, &[], &config.exchange, &dead).await?;
    channel
        .queue_unbind(
            config.relay_queue.name.as_str().into(),
            config.exchange.as_str().into(),
            "#".into(),
            FieldTable::default(),
        )
        .await?;
    for queue in &config.queues {
        declare_queue(channel, queue, &queue.bindings, &config.exchange, &dead).await?;
    }
    Ok(())
}

async fn declare_queue(
    channel: &Channel,
    spec: &QueueSpec,
    bindings: &[String],
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
    for pattern in bindings {
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
