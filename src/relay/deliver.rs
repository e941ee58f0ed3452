//! The dispatcher: claims due deliveries from the store and attempts each one on
//! its own task, within two bounds (docs/ARCHITECTURE.md, "Invariants"): the process's
//! in-flight limit and each subscription's concurrency. A subscription at its
//! limit is left out of the next claim, so a hanging endpoint holds only its own
//! slots and never the others'.
//!
//! Every attempt's outcome is written to the store before the slot is freed:
//! retries are rows with a due time, so they survive any restart.
//!
//! While nothing is due, the relay hands new deliveries over directly
//! ([`Dispatcher::reserve`]): created claimed, they go out without a claim, and
//! a finished attempt wakes the dispatcher only when something may be due.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::DefaultClock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::destination::{self, GuardedResolver, Refused};
use super::retry::{self, Verdict};
use super::signing;
use crate::budget::{ByteBudget, Held};
use crate::config::Config;
use crate::domain::{now_millis, AttemptOutcome, Subscription, SubscriptionId};
use crate::script::{Engine, RunKind, ScriptRef};
use crate::store::{AttemptRecord, ClaimLimits, DueDelivery, Store, StoreError};
use crate::telemetry::catalog::{DELIVERY_ATTEMPTS, DELIVERY_DURATION};

/// A transform's time limit.
const TRANSFORM_TIMEOUT: Duration = Duration::from_secs(5);

/// How much of a response body the attempt log keeps.
pub const RESPONSE_BODY_LIMIT: usize = 4096;
/// Margin of a claim beyond the request timeout, so that a lease never runs
/// out while its attempt can still be going.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// The one HTTP client all deliveries share: connect and total timeouts, no
/// redirects, no proxy from the environment (a proxy would resolve names where
/// the destination guard cannot see them), and the guarded resolver unless
/// private destinations are allowed. An idle connection is dropped after
/// [`IDLE_CONNECTION`], before the receiver's own keep-alive closes it.
pub fn client(config: &Config) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .pool_idle_timeout(IDLE_CONNECTION)
        .connect_timeout(config.delivery_connect_timeout)
        .timeout(config.delivery_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("hookrelay/", env!("CARGO_PKG_VERSION")));
    if !config.allow_private_destinations {
        builder = builder.dns_resolver(Arc::new(GuardedResolver));
    }
    builder.build()
}

/// How long a kept-alive connection to a receiver may sit idle. Node's HTTP
/// server and actix-web close theirs after 5 s; one reused just as the
/// receiver closes it fails the attempt ("connection closed before message
/// completed"), which then waits for its retry. Measured: one such attempt
/// in 48,000 at 1,600 deliveries a second with the 90 s default.
const IDLE_CONNECTION: Duration = Duration::from_secs(4);

/// Slots taken per subscription in this process, with each one's limit.
#[derive(Default)]
struct Busy {
    by_subscription: HashMap<SubscriptionId, (u32, u32)>,
}

impl Busy {
    fn full(&self) -> Vec<SubscriptionId> {
        self.by_subscription
            .iter()
            .filter(|(_, (taken, limit))| taken >= limit)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Takes a slot if the subscription has one free.
    fn take(&mut self, id: SubscriptionId, limit: u32) -> bool {
        let entry = self.by_subscription.entry(id).or_insert((0, limit));
        entry.1 = limit.max(1);
        if entry.0 >= entry.1 {
            return false;
        }
        entry.0 += 1;
        true
    }

    /// Slots taken, per subscription that has any.
    fn taken(&self) -> Vec<(SubscriptionId, u32)> {
        self.by_subscription
            .iter()
            .map(|(id, (taken, _))| (*id, *taken))
            .collect()
    }

    fn put(&mut self, id: SubscriptionId) {
        if let Some(entry) = self.by_subscription.get_mut(&id) {
            entry.0 = entry.0.saturating_sub(1);
            if entry.0 == 0 {
                self.by_subscription.remove(&id);
            }
        }
    }
}

/// One attempt's hold on a process slot and a subscription slot; both are
/// given back when it is dropped, however the attempt ends. The
/// subscription's goes back as soon as its endpoint has answered
/// ([`Slot::endpoint_done`]): it bounds requests to the endpoint, and
/// recording the answer does not load it.
struct Slot {
    dispatcher: Arc<Dispatcher>,
    subscription: Option<SubscriptionId>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Slot {
    /// The endpoint has answered: its subscription may take another attempt.
    fn endpoint_done(&mut self) {
        if let Some(subscription) = self.subscription.take() {
            self.dispatcher
                .busy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .put(subscription);
            self.dispatcher.wake_if_due();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.endpoint_done();
        // The process slot goes back too: the dispatcher may claim again.
        self.dispatcher.wake_if_due();
    }
}

/// What a delivery handed over by the relay holds from its creation on: its
/// slots and its payload's bytes.
pub(super) struct Reserved {
    slot: Slot,
    held: Held,
}

pub struct Dispatcher {
    pub(super) store: Store,
    pub(super) config: Arc<Config>,
    client: reqwest::Client,
    /// Rung when deliveries may have become due: new ones, a finished attempt,
    /// a replay.
    pub(super) wake: Arc<Notify>,
    /// The process's in-flight bound.
    slots: Arc<Semaphore>,
    /// What the payloads of deliveries in flight may take.
    bytes: ByteBudget,
    busy: Mutex<Busy>,
    /// Per-subscription rate limiters, rebuilt when the rate changes.
    limiters: Mutex<HashMap<SubscriptionId, (u32, Arc<DefaultDirectRateLimiter>)>>,
    /// Subscriptions over their rate, until they may send again.
    paused: Mutex<HashMap<SubscriptionId, tokio::time::Instant>>,
    /// The earliest retry this process scheduled, so it wakes for it on time.
    next_retry: Mutex<Option<tokio::time::Instant>>,
    pub(super) attempts: TaskTracker,
    /// The last claim found nothing more due (it took fewer than it asked,
    /// was not cut short by a subscription's room or by the bytes, left no
    /// subscription out and handed nothing back), and no delivery has been
    /// made due since: new ones may be handed over directly.
    drained: AtomicBool,
    /// Runs subscriptions' transforms.
    scripts: Engine,
    /// What transforms call out with.
    calls: crate::product::ScriptCalls,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        config: Arc<Config>,
        wake: Arc<Notify>,
        scripts: Engine,
        calls: crate::product::ScriptCalls,
    ) -> reqwest::Result<Self> {
        Ok(Self {
            scripts,
            calls,
            client: client(&config)?,
            slots: Arc::new(Semaphore::new(config.relay_concurrency as usize)),
            bytes: ByteBudget::new(config.relay_memory),
            store,
            config,
            wake,
            busy: Mutex::default(),
            limiters: Mutex::default(),
            paused: Mutex::default(),
            next_retry: Mutex::default(),
            attempts: TaskTracker::new(),
            drained: AtomicBool::new(false),
        })
    }

    pub(super) fn lease(&self) -> Duration {
        self.config.delivery_timeout + LEASE_MARGIN
    }

    /// Claims and starts due deliveries until `stop`; then waits for nothing
    /// (the caller waits for `attempts`).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut store_down = false;
        loop {
            match self.dispatch_due().await {
                Ok(()) => store_down = false,
                Err(e) => {
                    if !store_down {
                        tracing::warn!(error = %chain(&e), "cannot claim deliveries; retrying");
                    }
                    store_down = true;
                }
            }
            let poll = tokio::time::Instant::now() + self.config.relay_poll_interval;
            let until = self
                .next_retry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map_or(poll, |at| at.min(poll));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(until) => {}
            }
            let mut next = self.next_retry.lock().unwrap_or_else(|e| e.into_inner());
            if next.is_some_and(|at| at <= tokio::time::Instant::now()) {
                *next = None;
            }
        }
    }

    /// Claims as many due deliveries as there are free slots, and starts them.
    async fn dispatch_due(self: &Arc<Self>) -> Result<(), StoreError> {
        loop {
            let free = self.slots.available_permits();
            // Claimed only with room for the largest payload, so that whatever
            // is claimed fits (the claim stays within `room`).
            let room = self.bytes.room();
            if free == 0 || room < self.config.max_body_bytes as u64 {
                self.drained.store(false, Ordering::SeqCst);
                return Ok(()); // a finished attempt rings `wake`
            }
            let skip = self.skipped();
            let busy = self.busy.lock().unwrap_or_else(|e| e.into_inner()).taken();
            let claimed = self
                .store
                .claim_deliveries(&ClaimLimits {
                    rows: free as u32,
                    bytes: room,
                    lease: self.lease(),
                    skip: &skip,
                    busy: &busy,
                    per_subscription: self.per_subscription(),
                })
                .await?;
            let got = claimed.len();
            let cut = self.cut_short(&claimed, &busy, room);
            let left_out = !skip.is_empty();
            let mut back = Vec::new();
            let mut later: HashMap<SubscriptionId, (Duration, Vec<DueDelivery>)> = HashMap::new();
            for due in claimed {
                let subscription = due.subscription.id;
                if let Some((_, held)) = later.get_mut(&subscription) {
                    held.push(due);
                    continue;
                }
                if let Some(wait) = self.rate_limited(&due.subscription) {
                    later.insert(subscription, (wait, vec![due]));
                    continue;
                }
                let slot = self.slot(&due.subscription);
                let held = slot
                    .as_ref()
                    .and_then(|_| self.bytes.try_take(due.event.payload.len()));
                match slot.zip(held) {
                    Some((slot, held)) => self.start(due, Reserved { slot, held }),
                    None => back.push(due),
                }
            }
            // Drained only if nothing due can have been left behind.
            let drained = got < free && !cut && !left_out && back.is_empty() && later.is_empty();
            self.drained.store(drained, Ordering::SeqCst);
            // More of one subscription was due than it has slots: the rest go
            // back untried, and the next claim skips that subscription.
            self.store.unclaim_deliveries(&back, now_millis()).await?;
            // Over its rate: back untried, due when the limiter will let one through.
            for (subscription, (wait, held)) in later {
                let at = tokio::time::Instant::now() + wait;
                self.paused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(subscription, at);
                self.retry_at(at);
                let due_at = now_millis() + chrono::Duration::from_std(wait).unwrap_or_default();
                self.store.unclaim_deliveries(&held, due_at).await?;
            }
            if got < free {
                return Ok(());
            }
        }
    }

    /// Whether a claim may have left due deliveries behind for want of room:
    /// it took as many of a subscription as that had room for, or so many
    /// bytes that the largest payload no longer fitted.
    fn cut_short(
        &self,
        claimed: &[DueDelivery],
        busy: &[(SubscriptionId, u32)],
        bytes: u64,
    ) -> bool {
        let mut per_subscription: HashMap<SubscriptionId, (u32, u32)> = HashMap::new();
        for due in claimed {
            let taken = busy
                .iter()
                .find(|(id, _)| *id == due.subscription.id)
                .map_or(0, |(_, n)| *n);
            let room = due
                .subscription
                .max_concurrency
                .min(self.per_subscription())
                .saturating_sub(taken);
            per_subscription
                .entry(due.subscription.id)
                .or_insert((0, room))
                .0 += 1;
        }
        let payloads: u64 = claimed.iter().map(|d| d.event.payload.len() as u64).sum();
        per_subscription.values().any(|(n, room)| n >= room)
            || payloads + self.config.max_body_bytes as u64 > bytes
    }

    /// The most attempts one subscription may have in flight in this
    /// process, whatever its `max_concurrency`: half the process's slots, so
    /// that one hanging endpoint can never hold all of them.
    fn per_subscription(&self) -> u32 {
        (self.config.relay_concurrency / 2).max(1)
    }

    /// Subscriptions the next claim leaves out: those at their concurrency
    /// limit in this process, and those waiting out their rate limit.
    fn skipped(&self) -> Vec<SubscriptionId> {
        let mut skip = self.busy.lock().unwrap_or_else(|e| e.into_inner()).full();
        let now = tokio::time::Instant::now();
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        paused.retain(|_, until| *until > now);
        skip.extend(paused.keys().copied());
        skip
    }

    /// A process slot and one of the subscription's, if both are free. The
    /// per-subscription limit is capped at half the process's slots, so that
    /// one hanging endpoint can never hold all of them.
    fn slot(self: &Arc<Self>, subscription: &Subscription) -> Option<Slot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        let limit = subscription.max_concurrency.min(self.per_subscription());
        let taken = self
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(subscription.id, limit);
        taken.then(|| Slot {
            dispatcher: self.clone(),
            subscription: Some(subscription.id),
            _permit: permit,
        })
    }

    /// Slots and `size` bytes for a new delivery to `subscription`, which
    /// then goes out as soon as it is created ([`Dispatcher::start`]);
    /// `None` leaves it to be claimed. Only while nothing else is due, so
    /// that new deliveries never pass ones waiting their turn; and within
    /// every bound a claim respects: the slots, the bytes, the rate limit.
    pub(super) fn reserve(
        self: &Arc<Self>,
        subscription: &Subscription,
        size: usize,
    ) -> Option<Reserved> {
        if !self.drained.load(Ordering::SeqCst)
            || self
                .paused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&subscription.id)
        {
            return None;
        }
        let slot = self.slot(subscription)?;
        let held = self.bytes.try_take(size)?;
        // Last: a token of the rate limit is spent only on one that goes.
        if self.rate_limited(subscription).is_some() {
            return None;
        }
        Some(Reserved { slot, held })
    }

    /// Deliveries were made due: the next claim looks for them.
    pub(super) fn made_due(&self) {
        self.drained.store(false, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Rings the dispatcher unless nothing can be due.
    fn wake_if_due(&self) {
        if !self.drained.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// Attempts `due` on its own task, with what it holds.
    pub(super) fn start(self: &Arc<Self>, due: DueDelivery, reserved: Reserved) {
        let this = self.clone();
        let span = tracing::info_span!(
            "delivery",
            event_id = %due.event.id,
            subscription_id = %due.subscription.id,
            delivery_id = %due.id,
            attempt = due.attempt,
        );
        let Reserved { mut slot, held } = reserved;
        self.attempts.spawn(
            async move {
                this.attempt(due, &mut slot).await;
                // The bytes first: the slot's drop wakes the dispatcher.
                drop(held);
                drop(slot);
            }
            .instrument(span),
        );
    }

    /// How long to wait before the subscription's rate limit lets an attempt
    /// through; `None` when one may go now (and that one is counted).
    fn rate_limited(&self, subscription: &Subscription) -> Option<Duration> {
        let limiter = self.limiter(subscription)?;
        match limiter.check() {
            Ok(()) => None,
            Err(not_until) => Some(
                not_until.wait_time_from(governor::clock::Clock::now(&DefaultClock::default())),
            ),
        }
    }

    fn limiter(&self, subscription: &Subscription) -> Option<Arc<DefaultDirectRateLimiter>> {
        let rate = subscription.rate_limit.filter(|r| *r > 0)?;
        let mut limiters = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        let entry = limiters
            .entry(subscription.id)
            .or_insert_with(|| (rate, Arc::new(RateLimiter::direct(per_second(rate)))));
        if entry.0 != rate {
            *entry = (rate, Arc::new(RateLimiter::direct(per_second(rate))));
        }
        Some(entry.1.clone())
    }

    /// One attempt, start to finish: send, judge, record, log.
    async fn attempt(&self, due: DueDelivery, slot: &mut Slot) {
        let attempted_at = now_millis();
        let started = Instant::now();
        // Claims count attempts; more claims than attempts allowed means earlier
        // attempts ran but their results could not be written. Stop there.
        let allowed = i32::try_from(self.config.retry_schedule.len()).unwrap_or(i32::MAX - 1) + 1;
        let sent = if due.attempt > allowed {
            Err(SendError::Request(
                "attempts used up without a recorded result".into(),
            ))
        } else {
            match self.body(&due).await {
                Ok(Some(body)) => self.send(&due, attempted_at.timestamp(), body).await,
                Ok(None) => {
                    slot.endpoint_done();
                    return self.filtered(&due, attempted_at, started).await;
                }
                Err(e) => Err(e),
            }
        };
        slot.endpoint_done();
        let duration_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);

        let (status, retry_after, body, error) = match &sent {
            Ok(answer) => (
                Some(answer.status),
                answer.retry_after.as_deref(),
                Some(answer.body.as_str()),
                None,
            ),
            Err(failure) => (None, None, None, Some(failure.to_string())),
        };
        let verdict = match &sent {
            _ if due.attempt > allowed => Verdict::Retry, // and so dead, below
            Ok(answer) => retry::classify(answer.status),
            Err(SendError::Refused(_) | SendError::Request(_)) => Verdict::Fail,
            Err(_) => Verdict::Retry,
        };
        let mut next_attempt_at = attempted_at;
        let outcome = match verdict {
            Verdict::Delivered => AttemptOutcome::Delivered,
            Verdict::Fail | Verdict::Gone => AttemptOutcome::Failed,
            Verdict::Retry => {
                let floor = retry_after.and_then(|v| retry::parse_retry_after(v, attempted_at));
                match retry::next_delay(&self.config.retry_schedule, due.attempt, floor) {
                    Some(delay) => {
                        next_attempt_at = now_millis()
                            + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                        self.retry_at(tokio::time::Instant::now() + delay);
                        AttemptOutcome::Retry
                    }
                    None => AttemptOutcome::Dead,
                }
            }
        };
        let disable_after = chrono::Duration::from_std(self.config.disable_failing_after)
            .unwrap_or(chrono::Duration::MAX);
        let error = error.as_deref().or(match verdict {
            Verdict::Gone => Some("the endpoint answered 410 Gone"),
            _ => None,
        });
        let record = AttemptRecord {
            delivery: &due,
            attempted_at,
            duration_ms,
            status_code: status.map(i32::from),
            error,
            response_body: body,
            outcome,
            next_attempt_at,
            disable: (verdict == Verdict::Gone).then_some("the endpoint answered 410 Gone"),
            disable_if_failing_since: attempted_at - disable_after,
        };
        metrics::counter!(DELIVERY_ATTEMPTS, "outcome" => outcome.as_str()).increment(1);
        metrics::histogram!(DELIVERY_DURATION).record(started.elapsed().as_secs_f64());
        let recorded = self.record(&record).await;
        match outcome {
            AttemptOutcome::Delivered | AttemptOutcome::Filtered => {
                tracing::info!(status, duration_ms, "delivered")
            }
            AttemptOutcome::Retry => tracing::warn!(
                status,
                error,
                duration_ms,
                next_attempt_at = %crate::domain::format_timestamp(next_attempt_at),
                "delivery attempt failed; will retry"
            ),
            AttemptOutcome::Failed => {
                tracing::warn!(status, error, duration_ms, "delivery failed; not retried")
            }
            AttemptOutcome::Dead => tracing::warn!(
                status,
                error,
                duration_ms,
                "delivery dead after its last attempt; replay it from the admin API"
            ),
        }
        if let Some(reason) = recorded.and_then(|r| r.disabled) {
            tracing::warn!(%reason, "subscription disabled");
        }
    }

    /// The body to deliver: the envelope, or what the subscription's
    /// transform makes of it (`None`: the transform returned null or undefined).
    async fn body(&self, due: &DueDelivery) -> Result<Option<String>, SendError> {
        let envelope = due.event.envelope_json();
        let Some(source) = &due.subscription.transform else {
            return Ok(Some(envelope));
        };
        let value: serde_json::Value = serde_json::from_str(&envelope)
            .map_err(|e| SendError::Transform(format!("envelope is not JSON: {e}")))?;
        let run = transform(
            &self.scripts,
            &self.calls,
            &due.subscription,
            source,
            &due.event,
            value,
        )
        .await;
        match run.outcome {
            Ok(None | Some(serde_json::Value::Null)) => Ok(None),
            Ok(Some(value)) => Ok(Some(value.to_string())),
            Err(e) => Err(SendError::Transform(e.to_string())),
        }
    }

    /// Records an attempt whose transform returned null: nothing was sent.
    async fn filtered(
        &self,
        due: &DueDelivery,
        attempted_at: chrono::DateTime<chrono::Utc>,
        started: Instant,
    ) {
        let duration_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        let record = AttemptRecord {
            delivery: due,
            attempted_at,
            duration_ms,
            status_code: None,
            error: None,
            response_body: None,
            outcome: AttemptOutcome::Filtered,
            next_attempt_at: attempted_at,
            disable: None,
            disable_if_failing_since: attempted_at,
        };
        metrics::counter!(DELIVERY_ATTEMPTS, "outcome" => "filtered").increment(1);
        self.record(&record).await;
        tracing::info!(
            duration_ms,
            "transform returned null; not delivered (filtered)"
        );
    }

    /// Records the attempt, retrying while the store is away: the claim's lease
    /// would otherwise hand the delivery to another attempt, and the result
    /// would be lost from the log.
    async fn record(&self, record: &AttemptRecord<'_>) -> Option<crate::store::Recorded> {
        let deadline = Instant::now() + self.lease().saturating_sub(self.config.delivery_timeout);
        let mut delay = Duration::from_millis(100);
        loop {
            match self.store.record_attempt(record).await {
                Ok(recorded) => {
                    if !recorded.current {
                        tracing::info!("delivery was replayed or reclaimed during the attempt; its new round stands");
                    }
                    return Some(recorded);
                }
                Err(e) if e.is_unavailable() && Instant::now() + delay < deadline => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(error = %chain(&e), "cannot record the attempt; the delivery will be attempted again after its lease");
                    return None;
                }
            }
        }
    }

    /// Wakes the dispatcher at `at` (it sleeps until the earliest).
    fn retry_at(&self, at: tokio::time::Instant) {
        let mut next = self.next_retry.lock().unwrap_or_else(|e| e.into_inner());
        if next.is_none_or(|current| at < current) {
            *next = Some(at);
            // A finished attempt may not ring it: it must see the new time.
            self.wake.notify_one();
        }
    }

    /// The signed POST. An `Ok` is any answer, whatever its status.
    async fn send(
        &self,
        due: &DueDelivery,
        timestamp: i64,
        body: String,
    ) -> Result<Answer, SendError> {
        let url = url::Url::parse(&due.subscription.url)
            .map_err(|e| SendError::Request(format!("bad URL: {e}")))?;
        if !self.config.allow_private_destinations {
            destination::check_literal(&url).map_err(SendError::Refused)?;
        }
        let key = {
            use secrecy::ExposeSecret as _;
            signing::key(due.subscription.secret.expose_secret())
                .map_err(|e| SendError::Request(e.to_string()))?
        };
        let id = due.event.id.to_string();
        let mut headers = HeaderMap::new();
        for (name, value) in &due.subscription.headers {
            // Checked when the subscription was saved.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if !headers.contains_key(USER_AGENT) {
            headers.insert(
                USER_AGENT,
                HeaderValue::from_static(concat!("hookrelay/", env!("CARGO_PKG_VERSION"))),
            );
        }
        let signature = signing::sign(&key, &id, timestamp, body.as_bytes());
        for (name, value) in [
            ("webhook-id", id),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        let mut response = self
            .client
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(SendError::from_reqwest)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Only the start of the body is kept; the rest is not read.
        let mut kept = Vec::new();
        while kept.len() < RESPONSE_BODY_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                Ok(None) => break,
                // The status is what counts; a body cut short is still logged.
                Err(_) => break,
            }
        }
        kept.truncate(RESPONSE_BODY_LIMIT);
        Ok(Answer {
            status,
            retry_after,
            // PostgreSQL's text cannot hold NUL.
            body: String::from_utf8_lossy(&kept).replace('\0', "\u{fffd}"),
        })
    }
}

fn per_second(rate: u32) -> Quota {
    // `rate` is at least 1 here.
    Quota::per_second(std::num::NonZeroU32::new(rate).unwrap_or(std::num::NonZeroU32::MIN))
}

/// What the endpoint answered.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Refused(Refused),
    #[error("timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Transport(String),
    /// The request could not be built: retrying would not help.
    #[error("{0}")]
    Request(String),
    /// The subscription's transform failed (threw, timed out, no runtime free).
    #[error("transform failed: {0}")]
    Transform(String),
}

impl SendError {
    fn from_reqwest(e: reqwest::Error) -> Self {
        // The URL may carry credentials; the log and the attempt log never see it.
        let e = e.without_url();
        // A refusal from the guarded resolver sits somewhere in the chain.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if let Some(refused) = err.downcast_ref::<Refused>() {
                return SendError::Refused(Refused {
                    ip: refused.ip,
                    reason: refused.reason,
                });
            }
            source = err.source();
        }
        if e.is_timeout() {
            SendError::Timeout
        } else if e.is_connect() {
            SendError::Connect(chain(&e))
        } else if e.is_builder() {
            SendError::Request(chain(&e))
        } else {
            SendError::Transport(chain(&e))
        }
    }
}

/// An error with its causes, on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs `sub`'s transform (`source`) on `envelope`, the envelope of `event`:
/// what a delivery sends, and what the inspector's "try it" shows.
pub async fn transform(
    scripts: &Engine,
    calls: &crate::product::ScriptCalls,
    sub: &Subscription,
    source: &str,
    event: &crate::domain::Event,
    envelope: serde_json::Value,
) -> crate::script::Run {
    let script = ScriptRef {
        key: format!("transform:{}:{}", sub.id, sub.updated_at.timestamp_millis()),
        source: source.into(),
    };
    // The context: which delivery this is, and `app.fetch` on the event's tenant.
    let context = serde_json::json!({
        "subscription": {"id": sub.id},
        "event_id": event.id,
    });
    let bridge = calls.bridge(
        event.client_key.clone(),
        format!("the transform of subscription {}", sub.id),
    );
    scripts
        .run_with(
            &script,
            vec![envelope, context],
            TRANSFORM_TIMEOUT,
            RunKind::Transform,
            Some(bridge),
        )
        .await
}
