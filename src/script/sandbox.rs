//! One run inside QuickJS: a fresh runtime and context with the memory limit
//! and the deadline, the module loaded (from cached bytecode when there is
//! some), its default export called, the promise driven until it settles, the
//! result turned into JSON.
//!
//! Nothing here outlives the run: the runtime is dropped at the end, and with
//! it every object the script made.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use rquickjs::allocator::{Allocator, RustAllocator};
use rquickjs::context::intrinsic;
use rquickjs::function::Rest;
use rquickjs::promise::PromiseState;
use rquickjs::{
    AsyncContext, AsyncRuntime, CatchResultExt, CaughtError, Coerced, Ctx, Exception, Function,
    Module, Object, Promise, Value, WriteOptions,
};

use super::cache::Cache;
use super::host::{self, Calls};
use super::{Bridge, CompileError, ConsoleLine, RunError};

/// The name the module is compiled under; stack traces and compile errors
/// show it, as in `at f (script.js:3:11)`.
const MODULE_NAME: &str = "script.js";

/// The most stack QuickJS may use, well below the worker thread's stack, so
/// that deep recursion ends in a JavaScript `RangeError` long before the
/// native stack runs out.
pub(super) const JS_STACK_SIZE: usize = 1024 * 1024;

/// The standard ECMAScript built-ins and nothing else: no `performance`, no
/// `DOMException`. The base objects (Object, Array, Math, JSON's host
/// objects, Reflect, Symbol, BigInt...) come with every context. `Eval` is the
/// compiler itself: modules cannot be compiled without it, and it makes
/// `eval`/`new Function` work, which are standard too.
type Intrinsics = (
    intrinsic::Date,
    intrinsic::Eval,
    intrinsic::RegExpCompiler,
    intrinsic::RegExp,
    intrinsic::Json,
    intrinsic::Proxy,
    intrinsic::MapSet,
    intrinsic::TypedArrays,
    intrinsic::Promise,
    intrinsic::WeakRef,
);

/// What a run needs to know about its engine.
pub(super) struct Limits {
    /// Bytes QuickJS may allocate for the whole run.
    pub memory: usize,
    /// Bytes of console output kept.
    pub console: usize,
    /// Bytes of JSON result accepted.
    pub output: usize,
}

/// What the limits did during a run, so that the error that follows can be
/// read for what it is.
#[derive(Default)]
struct Signals {
    /// The interrupt handler stopped the script at the deadline.
    timed_out: Cell<bool>,
    /// The allocator refused an allocation at the memory limit.
    refused: Cell<bool>,
}

/// A fresh QuickJS runtime and context, limited in memory and time.
struct Sandbox {
    /// The context; it holds its runtime, and dropping it frees both.
    context: AsyncContext,
    signals: Rc<Signals>,
}

impl Sandbox {
    async fn new(memory_limit: usize, deadline: Instant) -> Result<Self, RunError> {
        let signals = Rc::new(Signals::default());
        let allocator = Metered {
            limit: memory_limit,
            used: 0,
            signals: signals.clone(),
        };
        let runtime = AsyncRuntime::new_with_alloc(allocator).map_err(setup_error)?;
        runtime.set_max_stack_size(JS_STACK_SIZE).await;
        let flag = signals.clone();
        // QuickJS asks every few thousand instructions (and while matching a
        // regular expression); `true` raises an uncatchable error.
        runtime
            .set_interrupt_handler(Some(Box::new(move || {
                let stop = Instant::now() >= deadline;
                if stop {
                    flag.timed_out.set(true);
                }
                stop
            })))
            .await;
        let context = AsyncContext::custom::<Intrinsics>(&runtime)
            .await
            .map_err(setup_error)?;
        Ok(Self { context, signals })
    }
}

/// QuickJS's allocator for one run: Rust's global allocator through
/// rquickjs's own [`RustAllocator`], with the run's memory limit kept here
/// rather than by QuickJS, so that the run knows when the limit was hit.
/// (When QuickJS is so short of memory that it cannot make the error
/// object, it throws `null`, which alone would not tell an out-of-memory
/// from a script's own `throw null`.)
struct Metered {
    /// Bytes the run may hold.
    limit: usize,
    /// Bytes it holds now.
    used: usize,
    /// Where a refusal is noted.
    signals: Rc<Signals>,
}

impl Metered {
    /// Whether `more` bytes fit; notes a refusal.
    fn admit(&mut self, more: usize) -> bool {
        let fits = self.used.saturating_add(more) <= self.limit;
        if !fits {
            self.signals.refused.set(true);
        }
        fits
    }
}

// SAFETY: every pointer comes from `RustAllocator` and goes back to it, so
// its guarantees (alignment, usable size) are the ones QuickJS gets. What is
// added only refuses (returns null, which QuickJS handles as out of memory)
// or counts; the count never decides what is freed. Null pointers and sizes
// whose product overflows are handled here before `RustAllocator` sees them.
unsafe impl Allocator for Metered {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        if !self.admit(size) {
            return std::ptr::null_mut();
        }
        let ptr = RustAllocator.alloc(size);
        if !ptr.is_null() {
            // SAFETY: `ptr` was just allocated by `RustAllocator`.
            self.used += unsafe { RustAllocator::usable_size(ptr) };
        }
        ptr
    }

    fn calloc(&mut self, count: usize, size: usize) -> *mut u8 {
        let Some(total) = count.checked_mul(size) else {
            self.signals.refused.set(true);
            return std::ptr::null_mut();
        };
        if !self.admit(total) {
            return std::ptr::null_mut();
        }
        let ptr = RustAllocator.calloc(count, size);
        if !ptr.is_null() {
            // SAFETY: `ptr` was just allocated by `RustAllocator`.
            self.used += unsafe { RustAllocator::usable_size(ptr) };
        }
        ptr
    }

    unsafe fn dealloc(&mut self, ptr: *mut u8) {
        // SAFETY: the caller passes a pointer from this allocator, that is
        // from `RustAllocator`.
        unsafe {
            self.used = self.used.saturating_sub(RustAllocator::usable_size(ptr));
            RustAllocator.dealloc(ptr);
        }
    }

    unsafe fn realloc(&mut self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        if ptr.is_null() {
            return self.alloc(new_size);
        }
        // SAFETY: as in `dealloc`; `RustAllocator::realloc` keeps `ptr`
        // valid when it fails.
        unsafe {
            let old = RustAllocator::usable_size(ptr);
            if new_size > old && !self.admit(new_size - old) {
                return std::ptr::null_mut();
            }
            let moved = RustAllocator.realloc(ptr, new_size);
            if !moved.is_null() {
                self.used = self.used.saturating_sub(old) + RustAllocator::usable_size(moved);
            }
            moved
        }
    }

    unsafe fn usable_size(ptr: *mut u8) -> usize {
        // SAFETY: as in `dealloc`.
        unsafe { RustAllocator::usable_size(ptr) }
    }
}

/// Makes and drops the sandbox a run gets, for measuring what that costs.
#[cfg(test)]
pub(super) async fn fresh_sandbox(memory_limit: usize) -> Result<(), RunError> {
    let deadline = Instant::now() + std::time::Duration::from_secs(1);
    Sandbox::new(memory_limit, deadline).await.map(drop)
}

fn setup_error(error: rquickjs::Error) -> RunError {
    match error {
        rquickjs::Error::Allocation => RunError::OutOfMemory,
        other => RunError::Crashed(format!("could not create a JavaScript runtime: {other}")),
    }
}

/// Console output of one run, bounded in bytes.
#[derive(Default)]
pub(super) struct Console {
    /// What was kept, in order.
    pub lines: Vec<ConsoleLine>,
    /// Whether anything was cut or dropped at the limit.
    pub truncated: bool,
    /// Bytes of messages kept so far.
    bytes: usize,
}

impl Console {
    fn push(&mut self, level: &'static str, mut message: String, limit: usize) {
        if self.truncated {
            return;
        }
        let room = limit.saturating_sub(self.bytes);
        if message.len() > room {
            let mut end = room;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            self.truncated = true;
            if message.is_empty() {
                return;
            }
        }
        self.bytes += message.len();
        self.lines.push(ConsoleLine { level, message });
    }
}

/// A script to run: its cache key, its source, and where its bytecode is kept.
pub(super) struct Program<'a> {
    /// The cache key, naming the script's version.
    pub key: &'a str,
    /// The module source, compiled on a cache miss.
    pub source: &'a str,
    /// Where compiled scripts are kept.
    pub cache: &'a Cache,
    /// Counts compiles, so that a cache hit can be seen.
    pub compiled: &'a dyn Fn(),
}

/// Runs the default export of `program` with `args`, until `deadline`;
/// console output goes to `console`, which the caller keeps even if it stops
/// waiting for the run.
pub(super) async fn run(
    program: Program<'_>,
    args: Vec<serde_json::Value>,
    deadline: Instant,
    limits: &Limits,
    console: Rc<RefCell<Console>>,
    bridge: Option<Arc<Bridge>>,
) -> Result<Option<serde_json::Value>, RunError> {
    let sandbox = Sandbox::new(limits.memory, deadline).await?;
    let calls = Rc::new(Calls::default());
    let cached = program.cache.get(program.key, program.source);
    let signals = sandbox.signals.clone();
    let sink = console;
    let console_limit = limits.console;
    let output_limit = limits.output;
    let body = async |ctx: Ctx<'_>| -> Result<Option<serde_json::Value>, RunError> {
        let fail = |error: CaughtError<'_>| failure(error, &signals);
        install_console(&ctx, sink, console_limit)
            .catch(&ctx)
            .map_err(fail)?;
        let module = match &cached {
            Some(code) => load_bytecode(&ctx, code).catch(&ctx).map_err(fail)?,
            None => {
                let module = compile(&ctx, program.source, &signals)?;
                (program.compiled)();
                let code = module
                    .write(WriteOptions::default())
                    .catch(&ctx)
                    .map_err(fail)?;
                program
                    .cache
                    .insert(program.key, program.source, code.into());
                module
            }
        };
        let default = evaluate(&ctx, module, deadline, &signals, &calls).await?;
        let function = default.into_function().ok_or(RunError::NotAFunction)?;
        let mut values = Vec::with_capacity(args.len());
        for arg in &args {
            let text = serde_json::to_string(arg)
                .map_err(|e| RunError::Crashed(format!("argument not serializable: {e}")))?;
            values.push(ctx.json_parse(text).catch(&ctx).map_err(fail)?);
        }
        if let Some(bridge) = bridge {
            let app = host::install(&ctx, bridge, calls.clone())
                .catch(&ctx)
                .map_err(fail)?;
            host::attach(&values, app).catch(&ctx).map_err(fail)?;
        }
        let returned: Value = function.call((Rest(values),)).catch(&ctx).map_err(fail)?;
        let value = match returned.as_promise() {
            Some(promise) => settled(&ctx, promise, deadline, &signals, &calls).await?,
            None => returned,
        };
        to_json(&ctx, value, output_limit, &signals)
    };
    sandbox.context.async_with(body).await
}

/// Compiles `source` and evaluates it the way a run would, without calling
/// anything: syntax errors, imports, a throwing top level and a missing
/// default export all show here, at save time.
pub(super) async fn check(
    source: &str,
    deadline: Instant,
    memory_limit: usize,
) -> Result<(), CompileError> {
    let sandbox = Sandbox::new(memory_limit, deadline)
        .await
        .map_err(|error| CompileError::plain(error.to_string()))?;
    let signals = sandbox.signals.clone();
    let body = async |ctx: Ctx<'_>| -> Result<(), CompileError> {
        let module = compile(&ctx, source, &signals).map_err(|error| match error {
            RunError::Compile(error) => error,
            other => CompileError::plain(other.to_string()),
        })?;
        let calls = Calls::default();
        let evaluated = evaluate(&ctx, module, deadline, &signals, &calls).await;
        let default = evaluated.map_err(|error| match error {
            RunError::Compile(error) => error,
            RunError::Threw { message, stack } => {
                let (line, column) = stack.as_deref().map(position).unwrap_or_default();
                CompileError {
                    message: format!("the module threw while loading: {message}"),
                    line,
                    column,
                }
            }
            other => CompileError::plain(other.to_string()),
        })?;
        if default.is_function() {
            Ok(())
        } else {
            Err(CompileError::plain(RunError::NotAFunction.to_string()))
        }
    };
    sandbox.context.async_with(body).await
}

/// Compiles `source` as a module, without evaluating it.
fn compile<'js>(ctx: &Ctx<'js>, source: &str, signals: &Signals) -> Result<Module<'js>, RunError> {
    // QuickJS takes the source as a C string.
    if let Some(at) = source.find('\0') {
        let before = &source[..at];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |newline| newline + 1) + 1;
        return Err(RunError::Compile(CompileError {
            message: "the script contains a NUL character".to_owned(),
            line: u32::try_from(line).ok(),
            column: u32::try_from(column).ok(),
        }));
    }
    Module::declare(ctx.clone(), MODULE_NAME, source)
        .catch(ctx)
        .map_err(|error| compile_failure(error, signals))
}

/// Loads bytecode made by [`Module::write`] in an earlier run.
fn load_bytecode<'js>(ctx: &Ctx<'js>, code: &[u8]) -> rquickjs::Result<Module<'js>> {
    // SAFETY: `Module::load` trusts its bytes to be valid QuickJS bytecode.
    // These are: the cache only ever holds what `Module::write` produced in
    // this process, with this QuickJS build, from a module that compiled; no
    // script or caller can put other bytes there. QuickJS copies what it
    // reads, so `code` need not outlive the call.
    unsafe { Module::load(ctx.clone(), code) }
}

/// Evaluates the module's top level (awaiting a top-level `await`) and
/// returns its default export.
async fn evaluate<'js>(
    ctx: &Ctx<'js>,
    module: Module<'js>,
    deadline: Instant,
    signals: &Signals,
    calls: &Calls,
) -> Result<Value<'js>, RunError> {
    let fail = |error: CaughtError<'_>| import_failure(failure(error, signals));
    let (module, promise) = module.eval().catch(ctx).map_err(fail)?;
    settled(ctx, &promise, deadline, signals, calls)
        .await
        .map_err(import_failure)?;
    module.get("default").catch(ctx).map_err(fail)
}

/// An `import` fails when the module is linked, as a plain error: it is the
/// script that is wrong, so it reads as a compile error.
fn import_failure(error: RunError) -> RunError {
    match error {
        RunError::Threw { message, stack } if message.contains(IMPORT_REFUSED) => {
            let (line, column) = stack.as_deref().map(position).unwrap_or_default();
            RunError::Compile(CompileError {
                message: format!("imports are not available to scripts ({message})"),
                line,
                column,
            })
        }
        other => other,
    }
}

/// Runs QuickJS's job queue until `promise` settles, and returns its value.
///
/// A host call (`fetch`) runs as a future on rquickjs's scheduler, which
/// `AsyncContext::async_with` polls between the polls of this one, and wakes
/// the run when its task on the host's runtime answers. So an empty job
/// queue means "never settles" only when no call is in flight; while one is,
/// this waits (`Pending`), and the deadline still ends it (the worker wraps
/// the run in a timer).
async fn settled<'js>(
    ctx: &Ctx<'js>,
    promise: &Promise<'js>,
    deadline: Instant,
    signals: &Signals,
    calls: &Calls,
) -> Result<Value<'js>, RunError> {
    std::future::poll_fn(|_| loop {
        if promise.state() != PromiseState::Pending {
            return Poll::Ready(Ok(()));
        }
        if Instant::now() >= deadline {
            return Poll::Ready(Err(RunError::Timeout));
        }
        // A job interrupted at the deadline still counts as run; the check
        // above or `timed_out` below ends the loop.
        if ctx.execute_pending_job() {
            continue;
        }
        if signals.timed_out.get() {
            return Poll::Ready(Err(RunError::Timeout));
        }
        if calls.in_flight() == 0 {
            return Poll::Ready(Err(RunError::NeverSettled));
        }
        return Poll::Pending;
    })
    .await?;
    match promise.result::<Value>() {
        Some(result) => result.catch(ctx).map_err(|error| failure(error, signals)),
        None => Err(RunError::NeverSettled),
    }
}

/// What a thrown error or rejected promise means for the run.
fn failure(error: CaughtError<'_>, signals: &Signals) -> RunError {
    if signals.timed_out.get() {
        return RunError::Timeout;
    }
    let refused = signals.refused.get();
    match error {
        CaughtError::Error(rquickjs::Error::Allocation) => RunError::OutOfMemory,
        CaughtError::Error(other) => RunError::Crashed(other.to_string()),
        CaughtError::Exception(exception) => {
            let message = exception_text(&exception);
            if is_out_of_memory(&message, refused) {
                return RunError::OutOfMemory;
            }
            RunError::Threw {
                message,
                stack: exception.stack().filter(|stack| !stack.is_empty()),
            }
        }
        // QuickJS throws `null` when it cannot even make the error object.
        CaughtError::Value(value) if value.is_null() && refused => RunError::OutOfMemory,
        CaughtError::Value(value) => RunError::Threw {
            message: format_value(value.ctx(), &value),
            stack: None,
        },
    }
}

/// QuickJS's errors for a run out of memory: the allocator refused, or a
/// string reached QuickJS's longest (concatenation makes ropes, so doubling
/// a string reaches that length before it reaches the memory limit).
fn is_out_of_memory(message: &str, refused: bool) -> bool {
    match message {
        "InternalError: string too long" => true,
        "InternalError: out of memory" => refused,
        _ => false,
    }
}

/// What QuickJS says when a module imports anything: no loader is set, so
/// nothing can be loaded.
const IMPORT_REFUSED: &str = "could not load module";

/// Like [`failure`], but a syntax error becomes a [`CompileError`] with its
/// position.
fn compile_failure(error: CaughtError<'_>, signals: &Signals) -> RunError {
    if signals.timed_out.get() {
        return RunError::Timeout;
    }
    match error {
        CaughtError::Exception(exception) => {
            let message = exception_text(&exception);
            if is_out_of_memory(&message, signals.refused.get()) {
                return RunError::OutOfMemory;
            }
            let message = if message.contains(IMPORT_REFUSED) {
                format!("imports are not available to scripts ({message})")
            } else {
                message
            };
            let (line, column) = exception
                .stack()
                .as_deref()
                .map(position)
                .unwrap_or_default();
            RunError::Compile(CompileError {
                message,
                line,
                column,
            })
        }
        other => match failure(other, signals) {
            RunError::Threw { message, .. } => RunError::Compile(CompileError::plain(message)),
            other => other,
        },
    }
}

/// `Error: boom`, as `String(error)` gives it, read without calling the
/// script's own `toString`.
fn exception_text(exception: &Exception<'_>) -> String {
    let name = exception
        .get::<_, Option<Coerced<String>>>("name")
        .ok()
        .flatten()
        .map(|name| name.0)
        .unwrap_or_else(|| "Error".to_owned());
    match exception.message() {
        Some(message) if !message.is_empty() => format!("{name}: {message}"),
        _ => name,
    }
}

/// Line and column of the first `script.js:LINE:COL` in a stack.
fn position(stack: &str) -> (Option<u32>, Option<u32>) {
    let Some(start) = stack.find(MODULE_NAME) else {
        return (None, None);
    };
    let mut numbers = stack[start + MODULE_NAME.len()..]
        .split(':')
        .skip(1)
        .map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
    let line = numbers.next().flatten();
    let column = line.and(numbers.next().flatten());
    (line, column)
}

/// The result as JSON: `JSON.stringify` in the sandbox, then parsed here.
fn to_json<'js>(
    ctx: &Ctx<'js>,
    value: Value<'js>,
    limit: usize,
    signals: &Signals,
) -> Result<Option<serde_json::Value>, RunError> {
    let text = match ctx.json_stringify(value).catch(ctx) {
        Ok(None) => return Ok(None),
        Ok(Some(text)) => text,
        Err(error) => {
            return Err(match failure(error, signals) {
                RunError::Threw { message, .. } => RunError::InvalidValue(message),
                other => other,
            })
        }
    };
    // UTF-8 in QuickJS's memory first, so that an oversized result is
    // refused before it is copied out.
    let text = text
        .to_cstring()
        .catch(ctx)
        .map_err(|error| failure(error, signals))?;
    if text.len() > limit {
        return Err(RunError::InvalidValue(format!(
            "the result is {} bytes of JSON, over the limit of {limit}",
            text.len()
        )));
    }
    serde_json::from_str(text.as_str())
        .map(Some)
        .map_err(|error| RunError::InvalidValue(format!("the result is not valid JSON: {error}")))
}

/// `console.log` and friends, writing into `sink`.
fn install_console<'js>(
    ctx: &Ctx<'js>,
    sink: Rc<RefCell<Console>>,
    limit: usize,
) -> rquickjs::Result<()> {
    let console = Object::new(ctx.clone())?;
    for (name, level) in [
        ("log", "log"),
        ("info", "info"),
        ("warn", "warn"),
        ("error", "error"),
        ("debug", "log"),
    ] {
        let sink = sink.clone();
        let function = Function::new(ctx.clone(), move |ctx: Ctx<'js>, args: Rest<Value<'js>>| {
            if sink.borrow().truncated {
                return;
            }
            let message = args
                .0
                .iter()
                .map(|value| format_value(&ctx, value))
                .collect::<Vec<_>>()
                .join(" ");
            sink.borrow_mut().push(level, message, limit);
        })?
        .with_name(name)?;
        console.set(name, function)?;
    }
    ctx.globals().set("console", console)?;
    Ok(())
}

/// A value as `console.log` shows it: strings as they are, errors as
/// `Name: message`, objects as JSON, anything else as `String(value)`.
/// Never throws: an exception on the way (a throwing `toJSON`, a cycle) is
/// cleared and the next way is tried.
fn format_value<'js>(ctx: &Ctx<'js>, value: &Value<'js>) -> String {
    if let Some(text) = value.as_string() {
        return text.to_string().unwrap_or_default();
    }
    if let Some(object) = value.as_object() {
        if let Some(exception) = Exception::from_object(object.clone()) {
            return exception_text(&exception);
        }
        if !value.is_function() {
            if let Ok(Some(text)) = ctx.json_stringify(value.clone()).catch(ctx) {
                if let Ok(text) = text.to_string() {
                    return text;
                }
            }
        }
    }
    if let Some(symbol) = value.as_symbol() {
        return match symbol.description() {
            Ok(description) if !description.is_undefined() => {
                format!("Symbol({})", format_value(ctx, &description))
            }
            _ => "Symbol()".to_owned(),
        };
    }
    match value.get::<Coerced<String>>().catch(ctx) {
        Ok(text) => text.0,
        Err(_) => "[unprintable value]".to_owned(),
    }
}
