//! The relay: consumes events from the broker's relay queue, turns each into one
//! delivery per matching subscription, and delivers those over HTTP, signed,
//! with retries.
//!
//! # Layout
//! - [`matching`]: which subscriptions an event goes to.
//! - [`deliver`]: the dispatcher that claims due deliveries and attempts them.
//! - [`retry`]: what an answer means and when to try again.
//! - [`signing`]: Standard Webhooks signatures and `whsec_` secrets.
//! - [`destination`]: the guard against private and metadata addresses.
//!
//! A message is acknowledged only once its deliveries are committed, and
//! creating them is idempotent, so a redelivered message changes nothing. From
//! then on the store holds everything: any worker process may attempt any due
//! delivery, and a restart loses no retry. While nothing else is due, the
//! deliveries this process has room for are created claimed and attempted at
//! once, without a claim.

pub mod deliver;
pub mod destination;
pub mod matching;
pub mod retry;
pub mod signing;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Consumer, Delivery};
use crate::config::Config;
use crate::domain::{EventId, Subscription, SubscriptionId, Trigger, TriggerId};
use crate::script::Engine;
use crate::store::{DueDelivery, Store, StoreError};
use crate::triggers::runner::Runner;
use deliver::{Dispatcher, Reserved};
use matching::{Candidate, Matcher};

/// Most messages taken from the queue before their deliveries are written.
const BATCH: usize = 64;

/// The running relay of one process.
pub struct Relay {
    stop: CancellationToken,
    consumer: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
    attempts: tokio_util::task::TaskTracker,
    /// Async triggers' scripts, run from the queue.
    runner: JoinHandle<()>,
    runs: tokio_util::task::TaskTracker,
}

/// Starts consuming and delivering. `wake` is rung by whoever makes deliveries
/// due (the admin API's replays) so that they go out without waiting for a poll.
pub fn start(
    config: Arc<Config>,
    store: Store,
    broker: &Broker,
    wake: Arc<Notify>,
    scripts: Engine,
    calls: crate::product::ScriptCalls,
) -> anyhow::Result<Relay> {
    let dispatcher = Arc::new(Dispatcher::new(
        store.clone(),
        config.clone(),
        wake.clone(),
        scripts.clone(),
        calls.clone(),
    )?);
    let runner = Arc::new(Runner::new(
        store.clone(),
        scripts,
        config.clone(),
        Arc::new(Notify::new()),
        calls,
    ));
    let stop = CancellationToken::new();
    // Bodies of prefetched messages beyond a few KiB are not kept: the relay
    // reads such an event from the store when it gets to it.
    let consumer = broker.consume_with(&config.relay_queue.name, config.relay_prefetch, KEEP_BODY);
    let attempts = dispatcher.attempts.clone();
    let runs = runner.tasks.clone();
    Ok(Relay {
        consumer: tokio::spawn(consume(
            consumer,
            store,
            dispatcher.clone(),
            runner.wake.clone(),
            stop.clone(),
        )),
        dispatcher: tokio::spawn(dispatcher.run(stop.clone())),
        runner: tokio::spawn(runner.run(stop.clone())),
        stop,
        attempts,
        runs,
    })
}

impl Relay {
    /// Stops taking messages and claiming deliveries, then waits up to `grace`
    /// for attempts in flight. Unfinished ones are attempted again after their
    /// lease (at once on the next start, with SQLite).
    pub async fn stop(self, grace: Duration) {
        self.stop.cancel();
        let _ = self.consumer.await;
        let _ = self.dispatcher.await;
        let _ = self.runner.await;
        self.attempts.close();
        self.runs.close();
        let both = async {
            self.attempts.wait().await;
            self.runs.wait().await;
        };
        if tokio::time::timeout(grace, both).await.is_err() {
            tracing::warn!(
                in_flight = self.attempts.len(),
                scripts = self.runs.len(),
                "stopping with delivery attempts or script runs in flight; they will be tried again"
            );
        }
    }
}

/// Reads the relay queue until `stop`, a batch at a time.
async fn consume(
    mut consumer: Consumer,
    store: Store,
    dispatcher: Arc<Dispatcher>,
    runs: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            next = consumer.next() => next,
        };
        let Some(first) = first else { return };
        // Only what has already arrived: a pending `next` dropped half-way
        // could leave a message claimed with nobody holding it.
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match consumer.try_next() {
                Some(delivery) => batch.push(delivery),
                None => break,
            }
        }
        match fan_out(&store, &dispatcher, batch, &stop).await {
            None => return,
            Some(queued) => {
                if queued {
                    runs.notify_one();
                }
            }
        }
    }
}

/// Creates the deliveries of each message (and a web trigger's script run),
/// and acknowledges it. Those the dispatcher has room for are created
/// claimed and started at once; for the others it is woken. `None` when
/// stopped first (unacknowledged messages go back to the queue); otherwise
/// whether a script run was queued.
async fn fan_out(
    store: &Store,
    dispatcher: &Arc<Dispatcher>,
    batch: Vec<Delivery>,
    stop: &CancellationToken,
) -> Option<bool> {
    let mut queued = false;
    let mut triggers: HashMap<String, Option<Trigger>> = HashMap::new();
    // Loaded per batch, so a subscription created before an event was received
    // is always seen, whichever process created it.
    let subscriptions = loop {
        match with_store(stop, || store.subscriptions(true)).await {
            None => return None,
            Some(Ok(subscriptions)) => break subscriptions,
            // A damaged row: nothing can be matched until it is mended.
            Some(Err(e)) => {
                tracing::error!(error = %deliver::chain(&e), "cannot read subscriptions; relay paused");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    };
    let matchers: Vec<Matcher> = subscriptions
        .iter()
        .filter_map(|sub| match Matcher::new(sub) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(subscription_id = %sub.id, error = %e, "stored filter does not parse; subscription skipped");
                None
            }
        })
        .collect();
    let mut ready: Vec<(Delivery, EventId, Vec<SubscriptionId>)> = Vec::with_capacity(batch.len());
    for delivery in batch {
        let message = delivery.message();
        let event_id = message.event_id;
        // A body dropped on arrival (a large event) is read back from the store.
        let stored;
        let body = if message.body.is_empty() {
            match with_store(stop, || store.event(event_id)).await {
                None => return None,
                Some(Ok(Some(event))) => {
                    stored = event.envelope_json();
                    &stored
                }
                Some(Ok(None)) => {
                    tracing::error!(%event_id, "relay message for an event this store does not hold; rejected");
                    settle(event_id, delivery.reject().await);
                    continue;
                }
                Some(Err(e)) => {
                    tracing::error!(%event_id, error = %deliver::chain(&e), "cannot read the event; message requeued");
                    settle(event_id, delivery.requeue().await);
                    continue;
                }
            }
        } else {
            &message.body
        };
        let matched: Vec<SubscriptionId> = match Candidate::new(body) {
            Ok(envelope) => {
                if let Some(id) = envelope.webtrigger_id() {
                    match queue_run(store, stop, &mut triggers, id, event_id).await {
                        None => return None,
                        Some(Ok(q)) => queued |= q,
                        Some(Err(e)) => {
                            tracing::error!(%event_id, error = %deliver::chain(&e), "cannot queue the script run; message requeued");
                            settle(event_id, delivery.requeue().await);
                            continue;
                        }
                    }
                }
                matchers
                    .iter()
                    .filter(|m| m.matches(&envelope))
                    .map(|m| m.id)
                    .collect()
            }
            Err(e) => {
                tracing::error!(%event_id, error = %e, "relay message is not an envelope; rejected");
                settle(event_id, delivery.reject().await);
                continue;
            }
        };
        ready.push((delivery, event_id, matched));
    }
    let fan: Vec<(EventId, &[SubscriptionId])> = ready
        .iter()
        .map(|(_, event_id, matched)| (*event_id, matched.as_slice()))
        .collect();
    let mut reserved = reserve(dispatcher, &subscriptions, &ready);
    let take: HashSet<(EventId, SubscriptionId)> = reserved.keys().copied().collect();
    let created = with_store(stop, || {
        store.create_deliveries(&fan, &take, dispatcher.lease())
    })
    .await;
    match created {
        None => return None,
        Some(Ok(taken)) => {
            let count = fan.iter().map(|(_, subs)| subs.len()).sum::<usize>();
            if taken.deliveries.len() < count {
                dispatcher.made_due();
            }
            for (id, subscription, event) in taken.deliveries {
                let held = reserved.remove(&(event.id, subscription));
                let subscription = subscriptions.iter().find(|s| s.id == subscription);
                // Always both; without them it waits out its lease.
                if let Some((held, subscription)) = held.zip(subscription) {
                    let due = DueDelivery {
                        id,
                        claim: taken.claim,
                        attempt: 1,
                        event,
                        subscription: subscription.clone(),
                    };
                    dispatcher.start(due, held);
                }
            }
            drop(reserved);
            // One commit for the batch; then every message is acknowledged
            // at once (the in-process broker deletes them together).
            let acks = ready.into_iter().map(|(delivery, event_id, matched)| async move {
                if !matched.is_empty() {
                    tracing::debug!(%event_id, deliveries = matched.len(), "deliveries created");
                }
                settle(event_id, delivery.ack().await);
            });
            futures_util::future::join_all(acks).await;
        }
        // One message may spoil the batch (an event this store does not
        // hold): each is written alone, so that only that one is refused.
        Some(Err(e)) => {
            drop(reserved);
            tracing::warn!(error = %deliver::chain(&e), messages = ready.len(), "cannot create a batch's deliveries; creating them one message at a time");
            for (delivery, event_id, matched) in ready {
                create_one(store, stop, delivery, event_id, &matched).await?;
            }
            dispatcher.made_due();
        }
    }
    Some(queued)
}

/// Slots for the deliveries of messages whose body arrived with them (its
/// size is then known), while the dispatcher has room.
fn reserve(
    dispatcher: &Arc<Dispatcher>,
    subscriptions: &[Subscription],
    ready: &[(Delivery, EventId, Vec<SubscriptionId>)],
) -> HashMap<(EventId, SubscriptionId), Reserved> {
    let mut reserved = HashMap::new();
    for (delivery, event_id, matched) in ready {
        let size = delivery.message().body.len();
        if size == 0 {
            continue;
        }
        for id in matched {
            let held = subscriptions
                .iter()
                .find(|s| s.id == *id)
                .and_then(|subscription| dispatcher.reserve(subscription, size));
            match held {
                Some(held) => {
                    reserved.insert((*event_id, *id), held);
                }
                None => return reserved,
            }
        }
    }
    reserved
}

/// Creates one message's deliveries and settles it: acknowledged once
/// written, rejected if its event is not in this store, requeued otherwise.
/// `None` when stopped first.
async fn create_one(
    store: &Store,
    stop: &CancellationToken,
    delivery: Delivery,
    event_id: EventId,
    matched: &[SubscriptionId],
) -> Option<()> {
    let fan = [(event_id, matched)];
    let none = HashSet::new();
    let lease = Duration::ZERO; // nothing is taken
    match with_store(stop, || store.create_deliveries(&fan, &none, lease)).await {
        None => return None,
        Some(Ok(_)) => {
            if !matched.is_empty() {
                tracing::debug!(%event_id, deliveries = matched.len(), "deliveries created");
            }
            settle(event_id, delivery.ack().await);
        }
        Some(Err(e)) => match store.event(event_id).await {
            // An event this store does not hold (a message from another
            // deployment on the same exchange): dead-lettered.
            Ok(None) => {
                tracing::error!(%event_id, "relay message for an event this store does not hold; rejected");
                settle(event_id, delivery.reject().await);
            }
            // Anything else may pass: the message comes back later.
            _ => {
                tracing::error!(%event_id, error = %deliver::chain(&e), "cannot create deliveries; message requeued");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                settle(event_id, delivery.requeue().await);
            }
        },
    }
    Some(())
}

/// Records the invocation of a web trigger's event, looking the trigger up
/// once per batch. A trigger deleted since takes its invocations with it.
async fn queue_run(
    store: &Store,
    stop: &CancellationToken,
    triggers: &mut HashMap<String, Option<Trigger>>,
    id: &str,
    event_id: EventId,
) -> Option<Result<bool, StoreError>> {
    if !triggers.contains_key(id) {
        let trigger_id = TriggerId(id.to_string());
        match with_store(stop, || store.trigger(&trigger_id)).await? {
            Ok(found) => {
                triggers.insert(id.to_string(), found);
            }
            Err(e) => return Some(Err(e)),
        }
    }
    match triggers.get(id).and_then(Option::as_ref) {
        Some(trigger) => {
            with_store(stop, || {
                crate::triggers::runner::queue(store, trigger, event_id)
            })
            .await
        }
        None => Some(Ok(false)),
    }
}

/// Largest message body the relay keeps from its queue; larger events are read
/// from the store when their turn comes.
const KEEP_BODY: usize = 64 * 1024;

/// Runs a store call until it succeeds, fails for a reason other than an
/// outage, or `stop` comes (`None`). Outages are waited out.
async fn with_store<T, F, Fut>(
    stop: &CancellationToken,
    mut call: F,
) -> Option<Result<T, StoreError>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(200);
    let mut logged = false;
    loop {
        match call().await {
            Err(e) if e.is_unavailable() => {
                if !logged {
                    tracing::warn!(error = %deliver::chain(&e), "store unavailable; relay paused");
                    logged = true;
                }
            }
            done => return Some(done),
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn settle(event_id: EventId, result: Result<(), crate::broker::ConsumeError>) {
    if let Err(e) = result {
        // The broker hands the message out again; creating deliveries is idempotent.
        tracing::warn!(%event_id, error = %e, "relay message not settled; it will come back");
    }
}
