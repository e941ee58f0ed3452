//! Intake throughput and latency: signed Jira webhooks posted to a running
//! hookrelay until each is committed, on SQLite and (if reachable) PostgreSQL.
//!
//!   cargo bench --bench intake                       # 5,000 requests, 32 at a time
//!   INTAKE_REQUESTS=20000 INTAKE_CONCURRENCY=64 cargo bench --bench intake
//!
//! It prints requests per second and latency percentiles as the client saw them;
//! nothing is asserted. The app and the load run in one process on loopback, so
//! the client's own work is in the figures.

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

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let requests = env_usize("INTAKE_REQUESTS", 5_000);
    let concurrency = env_usize("INTAKE_CONCURRENCY", 32);
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
    run("sqlite", &sqlite, requests, concurrency).await;

    let admin = std::env::var("HOOKRELAY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
    match sqlx::PgConnection::connect(&admin).await {
        Ok(mut conn) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let name = format!("hookrelay_t_{now}_bench");
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut conn)
                .await
                .unwrap();
            let mut url = url::Url::parse(&admin).unwrap();
            url.set_path(&name);
            run("postgres", url.as_str(), requests, concurrency).await;
            sqlx::query(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        Err(e) => println!("postgres: skipped, not reachable at {admin}: {e}"),
    }
}

async fn run(backend: &str, database_url: &str, requests: usize, concurrency: usize) {
    let config = RawConfig {
        listen: "127.0.0.1:0".into(),
        database_url: database_url.into(),
        database_max_connections: env_usize("INTAKE_DB_CONNECTIONS", 10) as u32,
        ..RawConfig::default()
    }
    .validate()
    .unwrap();
    let store = Store::connect(&config).await.unwrap();
    store.migrate().await.unwrap();
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
        })
        .await
        .unwrap();
    let app = Application::build(config).await.unwrap();
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
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
