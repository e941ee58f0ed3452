//! `hookrelay bench` as a user runs it: against a real `hookrelay serve` on
//! SQLite with the in-process broker, trusting the bench's install-key server
//! (a clean run in closed loop with the sink, then one in open loop without
//! it), and against a server that does not trust it.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::binary::{hookrelay, Served};
use crate::helpers::free_port;

const ADMIN_TOKEN: &str = "bench-test-admin-token-0123";

/// `hookrelay serve` on SQLite in `dir`, fetching install keys from
/// `keys_url`, with its address.
fn serve(dir: &Path, keys_url: &str) -> (Served, String) {
    let db = format!("sqlite://{}", dir.join("bench.db").display());
    let mut served = Served::start(&[
        ("HOOKRELAY_LISTEN", "127.0.0.1:0"),
        ("HOOKRELAY_DATABASE_URL", &db),
        ("HOOKRELAY_LOG_FORMAT", "json"),
        ("HOOKRELAY_ADMIN_TOKEN", ADMIN_TOKEN),
        ("HOOKRELAY_INSTALL_KEYS_URL", keys_url),
        ("HOOKRELAY_ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("HOOKRELAY_HTTP_WORKERS", "1"),
    ]);
    let line = served.wait_for(Duration::from_secs(60), |l| {
        l.contains("hookrelay is serving")
    });
    let started: Value = serde_json::from_str(&line).expect("log lines are JSON");
    let port = started["fields"]["port"].as_u64().expect("port logged");
    (served, format!("http://127.0.0.1:{port}"))
}

/// Runs `hookrelay bench <args>` with the admin token in the environment.
async fn bench(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        hookrelay()
            .arg("bench")
            .args(&args)
            .env("HOOKRELAY_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// `hookrelay bench --url <address> --keys-listen <keys_listen> --json <extra>`.
async fn bench_json(address: &str, keys_listen: &str, extra: &[&str]) -> Output {
    let mut args = vec!["--url", address, "--keys-listen", keys_listen, "--json"];
    args.extend_from_slice(extra);
    bench(&args).await
}

/// The report of a run that must have succeeded.
fn report(output: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failed ({:?}): {}",
        output.status,
        stderr.chars().take(2000).collect::<String>()
    );
    serde_json::from_slice(&output.stdout).expect("--json prints one JSON object")
}

async fn admin_get(client: &reqwest::Client, address: &str, path: &str) -> Value {
    let response = client
        .get(format!("{address}/admin/api/v1{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn bench_measures_intake_and_delivery_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let keys_port = free_port();
    let keys_listen = format!("127.0.0.1:{keys_port}");
    let (served, address) = serve(dir.path(), &format!("http://{keys_listen}"));
    let pid = served.child.id().to_string();

    let output = bench_json(
        &address,
        &keys_listen,
        &["--duration", "2s", "--concurrency", "4", "--pid", &pid],
    )
    .await;
    let run = report(&output);
    let intake = &run["intake"];
    let accepted = intake["accepted"].as_u64().unwrap();
    assert!(accepted > 0, "{run}");
    assert_eq!(
        intake["sent"].as_u64().unwrap(),
        accepted + intake["failed"].as_u64().unwrap(),
        "{run}"
    );
    assert!(intake["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{run}");
    assert!(intake["requests_per_sec"].as_f64().unwrap() > 0.0, "{run}");
    let delivery = &run["delivery"];
    assert_eq!(delivery["expected"], accepted, "{run}");
    assert_eq!(delivery["delivered"], accepted, "{run}");
    assert_eq!(delivery["losses"], 0, "{run}");
    assert_eq!(delivery["duplicates"], 0, "{run}");
    assert_eq!(delivery["unmatched"], 0, "{run}");
    assert_eq!(delivery["bad_signatures"], 0, "{run}");
    let e2e = &delivery["latency_ms"];
    assert!(e2e["p99"].as_f64().unwrap() > 0.0, "{run}");
    assert!(e2e["p50"].as_f64().unwrap() <= e2e["p99"].as_f64().unwrap());
    assert_eq!(e2e["count"], accepted, "{run}");
    assert_eq!(delivery["subscriptions_deleted"], true, "{run}");
    assert_eq!(delivery["subscription_ids"].as_array().unwrap().len(), 1);
    assert_eq!(delivery["backlog"], false, "{run}");
    // hookrelay's /metrics has no process memory: read from /proc via --pid.
    let rss = &run["server_rss"];
    assert!(rss["source"].is_string(), "{run}");
    assert!(rss["end_bytes"].as_u64().unwrap() > 1024 * 1024, "{run}");
    assert_eq!(run["body_bytes"], 2048, "{run}");

    // Fan-out from a backlog: three subscriptions, the sink's answers held
    // until the load ends; every request delivered to each, once.
    let output = bench_json(
        &address,
        &keys_listen,
        &[
            "--duration",
            "1s",
            "--concurrency",
            "4",
            "--subscriptions",
            "3",
            "--backlog",
        ],
    )
    .await;
    let fan = report(&output);
    let accepted_fan = fan["intake"]["accepted"].as_u64().unwrap();
    let delivery = &fan["delivery"];
    assert!(accepted_fan > 0, "{fan}");
    assert_eq!(delivery["expected"], 3 * accepted_fan, "{fan}");
    assert_eq!(delivery["delivered"], 3 * accepted_fan, "{fan}");
    assert_eq!(delivery["losses"], 0, "{fan}");
    assert_eq!(delivery["duplicates"], 0, "{fan}");
    assert_eq!(delivery["bad_signatures"], 0, "{fan}");
    assert_eq!(delivery["latency_ms"]["count"], 3 * accepted_fan, "{fan}");
    // Held: the first request sent waited out the whole second of load.
    assert!(
        delivery["latency_ms"]["max"].as_f64().unwrap() >= 900.0,
        "{fan}"
    );
    assert!(delivery["per_sec"].as_f64().unwrap() > 0.0, "{fan}");
    assert_eq!(delivery["backlog"], true, "{fan}");
    let ids = delivery["subscription_ids"].as_array().unwrap();
    assert_eq!(ids.len(), 3, "{fan}");
    assert_ne!(ids[0], ids[1], "{fan}");
    assert_eq!(delivery["subscriptions_deleted"], true, "{fan}");

    // What the server holds agrees: no subscription left, the site
    // uninstalled, one stored event per accepted request.
    let client = reqwest::Client::new();
    let subscriptions = admin_get(&client, &address, "/subscriptions").await;
    assert_eq!(
        subscriptions["data"],
        serde_json::json!([]),
        "{subscriptions}"
    );
    assert_eq!(run["site_uninstalled"], true, "{run}");
    let client_key = run["client_key"].as_str().unwrap();
    let tenant = admin_get(&client, &address, &format!("/tenants/{client_key}")).await;
    assert_eq!(tenant["state"], "uninstalled", "{tenant}");
    assert_eq!(tenant["event_count"], accepted, "{tenant}");

    // Open loop, intake only: sends by the clock, exactly rate × duration.
    let output = bench_json(
        &address,
        &keys_listen,
        &[
            "--no-sink",
            "--rate",
            "50",
            "--duration",
            "1s",
            "--size",
            "4KiB",
        ],
    )
    .await;
    let run = report(&output);
    assert_eq!(run["mode"], "open", "{run}");
    assert_eq!(run["intake"]["sent"], 50, "{run}");
    assert_eq!(run["intake"]["accepted"], 50, "{run}");
    assert_eq!(run["body_bytes"], 4096, "{run}");
    assert!(run["delivery"].is_null(), "{run}");
    assert!(run["server_rss"]["source"].is_null(), "{run}");
    assert!(run["server_rss"]["end_bytes"].is_null(), "{run}");
}

#[tokio::test]
async fn bench_against_a_server_that_does_not_trust_it_exits_1_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let keys_listen = format!("127.0.0.1:{}", free_port());
    // The server fetches install keys from a port where nothing listens.
    let (_served, address) = serve(dir.path(), &format!("http://127.0.0.1:{}", free_port()));
    let output = bench(&[
        "--url",
        &address,
        "--keys-listen",
        &keys_listen,
        "--duration",
        "1s",
    ])
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "no report");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("HOOKRELAY_INSTALL_KEYS_URL=http://{keys_listen}")),
        "{stderr}"
    );
    assert!(stderr.contains("--keys-listen"), "{stderr}");
}

#[tokio::test]
async fn bench_with_bad_options_or_no_server_exits_2_or_1() {
    for args in [
        &["--no-sink", "--rate", "10", "--concurrency", "4"][..],
        &["--no-sink", "--size", "2GB"],
        &["--no-sink", "--duration", "0s"],
        &["--no-sink", "--rate", "0"],
    ] {
        let output = bench(args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
    // Without an admin token, the sink cannot be subscribed.
    let output = tokio::task::spawn_blocking(|| {
        hookrelay()
            .args(["bench", "--duration", "1s"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--admin-token"));

    let keys_listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://127.0.0.1:{}", free_port());
    let output = bench(&["--no-sink", "--url", &url, "--keys-listen", &keys_listen]).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach hookrelay"), "{stderr}");
}
