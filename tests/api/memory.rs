//! Memory is bounded in bytes: claims from the store stop at their byte budget,
//! intake refuses bodies beyond its budget with 503 instead of holding them,
//! and events larger than the relay keeps from its queue are read back from the
//! store and delivered whole.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use hookrelay::domain::{now_millis, ClientKey, Event, EventId, Product, Source};
use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    outbox_claims_stop_at_their_byte_budget,
    intake_refuses_bodies_beyond_its_budget,
);

fn big_event(kib: usize) -> Event {
    Event {
        id: EventId::new(),
        source: Source::Connect,
        product: Some(Product::Jira),
        event: "jira:issue_created".into(),
        source_event: None,
        client_key: Some(ClientKey("jira:memory-test".into())),
        tenant_base_url: None,
        webhook_id: None,
        webhook_retry: None,
        webhook_flow: None,
        recovered: false,
        received_at: now_millis(),
        payload: format!(r#"{{"fill":"{}"}}"#, "x".repeat(kib * 1024)),
    }
}

/// Five events of about 1 MiB: a claim with room for 2.5 MiB takes two of
/// them, one with room for less than one still takes one (or nothing would
/// ever move), and the count limit still holds.
async fn outbox_claims_stop_at_their_byte_budget(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stop().await; // only the test claims
    for _ in 0..5 {
        app.store
            .insert_event(big_event(1024), now_millis())
            .await
            .unwrap();
    }
    let mib = 1024 * 1024;
    let lease = Duration::from_secs(60);
    let two = app
        .store
        .claim_outbox(100, 5 * mib / 2, lease)
        .await
        .unwrap();
    assert_eq!(two.len(), 2);
    let one = app.store.claim_outbox(100, mib / 2, lease).await.unwrap();
    assert_eq!(one.len(), 1, "the first always fits");
    let rest = app.store.claim_outbox(1, 100 * mib, lease).await.unwrap();
    assert_eq!(rest.len(), 1, "the count still limits");
    let last = app.store.claim_outbox(100, 100 * mib, lease).await.unwrap();
    assert_eq!(last.len(), 1);
    let mut claimed: Vec<EventId> = [two, one, rest, last]
        .into_iter()
        .flatten()
        .map(|c| c.event.id)
        .collect();
    claimed.sort_by_key(|id| id.0);
    claimed.dedup();
    assert_eq!(claimed.len(), 5, "each event claimed once");
}

/// With the intake budget at one maximum body, a request holding it (its body
/// announced and still arriving) makes the next one wait, then answer 503;
/// once the first has finished, bodies are accepted again.
async fn intake_refuses_bodies_beyond_its_budget(backend: Backend) {
    let app = spawn_app_with(backend, |raw| {
        raw.max_body_bytes = 256 * 1024;
        raw.intake_memory = 256 * 1024;
        raw.body_timeout = "20s".into();
    })
    .await;
    let site = Site::new("jira");
    app.install(&site).await;
    let path = "/jira/events/jira:issue_created";
    let body = format!(r#"{{"fill":"{}"}}"#, "y".repeat(200 * 1024));

    // The first request announces its body and sends half of it.
    let address = app.address.trim_start_matches("http://").to_string();
    let token = site.token("POST", path);
    let mut slow = TcpStream::connect(&address).unwrap();
    write!(
        slow,
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: JWT {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    slow.write_all(&body.as_bytes()[..1000]).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let refused = app
        .webhook(&site, "jira:issue_created", body.clone(), &[])
        .await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));

    slow.write_all(&body.as_bytes()[1000..]).unwrap();
    let answer = tokio::task::spawn_blocking(move || {
        let mut answer = String::new();
        let mut reader = std::io::BufReader::new(slow);
        std::io::BufRead::read_line(&mut reader, &mut answer).map(|_| answer)
    })
    .await
    .unwrap()
    .unwrap();
    assert!(answer.contains(" 200 "), "{answer}");
    let accepted = app.webhook(&site, "jira:issue_created", body, &[]).await;
    assert_eq!(accepted.status(), 200);
    assert_eq!(app.events(&site).await.len(), 2);
}

/// An event larger than the relay keeps from its queue is read back from the
/// store and reaches its subscriber whole: in-process on both stores, and
/// through RabbitMQ.
#[tokio::test]
async fn large_events_are_relayed_whole() {
    for (backend, rabbit) in [
        (Backend::Sqlite, false),
        (Backend::Postgres, false),
        (Backend::Postgres, true),
    ] {
        let exchange = crate::rabbit::test_exchange();
        let receiver = crate::receiver::Receiver::start().await;
        let app = spawn_app_with(backend, |raw| {
            raw.admin_token = Some("memory-admin-token".into());
            raw.allow_private_destinations = true;
            if rabbit {
                crate::publishing::on_rabbitmq(raw, &exchange, crate::rabbit::amqp_url());
            }
        })
        .await;
        let site = Site::new("jira");
        app.install(&site).await;
        let created = app
            .client
            .post(app.url("/admin/api/v1/subscriptions"))
            .bearer_auth("memory-admin-token")
            .json(&json!({"url": receiver.url("/big"), "events": ["*"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let payload = format!(r#"{{"fill":"{}"}}"#, "z".repeat(300 * 1024));
        let response = app
            .webhook(&site, "jira:issue_created", payload.clone(), &[])
            .await;
        assert_eq!(response.status(), 200);
        let got = receiver.wait_for("/big", 1, Duration::from_secs(20)).await;
        assert!(
            got[0].body.ends_with(&format!("\"payload\":{payload}}}")),
            "{backend:?}, rabbit: {rabbit}"
        );
        receiver.stop().await;
        if rabbit {
            crate::rabbit::delete_topology(&exchange, &[]).await;
        }
    }
}

/// Resident memory of a process, from `/proc`: (now, peak), in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The measurement behind the README's memory figures (not a pass/fail test:
/// run it with `cargo nextest run --run-ignored only -E 'test(memory_figures)'
/// --no-capture`). A `serve` process on PostgreSQL and RabbitMQ, with the
/// broker link black-holed, is sent `HOOKRELAY_BENCH_BODIES` (40) bodies of
/// 9.6 MiB at once (384 MiB in all), each retried on 503 as Atlassian does;
/// then the link comes back and every event is published and relayed to a
/// subscriber. Prints the process's resident memory at each stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn memory_figures() {
    use crate::binary::Served;
    use crate::rabbit::{amqp_url_via, delete_topology, test_exchange, Proxy};
    let bodies: usize = std::env::var("HOOKRELAY_BENCH_BODIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let (app, site) = crate::publishing::installed_then_stopped().await;
    let exchange = test_exchange();
    let proxy = Proxy::start().await;
    let receiver = crate::receiver::Receiver::start().await;
    let mut env = crate::publishing::serve_env(app.db.url(), &exchange, &amqp_url_via(&proxy));
    env.push(("HOOKRELAY_ADMIN_TOKEN", "memory-admin-token".into()));
    env.push(("HOOKRELAY_ALLOW_PRIVATE_DESTINATIONS", "true".into()));
    env.push(("HOOKRELAY_LOG_FORMAT", "json".into()));
    let (served, address): (Served, String) = crate::publishing::serve(&env).await;
    let pid = served.child.id();
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{address}/admin/api/v1/subscriptions"))
        .bearer_auth("memory-admin-token")
        .json(&json!({"url": receiver.url("/all"), "events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let idle = rss_mib(pid);

    proxy.blackhole();
    crate::publishing::wait_for_broker(&address, "down").await;
    let body = format!(r#"{{"fill":"{}"}}"#, "m".repeat(9_600 * 1024));
    let started = std::time::Instant::now();
    let sends = (0..bodies).map(|_| {
        let (app, site, address, body) = (&app, &site, &address, body.clone());
        async move {
            let mut refused = 0;
            loop {
                let path = "/jira/events/jira:issue_created";
                let response = app
                    .client
                    .post(format!("{address}{path}"))
                    .header("Authorization", format!("JWT {}", site.token("POST", path)))
                    .body(body.clone())
                    .send()
                    .await;
                // A refusal or a timeout is retried, as Atlassian does.
                match response.map(|r| r.status().as_u16()) {
                    Ok(200) => return refused,
                    Ok(503) | Err(_) => refused += 1,
                    Ok(other) => panic!("status {other}"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let refusals: usize = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .sum();
    let accepted_in = started.elapsed();
    let stalled = rss_mib(pid);

    proxy.restore();
    let delivered = receiver
        .wait_for("/all", bodies, Duration::from_secs(600))
        .await
        .len();
    let drained_in = started.elapsed();
    let after = rss_mib(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = rss_mib(pid);
    println!(
        "memory_figures: {bodies} bodies of 9.6 MiB ({} MiB), {refusals} answered 503 first\n\
         idle:                 rss {:.0} MiB\n\
         all accepted ({:.1}s): rss {:.0} MiB, peak {:.0} MiB\n\
         all relayed ({:.1}s):  rss {:.0} MiB, peak {:.0} MiB; {delivered} delivered\n\
         5 s later:            rss {:.0} MiB",
        bodies * 96 / 10,
        idle.0,
        accepted_in.as_secs_f64(),
        stalled.0,
        stalled.1,
        drained_in.as_secs_f64(),
        after.0,
        after.1,
        settled.0,
    );
    drop(served);
    receiver.stop().await;
    delete_topology(&exchange, &[]).await;
}
