//! Intake throughput and latency: signed Jira webhooks posted to a running
//! hookrelay until each is committed, on SQLite and (if reachable) PostgreSQL;
//! then how long until every one of them was published (the outbox is empty): to
//! the in-process broker, and (if reachable) to RabbitMQ with confirms; and how
//! long until the relay had delivered every one, signed, to one subscribed HTTP
//! endpoint on loopback that answers 204.
//!
//!   cargo bench --bench intake                       # 5,000 requests, 32 at a time
//!   INTAKE_REQUESTS=20000 INTAKE_CONCURRENCY=64 cargo bench --bench intake
//!
//! It prints requests per second and latency percentiles as the client saw them,
//! and the time from the first request to the last confirm; nothing is asserted.
//! The app and the load run in one process on loopback, so the client's own work
//! is in the figures.

mod support;
use support::env_usize;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hookrelay::config::RawConfig;
use hookrelay::domain::{ClientKey, InstallData, LifecycleChange, Product, TenantState};
use hookrelay::startup::Application;
use hookrelay::store::Store;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};
use sqlx::Connection;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let requests = env_usize("INTAKE_REQUESTS", 5_000);
    let concurrency = env_usize("INTAKE_CONCURRENCY", 32);
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
    run(
        "sqlite, in-process broker",
        &sqlite,
        None,
        requests,
        concurrency,
    )
    .await;
    let amqp = std::env::var("HOOKRELAY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());

    let admin = std::env::var("HOOKRELAY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
    match sqlx::PgConnection::connect(&admin).await {
        Ok(mut conn) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let name = format!("hookrelay_t_{now}_bench");
            let mut url = url::Url::parse(&admin).unwrap();
            url.set_path(&name);
            // A fresh database per run, so the second starts with an empty outbox.
            for (label, amqp) in [
                ("postgres, in-process broker", None),
                ("postgres, rabbitmq", Some(amqp.as_str())),
            ] {
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                run(label, url.as_str(), amqp, requests, concurrency).await;
                sqlx::query(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
        }
        Err(e) => println!("postgres: skipped, not reachable at {admin}: {e}"),
    }
}

/// An HTTP endpoint on loopback that answers every request 204 and counts them.
fn endpoint() -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let server = actix_web::HttpServer::new(move || {
        let counted = counted.clone();
        actix_web::App::new().default_service(actix_web::web::to(move || {
            counted.fetch_add(1, Ordering::Relaxed);
            async { actix_web::HttpResponse::NoContent().finish() }
        }))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let port = server.addrs()[0].port();
    tokio::spawn(server.run());
    (format!("http://127.0.0.1:{port}/hook"), count)
}

async fn run(
    backend: &str,
    database_url: &str,
    amqp_url: Option<&str>,
    requests: usize,
    concurrency: usize,
) {
    let exchange = format!("hookrelay-bench.{}", uuid::Uuid::now_v7().simple());
    let mut raw = RawConfig {
        listen: "127.0.0.1:0".into(),
        database_url: database_url.into(),
        database_max_connections: env_usize("INTAKE_DB_CONNECTIONS", 10) as u32,
        amqp_url: amqp_url.map(String::from),
        exchange: exchange.clone(),
        ..RawConfig::default()
    };
    raw.relay_queue.kind = hookrelay::config::QueueKind::Classic;
    raw.relay_queue.expires = Some("1m".into());
    raw.allow_private_destinations = true;
    let config = raw.validate().unwrap();
    let store = Store::connect(&config).await.unwrap();
    store.migrate().await.unwrap();
    let (endpoint, delivered) = endpoint();
    let now = hookrelay::domain::now_millis();
    store
        .insert_subscription(&hookrelay::domain::Subscription::new(
            endpoint,
            vec!["*".into()],
            hookrelay::relay::signing::generate_secret().into(),
            config.relay_concurrency / 2,
            now,
        ))
        .await
        .unwrap();
    let secret = "bench-shared-secret-0123456789";
    store
        .apply_lifecycle(&LifecycleChange {
            client_key: ClientKey("jira:bench".into()),
            product: Product::Jira,
            state: TenantState::Installed,
            at: chrono::Utc::now(),
            install: Some(InstallData {
                base_url: "https://bench.atlassian.net".into(),
                display_url: None,
                shared_secret: secret.to_string().into(),
            }),
            token: None,
        })
        .await
        .unwrap();
    let app = Application::build(config).await.unwrap();
    if amqp_url.is_some() {
        let mut status = app.broker().status();
        let up =
            tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.is_up())).await;
        if !matches!(up, Ok(Ok(_))) {
            println!("{backend}: skipped, RabbitMQ not reachable");
            return;
        }
    }
    let url = format!(
        "http://127.0.0.1:{}/jira/events/jira:issue_created",
        app.port()
    );
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let body = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/payloads/jira_issue_created.json"
    ))
    .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let qsh = hex::encode(Sha256::digest(b"POST&/jira/events/jira:issue_created&"));
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"iss": "jira:bench", "iat": now, "exp": now + 3600, "qsh": qsh}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let limit = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(requests);
    for i in 0..requests {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let (client, url, body, token) = (client.clone(), url.clone(), body.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let response = client
                .post(&url)
                .header("Authorization", format!("JWT {token}"))
                .header("X-Atlassian-Webhook-Identifier", format!("bench-{i}"))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            drop(permit);
            sent.elapsed()
        }));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(requests);
    for task in tasks {
        latencies.push(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{backend}: {requests} webhooks, {concurrency} concurrent: {:.0} req/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        requests as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );
    // Published: the outbox is empty once the broker confirmed every event.
    let deadline = Instant::now() + Duration::from_secs(300);
    while store.outbox_len().await.unwrap() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let published = started.elapsed();
    println!(
        "{backend}: all {requests} published {:.2} s after the first request ({:.0} events/s end to end)",
        published.as_secs_f64(),
        requests as f64 / published.as_secs_f64(),
    );
    // Delivered: the endpoint has answered every delivery.
    while delivered.load(Ordering::Relaxed) < requests && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let relayed = started.elapsed();
    println!(
        "{backend}: all {} delivered over HTTP {:.2} s after the first request ({:.0} deliveries/s end to end)",
        delivered.load(Ordering::Relaxed),
        relayed.as_secs_f64(),
        requests as f64 / relayed.as_secs_f64(),
    );
    shutdown.cancel();
    server.await.unwrap().unwrap();
    if let Some(url) = amqp_url {
        let conn = lapin::Connection::connect(url, Default::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        for queue in [
            format!("{exchange}.relay"),
            format!("{exchange}.relay.dead"),
        ] {
            let _ = channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
        for name in [exchange.clone(), format!("{exchange}.dead")] {
            let _ = channel
                .exchange_delete(name.as_str().into(), Default::default())
                .await;
        }
        let _ = conn.close(200, "done".into()).await;
    }
}
