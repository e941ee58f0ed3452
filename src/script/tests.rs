use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

const LIMIT: Duration = Duration::from_millis(200);

fn settings() -> EngineSettings {
    EngineSettings {
        memory_limit: 16 * 1024 * 1024,
        concurrency: 2,
        max_waiting: 4,
        wait: Duration::from_secs(2),
        console_limit: 1024,
        output_limit: 64 * 1024,
    }
}

fn engine() -> Engine {
    Engine::start(settings())
}

fn script(key: &str, source: &str) -> ScriptRef {
    ScriptRef {
        key: key.to_owned(),
        source: Arc::from(source),
    }
}

async fn go(engine: &Engine, source: &str) -> Run {
    go_with(engine, source, vec![]).await
}

async fn go_with(engine: &Engine, source: &str, args: Vec<serde_json::Value>) -> Run {
    engine
        .run(&script(source, source), args, LIMIT, RunKind::Trigger)
        .await
}

fn threw(run: &Run) -> String {
    match &run.outcome {
        Err(RunError::Threw { message, .. }) => message.clone(),
        other => panic!("expected Threw, got {other:?}"),
    }
}

#[tokio::test]
async fn returns_a_value() {
    let engine = engine();
    let run = go(&engine, "export default function () { return 42 }").await;
    assert_eq!(run.outcome.unwrap(), Some(json!(42)));
}

#[tokio::test]
async fn undefined_is_none() {
    let engine = engine();
    let run = go(&engine, "export default function () {}").await;
    assert_eq!(run.outcome.unwrap(), None);
    let run = go_with(
        &engine,
        "export default async function () {}",
        vec![json!(1)],
    )
    .await;
    assert_eq!(run.outcome.unwrap(), None);
}

#[tokio::test]
async fn async_resolve() {
    let engine = engine();
    let source = r#"
        async function later(x) { await null; return x * 2 }
        export default async function (request) {
            const a = await later(request.n);
            const b = await Promise.all([later(1), Promise.resolve(2)]);
            return { a, b };
        }
    "#;
    let run = go_with(&engine, source, vec![json!({"n": 21})]).await;
    assert_eq!(run.outcome.unwrap(), Some(json!({"a": 42, "b": [2, 2]})));
}

#[tokio::test]
async fn top_level_await_is_driven() {
    let engine = engine();
    let source = r#"
        const base = await Promise.resolve(40);
        export default () => base + 2;
    "#;
    let run = go(&engine, source).await;
    assert_eq!(run.outcome.unwrap(), Some(json!(42)));
}

#[tokio::test]
async fn args_round_trip() {
    let engine = engine();
    let args = vec![
        json!({"nested": {"list": [1, 2.5, null, true, "x"], "deep": {"a": {"b": {"c": []}}}}}),
        json!("héllo wörld ✓ 日本語 🚀"),
        json!(null),
    ];
    let source = "export default (a, b, c) => ({ a, b, c, n: arguments_count(a, b, c) });
        function arguments_count(...xs) { return xs.length }";
    let run = go_with(&engine, source, args.clone()).await;
    let value = run.outcome.unwrap().unwrap();
    assert_eq!(value["a"], args[0]);
    assert_eq!(value["b"], args[1]);
    assert_eq!(value["c"], args[2]);
    assert_eq!(value["n"], json!(3));
    let run = go_with(&engine, "export default s => s.length", vec![json!("🚀")]).await;
    assert_eq!(run.outcome.unwrap(), Some(json!(2)), "UTF-16 length in JS");
}

#[tokio::test]
async fn infinite_loop_times_out_and_the_worker_is_reused() {
    let engine = Engine::start(EngineSettings {
        concurrency: 1,
        ..settings()
    });
    let started = Instant::now();
    let run = go(&engine, "export default function () { while (true) {} }").await;
    assert!(matches!(run.outcome, Err(RunError::Timeout)), "{run:?}");
    assert!(started.elapsed() < LIMIT * 5, "{:?}", started.elapsed());
    // A loop that catches the interrupt cannot keep going either.
    let source = "export default function () { for (;;) { try { while (true) {} } catch (e) {} } }";
    let run2 = go(&engine, source).await;
    assert!(matches!(run2.outcome, Err(RunError::Timeout)), "{run2:?}");
    let again = go(&engine, "export default () => 'still here'").await;
    assert_eq!(again.outcome.unwrap(), Some(json!("still here")));
}

#[tokio::test]
async fn nothing_can_block_the_worker() {
    let engine = engine();
    let source =
        "export default () => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5000)";
    let run = go(&engine, source).await;
    assert!(threw(&run).contains("cannot block"), "{run:?}");
}

#[tokio::test]
async fn catastrophic_regex_times_out() {
    let engine = engine();
    let source = "export default () => /(a+)+$/.test('a'.repeat(40) + 'b')";
    let run = go(&engine, source).await;
    assert!(matches!(run.outcome, Err(RunError::Timeout)), "{run:?}");
}

#[tokio::test]
async fn async_loop_times_out() {
    let engine = engine();
    let source = "export default async function () { for (;;) { await null } }";
    let run = go(&engine, source).await;
    assert!(matches!(run.outcome, Err(RunError::Timeout)), "{run:?}");
}

#[tokio::test]
async fn out_of_memory_and_the_worker_is_reused() {
    let engine = Engine::start(EngineSettings {
        concurrency: 1,
        ..settings()
    });
    // Time enough to fill 16 MiB even in a slow debug build.
    let generous = Duration::from_secs(5);
    for source in [
        "export default () => new Array(1e9).fill(1)",
        // Concatenation makes ropes: the string's length limit comes first.
        "export default () => { let s = 'x'; for (;;) s += s; }",
        "export default () => { let s = 'x'; for (;;) s = [s, s].join(''); }",
        // Many small allocations: QuickJS runs out before it can even make
        // the error object, and throws `null`.
        "export default async () => { const a = []; for (;;) a.push({ a }); }",
        "export default () => { let o = {}; for (let i = 0;; i++) o['k' + i] = i; }",
        "export default () => { const a = []; for (;;) a.push(new Uint8Array(1 << 20)); }",
        "export default () => { const a = []; a.push(...new Array(1e6)); return a.length }",
    ] {
        let run = engine
            .run(&script(source, source), vec![], generous, RunKind::Trigger)
            .await;
        assert!(
            matches!(run.outcome, Err(RunError::OutOfMemory)),
            "{source}: {run:?}"
        );
    }
    let again = go(&engine, "export default () => [1, 2, 3]").await;
    assert_eq!(again.outcome.unwrap(), Some(json!([1, 2, 3])));
}

#[tokio::test]
async fn stack_overflow_is_a_thrown_error() {
    let engine = engine();
    let source = "function f() { return f() + 1 } export default () => f()";
    let run = go(&engine, source).await;
    let message = threw(&run);
    assert!(message.contains("stack"), "{message}");
    let source = "const f = async (n) => 1 + await f(n + 1); export default () => f(0)";
    let run = go(&engine, source).await;
    assert!(threw(&run).contains("stack"));
    // Deep JSON: nested arrays past what anything should recurse into.
    let source = "export default () => JSON.parse('['.repeat(1e6) + ']'.repeat(1e6))";
    let run = go(&engine, source).await;
    assert!(run.outcome.is_err(), "{run:?}");
    let again = go(&engine, "export default () => 1").await;
    assert_eq!(again.outcome.unwrap(), Some(json!(1)));
}

#[tokio::test]
async fn thrown_errors() {
    let engine = engine();
    let run = go(
        &engine,
        "export default function () {\n  throw new Error('boom')\n}",
    )
    .await;
    match &run.outcome {
        Err(RunError::Threw { message, stack }) => {
            assert_eq!(message, "Error: boom");
            let stack = stack.as_deref().unwrap_or_default();
            assert!(stack.contains("script.js:2"), "{stack}");
        }
        other => panic!("{other:?}"),
    }
    let run = go(
        &engine,
        "export default () => Promise.reject(new Error('x'))",
    )
    .await;
    assert_eq!(threw(&run), "Error: x");
    let run = go(
        &engine,
        "export default async () => { throw new TypeError('t') }",
    )
    .await;
    assert_eq!(threw(&run), "TypeError: t");
    let run = go(&engine, "export default () => { throw 'plain' }").await;
    assert_eq!(threw(&run), "plain");
    let run = go(&engine, "export default () => { throw { code: 7 } }").await;
    assert_eq!(threw(&run), r#"{"code":7}"#);
    let run = go(&engine, "export default () => { throw null }").await;
    assert_eq!(threw(&run), "null");
    let run = go(&engine, "export default () => undefinedName").await;
    assert!(threw(&run).starts_with("ReferenceError"));
}

#[tokio::test]
async fn never_settled_is_found_quickly() {
    let engine = engine();
    let started = Instant::now();
    let run = engine
        .run(
            &script("ns", "export default () => new Promise(() => {})"),
            vec![],
            Duration::from_secs(5),
            RunKind::Transform,
        )
        .await;
    assert!(
        matches!(run.outcome, Err(RunError::NeverSettled)),
        "{run:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    let source = "export default async () => { await new Promise(() => {}); return 1 }";
    let run = go(&engine, source).await;
    assert!(
        matches!(run.outcome, Err(RunError::NeverSettled)),
        "{run:?}"
    );
}

/// The script's own error from [`Engine::check`]; anything else fails the test.
async fn refused(engine: &Engine, source: &str) -> CompileError {
    match engine.check(source).await {
        Err(CheckError::Script(error)) => error,
        other => panic!("expected the script to be refused: {other:?}"),
    }
}

#[tokio::test]
async fn syntax_errors_have_their_line() {
    let engine = engine();
    let source = "export default function () {\n  let x = 1;\n  return x +;\n}\n";
    let error = refused(&engine, source).await;
    assert!(error.message.starts_with("SyntaxError"), "{error:?}");
    assert_eq!(error.line, Some(3), "{error:?}");
    assert!(error.column.is_some(), "{error:?}");
    let run = go(&engine, source).await;
    match run.outcome {
        Err(RunError::Compile(error)) => assert_eq!(error.line, Some(3)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_nul_character_is_a_compile_error() {
    let engine = engine();
    let source = "export default () => {\n  return 1\0 + 2\n}";
    let error = refused(&engine, source).await;
    assert_eq!((error.line, error.column), (Some(2), Some(11)), "{error:?}");
    let run = go(&engine, source).await;
    assert!(matches!(run.outcome, Err(RunError::Compile(_))), "{run:?}");
}

#[tokio::test]
async fn check_accepts_good_and_refuses_bad_modules() {
    let engine = engine();
    engine
        .check("export default async function (request, context) { return { statusCode: 200 } }")
        .await
        .unwrap();
    let error = refused(&engine, "export const x = 1").await;
    assert!(error.message.contains("default export"), "{error:?}");
    let error = refused(&engine, "export default 42").await;
    assert!(error.message.contains("default export"), "{error:?}");
    let error = refused(
        &engine,
        "throw new Error('at load')\nexport default () => 1",
    )
    .await;
    assert!(error.message.contains("at load"), "{error:?}");
    let error = refused(&engine, "while (true) {}\nexport default () => 1").await;
    assert!(error.message.contains("time"), "{error:?}");
}

#[tokio::test]
async fn check_compiles_a_large_script() {
    let engine = engine();
    let mut source = String::from("export default function () { let total = 0;\n");
    while source.len() < 256 * 1024 {
        source.push_str("total += [1, 2, 3].map((x) => x * 2).reduce((a, b) => a + b, 0);\n");
    }
    source.push_str("return total }\n");
    let started = Instant::now();
    engine.check(&source).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    let run = engine
        .run(
            &script("big", &source),
            vec![],
            Duration::from_secs(2),
            RunKind::Trigger,
        )
        .await;
    assert!(run.outcome.unwrap().is_some());
    // Deeply nested brackets end in an error, not a hang or a crash.
    let nested = format!(
        "export default () => {}1{}",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    refused(&engine, &nested).await;
}

#[tokio::test]
async fn imports_are_refused() {
    let engine = engine();
    let source = "import x from 'fs'\nexport default () => x";
    let error = refused(&engine, source).await;
    assert!(error.message.contains("import"), "{error:?}");
    let run = go(&engine, source).await;
    assert!(matches!(run.outcome, Err(RunError::Compile(_))), "{run:?}");
    let source = "export default async () => { const m = await import('os'); return 1 }";
    let run = go(&engine, source).await;
    assert!(threw(&run).contains("os"), "{run:?}");
}

#[tokio::test]
async fn no_default_export_is_not_a_function() {
    let engine = engine();
    let run = go(&engine, "export const handler = () => 1").await;
    assert!(
        matches!(run.outcome, Err(RunError::NotAFunction)),
        "{run:?}"
    );
    let run = go(&engine, "export default { a: 1 }").await;
    assert!(
        matches!(run.outcome, Err(RunError::NotAFunction)),
        "{run:?}"
    );
}

#[tokio::test]
async fn only_standard_built_ins() {
    let engine = engine();
    let source = r#"export default () => [
        typeof require, typeof process, typeof fetch, typeof setTimeout,
        typeof std, typeof os, typeof performance, typeof print,
        typeof JSON, typeof Promise, typeof Map, typeof Proxy, typeof Date,
        typeof BigInt, typeof WeakRef, typeof RegExp, typeof Uint8Array,
    ]"#;
    let run = go(&engine, source).await;
    let value = run.outcome.unwrap().unwrap();
    let names: Vec<&str> = value
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(names[..8].iter().all(|t| *t == "undefined"), "{names:?}");
    assert!(names[8..].iter().all(|t| *t != "undefined"), "{names:?}");
}

#[tokio::test]
async fn console_is_captured() {
    let engine = engine();
    let source = r#"export default () => {
        console.log('plain', 1, true, null, undefined, { a: [1] });
        console.info('info');
        console.warn('warn');
        console.error(new Error('bad'));
        const cyclic = {}; cyclic.self = cyclic;
        console.log(cyclic, Symbol('s'), 10n, () => 1);
        return 1;
    }"#;
    let run = go(&engine, source).await;
    assert_eq!(run.outcome.unwrap(), Some(json!(1)));
    assert!(!run.console_truncated);
    let lines: Vec<(&str, &str)> = run
        .console
        .iter()
        .map(|l| (l.level, l.message.as_str()))
        .collect();
    assert_eq!(
        lines[0],
        ("log", r#"plain 1 true null undefined {"a":[1]}"#)
    );
    assert_eq!(lines[1], ("info", "info"));
    assert_eq!(lines[2], ("warn", "warn"));
    assert_eq!(lines[3], ("error", "Error: bad"));
    assert!(
        lines[4].1.starts_with("[object Object] Symbol(s) 10 "),
        "{lines:?}"
    );
}

#[tokio::test]
async fn console_is_truncated() {
    let engine = engine();
    let source = r#"export default () => {
        for (let i = 0; i < 10000; i++) console.log('line ' + i + ' é'.repeat(10));
        return 'done';
    }"#;
    let run = go(&engine, source).await;
    assert_eq!(run.outcome.unwrap(), Some(json!("done")));
    assert!(run.console_truncated);
    let bytes: usize = run.console.iter().map(|l| l.message.len()).sum();
    assert!(bytes <= 1024 && bytes > 900, "{bytes}");
}

#[tokio::test]
async fn console_survives_a_failed_run() {
    let engine = engine();
    let source = "export default () => { console.log('before'); throw new Error('after') }";
    let run = go(&engine, source).await;
    assert_eq!(threw(&run), "Error: after");
    assert_eq!(run.console[0].message, "before");
}

#[tokio::test]
async fn compiled_once_per_key() {
    let engine = engine();
    let first = script("trigger:1:1", "export default (x) => x + 1");
    for n in 0..5 {
        let run = engine
            .run(&first, vec![json!(n)], LIMIT, RunKind::Trigger)
            .await;
        assert_eq!(run.outcome.unwrap(), Some(json!(n + 1)));
    }
    assert_eq!(engine.compiles(), 1);
    assert_eq!(engine.cached(), 1);
    let second = script("trigger:1:2", "export default (x) => x + 2");
    let run = engine
        .run(&second, vec![json!(1)], LIMIT, RunKind::Trigger)
        .await;
    assert_eq!(run.outcome.unwrap(), Some(json!(3)));
    assert_eq!(engine.compiles(), 2);
    // The same key with other source is compiled again, not mixed up.
    let reused = script("trigger:1:2", "export default (x) => x + 3");
    let run = engine
        .run(&reused, vec![json!(1)], LIMIT, RunKind::Trigger)
        .await;
    assert_eq!(run.outcome.unwrap(), Some(json!(4)));
    assert_eq!(engine.compiles(), 3);
}

#[tokio::test]
async fn globals_do_not_leak_between_runs() {
    let engine = Engine::start(EngineSettings {
        concurrency: 1,
        ..settings()
    });
    let source = r#"
        let calls = 0;
        export default () => {
            calls += 1;
            globalThis.leaked = (globalThis.leaked || 0) + 1;
            Array.prototype.polluted = true;
            return { calls, leaked: globalThis.leaked, polluted: [].polluted === true };
        }
    "#;
    for _ in 0..3 {
        let run = go(&engine, source).await;
        assert_eq!(
            run.outcome.unwrap(),
            Some(json!({"calls": 1, "leaked": 1, "polluted": true}))
        );
    }
    let other = go(
        &engine,
        "export default () => [typeof leaked, [].polluted === undefined]",
    )
    .await;
    assert_eq!(other.outcome.unwrap(), Some(json!(["undefined", true])));
}

#[tokio::test]
async fn results_that_are_not_json() {
    let engine = engine();
    let run = go(&engine, "export default () => 10n").await;
    assert!(
        matches!(run.outcome, Err(RunError::InvalidValue(_))),
        "{run:?}"
    );
    let source = "export default () => { const a = {}; a.a = a; return a }";
    let run = go(&engine, source).await;
    assert!(
        matches!(run.outcome, Err(RunError::InvalidValue(_))),
        "{run:?}"
    );
    let source = "export default () => 'x'.repeat(64 * 1024)";
    let run = go(&engine, source).await;
    match &run.outcome {
        Err(RunError::InvalidValue(message)) => assert!(message.contains("limit"), "{message}"),
        other => panic!("{other:?}"),
    }
    let source = "export default () => 'x'.repeat(60 * 1024)";
    let run = go(&engine, source).await;
    assert!(run.outcome.is_ok());
    let source =
        "export default () => { let a = []; for (let i = 0; i < 1000; i++) a = [a]; return a }";
    let run = go(&engine, source).await;
    assert!(
        matches!(run.outcome, Err(RunError::InvalidValue(_))),
        "{run:?}"
    );
    let source = "export default () => ({ toJSON() { throw new Error('no') } })";
    let run = go(&engine, source).await;
    assert!(
        matches!(run.outcome, Err(RunError::InvalidValue(_))),
        "{run:?}"
    );
}

#[tokio::test]
async fn busy_when_full_and_healthy_after() {
    let engine = engine();
    let slow = script("slow", "export default () => { while (true) {} }");
    let started = Instant::now();
    let runs = (0..100).map(|_| {
        let engine = engine.clone();
        let slow = slow.clone();
        tokio::spawn(async move { engine.run(&slow, vec![], LIMIT, RunKind::Trigger).await })
    });
    let mut busy = 0;
    let mut timed_out = 0;
    for run in runs.collect::<Vec<_>>() {
        match run.await.unwrap().outcome {
            Err(RunError::Busy) => busy += 1,
            Err(RunError::Timeout) => timed_out += 1,
            other => panic!("{other:?}"),
        }
    }
    // Two running and four waiting get to run; the rest are refused at once.
    assert_eq!(timed_out, 6, "busy {busy}");
    assert_eq!(busy, 94);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(engine.in_use(), 0);
    assert_eq!(engine.capacity(), 2);
    let healthy = go(&engine, "export default () => 'ok'").await;
    assert_eq!(healthy.outcome.unwrap(), Some(json!("ok")));
}

#[tokio::test]
async fn busy_after_the_wait() {
    let engine = Engine::start(EngineSettings {
        concurrency: 1,
        max_waiting: 10,
        wait: Duration::from_millis(50),
        ..settings()
    });
    let slow = script("slow", "export default () => { while (true) {} }");
    let first = {
        let engine = engine.clone();
        let slow = slow.clone();
        tokio::spawn(async move { engine.run(&slow, vec![], LIMIT, RunKind::Trigger).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(engine.in_use(), 1);
    let started = Instant::now();
    let second = go(&engine, "export default () => 1").await;
    assert!(matches!(second.outcome, Err(RunError::Busy)));
    assert!(started.elapsed() >= Duration::from_millis(45));
    assert!(matches!(
        first.await.unwrap().outcome,
        Err(RunError::Timeout)
    ));
}

#[tokio::test]
async fn reserved_permits() {
    let engine = Engine::start(EngineSettings {
        max_waiting: 1,
        wait: Duration::from_millis(50),
        ..settings()
    });
    let a = engine.reserve().unwrap();
    let b = engine.reserve().unwrap();
    assert!(engine.reserve().is_none());
    assert_eq!(engine.in_use(), 2);
    // A check that finds no worker says so; it is not the script's fault.
    assert!(matches!(
        engine.check("export default () => 1").await,
        Err(CheckError::Engine(RunError::Busy))
    ));
    // One caller waits in line and gets the first permit given back.
    let waiting = tokio::spawn({
        let engine = engine.clone();
        async move {
            engine
                .reserve_waiting(Duration::from_secs(5))
                .await
                .is_some()
        }
    });
    while engine.inner.line.waiting() == 0 {
        tokio::task::yield_now().await;
    }
    drop(b);
    assert!(waiting.await.unwrap());
    drop(a);
    assert_eq!(engine.in_use(), 0);
}

#[tokio::test]
async fn reserved_permits_run() {
    let engine = engine();
    let a = engine.reserve().unwrap();
    let b = engine.reserve().unwrap();
    assert!(engine.reserve().is_none());
    assert_eq!(engine.in_use(), 2);
    drop(b);
    let run = a
        .run(
            &script("r", "export default (x) => x"),
            vec![json!("r")],
            LIMIT,
            RunKind::Transform,
            None,
        )
        .await;
    assert_eq!(run.outcome.unwrap(), Some(json!("r")));
    assert_eq!(engine.in_use(), 0);
}

#[tokio::test]
async fn a_panicking_worker_is_replaced() {
    let engine = Engine::start(EngineSettings {
        concurrency: 1,
        ..settings()
    });
    match engine.submit(Task::Panic, Duration::from_secs(10)).await {
        Ok(Reply::Run(run)) => {
            assert!(matches!(run.outcome, Err(RunError::Crashed(_))), "{run:?}")
        }
        _ => panic!("expected a crashed run"),
    }
    for _ in 0..3 {
        let run = go(&engine, "export default () => 7").await;
        assert_eq!(run.outcome.unwrap(), Some(json!(7)));
    }
    assert_eq!(engine.inner.shared.workers.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn many_runs_in_parallel() {
    let engine = Engine::start(EngineSettings {
        max_waiting: 1000,
        ..settings()
    });
    // Compiled once first: two workers that miss the cache at the same
    // moment each compile (the cache does not coalesce misses), which is
    // not what this test is about.
    let warm = engine
        .run(
            &script(
                "sum",
                "export default async (n) => { await null; return n * n }",
            ),
            vec![json!(0)],
            LIMIT,
            RunKind::Transform,
        )
        .await;
    assert_eq!(warm.outcome.unwrap(), Some(json!(0)));
    let runs = (0..200).map(|n| {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .run(
                    &script(
                        "sum",
                        "export default async (n) => { await null; return n * n }",
                    ),
                    vec![json!(n)],
                    LIMIT,
                    RunKind::Transform,
                )
                .await
        })
    });
    for (n, run) in runs.collect::<Vec<_>>().into_iter().enumerate() {
        assert_eq!(run.await.unwrap().outcome.unwrap(), Some(json!(n * n)));
    }
    assert_eq!(engine.compiles(), 1);
}

/// Figures for this machine; run with
/// `cargo test --lib script::tests::measure -- --ignored --nocapture`
/// (add `--release` for optimized figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure() {
    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|line| line.starts_with("VmRSS:"))
                    .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    // A runtime and context, made and dropped, as every run does.
    let creations = 200;
    let started = Instant::now();
    for _ in 0..creations {
        sandbox::fresh_sandbox(64 * 1024 * 1024).await.unwrap();
    }
    println!(
        "runtime + context: {:?} each",
        started.elapsed() / creations
    );

    let before = rss_kib();
    let engine = Engine::start(EngineSettings {
        concurrency: 2,
        max_waiting: 10_000,
        memory_limit: 64 * 1024 * 1024,
        ..settings()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!(
        "idle engine (2 workers): {} KiB RSS more",
        rss_kib() - before
    );

    let trivial = script(
        "trivial",
        "export default (request) => ({ statusCode: 200, body: request.n })",
    );
    let single = 500;
    let started = Instant::now();
    for n in 0..single {
        let run = engine
            .run(&trivial, vec![json!({"n": n})], LIMIT, RunKind::Trigger)
            .await;
        assert!(run.outcome.is_ok());
    }
    let elapsed = started.elapsed();
    println!(
        "one at a time: {:?} per run, {:.0} runs/s",
        elapsed / single,
        f64::from(single) / elapsed.as_secs_f64()
    );

    let total = 2000;
    let started = Instant::now();
    let runs: Vec<_> = (0..total)
        .map(|n| {
            let engine = engine.clone();
            let trivial = trivial.clone();
            tokio::spawn(async move {
                engine
                    .run(&trivial, vec![json!({"n": n})], LIMIT, RunKind::Trigger)
                    .await
            })
        })
        .collect();
    for run in runs {
        assert!(run.await.unwrap().outcome.is_ok());
    }
    let elapsed = started.elapsed();
    println!(
        "two workers, many callers: {:.0} runs/s",
        f64::from(total) / elapsed.as_secs_f64()
    );
    println!("after the runs: {} KiB RSS more", rss_kib() - before);
}

/// A host that answers each call after `delay` with what it was asked,
/// or fails calls to URLs containing `fail`, and counts the calls it got.
struct EchoHost {
    delay: Duration,
    calls: std::sync::atomic::AtomicUsize,
}

impl Host for EchoHost {
    fn fetch(&self, request: HostRequest) -> HostFuture {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            if request.url.contains("fail") {
                return Err(format!("cannot reach {}", request.url));
            }
            let body = json!({
                "target": format!("{:?}", request.target),
                "url": request.url,
                "method": request.method,
                "headers": request.headers,
                "body": request.body,
            });
            Ok(HostResponse {
                status: 201,
                headers: [("content-type".to_owned(), "application/json".to_owned())]
                    .into_iter()
                    .collect(),
                body: body.to_string(),
                held: crate::budget::Held::none(),
            })
        })
    }
}

fn bridge(delay: Duration, max_calls: usize) -> (Arc<Bridge>, Arc<EchoHost>) {
    let host = Arc::new(EchoHost {
        delay,
        calls: Default::default(),
    });
    let bridge = Arc::new(Bridge {
        host: host.clone(),
        runtime: tokio::runtime::Handle::current(),
        max_calls,
    });
    (bridge, host)
}

async fn go_bridged(engine: &Engine, source: &str, bridge: Arc<Bridge>, limit: Duration) -> Run {
    engine
        .run_with(
            &script(source, source),
            vec![json!({"path": "/"}), json!({"trigger": {"id": "t"}})],
            limit,
            RunKind::Trigger,
            Some(bridge),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_calls_are_awaited_and_shaped_like_fetch() {
    let engine = engine();
    let (bridge, host) = bridge(Duration::from_millis(30), 5);
    let source = r#"export default async function (request, context) {
        const app = await context.app.fetch("/rest/api/3/issue", {
            method: "post", headers: {"Content-Type": "application/json"}, body: {summary: "x"}});
        const web = await fetch("https://example.com/hook");
        return {status: app.status, ok: app.ok, type: app.headers.get("Content-Type"),
                sent: app.json(), web: web.json().target, text: typeof web.text()};
    }"#;
    let run = go_bridged(&engine, source, bridge, Duration::from_secs(2)).await;
    let value = run.outcome.unwrap().unwrap();
    assert_eq!(value["status"], 201);
    assert_eq!(value["ok"], true);
    assert_eq!(value["type"], "application/json");
    assert_eq!(value["sent"]["target"], "App");
    assert_eq!(value["sent"]["url"], "/rest/api/3/issue");
    assert_eq!(value["sent"]["method"], "POST");
    assert_eq!(
        value["sent"]["headers"],
        json!([["content-type", "application/json"]])
    );
    assert_eq!(value["sent"]["body"], r#"{"summary":"x"}"#);
    assert_eq!(value["web"], "Web");
    assert_eq!(value["text"], "string");
    assert_eq!(host.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_failures_and_the_call_limit_reject_with_a_reason() {
    let engine = engine();
    let (bridge, host) = bridge(Duration::ZERO, 3);
    let source = r#"export default async function (request, context) {
        const reasons = [];
        try { await fetch("https://fail.example/"); } catch (e) { reasons.push(e.message); }
        await Promise.all([fetch("https://a.example/"), fetch("https://b.example/")]);
        try { await context.app.fetch("/x"); } catch (e) { reasons.push(e.message); }
        const rejected = fetch("https://c.example/", "not options");
        try { await rejected; } catch (e) { reasons.push(e.name); }
        return reasons;
    }"#;
    let run = go_bridged(&engine, source, bridge, Duration::from_secs(2)).await;
    let reasons = run.outcome.unwrap().unwrap();
    assert_eq!(reasons[0], "cannot reach https://fail.example/");
    assert_eq!(reasons[1], "too many calls: a run may make at most 3");
    // Bad options reject the promise (a TypeError), as the standard fetch's do.
    assert_eq!(reasons[2], "TypeError");
    assert_eq!(host.calls.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_call_ends_at_the_time_limit_and_a_lost_promise_is_still_caught() {
    let engine = engine();
    let (slow, _) = bridge(Duration::from_secs(30), 5);
    let started = Instant::now();
    let run = go_bridged(
        &engine,
        "export default async function () { await fetch('https://slow.example/'); return 1 }",
        slow,
        Duration::from_millis(300),
    )
    .await;
    assert!(
        matches!(run.outcome, Err(RunError::Timeout)),
        "{:?}",
        run.outcome
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // After a call answers, a promise nothing can settle is still told apart.
    let (quick, _) = bridge(Duration::from_millis(10), 5);
    let run = go_bridged(
        &engine,
        "export default async function () { await fetch('https://a.example/'); await new Promise(() => {}); }",
        quick,
        Duration::from_secs(2),
    )
    .await;
    assert!(
        matches!(run.outcome, Err(RunError::NeverSettled)),
        "{:?}",
        run.outcome
    );
}

#[tokio::test]
async fn without_a_bridge_there_is_no_fetch() {
    let engine = engine();
    let run = go_with(
        &engine,
        "export default function (r, c) { return [typeof fetch, typeof c.app] }",
        vec![json!({}), json!({})],
    )
    .await;
    assert_eq!(
        run.outcome.unwrap(),
        Some(json!(["undefined", "undefined"]))
    );
}
