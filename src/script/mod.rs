//! The sandboxed JavaScript runtime that web triggers and subscription
//! transforms run in.
//!
//! A script is an ES module whose default export is a function, usually
//! `export default async function (request, context) { ... }`. [`Engine::run`]
//! calls it with JSON arguments and returns its JSON result;
//! [`Engine::check`] compiles and loads a module at save time.
//!
//! # Design
//!
//! - **Engine**: QuickJS through `rquickjs`, with its `AsyncRuntime` and
//!   `AsyncContext` (the `futures` feature). Nothing else of rquickjs is
//!   enabled: no loader (so `import` has nothing to load from), no macros.
//! - **Threads**: runs happen on `concurrency` dedicated OS threads with an
//!   8 MiB stack, each with a current-thread tokio runtime that drives the
//!   async context; QuickJS's own stack limit is 1 MiB, so deep recursion is
//!   a JavaScript `RangeError`, never a native overflow. `run` and `check`
//!   wait for a oneshot reply.
//! - **Bounds**: a [`Line`] of `concurrency` permits lets runs in, at most
//!   `max_waiting` callers wait for one, for at most `wait`; anyone else gets
//!   [`RunError::Busy`] at once. The job channel is bounded by the same
//!   number, and a job keeps its permit until its worker is done.
//!   [`Engine::reserve_waiting`] takes a permit (waiting in the same line)
//!   for a caller that must know it can run before it commits to anything.
//! - **Isolation**: every run gets a fresh QuickJS runtime and context with
//!   the memory limit (kept by the run's own allocator, so that running out
//!   is told apart from a script's `throw null`) and an interrupt handler
//!   that stops the script at the deadline; the runtime is dropped after the
//!   run, so nothing leaks from one run into the next. Making the pair costs
//!   about 0.12 ms.
//! - **Cache**: scripts are compiled once to QuickJS bytecode, kept by
//!   [`ScriptRef::key`] in a small LRU bounded by count and bytes, and loaded
//!   into each fresh context.
//! - **Sandbox**: only the standard ECMAScript built-ins plus a `console`
//!   whose output is captured into [`Run::console`]; no file system,
//!   process, timers or module imports. The network only through a
//!   [`Bridge`], when the caller gives one: a global `fetch(url, init)` and
//!   `context.app.fetch(path, init)` on the last argument (the context),
//!   answered by its [`Host`] on the process's main runtime, at most
//!   `max_calls` per run.
//! - **Async**: a returned promise is driven by running QuickJS's job queue
//!   until it settles. When the queue is empty, no host call is in flight and
//!   the promise is still pending, nothing can ever settle it: that is
//!   [`RunError::NeverSettled`], at once. A host call is a native function
//!   wrapping `Promise::wrap_future`; its future runs on rquickjs's
//!   scheduler, which `async_with` polls, and the settle loop waits while
//!   calls are in flight. The tokio timer around each run keeps the deadline
//!   for the whole run, host calls included.
//! - **Failures**: each bad script gets its own [`RunError`]; a panic inside
//!   a run is caught, answered [`RunError::Crashed`], and its worker thread
//!   replaced.
//!
//! # Metrics
//!
//! `hookrelay_script_run_duration_seconds{kind}`,
//! `hookrelay_script_runs_total{kind,outcome}`, `hookrelay_script_runs_active`
//! and `hookrelay_script_capacity`.

mod cache;
mod host;
mod pool;
mod sandbox;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use self::cache::Cache;
use self::pool::{Job, Reply, Shared, Task};

/// Most scripts kept compiled.
const CACHE_ENTRIES: usize = 512;

/// Most bytes of bytecode kept compiled.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// How long [`Engine::check`] lets a module's top level run.
const CHECK_TIME_LIMIT: Duration = Duration::from_secs(2);

/// How long a caller waits for a worker past a run's own time limit before
/// it gives up: a native call that never reaches the interrupt handler could
/// hold a worker past the deadline.
const REPLY_GRACE: Duration = Duration::from_secs(2);

/// Limits of the engine, from the configuration.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Bytes QuickJS may allocate in one run, so one script cannot take the
    /// daemon's memory.
    pub memory_limit: usize,
    /// Runs at once, one worker thread each: bounds CPU and memory.
    pub concurrency: usize,
    /// Callers allowed to wait for a free worker; more get `Busy` at once, so
    /// a burst cannot pile up requests.
    pub max_waiting: usize,
    /// Longest a caller waits for a worker before `Busy`, so an HTTP request
    /// is answered (503) instead of hanging.
    pub wait: Duration,
    /// Bytes of console output kept per run; more is cut, and flagged.
    pub console_limit: usize,
    /// Bytes of JSON result accepted; a larger result is `InvalidValue`.
    pub output_limit: usize,
}

/// Runs scripts on a bounded pool of worker threads. Cheap to clone: clones
/// share the pool; the workers end when the last clone is dropped.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    /// What the workers share: settings, job queue, bytecode cache.
    shared: Arc<Shared>,
    /// The bounded job channel, with room for one job per permit.
    jobs: mpsc::SyncSender<Job>,
    /// One permit per worker; a job holds one until it is done.
    line: Line,
    /// Number of permits, as configured.
    capacity: usize,
}

/// A script to run.
#[derive(Clone, Debug)]
pub struct ScriptRef {
    /// Cache key of the compiled script, such as `trigger:<id>:<version>`;
    /// a new version needs a new key.
    pub key: String,
    /// The module's source.
    pub source: Arc<str>,
}

/// Where a script's call goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostTarget {
    /// `context.app.fetch`: a path on the run's tenant, as the app.
    App,
    /// `fetch`: any URL the delivery guard allows.
    Web,
}

/// A call a script makes outside the sandbox.
#[derive(Clone, Debug)]
pub struct HostRequest {
    pub target: HostTarget,
    /// A path (`App`) or a URL (`Web`), as the script gave it.
    pub url: String,
    /// Upper case.
    pub method: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

/// What a call answered.
#[derive(Debug)]
pub struct HostResponse {
    pub status: u16,
    /// Lower-case names; repeated headers joined by `, `.
    pub headers: std::collections::BTreeMap<String, String>,
    /// The body as text (invalid UTF-8 replaced).
    pub body: String,
    /// The body's share of a byte budget, kept until the script has it.
    pub held: crate::budget::Held,
}

/// A call in progress, on the host's runtime.
pub type HostFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<HostResponse, String>> + Send>>;

/// Answers the calls scripts make; an `Err` rejects the script's promise
/// with that message.
pub trait Host: Send + Sync {
    fn fetch(&self, request: HostRequest) -> HostFuture;
}

/// What lets one run call out: the host, the runtime its calls run on, and
/// how many calls one run may make.
pub struct Bridge {
    pub host: Arc<dyn Host>,
    pub runtime: tokio::runtime::Handle,
    pub max_calls: usize,
}

/// What a run is for; a label on the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKind {
    /// A web trigger answering an HTTP request.
    Trigger,
    /// A subscription transform reshaping an event.
    Transform,
}

impl RunKind {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Trigger => "trigger",
            RunKind::Transform => "transform",
        }
    }
}

/// What a run did.
#[derive(Debug)]
pub struct Run {
    /// The JSON result; `Ok(None)` when the function returned or resolved to
    /// `undefined` (or another value JSON has no text for, like a function).
    pub outcome: Result<Option<serde_json::Value>, RunError>,
    /// Console output, in order, up to `console_limit` bytes.
    pub console: Vec<ConsoleLine>,
    /// Whether console output was cut at `console_limit`.
    pub console_truncated: bool,
    /// Time on the worker; for a run that never got one, the time waited.
    pub duration: Duration,
}

impl Run {
    fn failed(error: RunError, duration: Duration) -> Self {
        Self {
            outcome: Err(error),
            console: Vec::new(),
            console_truncated: false,
            duration,
        }
    }
}

/// One call of `console.log`, `.info`, `.warn`, `.error` (or `.debug`, kept
/// as `log`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConsoleLine {
    /// `log`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// The arguments, formatted and joined by spaces: strings as they are,
    /// errors as `Name: message`, objects as JSON, other values as `String()`.
    pub message: String,
}

/// Why a run gave no result.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No worker came free within the wait, or too many callers were waiting.
    #[error("the script engine is busy")]
    Busy,
    /// The script ran past its time limit.
    #[error("the script ran past its time limit")]
    Timeout,
    /// The returned promise is pending and nothing is left that could settle it.
    #[error("the script's promise never settles")]
    NeverSettled,
    /// The script reached the memory limit.
    #[error("the script ran out of memory")]
    OutOfMemory,
    /// The script threw, or its promise was rejected (a stack overflow from
    /// deep recursion too).
    #[error("the script threw {message}")]
    Threw {
        /// As `String(error)` gives it, e.g. `Error: boom`.
        message: String,
        /// The JavaScript stack, when the thrown value had one.
        stack: Option<String>,
    },
    /// The module does not compile or link (an `import` is refused here).
    #[error("the script does not compile: {0}")]
    Compile(CompileError),
    /// The module has no default export that is a function.
    #[error("the script's default export is not a function")]
    NotAFunction,
    /// The result has no JSON form (a BigInt, a cycle) or is over
    /// `output_limit`.
    #[error("the script's result cannot be used: {0}")]
    InvalidValue(String),
    /// The engine failed, not the script: a worker panicked or stopped. The
    /// worker is replaced; the engine keeps working.
    #[error("the script engine failed: {0}")]
    Crashed(String),
}

/// Why [`Engine::check`] did not accept a module.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The module does not compile, has no default function, or its top
    /// level failed: the script's fault.
    #[error("{0}")]
    Script(CompileError),
    /// No worker looked at it (all busy, or one crashed): try again.
    #[error("{0}")]
    Engine(RunError),
}

/// Why a module does not compile (or load), and where.
#[derive(Clone, Debug, thiserror::Error, serde::Serialize)]
pub struct CompileError {
    /// QuickJS's message, e.g. `SyntaxError: unexpected token in expression: ')'`.
    pub message: String,
    /// 1-based line of the error, when QuickJS gives one.
    pub line: Option<u32>,
    /// 1-based column of the error, when QuickJS gives one.
    pub column: Option<u32>,
}

impl CompileError {
    fn plain(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            line: None,
            column: None,
        }
    }
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, " (line {line}, column {column})"),
            (Some(line), None) => write!(f, " (line {line})"),
            _ => Ok(()),
        }
    }
}

/// The `outcome` label of `hookrelay_script_runs_total`.
fn outcome_label(outcome: &Result<Option<serde_json::Value>, RunError>) -> &'static str {
    match outcome {
        Ok(_) => "ok",
        Err(RunError::Busy) => "busy",
        Err(RunError::Timeout) => "timeout",
        Err(RunError::NeverSettled) => "never_settled",
        Err(RunError::OutOfMemory) => "out_of_memory",
        Err(RunError::Threw { .. }) => "threw",
        Err(RunError::Compile(_)) => "compile",
        Err(RunError::NotAFunction) => "not_a_function",
        Err(RunError::InvalidValue(_)) => "invalid",
        Err(RunError::Crashed(_)) => "crashed",
    }
}

impl Engine {
    /// Starts `settings.concurrency` worker threads (at least one).
    pub fn start(settings: EngineSettings) -> Engine {
        let capacity = settings.concurrency.max(1);
        let (jobs, receiver) = mpsc::sync_channel(capacity);
        let shared = Arc::new(Shared::new(
            settings,
            receiver,
            Cache::new(CACHE_ENTRIES, CACHE_BYTES),
        ));
        for _ in 0..capacity {
            pool::spawn(&shared);
        }
        metrics::gauge!(crate::telemetry::catalog::SCRIPT_CAPACITY).set(capacity as f64);
        Engine {
            inner: Arc::new(Inner {
                shared,
                jobs,
                line: Line::new(capacity),
                capacity,
            }),
        }
    }

    /// Compiles the module and evaluates its top level in a sandbox, at save
    /// time: a syntax error gives QuickJS's message with its line and column;
    /// an `import`, a top level that throws, or a default export that is no
    /// function are refused too. Runs on the worker pool, under the same
    /// limits as a run (the top level gets two seconds).
    pub async fn check(&self, source: &str) -> Result<(), CheckError> {
        let task = Task::Check {
            source: Arc::from(source),
            timeout: CHECK_TIME_LIMIT,
        };
        match self.submit(task, CHECK_TIME_LIMIT + REPLY_GRACE).await {
            Ok(Reply::Check(result)) => result.map_err(CheckError::Script),
            Ok(Reply::Run(_)) => Err(CheckError::Engine(RunError::Crashed(
                "the script engine mixed up replies".to_owned(),
            ))),
            Err(error) => Err(CheckError::Engine(error)),
        }
    }

    /// Runs the default export of `script` with `args` (JSON values passed
    /// as JavaScript values) and awaits the promise it returns, if any, all
    /// within `timeout`. Waits for a worker as the settings allow, or
    /// answers `Busy`.
    pub async fn run(
        &self,
        script: &ScriptRef,
        args: Vec<serde_json::Value>,
        timeout: Duration,
        kind: RunKind,
    ) -> Run {
        self.run_with(script, args, timeout, kind, None).await
    }

    /// [`Engine::run`], with calls out through `bridge`.
    pub async fn run_with(
        &self,
        script: &ScriptRef,
        args: Vec<serde_json::Value>,
        timeout: Duration,
        kind: RunKind,
        bridge: Option<Arc<Bridge>>,
    ) -> Run {
        let started = Instant::now();
        let answer = match self.acquire().await {
            Some(permit) => {
                let task = Task::run(script, args, timeout, kind, bridge);
                self.hand_over(permit, task, timeout + REPLY_GRACE).await
            }
            None => Err(RunError::Busy),
        };
        finish(answer, kind, started)
    }

    /// Runs holding a worker right now (running, or handed over to one).
    pub fn in_use(&self) -> usize {
        self.inner.capacity - self.inner.line.slots.available_permits()
    }

    /// Runs that can happen at once.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Scripts compiled from source so far (each cache miss is one).
    pub fn compiles(&self) -> u64 {
        self.inner.shared.compiles.load(Ordering::Relaxed)
    }

    /// Scripts kept compiled right now.
    pub fn cached(&self) -> usize {
        self.inner.shared.cache.len()
    }

    /// A worker slot right now, without waiting, to run with later: for a
    /// caller that must know it can run before it commits to anything.
    /// `None` when every worker is taken.
    pub fn reserve(&self) -> Option<Permit> {
        let permit = self.inner.line.slots.clone().try_acquire_owned().ok()?;
        Some(Permit {
            engine: self.clone(),
            permit,
        })
    }

    /// A worker slot to run with later, waiting for one in the bounded line
    /// as [`Engine::run`] does, but for at most `wait`: `None` (busy) when
    /// the line is full or no worker came free in time.
    pub async fn reserve_waiting(&self, wait: Duration) -> Option<Permit> {
        let max_waiting = self.inner.shared.settings.max_waiting;
        let permit = self.inner.line.take(max_waiting, wait).await?;
        Some(Permit {
            engine: self.clone(),
            permit,
        })
    }

    /// How long a caller waits in line for a worker, and how many may wait.
    pub fn patience(&self) -> (Duration, usize) {
        let settings = &self.inner.shared.settings;
        (settings.wait, settings.max_waiting)
    }

    /// Hands `task` to a worker and waits up to `patience` for the answer.
    async fn submit(&self, task: Task, patience: Duration) -> Result<Reply, RunError> {
        let permit = self.acquire().await.ok_or(RunError::Busy)?;
        self.hand_over(permit, task, patience).await
    }

    /// Hands `task`, holding `permit`, to a worker and waits up to
    /// `patience` for the answer.
    async fn hand_over(
        &self,
        permit: OwnedSemaphorePermit,
        task: Task,
        patience: Duration,
    ) -> Result<Reply, RunError> {
        if self.inner.shared.workers.load(Ordering::SeqCst) == 0 {
            return Err(RunError::Crashed("no script worker is running".to_owned()));
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            task,
            reply,
            permit,
        };
        if self.inner.jobs.try_send(job).is_err() {
            return Err(RunError::Crashed(
                "the script workers are not taking jobs".to_owned(),
            ));
        }
        match tokio::time::timeout(patience, answer).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(RunError::Crashed(
                "the script worker stopped before it answered".to_owned(),
            )),
            Err(_) => Err(RunError::Timeout),
        }
    }

    /// A permit now, or after waiting in a bounded line; `None` is `Busy`.
    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        let settings = &self.inner.shared.settings;
        self.inner
            .line
            .take(settings.max_waiting, settings.wait)
            .await
    }
}

/// A worker slot taken by [`Engine::reserve`]; given back when dropped
/// unused.
pub struct Permit {
    /// The engine the slot belongs to.
    engine: Engine,
    /// The slot itself; it goes with the job to the worker.
    permit: OwnedSemaphorePermit,
}

impl Permit {
    /// Runs `script` in the reserved slot, as [`Engine::run`] does but
    /// without waiting for a worker.
    pub async fn run(
        self,
        script: &ScriptRef,
        args: Vec<serde_json::Value>,
        timeout: Duration,
        kind: RunKind,
        bridge: Option<Arc<Bridge>>,
    ) -> Run {
        let started = Instant::now();
        let task = Task::run(script, args, timeout, kind, bridge);
        let answer = self
            .engine
            .hand_over(self.permit, task, timeout + REPLY_GRACE)
            .await;
        finish(answer, kind, started)
    }
}

/// The run a worker answered, or the failure it became when none did.
fn finish(answer: Result<Reply, RunError>, kind: RunKind, started: Instant) -> Run {
    match answer {
        Ok(Reply::Run(run)) => run,
        Ok(Reply::Check(_)) => Run::failed(
            RunError::Crashed("the script engine mixed up replies".to_owned()),
            started.elapsed(),
        ),
        Err(error) => {
            let run = Run::failed(error, started.elapsed());
            // A run that a worker took is counted by the worker.
            if matches!(run.outcome, Err(RunError::Busy | RunError::Crashed(_))) {
                pool::record(kind, &run);
            }
            run
        }
    }
}

/// A number of slots with a bounded waiting line: a caller gets a slot at
/// once, or waits for one if fewer than `max_waiting` others are waiting,
/// for at most `wait`. The engine's workers are one; each web trigger's share
/// of them is another.
pub struct Line {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl Line {
    pub fn new(slots: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots)),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Callers waiting right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// A slot now, or after waiting in line; `None` when the line is full
    /// or no slot came free within `wait`.
    pub async fn take(&self, max_waiting: usize, wait: Duration) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let _in_line = InLine(&self.waiting);
        let wanted = self.slots.clone().acquire_owned();
        match tokio::time::timeout(wait, wanted).await {
            Ok(Ok(permit)) => Some(permit),
            _ => None,
        }
    }
}

/// One caller in a waiting line; leaves it when dropped, also when the
/// caller's future is.
struct InLine<'a>(&'a AtomicUsize);

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
