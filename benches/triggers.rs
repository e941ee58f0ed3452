//! Web trigger throughput and latency: small JSON bodies posted to a running
//! hookrelay (SQLite, in-process broker), first to a sync trigger whose script
//! answers at once, then to an async trigger without a script for comparison;
//! and the memory of the process around them.
//!
//!   cargo bench --bench triggers                     # 5,000 requests, 16 at a time
//!   TRIGGER_REQUESTS=20000 TRIGGER_CONCURRENCY=64 cargo bench --bench triggers
//!
//! It prints requests per second, latency percentiles as the client saw them
//! (of every answer, and of the expected ones alone), and the answers that
//! were not the expected status; nothing is asserted. A sync call that finds
//! no free script runtime waits up to a second in a bounded line, then is
//! answered 503: those are counted apart, as saturation. The app and the load run in one process on loopback, so the
//! client's own work is in the figures, and in the resident memory (VmRSS of
//! this process) printed after start-up, after the trigger was created, and
//! after each load.

mod support;
use support::{env_usize, percentiles, print_rss, Embedded};

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

const SCRIPT: &str = "export default async function (request, context) { return {statusCode: 200, headers: {'content-type': ['application/json']}, body: JSON.stringify({ok: true, path: request.userPath})}; }";

const WARM_UP: usize = 200;

#[tokio::main]
async fn main() {
    let requests = env_usize("TRIGGER_REQUESTS", 5_000);
    let concurrency = env_usize("TRIGGER_CONCURRENCY", 16).max(1);
    let dir = tempfile::tempdir().unwrap();
    let app = Embedded::start(dir.path(), ADMIN_TOKEN, |_| {}).await;
    let address = app.address.clone();
    print_rss("after start-up, no trigger created or run");

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let sync = create(
        &client,
        &address,
        json!({"name": "bench", "mode": "sync", "script": SCRIPT}),
    )
    .await;
    print_rss("after creating the sync trigger (script compiled, not run)");
    let async_ = create(&client, &address, json!({"name": "bench-async"})).await;

    let body = json!({"event": "bench", "n": 1, "tags": ["a", "b"]}).to_string();
    load(
        "sync trigger (script)",
        &client,
        &sync,
        &body,
        200,
        WARM_UP,
        concurrency,
        false,
    )
    .await;
    print_rss(&format!(
        "after {WARM_UP} sync warm-up calls (script runtimes used, now idle)"
    ));
    load(
        "sync trigger (script)",
        &client,
        &sync,
        &body,
        200,
        requests,
        concurrency,
        true,
    )
    .await;
    print_rss(&format!("after the sync load ({requests} calls)"));

    load(
        "async trigger (no script)",
        &client,
        &async_,
        &body,
        202,
        WARM_UP,
        concurrency,
        false,
    )
    .await;
    load(
        "async trigger (no script)",
        &client,
        &async_,
        &body,
        202,
        requests,
        concurrency,
        true,
    )
    .await;
    print_rss(&format!("after the async load ({requests} calls)"));

    app.stop().await;
}

/// Creates a trigger through the admin API; returns the URL to call it at on
/// the app's actual address (the answer's `url` is under `base_url`).
async fn create(client: &reqwest::Client, address: &str, body: Value) -> String {
    let response = client
        .post(format!("{address}/admin/api/v1/triggers"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let created: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{created}");
    let url = url::Url::parse(created["url"].as_str().unwrap()).unwrap();
    format!("{address}{}", url.path())
}

/// Posts `body` to `url` `requests` times, `concurrency` at a time; prints the
/// figures if `report`.
#[allow(clippy::too_many_arguments)]
async fn load(
    label: &str,
    client: &reqwest::Client,
    url: &str,
    body: &str,
    expected: u16,
    requests: usize,
    concurrency: usize,
    report: bool,
) {
    let limit = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(requests);
    for _ in 0..requests {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let (client, url, body) = (client.clone(), url.to_string(), body.to_string());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let status = match client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
            {
                // Read the whole answer, as a caller would.
                Ok(response) => {
                    let status = response.status().as_u16();
                    response.bytes().await.map(|_| status).ok()
                }
                Err(_) => None,
            };
            drop(permit);
            (status, sent.elapsed())
        }));
    }
    let mut all: Vec<Duration> = Vec::with_capacity(requests);
    let mut ok: Vec<Duration> = Vec::with_capacity(requests);
    let (mut busy, mut other, mut failed) = (0usize, 0usize, 0usize);
    let mut others: std::collections::BTreeMap<u16, usize> = Default::default();
    for task in tasks {
        let (status, latency) = task.await.unwrap();
        all.push(latency);
        match status {
            Some(s) if s == expected => ok.push(latency),
            Some(503) => busy += 1,
            Some(s) => {
                other += 1;
                *others.entry(s).or_default() += 1;
            }
            None => failed += 1,
        }
    }
    let elapsed = started.elapsed();
    if !report {
        return;
    }
    println!(
        "{label}: {requests} calls, {concurrency} concurrent, {:.2} s: {:.0} req/s, {:.0} answered {expected}/s",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64(),
        ok.len() as f64 / elapsed.as_secs_f64(),
    );
    println!("{label}: latency, all answers:   {}", percentiles(&mut all));
    println!(
        "{label}: latency, {expected} answers only: {}",
        percentiles(&mut ok)
    );
    println!(
        "{label}: {} answered {expected}; not {expected}: {} (503 busy, runtime saturated: {busy}; \
         other statuses: {other} {others:?}; transport errors: {failed})",
        ok.len(),
        busy + other + failed,
    );
}
