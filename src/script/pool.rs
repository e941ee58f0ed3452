//! The worker threads that runs happen on, off the async executor.
//!
//! Each worker is a plain OS thread with a large stack and its own
//! current-thread tokio runtime, which drives rquickjs's async context (and,
//! later, host futures). Workers take jobs from one bounded channel; a job
//! carries the semaphore permit that let it in, so a slot stays taken until
//! the worker is done with it, even if the caller gave up. A run that panics
//! is answered `Crashed`, and its thread is replaced by a new one.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::cache::Cache;
use super::sandbox::{self, Console, Limits, Program};
use super::{outcome_label, CompileError, EngineSettings, Run, RunError, RunKind};
use crate::telemetry::catalog::{SCRIPT_ACTIVE, SCRIPT_DURATION, SCRIPT_RUNS};

/// Stack of a worker thread; QuickJS's own limit (`sandbox::JS_STACK_SIZE`)
/// stays far below it, so native code never overflows it.
const WORKER_STACK_SIZE: usize = 8 * 1024 * 1024;

/// What a worker is asked to do.
pub(super) enum Task {
    /// Call a script's default export.
    Run {
        key: String,
        source: Arc<str>,
        args: Vec<serde_json::Value>,
        timeout: Duration,
        kind: RunKind,
        bridge: Option<Arc<super::Bridge>>,
    },
    /// Compile and load a script without calling it.
    Check { source: Arc<str>, timeout: Duration },
    /// Panics on the worker, to test that a worker is replaced.
    #[cfg(test)]
    Panic,
}

impl Task {
    pub(super) fn run(
        script: &super::ScriptRef,
        args: Vec<serde_json::Value>,
        timeout: Duration,
        kind: RunKind,
        bridge: Option<Arc<super::Bridge>>,
    ) -> Self {
        Task::Run {
            key: script.key.clone(),
            source: script.source.clone(),
            args,
            timeout,
            kind,
            bridge,
        }
    }
}

/// A worker's answer, by the kind of task.
pub(super) enum Reply {
    Run(Run),
    Check(Result<(), CompileError>),
}

/// A task on its way to a worker.
pub(super) struct Job {
    pub task: Task,
    /// Where the answer goes; a caller that stopped waiting has dropped it.
    pub reply: oneshot::Sender<Reply>,
    /// The slot this job holds until its worker is done.
    pub permit: OwnedSemaphorePermit,
}

/// What the workers share.
pub(super) struct Shared {
    pub settings: EngineSettings,
    /// The other end of the engine's bounded job channel. The worker holding
    /// the lock waits for the next job; the others wait for the lock.
    pub jobs: Mutex<mpsc::Receiver<Job>>,
    pub cache: Cache,
    /// Scripts compiled from source (cache misses), for tests and diagnosis.
    pub compiles: AtomicU64,
    /// Worker threads alive; none left means nothing would answer.
    pub workers: AtomicUsize,
    /// Numbers the worker threads' names.
    next_worker: AtomicU64,
}

impl Shared {
    pub(super) fn new(settings: EngineSettings, jobs: mpsc::Receiver<Job>, cache: Cache) -> Self {
        Self {
            settings,
            jobs: Mutex::new(jobs),
            cache,
            compiles: AtomicU64::new(0),
            workers: AtomicUsize::new(0),
            next_worker: AtomicU64::new(0),
        }
    }
}

/// Starts one worker thread; false if the thread could not be made.
pub(super) fn spawn(shared: &Arc<Shared>) -> bool {
    let number = shared.next_worker.fetch_add(1, Ordering::Relaxed);
    let theirs = shared.clone();
    shared.workers.fetch_add(1, Ordering::SeqCst);
    let started = std::thread::Builder::new()
        .name(format!("hookrelay-script-{number}"))
        .stack_size(WORKER_STACK_SIZE)
        .spawn(move || work(theirs));
    match started {
        Ok(_) => true,
        Err(error) => {
            shared.workers.fetch_sub(1, Ordering::SeqCst);
            tracing::error!(%error, "could not start a script worker thread");
            false
        }
    }
}

/// Counts a worker out when its thread ends, and starts a replacement if it
/// ended by a panic that escaped the per-run guard.
struct Leaving(Arc<Shared>);

impl Drop for Leaving {
    fn drop(&mut self) {
        self.0.workers.fetch_sub(1, Ordering::SeqCst);
        if std::thread::panicking() {
            spawn(&self.0);
        }
    }
}

fn work(shared: Arc<Shared>) {
    let _leaving = Leaving(shared.clone());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "could not start a script worker's runtime");
            return;
        }
    };
    loop {
        let job = shared
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv();
        // The engine is gone: nothing more will come.
        let Ok(Job {
            task,
            reply,
            permit,
        }) = job
        else {
            return;
        };
        let is_check = matches!(task, Task::Check { .. });
        let kind = match &task {
            Task::Run { kind, .. } => Some(*kind),
            _ => None,
        };
        let started = Instant::now();
        metrics::gauge!(SCRIPT_ACTIVE).increment(1.0);
        let answer = catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(execute(&shared, task))
        }));
        metrics::gauge!(SCRIPT_ACTIVE).decrement(1.0);
        drop(permit);
        match answer {
            Ok(answer) => {
                let _ = reply.send(answer);
            }
            Err(panic) => {
                let message = format!("a script worker panicked: {}", panic_text(&*panic));
                tracing::error!(%message, "replacing the script worker");
                let answer = if is_check {
                    Reply::Check(Err(CompileError::plain(message)))
                } else {
                    let run = Run::failed(RunError::Crashed(message), started.elapsed());
                    if let Some(kind) = kind {
                        record(kind, &run);
                    }
                    Reply::Run(run)
                };
                let _ = reply.send(answer);
                // This thread's runtime may have been left in any state:
                // a new thread takes over, and this one ends.
                spawn(&shared);
                return;
            }
        }
    }
}

async fn execute(shared: &Shared, task: Task) -> Reply {
    match task {
        Task::Run {
            key,
            source,
            args,
            timeout,
            kind,
            bridge,
        } => {
            let started = Instant::now();
            let deadline = started + timeout;
            let settings = &shared.settings;
            let limits = Limits {
                memory: settings.memory_limit,
                console: settings.console_limit,
                output: settings.output_limit,
            };
            let compiled = || {
                shared.compiles.fetch_add(1, Ordering::Relaxed);
            };
            let program = Program {
                key: &key,
                source: &source,
                cache: &shared.cache,
                compiled: &compiled,
            };
            let console = std::rc::Rc::new(std::cell::RefCell::new(Console::default()));
            // The interrupt handler stops JavaScript at the deadline; the
            // timer stops the run if it is waiting on anything else.
            let running = sandbox::run(program, args, deadline, &limits, console.clone(), bridge);
            let outcome = tokio::time::timeout_at(deadline.into(), running)
                .await
                .unwrap_or(Err(RunError::Timeout));
            let console = console.take();
            let run = Run {
                outcome,
                console: console.lines,
                console_truncated: console.truncated,
                duration: started.elapsed(),
            };
            record(kind, &run);
            Reply::Run(run)
        }
        Task::Check { source, timeout } => {
            let deadline = Instant::now() + timeout;
            let checking = sandbox::check(&source, deadline, shared.settings.memory_limit);
            let result = tokio::time::timeout_at(deadline.into(), checking)
                .await
                .unwrap_or_else(|_| Err(CompileError::plain(RunError::Timeout.to_string())));
            Reply::Check(result)
        }
        #[cfg(test)]
        Task::Panic => panic!("a test asked this worker to panic"),
    }
}

/// The run's metrics.
pub(super) fn record(kind: RunKind, run: &Run) {
    let kind = kind.as_str();
    metrics::histogram!(SCRIPT_DURATION, "kind" => kind).record(run.duration.as_secs_f64());
    metrics::counter!(
        SCRIPT_RUNS,
        "kind" => kind,
        "outcome" => outcome_label(&run.outcome),
    )
    .increment(1);
}

fn panic_text(panic: &(dyn Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "no message".to_owned()
    }
}
