//! Test harness: the real application on port 0, a fresh database per test
//! (a new PostgreSQL database, or a new SQLite file), an install-key server on
//! loopback, and signers that build tokens the way Jira does.
//!
//! Tokens are built here with `jsonwebtoken` and a qsh computed by this file's own
//! few lines (not by hookrelay's canonicaliser), so the tests do not grade the
//! code under test with itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpResponse, HttpServer};
use hookrelay::broker::Broker;
use hookrelay::config::RawConfig;
use hookrelay::domain::{ClientKey, Event, Tenant};
use hookrelay::startup::Application;
use hookrelay::store::{EventFilter, Store};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

pub const BASE_URL: &str = "https://relay.example.test";
pub const KID_A: &str = "kid-a";
pub const KID_B: &str = "kid-b";

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn fixture(path: &str) -> String {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {full}: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Runs a scenario `async fn name(backend: Backend)` once per backend, as two tests.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn postgres() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
                #[tokio::test]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            }
        )*
    };
}

/// Where the tests find PostgreSQL; `scripts/test.sh` makes sure it runs.
pub fn postgres_admin_url() -> String {
    std::env::var("HOOKRELAY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A database of the test's own.
pub enum TestDb {
    Postgres {
        name: String,
        url: String,
    },
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
    },
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL is not reachable at {admin} ({e}). Start it with `scripts/test.sh`, \
                         which starts (or installs) it, or set HOOKRELAY_TEST_POSTGRES_URL."
                    )
                });
                // The timestamp lets scripts/test.sh drop databases left by old
                // runs; the run id, check that this run left none.
                // PostgreSQL cuts names at 63 bytes, and a cut name no longer
                // matches the one the test compares with: 12 + 10 + 1 + at most
                // 12 + 1 + 16 bytes. The id's last 16 hex digits are random.
                let run = std::env::var("HOOKRELAY_TEST_RUN")
                    .ok()
                    .filter(|r| r.len() <= 12 && r.chars().all(|c| c.is_ascii_alphanumeric()))
                    .unwrap_or_else(|| "x".into());
                let id = uuid::Uuid::now_v7().simple().to_string();
                let name = format!("hookrelay_t_{}_{run}_{}", unix_now(), &id[16..]);
                assert!(name.len() <= 63, "{name} is longer than PostgreSQL keeps");
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let mut url = url::Url::parse(&admin).unwrap();
                url.set_path(&name);
                TestDb::Postgres {
                    name,
                    url: url.to_string(),
                }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("hookrelay.db").display());
                TestDb::Sqlite { _dir: dir, url }
            }
        }
    }

    /// A connection of the test's own, to look at tables directly.
    pub async fn connect_pg(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(self.url())
            .await
            .expect("test database reachable")
    }

    pub fn url(&self) -> &str {
        match self {
            TestDb::Postgres { url, .. } | TestDb::Sqlite { url, .. } => url,
        }
    }
}

/// The database goes when the test ends, passed or failed (this runs while a
/// panic unwinds too), with any connection still open to it.
impl Drop for TestDb {
    fn drop(&mut self) {
        let TestDb::Postgres { name, .. } = self else {
            return;
        };
        let name = name.clone();
        // Its own thread and runtime: a drop cannot await, and the test's
        // runtime may be the one this runs on.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&postgres_admin_url())
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| format!("{name}: {e}"))?;
                Ok::<_, String>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("test database not dropped: {e}");
        }
    }
}

/// A key server played on loopback: serves documents by path, counts the
/// requests it gets, and can be made to answer 503. The install-key service
/// ([`KeyServer`]) and the Forge JWKS are both played by one.
pub struct DocServer {
    pub url: String,
    docs: Arc<Mutex<HashMap<String, (&'static str, String)>>>,
    hits: Arc<AtomicUsize>,
    /// While set, every request is answered 503, as a key server in trouble.
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl DocServer {
    pub async fn start() -> Self {
        let docs: Arc<Mutex<HashMap<String, (&'static str, String)>>> = Arc::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (k, h, d) = (docs.clone(), hits.clone(), down.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            let (k, h, d) = (k.clone(), h.clone(), d.clone());
            actix_web::App::new().default_service(web::to(move |req: actix_web::HttpRequest| {
                let (k, h, d) = (k.clone(), h.clone(), d.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    if d.load(Ordering::SeqCst) {
                        return HttpResponse::ServiceUnavailable().finish();
                    }
                    match k.lock().unwrap().get(req.path()) {
                        Some((content_type, body)) => HttpResponse::Ok()
                            .content_type(*content_type)
                            .body(body.clone()),
                        None => HttpResponse::NotFound().finish(),
                    }
                }
            }))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .disable_signals()
        .run();
        tokio::spawn(server);
        DocServer {
            url: format!("http://127.0.0.1:{port}"),
            docs,
            hits,
            down,
        }
    }

    /// Serves `body` at `path` from now on.
    pub fn publish(&self, path: &str, content_type: &'static str, body: String) {
        self.docs
            .lock()
            .unwrap()
            .insert(path.to_string(), (content_type, body));
    }

    /// Answers 503 from now on. (Stopping the server instead leaves whether a
    /// kept-alive connection still gets an answer to timing.)
    pub fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    /// Answers again.
    pub fn come_back(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Atlassian's install-key service: the PEM public key of each kid at `/{kid}`.
pub struct KeyServer(DocServer);

impl KeyServer {
    pub async fn start() -> Self {
        let server = DocServer::start().await;
        for (kid, file) in [
            (KID_A, "keys/install-a.pub.pem"),
            (KID_B, "keys/install-b.pub.pem"),
        ] {
            server.publish(&format!("/{kid}"), "text/plain", fixture(file));
        }
        KeyServer(server)
    }
}

impl std::ops::Deref for KeyServer {
    type Target = DocServer;

    fn deref(&self) -> &DocServer {
        &self.0
    }
}

pub struct TestApp {
    pub address: String,
    pub store: Store,
    pub config: hookrelay::config::Config,
    pub client: reqwest::Client,
    pub keys: KeyServer,
    pub db: TestDb,
    /// The app's broker, for reading the in-process one.
    pub broker: Arc<Broker>,
    shutdown: CancellationToken,
    stopped: Arc<tokio::sync::Notify>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Spawns the app with the test defaults, after `adjust` has had its say.
pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut RawConfig)) -> TestApp {
    // `TEST_LOG=debug cargo nextest run …` shows the app's log.
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let db = TestDb::new(backend).await;
    let keys = KeyServer::start().await;
    let mut raw = RawConfig {
        listen: "127.0.0.1:0".into(),
        base_url: BASE_URL.into(),
        database_url: db.url().to_string(),
        install_keys_url: keys.url.clone(),
        database_acquire_timeout: "2s".into(),
        http_workers: 1,
        shutdown_timeout: "1s".into(),
        ..RawConfig::default()
    };
    adjust(&mut raw);
    let config = raw.validate().expect("test config is valid");
    let app = Application::build(config.clone())
        .await
        .expect("application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let broker = app.broker();
    let shutdown = CancellationToken::new();
    let stopped = Arc::new(tokio::sync::Notify::new());
    let done = stopped.clone();
    let run = app.run_until_stopped(shutdown.clone());
    tokio::spawn(async move {
        let _ = run.await;
        done.notify_one();
    });
    // A second pool, for the test to look at what was stored.
    let store = Store::connect(&config).await.expect("test store connects");
    TestApp {
        address,
        store,
        config,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        keys,
        db,
        broker,
        shutdown,
        stopped,
    }
}

async fn start(config: hookrelay::config::Config) -> (String, CancellationToken) {
    let app = Application::build(config)
        .await
        .expect("application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    (address, shutdown)
}

/// Another hookrelay process on the same database, with caches of its own.
pub struct Peer {
    pub address: String,
    shutdown: CancellationToken,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `METHOD&path&` hashed: the qsh of a request without query parameters.
pub fn simple_qsh(method: &str, path: &str) -> String {
    hex::encode(Sha256::digest(format!("{method}&{path}&").as_bytes()))
}

/// A Connect installation as the tests play it.
#[derive(Debug, Clone)]
pub struct Site {
    pub client_key: String,
    pub secret: String,
    pub base_url: String,
    pub product: &'static str,
}

impl Site {
    pub fn new(product: &'static str) -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        Site {
            client_key: format!("{product}:{id}"),
            secret: format!("secret-{id}-{id}"),
            base_url: format!("https://site-{}.atlassian.net", &id[20..]),
            product,
        }
    }

    pub fn lifecycle_body(&self, event_type: &str) -> Value {
        json!({
            "key": "hookrelay",
            "clientKey": self.client_key,
            "sharedSecret": self.secret,
            "baseUrl": self.base_url,
            "displayUrl": self.base_url,
            "productType": self.product,
            "description": "Atlassian site",
            "eventType": event_type,
        })
    }

    /// An HS256 token for `method path` signed with this site's secret.
    pub fn token(&self, method: &str, path: &str) -> String {
        self.token_with(json!({
            "iss": self.client_key,
            "iat": unix_now(),
            "exp": unix_now() + 180,
            "qsh": simple_qsh(method, path),
        }))
    }

    pub fn token_with(&self, claims: Value) -> String {
        hs256(&self.secret, claims)
    }
}

pub fn hs256(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// An RS256 signed-install token, as Atlassian signs `installed`/`uninstalled`.
pub fn install_token(kid: &str, key_file: &str, claims: Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_string());
    let key = EncodingKey::from_rsa_pem(fixture(key_file).as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// Claims of a valid signed install for `site` posted to `path`, issued at `iat`.
pub fn install_claims(site: &Site, path: &str, iat: i64) -> Value {
    json!({
        "iss": site.client_key,
        "sub": "557058:installer",
        "aud": [BASE_URL],
        "iat": iat,
        "exp": iat + 180,
        "qsh": simple_qsh("POST", path),
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Stops the app (as SIGTERM would) and waits until it has stopped; the
    /// database stays for whoever comes next.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.stopped.notified())
            .await
            .expect("app stops");
    }

    /// The same configuration started again: a restarted process.
    pub async fn restart(&self) -> (Peer, Arc<Broker>) {
        let app = Application::build(self.config.clone())
            .await
            .expect("application builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let broker = app.broker();
        let shutdown = CancellationToken::new();
        tokio::spawn(app.run_until_stopped(shutdown.clone()));
        (Peer { address, shutdown }, broker)
    }

    pub async fn spawn_peer(&self) -> Peer {
        let (address, shutdown) = start(self.config.clone()).await;
        Peer { address, shutdown }
    }

    /// A webhook for `event` signed by `site`, sent to `peer` instead.
    pub async fn webhook_via(&self, peer: &Peer, site: &Site, event: &str) -> reqwest::Response {
        self.webhook_to(&peer.address, site, event).await
    }

    /// A webhook for `event` signed by `site`, sent to the hookrelay at `address`.
    pub async fn webhook_to(&self, address: &str, site: &Site, event: &str) -> reqwest::Response {
        let path = format!("/{}/events/{event}", site.product);
        self.client
            .post(format!("{address}{path}"))
            .header(
                "Authorization",
                format!("JWT {}", site.token("POST", &path)),
            )
            .body("{}")
            .send()
            .await
            .unwrap()
    }

    /// Posts a lifecycle callback with an explicit token (or none).
    pub async fn lifecycle(
        &self,
        site: &Site,
        callback: &str,
        token: Option<String>,
        body: &Value,
    ) -> reqwest::Response {
        let path = format!("/{}/lifecycle/{callback}", site.product);
        let mut request = self.client.post(self.url(&path)).json(body);
        if let Some(token) = token {
            request = request.header("Authorization", format!("JWT {token}"));
        }
        request.send().await.expect("lifecycle request is answered")
    }

    /// Posts `callback` for `site` with the body Atlassian sends for it.
    pub async fn callback(
        &self,
        site: &Site,
        callback: &str,
        token: Option<String>,
    ) -> reqwest::Response {
        self.lifecycle(site, callback, token, &site.lifecycle_body(callback))
            .await
    }

    /// Installs `site` with a valid signed install issued at `iat`.
    pub async fn install_at(&self, site: &Site, iat: i64) -> reqwest::Response {
        let path = format!("/{}/lifecycle/installed", site.product);
        let token = install_token(
            KID_A,
            "keys/install-a.pem",
            install_claims(site, &path, iat),
        );
        self.lifecycle(
            site,
            "installed",
            Some(token),
            &site.lifecycle_body("installed"),
        )
        .await
    }

    pub async fn install(&self, site: &Site) -> reqwest::Response {
        self.install_at(site, unix_now()).await
    }

    /// Posts a webhook for `event` signed by `site`, with optional extra headers.
    pub async fn webhook(
        &self,
        site: &Site,
        event: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let path = format!("/{}/events/{event}", site.product);
        let token = site.token("POST", &path);
        self.webhook_with_token(&path, Some(&token), body, headers)
            .await
    }

    pub async fn webhook_with_token(
        &self,
        path: &str,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url(path))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.header("Authorization", format!("JWT {token}"));
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send().await.expect("webhook request is answered")
    }

    pub async fn tenant(&self, site: &Site) -> Option<Tenant> {
        self.store
            .tenant(&ClientKey(site.client_key.clone()))
            .await
            .unwrap()
    }

    /// The site's stored events, oldest first.
    pub async fn events(&self, site: &Site) -> Vec<Event> {
        let filter = EventFilter {
            client_key: Some(ClientKey(site.client_key.clone())),
            limit: 1000,
            ..EventFilter::default()
        };
        let mut events = self.store.list_events(&filter).await.unwrap();
        events.reverse();
        events
    }

    /// Makes the store unreachable for hookrelay (and only for this test's database).
    pub async fn break_store(&self) -> StoreBreak {
        match &self.db {
            TestDb::Postgres { name, .. } => {
                let mut conn = sqlx::PgConnection::connect(&postgres_admin_url())
                    .await
                    .unwrap();
                sqlx::query(&format!(
                    "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS false"
                ))
                .execute(&mut conn)
                .await
                .unwrap();
                // Termination is a signal, and a connection that was being
                // opened as connections were disallowed may still arrive (a
                // backend's start-up can take a while on a busy machine):
                // terminate until none has been seen for 1.5 s.
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut quiet = 0;
                while quiet < 50 {
                    let (left,): (i64,) = sqlx::query_as(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                         WHERE datname = $1 AND pid <> pg_backend_pid()",
                    )
                    .bind(name)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                    quiet = if left == 0 { quiet + 1 } else { 0 };
                    assert!(
                        Instant::now() < deadline,
                        "{left} backends outlived termination"
                    );
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                StoreBreak::Postgres { name: name.clone() }
            }
            TestDb::Sqlite { url, .. } => {
                // A writer that holds the lock: hookrelay's writes wait out their busy
                // timeout and fail, as they would on a wedged disk.
                let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
                sqlx::query("BEGIN EXCLUSIVE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                StoreBreak::Sqlite(conn)
            }
        }
    }
}

pub enum StoreBreak {
    Postgres { name: String },
    Sqlite(sqlx::SqliteConnection),
}

impl StoreBreak {
    pub async fn restore(self) {
        match self {
            StoreBreak::Postgres { name } => {
                let mut conn = sqlx::PgConnection::connect(&postgres_admin_url())
                    .await
                    .unwrap();
                sqlx::query(&format!(
                    "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS true"
                ))
                .execute(&mut conn)
                .await
                .unwrap();
            }
            StoreBreak::Sqlite(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
            }
        }
    }
}

/// Reads an error answer and checks its JSON shape.
pub async fn error_body(response: reqwest::Response) -> Value {
    let body: Value = response.json().await.expect("error bodies are JSON");
    assert!(body["error"].is_string(), "{body}");
    assert!(body["detail"].is_string(), "{body}");
    body
}

pub fn now() -> i64 {
    unix_now()
}
