//! The bridge's throughput and latency: calls to a product through hookrelay,
//! against a fake Jira on loopback that answers every request at once with a
//! 1 KiB issue. First `GET`s through the proxy (`/proxy/{source}/…` with an
//! API key), then sync web trigger calls whose script makes one
//! `context.app.fetch` each; and the memory of the process around them.
//!
//!   cargo bench --bench bridge                      # 5,000 requests, 16 at a time
//!   BRIDGE_REQUESTS=20000 BRIDGE_CONCURRENCY=64 cargo bench --bench bridge
//!
//! The tenant is an admin-webhook source with an API token (basic auth), so
//! no install is needed; a Connect tenant adds an HS256 signature per call.
//! The per-tenant rate limit is lifted, as the point is what hookrelay costs.
//! hookrelay (SQLite, in-process broker), the fake product and the load all
//! run in this process on loopback, so their work is all in the figures and
//! in the resident memory (VmRSS) printed. Nothing is asserted.

mod support;
use support::{env_usize, percentiles, print_rss, Embedded};

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse, HttpServer};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

const SCRIPT: &str = "export default async function (request, context) { \
    const issue = await context.app.fetch('/rest/api/3/issue/OPS-1'); \
    return {statusCode: issue.status, headers: {'content-type': ['application/json']}, \
            body: JSON.stringify({key: issue.json().key})}; }";

const WARM_UP: usize = 200;

/// A fake Jira: every request gets the same 1 KiB issue.
async fn fake_jira() -> String {
    let issue = json!({
        "id": "10001",
        "key": "OPS-1",
        "fields": {"summary": "x".repeat(900), "status": {"name": "To Do"}},
    })
    .to_string();
    let server = HttpServer::new(move || {
        let issue = issue.clone();
        actix_web::App::new().default_service(web::to(move || {
            let issue = issue.clone();
            async move {
                HttpResponse::Ok()
                    .content_type("application/json")
                    .body(issue)
            }
        }))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let port = server.addrs()[0].port();
    tokio::spawn(server.run());
    format!("http://127.0.0.1:{port}")
}

#[tokio::main]
async fn main() {
    let requests = env_usize("BRIDGE_REQUESTS", 5_000);
    let concurrency = env_usize("BRIDGE_CONCURRENCY", 16).max(1);
    let jira = fake_jira().await;
    let dir = tempfile::tempdir().unwrap();
    let app = Embedded::start(dir.path(), ADMIN_TOKEN, |raw| {
        raw.reconcile_interval = "0".into();
        raw.bridge_rate_limit = 1_000_000;
    })
    .await;
    let address = app.address.clone();
    print_rss("after start-up");

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let admin = |method: reqwest::Method, path: &str, body: Value| {
        client
            .request(method, format!("{address}/admin/api/v1{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let source: Value = admin(
        reqwest::Method::POST,
        "/sources",
        json!({"type": "jira-admin", "name": "bench", "base_url": jira}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let source = source["id"].as_str().expect("source created").to_string();
    let attached = admin(
        reqwest::Method::PUT,
        &format!("/sources/{source}/api-token"),
        json!({"email": "bench@example.com", "token": "bench-api-token"}),
    )
    .await
    .unwrap();
    assert_eq!(attached.status(), 204);
    let key: Value = admin(
        reqwest::Method::POST,
        "/api-keys",
        json!({"name": "bench", "tenants": [source], "methods": ["GET"], "paths": ["/rest/api/3/issue"]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let key = key["key"].as_str().expect("key created").to_string();
    let trigger: Value = admin(
        reqwest::Method::POST,
        "/triggers",
        json!({"name": "bench", "mode": "sync", "tenant": source, "script": SCRIPT}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let trigger_url = url::Url::parse(trigger["url"].as_str().expect("trigger created")).unwrap();
    let trigger_url = format!("{address}{}", trigger_url.path());
    let proxy_url = format!("{address}/proxy/{source}/rest/api/3/issue/OPS-1?fields=summary");

    let proxy = Call {
        method: reqwest::Method::GET,
        url: proxy_url,
        bearer: Some(key),
    };
    load("proxy GET", &client, &proxy, WARM_UP, concurrency, false).await;
    load("proxy GET", &client, &proxy, requests, concurrency, true).await;
    print_rss(&format!("after the proxy load ({requests} calls)"));

    let script = Call {
        method: reqwest::Method::POST,
        url: trigger_url,
        bearer: None,
    };
    load(
        "sync trigger, one context.app.fetch",
        &client,
        &script,
        WARM_UP,
        concurrency,
        false,
    )
    .await;
    load(
        "sync trigger, one context.app.fetch",
        &client,
        &script,
        requests,
        concurrency,
        true,
    )
    .await;
    print_rss(&format!("after the trigger load ({requests} calls)"));

    app.stop().await;
}

#[derive(Clone)]
struct Call {
    method: reqwest::Method,
    url: String,
    bearer: Option<String>,
}

/// Makes `call` `requests` times, `concurrency` at a time; prints the figures
/// if `report`.
async fn load(
    label: &str,
    client: &reqwest::Client,
    call: &Call,
    requests: usize,
    concurrency: usize,
    report: bool,
) {
    let limit = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(requests);
    for _ in 0..requests {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let (client, call) = (client.clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let mut request = client.request(call.method, &call.url);
            if let Some(bearer) = &call.bearer {
                request = request.bearer_auth(bearer);
            }
            let status = match request.send().await {
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
    let mut ok: Vec<Duration> = Vec::with_capacity(requests);
    let mut others: std::collections::BTreeMap<String, usize> = Default::default();
    for task in tasks {
        let (status, latency) = task.await.unwrap();
        match status {
            Some(200) => ok.push(latency),
            Some(s) => *others.entry(s.to_string()).or_default() += 1,
            None => *others.entry("transport error".into()).or_default() += 1,
        }
    }
    let elapsed = started.elapsed();
    if !report {
        return;
    }
    println!(
        "{label}: {requests} calls, {concurrency} concurrent, {:.2} s: {:.0} answered 200/s; \
         latency of those: {}; other answers: {others:?}",
        elapsed.as_secs_f64(),
        ok.len() as f64 / elapsed.as_secs_f64(),
        percentiles(&mut ok),
    );
}
