//! Async triggers' scripts, run from the queue. The relay records each
//! webtrigger event's invocation when it takes the event off the broker
//! ([`queue`]); this runner claims due invocations from the store, runs their
//! scripts, and records each result. A thrown error, a timeout or a crash is
//! tried again on the relay's retry schedule; the last failure is kept, and a
//! replay of the event runs it again. At least once: a run whose process dies
//! is claimed again when its lease runs out.
//!
//! It never takes more than half the script runtimes, so that sync calls keep
//! getting answers while a backlog of async runs drains.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::config::Config;
use crate::domain::{
    now_millis, EventId, Invocation, InvocationId, InvocationState, Trigger, TriggerMode,
};
use crate::relay::retry;
use crate::script::{Engine, Permit};
use crate::store::{ClaimedRun, RunRecord, Store, StoreError};

/// A claimed run is not handed to another process before this: the longest
/// script time limit (55 s) and a margin.
const LEASE: Duration = Duration::from_secs(90);

/// Records the invocation of a webtrigger event taken off the queue: due now
/// when its trigger is async with a script, `accepted` when it is async with
/// none. Sync calls were recorded when they were answered. Idempotent (the
/// invocation id is the event id), so a redelivered message changes nothing.
pub async fn queue(
    store: &Store,
    trigger: &Trigger,
    event_id: EventId,
) -> Result<bool, StoreError> {
    if trigger.mode != TriggerMode::Async {
        return Ok(false);
    }
    let now = now_millis();
    let has_script = trigger.script.is_some();
    let invocation = Invocation {
        id: InvocationId(event_id.0),
        trigger_id: trigger.id.clone(),
        event_id,
        mode: TriggerMode::Async,
        state: if has_script {
            InvocationState::Pending
        } else {
            InvocationState::Accepted
        },
        attempts: 0,
        next_attempt_at: has_script.then_some(now),
        status_code: (!has_script).then_some(202),
        response: None,
        error: None,
        console: None,
        duration_ms: None,
        created_at: now,
        updated_at: now,
    };
    Ok(store.queue_invocation(&invocation).await? && has_script)
}

pub struct Runner {
    store: Store,
    engine: Engine,
    /// What scripts call out with.
    calls: crate::product::ScriptCalls,
    config: Arc<Config>,
    /// Rung when runs may have become due (queued, replayed, finished).
    pub wake: Arc<Notify>,
    /// Runs in flight in this process.
    running: AtomicUsize,
    pub tasks: TaskTracker,
}

impl Runner {
    pub fn new(
        store: Store,
        engine: Engine,
        config: Arc<Config>,
        wake: Arc<Notify>,
        calls: crate::product::ScriptCalls,
    ) -> Self {
        Self {
            store,
            engine,
            calls,
            config,
            wake,
            running: AtomicUsize::new(0),
            tasks: TaskTracker::new(),
        }
    }

    /// Most runs in flight at once: half the runtimes, at least one.
    fn share(&self) -> usize {
        (self.engine.capacity() / 2).max(1)
    }

    /// Claims and runs due scripts until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut store_down = false;
        loop {
            match self.dispatch().await {
                Ok(()) => store_down = false,
                Err(e) => {
                    if !store_down {
                        tracing::warn!(error = %crate::relay::deliver::chain(&e), "cannot claim script runs; retrying");
                    }
                    store_down = true;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.relay_poll_interval) => {}
            }
        }
    }

    async fn dispatch(self: &Arc<Self>) -> Result<(), StoreError> {
        loop {
            let room = self
                .share()
                .saturating_sub(self.running.load(Ordering::Acquire));
            // Runtimes first, so that every run claimed can start at once.
            let mut permits: Vec<Permit> = Vec::new();
            while permits.len() < room {
                match self.engine.reserve() {
                    Some(p) => permits.push(p),
                    None => break,
                }
            }
            if permits.is_empty() {
                return Ok(()); // a finished run rings `wake`
            }
            let asked = permits.len();
            let claimed = self.store.claim_runs(asked as i64, LEASE).await?;
            let got = claimed.len();
            for (run, permit) in claimed.into_iter().zip(permits) {
                self.running.fetch_add(1, Ordering::AcqRel);
                let this = self.clone();
                let span = tracing::info_span!(
                    "script_run",
                    trigger_id = %run.invocation.trigger_id,
                    event_id = %run.invocation.event_id,
                    attempt = run.invocation.attempts,
                );
                self.tasks.spawn(
                    async move {
                        this.execute(run, permit).await;
                        this.running.fetch_sub(1, Ordering::AcqRel);
                        this.wake.notify_one();
                    }
                    .instrument(span),
                );
            }
            if got < asked {
                return Ok(());
            }
        }
    }

    /// One run, start to finish: load, run, record.
    async fn execute(&self, run: ClaimedRun, permit: Permit) {
        let started = Instant::now();
        let inv = &run.invocation;
        let trigger = match self.store.trigger(&inv.trigger_id).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %crate::relay::deliver::chain(&e), "cannot read the trigger; the run is tried again after its lease");
                return;
            }
        };
        let event = match self.store.event(inv.event_id).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %crate::relay::deliver::chain(&e), "cannot read the event; the run is tried again after its lease");
                return;
            }
        };
        let (trigger, event, source) = match (trigger, event) {
            (Some(t), Some(e)) => match t.script.clone() {
                Some(source) => (t, e, source),
                None => {
                    self.finish(&run, failed("the trigger has no script any more", started))
                        .await;
                    return;
                }
            },
            _ => {
                self.finish(&run, failed("the trigger or its event is gone", started))
                    .await;
                return;
            }
        };
        let request: serde_json::Value = match serde_json::from_str(&event.payload) {
            Ok(v) => v,
            Err(_) => {
                self.finish(&run, failed("the stored request is not JSON", started))
                    .await;
                return;
            }
        };
        let bridge = self.calls.bridge(
            trigger.tenant.clone(),
            format!("trigger `{}`", trigger.name),
        );
        let result =
            super::run_script(permit, &trigger, &source, request, event.id, inv.id, bridge).await;
        let console = serde_json::to_string(&result.console).ok();
        let duration_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        let record = match &result.outcome {
            Ok(value) => RunRecord {
                state: InvocationState::Completed,
                status_code: value
                    .as_ref()
                    .and_then(|v| v.get("statusCode"))
                    .and_then(|s| s.as_i64())
                    .and_then(|s| i32::try_from(s).ok()),
                response: value
                    .as_ref()
                    .map(|v| super::cut(v.to_string(), super::RECORD_LIMIT)),
                error: None,
                console,
                duration_ms,
                next_attempt_at: None,
            },
            Err(e) => {
                let delay = retry::next_delay(&self.config.retry_schedule, inv.attempts, None);
                RunRecord {
                    state: if delay.is_some() {
                        InvocationState::Pending
                    } else {
                        InvocationState::Failed
                    },
                    status_code: None,
                    response: None,
                    error: Some(e.to_string()),
                    console,
                    duration_ms,
                    next_attempt_at: delay.map(|d| {
                        now_millis()
                            + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
                    }),
                }
            }
        };
        let outcome = match (&record.error, record.state) {
            (None, _) => "ok",
            (Some(_), InvocationState::Pending) => "retry",
            _ => "failed",
        };
        metrics::counter!(
            crate::telemetry::catalog::TRIGGER_INVOCATIONS,
            "trigger" => trigger.name.clone(),
            "mode" => "async",
            "outcome" => outcome,
        )
        .increment(1);
        match &record.error {
            None => tracing::info!(duration_ms, "async script ran"),
            Some(error) => tracing::warn!(
                %error,
                duration_ms,
                retry = record.state == InvocationState::Pending,
                "async script failed"
            ),
        }
        self.finish(&run, record).await;
    }

    /// Writes the result, retrying while the store is away (within the lease).
    async fn finish(&self, run: &ClaimedRun, record: RunRecord) {
        let deadline = Instant::now() + LEASE / 2;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.store.finish_run(run, &record).await {
                Ok(true) => return,
                Ok(false) => {
                    tracing::info!(
                        "the run was replayed or reclaimed meanwhile; its new round stands"
                    );
                    return;
                }
                Err(e) if e.is_unavailable() && Instant::now() + delay < deadline => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(error = %crate::relay::deliver::chain(&e), "cannot record the run; it is tried again after its lease");
                    return;
                }
            }
        }
    }
}

/// A run that cannot happen: failed for good.
fn failed(reason: &str, started: Instant) -> RunRecord {
    tracing::warn!(reason, "async script not run");
    RunRecord {
        state: InvocationState::Failed,
        status_code: None,
        response: None,
        error: Some(reason.to_string()),
        console: None,
        duration_ms: i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX),
        next_attempt_at: None,
    }
}
