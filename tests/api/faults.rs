//! The fault suite: hookrelay under load while it is killed, its database
//! restarted and crashed, its broker link cut and black-holed, and its
//! subscribers dead, flaky and hanging. Every test counts what was
//! acknowledged and finds each acknowledged event at the store, at a RabbitMQ
//! consumer and at a subscriber: nothing lost, duplicates only where
//! at-least-once allows them (never in the store), recovery within a stated
//! time. Each prints a `fault-suite:` line with its figures.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;
use crate::publishing::{installed_then_stopped, serve, serve_env, sigkill};
use crate::rabbit::{amqp_url, amqp_url_via, delete_topology, test_exchange, Consumer, Proxy};
use crate::receiver::{Receiver, Reply};

const TOKEN: &str = "fault-suite-admin-token";

/// What a load generator saw: ids answered 200, and how many requests got
/// anything else (a refusal or a broken connection: not acknowledged).
#[derive(Default)]
struct Load {
    acknowledged: Vec<String>,
    unacknowledged: usize,
}

/// Sends webhooks from `site` to whatever address `target` holds, `workers` at
/// a time, until `stop` is set.
fn start_load(
    app: &TestApp,
    site: &Site,
    target: Arc<Mutex<String>>,
    workers: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Arc<Mutex<Load>>, Vec<tokio::task::JoinHandle<()>>) {
    let load = Arc::new(Mutex::new(Load::default()));
    let handles = (0..workers)
        .map(|_| {
            let (client, site, target, stop, load) = (
                app.client.clone(),
                site.clone(),
                target.clone(),
                stop.clone(),
                load.clone(),
            );
            tokio::spawn(async move {
                let path = "/jira/events/jira:issue_created";
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let address = target.lock().unwrap().clone();
                    let sent = client
                        .post(format!("{address}{path}"))
                        .header("Authorization", format!("JWT {}", site.token("POST", path)))
                        .timeout(Duration::from_secs(10))
                        .body(r#"{"webhookEvent":"jira:issue_created"}"#)
                        .send()
                        .await;
                    let id = match sent {
                        Ok(r) if r.status() == 200 => r
                            .json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|b| b["id"].as_str().map(str::to_string)),
                        _ => None,
                    };
                    let refused = id.is_none();
                    {
                        let mut load = load.lock().unwrap();
                        match id {
                            Some(id) => load.acknowledged.push(id),
                            None => load.unacknowledged += 1,
                        }
                    }
                    // Paced, so that what is sent can be relayed in the test's
                    // time (a few hundred events a second in all); a refusal
                    // (or a dead server) is retried after a longer pause.
                    let pause = if refused { 50 } else { 10 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            })
        })
        .collect();
    (load, handles)
}

/// How often each id occurs.
fn counts<'a>(ids: impl IntoIterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for id in ids {
        *counts.entry(id.to_string()).or_insert(0) += 1;
    }
    counts
}

/// Subscriber ids received at `path`, by envelope id.
fn delivered_ids(receiver: &Receiver, path: &str) -> Vec<String> {
    receiver
        .received(path)
        .iter()
        .filter_map(|r| r.json()["id"].as_str().map(str::to_string))
        .collect()
}

/// Waits until every id in `ids` was delivered to `path`; returns how long.
async fn wait_delivered(
    receiver: &Receiver,
    path: &str,
    ids: &[String],
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let got: HashSet<String> = delivered_ids(receiver, path).into_iter().collect();
        let missing = ids.iter().filter(|id| !got.contains(*id)).count();
        if missing == 0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{missing} of {} acknowledged events never reached {path} within {within:?}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Event ids stored in the test's database.
async fn stored_ids(app: &TestApp) -> Vec<String> {
    let mut db = app.db.connect_pg().await;
    sqlx::query_as::<_, (uuid::Uuid,)>("SELECT id FROM events")
        .fetch_all(&mut db)
        .await
        .unwrap()
        .into_iter()
        .map(|(id,)| id.to_string())
        .collect()
}

/// `serve` is SIGKILLed at random moments under load, five times; a new one
/// takes over each time. Every acknowledged event is stored once, reaches a
/// RabbitMQ consumer and a subscriber (duplicates allowed there), within 60 s
/// of the last restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_acknowledged() {
    let exchange = test_exchange();
    let (app, site) = installed_then_stopped().await;
    let receiver = Receiver::start().await;
    let mut consumer = Consumer::bind(&exchange, &["#"]).await;
    let mut env = serve_env(app.db.url(), &exchange, &amqp_url());
    env.extend([
        ("HOOKRELAY_ADMIN_TOKEN", TOKEN.to_string()),
        ("HOOKRELAY_ALLOW_PRIVATE_DESTINATIONS", "true".to_string()),
        (
            "HOOKRELAY_RETRY_SCHEDULE",
            "300ms,300ms,300ms,1s,1s,1s".to_string(),
        ),
        ("HOOKRELAY_RELAY_POLL_INTERVAL", "200ms".to_string()),
        ("HOOKRELAY_DELIVERY_TIMEOUT", "2s".to_string()),
        ("HOOKRELAY_DELIVERY_CONNECT_TIMEOUT", "1s".to_string()),
        ("HOOKRELAY_LOG_FORMAT", "json".to_string()),
    ]);
    let (mut server, address) = serve(&env).await;
    let created = app
        .client
        .post(format!("{address}/admin/api/v1/subscriptions"))
        .bearer_auth(TOKEN)
        .json(&json!({"url": receiver.url("/sub"), "events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let target = Arc::new(Mutex::new(address));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (load, handles) = start_load(&app, &site, target.clone(), 8, stop.clone());
    let kills = 5;
    for _ in 0..kills {
        let wait = 300 + rand::random::<u64>() % 1500;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        sigkill(&mut server);
        let (next, address) = serve(&env).await;
        server = next;
        *target.lock().unwrap() = address;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for handle in handles {
        handle.await.unwrap();
    }
    let restarted = Instant::now();
    let (acknowledged, unacknowledged) = {
        let load = load.lock().unwrap();
        (load.acknowledged.clone(), load.unacknowledged)
    };
    assert!(
        acknowledged.len() > 100,
        "the load ran: {}",
        acknowledged.len()
    );

    let stored = stored_ids(&app).await;
    let stored_counts = counts(stored.iter().map(String::as_str));
    let lost_at_store = acknowledged
        .iter()
        .filter(|id| !stored_counts.contains_key(*id))
        .count();
    assert_eq!(lost_at_store, 0, "acknowledged but not stored");

    let published = consumer
        .take_ids(&acknowledged, Duration::from_secs(60))
        .await;
    let published_counts = counts(published.iter().filter_map(|m| m.message_id.as_deref()));
    let recovered = wait_delivered(&receiver, "/sub", &acknowledged, Duration::from_secs(90)).await;
    let delivered = delivered_ids(&receiver, "/sub");
    let delivered_counts = counts(delivered.iter().map(String::as_str));
    println!(
        "fault-suite: sigkill x{kills}: sent {}, acknowledged {}, stored {}, published {} \
         (duplicates {}), delivered {} (duplicates {}), lost 0, all delivered {:.1}s after the last restart",
        acknowledged.len() + unacknowledged,
        acknowledged.len(),
        stored.len(),
        published_counts.len(),
        published_counts.values().filter(|&&n| n > 1).count(),
        delivered_counts.len(),
        delivered_counts.values().filter(|&&n| n > 1).count(),
        recovered.max(restarted.elapsed()).as_secs_f64(),
    );
    drop(server);
    consumer.close().await;
    receiver.stop().await;
    delete_topology(&exchange, &[]).await;
}

/// A PostgreSQL server of the test's own (initdb on a free port), restarted and
/// then crashed (`pg_ctl stop -m immediate`) under load. While it is away the
/// answer is 503, never 200; every acknowledged event is stored once and
/// delivered, and intake answers 200 again within 15 s of the server's return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_and_crash_lose_nothing_acknowledged() {
    let Some(pg) = OwnPostgres::launch() else {
        panic!("initdb/pg_ctl not found: scripts/test.sh installs PostgreSQL");
    };
    let receiver = Receiver::start().await;
    let url = pg.url();
    // The store is the test's own server; the helper's temporary SQLite file
    // goes unused.
    let app = spawn_app_with(Backend::Sqlite, |raw| {
        raw.database_url = url.clone();
        raw.admin_token = Some(TOKEN.into());
        raw.allow_private_destinations = true;
        raw.retry_schedule = vec!["300ms".into(); 10];
        raw.relay_poll_interval = "200ms".into();
        raw.database_acquire_timeout = "1s".into();
    })
    .await;
    let site = Site::new("jira");
    assert_eq!(app.install(&site).await.status(), 204);
    let created = app
        .client
        .post(app.url("/admin/api/v1/subscriptions"))
        .bearer_auth(TOKEN)
        .json(&json!({"url": receiver.url("/sub"), "events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let target = Arc::new(Mutex::new(app.address.clone()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (load, handles) = start_load(&app, &site, target, 4, stop.clone());
    let mut recoveries = Vec::new();
    for (what, mode) in [("restart", "fast"), ("crash", "immediate")] {
        tokio::time::sleep(Duration::from_millis(800)).await;
        pg.stop(mode);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        pg.start();
        let back = Instant::now();
        // Intake answers 200 again.
        loop {
            let response = app.webhook(&site, "jira:issue_updated", "{}", &[]).await;
            if response.status() == 200 {
                break;
            }
            assert_eq!(
                response.status(),
                503,
                "while the store recovers: 503 or 200"
            );
            assert!(
                back.elapsed() < Duration::from_secs(15),
                "intake still refusing after {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        recoveries.push((what, back.elapsed()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for handle in handles {
        handle.await.unwrap();
    }
    let (acknowledged, unacknowledged) = {
        let load = load.lock().unwrap();
        (load.acknowledged.clone(), load.unacknowledged)
    };
    assert!(
        acknowledged.len() > 50,
        "the load ran: {}",
        acknowledged.len()
    );
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    let stored: Vec<(uuid::Uuid,)> = sqlx::query_as("SELECT id FROM events")
        .fetch_all(&mut db)
        .await
        .unwrap();
    let stored: HashSet<String> = stored.into_iter().map(|(id,)| id.to_string()).collect();
    let lost = acknowledged
        .iter()
        .filter(|id| !stored.contains(*id))
        .count();
    assert_eq!(lost, 0, "acknowledged but not stored");
    let relayed = wait_delivered(&receiver, "/sub", &acknowledged, Duration::from_secs(60)).await;
    let delivered = counts(delivered_ids(&receiver, "/sub").iter().map(String::as_str));
    println!(
        "fault-suite: postgres restart+crash: sent {}, acknowledged {}, stored {}, \
         delivered {} (duplicates {}), lost 0, intake back after {}, all delivered {:.1}s later",
        acknowledged.len() + unacknowledged,
        acknowledged.len(),
        stored.len(),
        delivered.len(),
        delivered.values().filter(|&&n| n > 1).count(),
        recoveries
            .iter()
            .map(|(what, took)| format!("{what} {:.1}s", took.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        relayed.as_secs_f64(),
    );
    app.stop().await;
    receiver.stop().await;
}

/// The broker link cut, then black-holed, under load, through the test's own
/// proxy. Every acknowledged event reaches a RabbitMQ consumer and a subscriber
/// within 30 s of the link's return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_link_cut_and_black_holed_under_load() {
    let exchange = test_exchange();
    let proxy = Proxy::start().await;
    let receiver = Receiver::start().await;
    let app = spawn_app_with(Backend::Postgres, |raw| {
        crate::publishing::on_rabbitmq(raw, &exchange, amqp_url_via(&proxy));
        raw.amqp_heartbeat = "2s".into();
        raw.admin_token = Some(TOKEN.into());
        raw.allow_private_destinations = true;
        raw.retry_schedule = vec!["300ms".into(); 10];
        raw.relay_poll_interval = "200ms".into();
    })
    .await;
    crate::publishing::wait_for_broker(&app.address, "up").await;
    let mut consumer = Consumer::bind(&exchange, &["#"]).await;
    let site = Site::new("jira");
    app.install(&site).await;
    let created = app
        .client
        .post(app.url("/admin/api/v1/subscriptions"))
        .bearer_auth(TOKEN)
        .json(&json!({"url": receiver.url("/sub"), "events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let target = Arc::new(Mutex::new(app.address.clone()));
    let (load, handles) = start_load(&app, &site, target, 4, stop.clone());
    let mut noticed = Vec::new();
    for (what, fault) in [
        ("cut", Proxy::cut as fn(&Proxy)),
        ("black hole", Proxy::blackhole),
    ] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let at = Instant::now();
        fault(&proxy);
        crate::publishing::wait_for_broker(&app.address, "down").await;
        noticed.push((what, at.elapsed()));
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.restore();
        crate::publishing::wait_for_broker(&app.address, "up").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for handle in handles {
        handle.await.unwrap();
    }
    let (acknowledged, unacknowledged) = {
        let load = load.lock().unwrap();
        (load.acknowledged.clone(), load.unacknowledged)
    };
    let published = consumer
        .take_ids(&acknowledged, Duration::from_secs(30))
        .await;
    let published = counts(published.iter().filter_map(|m| m.message_id.as_deref()));
    let relayed = wait_delivered(&receiver, "/sub", &acknowledged, Duration::from_secs(60)).await;
    let delivered = counts(delivered_ids(&receiver, "/sub").iter().map(String::as_str));
    println!(
        "fault-suite: broker link: sent {}, acknowledged {}, published {} (duplicates {}), \
         delivered {} (duplicates {}), lost 0, down noticed after {}, all delivered {:.1}s after",
        acknowledged.len() + unacknowledged,
        acknowledged.len(),
        published.len(),
        published.values().filter(|&&n| n > 1).count(),
        delivered.len(),
        delivered.values().filter(|&&n| n > 1).count(),
        noticed
            .iter()
            .map(|(what, took)| format!("{what} {:.1}s", took.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        relayed.as_secs_f64(),
    );
    consumer.close().await;
    receiver.stop().await;
    delete_topology(&exchange, &[]).await;
}

/// Four subscribers to the same events: healthy, dead (nothing listening),
/// flaky (every other answer 500) and hanging (never answers). The healthy
/// one gets every event within 10 s, the flaky one every event eventually,
/// and the dead and hanging ones hold up nobody.
#[tokio::test]
async fn bad_subscribers_beside_a_healthy_one() {
    let receiver = Receiver::start().await;
    receiver.script(
        "/flaky",
        vec![
            Reply::Status(500),
            Reply::Status(200),
            Reply::Status(500),
            Reply::Status(200),
        ],
    );
    receiver.script("/hanging", vec![Reply::Hang]);
    let app = spawn_app_with(Backend::Postgres, |raw| {
        raw.admin_token = Some(TOKEN.into());
        raw.allow_private_destinations = true;
        raw.retry_schedule = vec!["200ms".into(); 20];
        raw.delivery_timeout = "1s".into();
        raw.delivery_connect_timeout = "500ms".into();
        raw.relay_poll_interval = "100ms".into();
    })
    .await;
    let site = Site::new("jira");
    app.install(&site).await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("http://127.0.0.1:{port}/dead")
    };
    let mut subscriptions = Vec::new();
    for url in [
        receiver.url("/healthy"),
        dead,
        receiver.url("/flaky"),
        receiver.url("/hanging"),
    ] {
        let created = app
            .client
            .post(app.url("/admin/api/v1/subscriptions"))
            .bearer_auth(TOKEN)
            .json(&json!({"url": url, "events": ["*"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let body: serde_json::Value = created.json().await.unwrap();
        subscriptions.push(body["id"].as_str().unwrap().to_string());
    }
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(
            crate::publishing::accepted(app.webhook(&site, "jira:issue_created", "{}", &[]).await)
                .await,
        );
    }
    let healthy = wait_delivered(&receiver, "/healthy", &ids, Duration::from_secs(10)).await;
    // The flaky one: every delivery recorded as delivered (a 200 after its 500s).
    let flaky_ok = {
        let started = Instant::now();
        let path = format!(
            "/admin/api/v1/subscriptions/{}/deliveries?state=delivered&limit=100",
            subscriptions[2]
        );
        loop {
            let body: serde_json::Value = app
                .client
                .get(app.url(&path))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let delivered = body["data"].as_array().map_or(0, Vec::len);
            if delivered == ids.len() {
                break started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "flaky subscriber: {delivered} of {} delivered",
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    println!(
        "fault-suite: subscribers: {} events; healthy got all in {:.1}s, flaky had all delivered \
         {:.1}s later (about half its attempts answered 500); dead and hanging held up neither",
        ids.len(),
        healthy.as_secs_f64(),
        flaky_ok.as_secs_f64(),
    );
    receiver.stop().await;
}

/// A PostgreSQL server of the test's own: `initdb` into a temporary
/// directory, `pg_ctl` on a free port. Removed when dropped.
struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
    /// Runs the server's programs as this user when the test runs as root
    /// (PostgreSQL refuses to run as root).
    run_as: Option<String>,
    bin: std::path::PathBuf,
}

impl OwnPostgres {
    fn launch() -> Option<Self> {
        let bin = find_pg_bin()?;
        let dir = tempfile::tempdir().unwrap();
        let is_root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let run_as = is_root.then(|| "postgres".to_string());
        if run_as.is_some() {
            std::process::Command::new("chown")
                .args(["-R", "postgres", &dir.path().display().to_string()])
                .status()
                .unwrap();
        }
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let pg = OwnPostgres {
            dir,
            port,
            run_as,
            bin,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        pg.start();
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program).display().to_string();
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut cmd = std::process::Command::new("runuser");
                cmd.args(["-u", user, "--", &program]);
                cmd
            }
            None => std::process::Command::new(&program),
        };
        let output = cmd.args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self, mode: &str) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "stop"]);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.data();
        let program = self.bin.join("pg_ctl").display().to_string();
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut cmd = std::process::Command::new("runuser");
                cmd.args(["-u", user, "--", &program]);
                cmd
            }
            None => std::process::Command::new(&program),
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}

/// Where `initdb` and `pg_ctl` are: on the PATH, or in Debian's versioned
/// directory.
fn find_pg_bin() -> Option<std::path::PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"));
    on_path
        .chain(debian)
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
}

use sqlx::Connection as _;
