//! The `hookrelay` binary as a user runs it: configuration from the environment,
//! start-up errors, JSON logs, `migrate`, `descriptor`, `config check`,
//! `healthcheck`, the worker's probes, and graceful shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

pub fn hookrelay() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookrelay"));
    // Nothing from the developer's shell leaks into the test.
    for (key, _) in std::env::vars() {
        if key.starts_with("HOOKRELAY_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs `cmd`, which must succeed, and reads its standard output as JSON.
fn json_output(cmd: &mut Command) -> Value {
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn descriptor_command_prints_the_rendered_descriptor() {
    let d = json_output(
        hookrelay()
            .args(["descriptor", "--product", "confluence"])
            .env("HOOKRELAY_BASE_URL", "https://relay.example.org/x")
            .env("HOOKRELAY_APP_KEY", "1234"),
    );
    assert_eq!(d["baseUrl"], "https://relay.example.org/x");
    assert_eq!(
        d["key"], "1234",
        "a numeric-looking value is still a string setting"
    );
    assert_eq!(
        d["lifecycle"]["installed"],
        "/confluence/lifecycle/installed"
    );
    assert!(d["modules"]["webhooks"].as_array().unwrap().len() > 20);
}

#[test]
fn invalid_settings_stop_start_up_with_their_name() {
    for (var, value) in [
        ("HOOKRELAY_BASE_URL", "not a url"),
        ("HOOKRELAY_DATABASE_URL", "mysql://x"),
        ("HOOKRELAY_RETRY_SCHEDULE", "5s,later"),
        ("HOOKRELAY_JWT_LEEWAY_SECS", "soon"),
        ("HOOKRELAY_LISTEN", "nowhere"),
    ] {
        let output = hookrelay().arg("serve").env(var, value).output().unwrap();
        assert!(!output.status.success(), "{var}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr).to_ascii_uppercase();
        let name = var.trim_start_matches("HOOKRELAY_");
        assert!(stderr.contains(name), "{var}: {stderr}");
    }
    let output = hookrelay()
        .args(["--config", "/nonexistent.toml", "serve"])
        .output()
        .unwrap();
    assert!(!output.status.success());
}

#[tokio::test]
async fn migrate_command_prepares_both_stores() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let db = TestDb::new(backend).await;
        let output = hookrelay()
            .arg("migrate")
            .env("HOOKRELAY_DATABASE_URL", db.url())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{backend:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The schema is there: the store can be queried.
        let config = hookrelay::config::RawConfig {
            database_url: db.url().into(),
            ..Default::default()
        }
        .validate()
        .unwrap();
        let store = hookrelay::store::Store::connect(&config).await.unwrap();
        let missing = store
            .tenant(&hookrelay::domain::ClientKey("nobody".into()))
            .await
            .unwrap();
        assert!(missing.is_none());
    }
}

/// A running `hookrelay serve` whose stderr lines arrive on a channel.
pub struct Served {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Served {
    pub fn start(envs: &[(&str, &str)]) -> Self {
        Self::run("serve", envs)
    }

    /// Starts `hookrelay <subcommand>` with `envs`.
    pub fn run(subcommand: &str, envs: &[(&str, &str)]) -> Self {
        let mut cmd = hookrelay();
        cmd.arg(subcommand)
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        Self::reading(child, stderr)
    }

    /// Starts `hookrelay <args>`, whose stdout lines are read instead (its
    /// stderr goes to the test's).
    pub fn stdout_of(args: &[&str]) -> Self {
        let mut child = hookrelay()
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        Self::reading(child, stdout)
    }

    fn reading(child: Child, out: impl Read + Send + 'static) -> Self {
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Served {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line satisfying `pred`, up to `timeout`.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no such log line within {timeout:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Every line the process wrote, once it has exited (within `timeout`).
    pub fn all_lines(&mut self, timeout: Duration) -> Vec<String> {
        self.wait_exit(timeout);
        let deadline = Instant::now() + Duration::from_secs(5);
        // The reader thread ends when the pipe closes.
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
        self.seen.clone()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "hookrelay did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[test]
fn serve_logs_json_and_finishes_in_flight_requests_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("served.db").display());
    let mut served = Served::start(&[
        ("HOOKRELAY_LISTEN", "127.0.0.1:0"),
        ("HOOKRELAY_DATABASE_URL", &db),
        ("HOOKRELAY_LOG_FORMAT", "json"),
        ("HOOKRELAY_SHUTDOWN_TIMEOUT", "20s"),
    ]);
    let line = served.wait_for(Duration::from_secs(60), |l| {
        l.contains("hookrelay is serving")
    });
    let started: Value = serde_json::from_str(&line).expect("log lines are JSON");
    let port = started["fields"]["port"].as_u64().expect("port logged") as u16;
    assert_eq!(started["level"], "INFO");

    let mut health = TcpStream::connect(("127.0.0.1", port)).unwrap();
    health
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    health.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A rejected webhook is logged with its ids and reason, never with its token.
    let token = hs256(
        "a-secret-nobody-installed",
        serde_json::json!({"iss": "jira:log-check", "exp": now() + 60, "qsh": "x"}),
    );
    let mut rejected = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // The token rides in the query string, where request logging would see it.
    write!(
        rejected,
        "POST /jira/events/jira:issue_created?jwt={token} HTTP/1.1\r\nHost: x\r\n\
         X-Atlassian-Webhook-Identifier: wh-log-check\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    )
    .unwrap();
    let mut answer = String::new();
    rejected.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let line = served.wait_for(Duration::from_secs(10), |l| {
        l.contains("request not authenticated")
    });
    let signature = token.rsplit('.').next().unwrap();
    let logged: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(logged["level"], "WARN");
    assert_eq!(
        logged["fields"]["reason"],
        "JWT `iss` names no installed tenant"
    );
    assert_eq!(logged["span"]["claimed_iss"], "jira:log-check");
    assert_eq!(logged["span"]["webhook_id"], "wh-log-check");
    assert_eq!(logged["span"]["event"], "jira:issue_created");
    let request_id = logged["spans"][0]["request_id"]
        .as_str()
        .expect("request id logged");
    assert!(
        answer.contains(request_id),
        "the answer's x-request-id is the logged one"
    );

    // A lifecycle callback whose body is still on its way when SIGTERM arrives.
    let body = br#"{"clientKey":"jira:never-installed","eventType":"disabled"}"#;
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        slow,
        "POST /jira/lifecycle/disabled HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // 100 Continue: the handler is reading the body, so the request is in flight.
    let mut reader = BufReader::new(slow.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 100"), "{status}");
    let mut blank = String::new();
    reader.read_line(&mut blank).unwrap();

    served.signal("TERM");
    // Shutdown has begun once the listener refuses new connections.
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "listener still open after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    slow.write_all(body).unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(
        rest.starts_with("HTTP/1.1 204"),
        "in-flight request answered: {rest}"
    );

    let status = served.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    served.wait_for(Duration::from_secs(5), |l| l.contains("stopped"));
    for line in &served.seen {
        serde_json::from_str::<Value>(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(!line.contains(signature), "token logged: {line}");
    }
    assert!(
        served.seen.iter().any(|l| l.contains("jwt=[redacted]")),
        "the target is logged, redacted"
    );
}

#[test]
fn example_config_file_loads() {
    let file = format!("{}/hookrelay.example.toml", env!("CARGO_MANIFEST_DIR"));
    let d = json_output(hookrelay().args(["--config", &file, "descriptor", "--product", "jira"]));
    assert_eq!(d["baseUrl"], "https://hooks.example.com");
    let hooks = d["modules"]["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 3);
    assert_eq!(hooks[1]["event"], "jira:issue_updated");
    assert_eq!(hooks[1]["filter"], "project = OPS");
    assert_eq!(hooks[1]["propertyKeys"][0], "team");

    // The environment wins over the file.
    let d = json_output(
        hookrelay()
            .args(["--config", &file, "descriptor", "--product", "jira"])
            .env("HOOKRELAY_BASE_URL", "https://override.example.com")
            .env("HOOKRELAY_JIRA__EVENTS", "jira:issue_deleted"),
    );
    assert_eq!(d["baseUrl"], "https://override.example.com");
    assert_eq!(d["modules"]["webhooks"].as_array().unwrap().len(), 1);
}

/// Runs `cmd`, which must fail with exit code 1, and gives its standard
/// error, which must be one line.
fn one_line_failure(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    stderr
}

#[test]
fn unknown_settings_stop_start_up_with_the_closest_name() {
    let stderr = one_line_failure(
        hookrelay()
            .arg("serve")
            .env("HOOKRELAY_LISTN", "127.0.0.1:0"),
    );
    assert_eq!(
        stderr.trim_end(),
        "hookrelay: unknown environment variable HOOKRELAY_LISTN (did you mean HOOKRELAY_LISTEN?)"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hookrelay.toml");
    std::fs::write(&file, "[jira]\nevnts = [\"jira:issue_created\"]\n").unwrap();
    let stderr = one_line_failure(hookrelay().arg("--config").arg(&file).arg("serve"));
    assert!(
        stderr.contains("unknown key `jira.evnts`")
            && stderr.contains(&file.display().to_string())
            && stderr.contains("did you mean `jira.events`?"),
        "{stderr}"
    );

    // Variables read by hookrelay or its tests that are not settings.
    json_output(
        hookrelay()
            .args(["descriptor", "--product", "jira"])
            .env("HOOKRELAY_LOG", "warn")
            .env("HOOKRELAY_TEST_SOMETHING", "1")
            .env("HOOKRELAY_BENCH_BODIES", "40"),
    );
}

#[test]
fn type_errors_name_the_variable_once() {
    let stderr = one_line_failure(
        hookrelay()
            .arg("serve")
            .env("HOOKRELAY_JWT_LEEWAY_SECS", "soon"),
    );
    assert_eq!(
        stderr.matches("HOOKRELAY_JWT_LEEWAY_SECS").count(),
        1,
        "{stderr}"
    );
    assert_eq!(stderr.matches("invalid type").count(), 1, "{stderr}");
}

#[test]
fn config_check_prints_the_settings_with_secrets_redacted() {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let secrets = [
        (
            "HOOKRELAY_ADMIN_TOKEN",
            "admin-token-0123456789".to_string(),
        ),
        ("HOOKRELAY_ENCRYPTION_KEY", key.clone()),
        (
            "HOOKRELAY_DATABASE_URL",
            "postgres://hookrelay:pg-password-42@db:5432/hookrelay".to_string(),
        ),
        (
            "HOOKRELAY_AMQP_URL",
            "amqp://guest:mq-password-42@mq:5672/%2f".to_string(),
        ),
    ];
    let mut cmd = hookrelay();
    cmd.args(["config", "check"])
        .env("HOOKRELAY_LISTEN", "0.0.0.0:9090")
        .env("HOOKRELAY_VENDOR_NAME", "Acme");
    for (var, value) in &secrets {
        cmd.env(var, value);
    }
    let output = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for secret in [
        "admin-token-0123456789",
        &key,
        "pg-password-42",
        "mq-password-42",
    ] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
    }
    let printed: toml::Table = toml::from_str(&stdout).expect("the settings are TOML");
    assert_eq!(printed["listen"].as_str(), Some("0.0.0.0:9090"));
    assert_eq!(printed["vendor_name"].as_str(), Some("Acme"));
    assert_eq!(printed["admin_token"].as_str(), Some("[redacted]"));
    assert_eq!(printed["encryption_key"].as_str(), Some("[redacted]"));
    assert_eq!(
        printed["amqp_url"].as_str(),
        Some("amqp://guest:[redacted]@mq:5672/%2f")
    );
    // What a default comes to is shown, not the empty setting.
    assert_eq!(
        printed["relay_queue"]["name"].as_str(),
        Some("hookrelay.events.relay")
    );

    // Invalid: the error, exit 1, nothing printed.
    let stderr = one_line_failure(
        hookrelay()
            .args(["config", "check"])
            .env("HOOKRELAY_ADMIN_TOKEN", "short"),
    );
    assert!(stderr.contains("HOOKRELAY_ADMIN_TOKEN"), "{stderr}");
    assert!(!stderr.contains("short"), "{stderr}");
}

#[test]
fn descriptor_names_and_vendor_are_settings() {
    let d = json_output(hookrelay().args(["descriptor", "--product", "jira"]));
    assert_eq!(d["name"], "hookrelay");
    assert_eq!(d["vendor"]["name"], "hookrelay");
    assert_eq!(d["vendor"]["url"], "https://github.com/hookrelay/hookrelay");
    let d = json_output(
        hookrelay()
            .args(["descriptor", "--product", "confluence"])
            .env("HOOKRELAY_APP_NAME", "Acme events")
            .env("HOOKRELAY_VENDOR_NAME", "Acme")
            .env("HOOKRELAY_VENDOR_URL", "https://acme.example/about"),
    );
    assert_eq!(d["name"], "Acme events");
    assert_eq!(d["vendor"]["name"], "Acme");
    assert_eq!(d["vendor"]["url"], "https://acme.example/about");
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn a_database_refusing_connections_is_named_as_such() {
    let url = format!("postgres://hookrelay@127.0.0.1:{}/hookrelay", closed_port());
    for command in ["migrate", "serve"] {
        let stderr = one_line_failure(
            hookrelay()
                .arg(command)
                .env("HOOKRELAY_DATABASE_URL", &url)
                .env("HOOKRELAY_DATABASE_ACQUIRE_TIMEOUT", "1s"),
        );
        let lower = stderr.to_ascii_lowercase();
        assert!(lower.contains("connection refused"), "{command}: {stderr}");
        assert!(!lower.contains("timed out"), "{command}: {stderr}");
        assert_eq!(lower.matches("connection refused").count(), 1, "{stderr}");
    }
}

/// The port a started `serve` or `worker` logged (JSON logs).
fn logged_port(served: &mut Served, message: &str) -> u16 {
    let line = served.wait_for(Duration::from_secs(60), |l| l.contains(message));
    let started: Value = serde_json::from_str(&line).expect("log lines are JSON");
    started["fields"]["port"].as_u64().expect("port logged") as u16
}

#[test]
fn healthcheck_exits_0_on_a_ready_server_and_1_otherwise() {
    // Nothing listening.
    let url = format!("http://127.0.0.1:{}/readyz", closed_port());
    let stderr = one_line_failure(hookrelay().args(["healthcheck", "--url", &url]));
    assert!(stderr.contains(&url), "{stderr}");
    let stderr = one_line_failure(
        hookrelay()
            .arg("healthcheck")
            .env("HOOKRELAY_LISTEN", format!("0.0.0.0:{}", closed_port())),
    );
    assert!(
        stderr.contains("cannot reach http://127.0.0.1:"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("served.db").display());
    let mut served = Served::start(&[
        ("HOOKRELAY_LISTEN", "127.0.0.1:0"),
        ("HOOKRELAY_DATABASE_URL", &db),
        ("HOOKRELAY_LOG_FORMAT", "json"),
    ]);
    let port = logged_port(&mut served, "hookrelay is serving");
    // The default URL is built from HOOKRELAY_LISTEN.
    let output = hookrelay()
        .arg("healthcheck")
        .env("HOOKRELAY_LISTEN", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Any other answer than 200 is a failure, with the status said.
    let stderr = one_line_failure(hookrelay().args([
        "healthcheck",
        "--url",
        &format!("http://127.0.0.1:{port}/no/such/route"),
    ]));
    assert!(stderr.contains("answered 404"), "{stderr}");
    served.signal("TERM");
    assert!(served.wait_exit(Duration::from_secs(30)).success());
}

#[tokio::test]
async fn healthcheck_fails_while_the_store_is_down() {
    let app = spawn_app(Backend::Postgres).await;
    let url = app.url("/readyz");
    let check = move || {
        hookrelay()
            .args(["healthcheck", "--url", &url])
            .output()
            .unwrap()
    };
    let ok = tokio::task::spawn_blocking(check.clone()).await.unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let broken = app.break_store().await;
    let down = tokio::task::spawn_blocking(check.clone()).await.unwrap();
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert_eq!(down.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("answered 503"), "{stderr}");
    broken.restore().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_serves_health_readiness_and_metrics() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut worker = Served::run(
        "worker",
        &[
            ("HOOKRELAY_LISTEN", "127.0.0.1:0"),
            ("HOOKRELAY_DATABASE_URL", db.url()),
            ("HOOKRELAY_LOG_FORMAT", "json"),
        ],
    );
    let port =
        tokio::task::block_in_place(|| logged_port(&mut worker, "hookrelay worker is relaying"));
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("http://127.0.0.1:{port}{path}")).send();

    let health = get("/healthz").await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        health.headers().contains_key("x-request-id"),
        "probes are logged with a request id like every other request"
    );
    let ready = get("/readyz").await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["store"]["backend"], "postgres");
    assert_eq!(ready["broker"]["status"], "up");
    let metrics = get("/metrics").await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or_default().starts_with("text/plain")));
    // The worker's own series (relay, broker) and its probes' requests.
    let text = metrics.text().await.unwrap();
    for series in [
        "hookrelay_delivery_attempts_total{outcome=\"delivered\"} 0",
        "hookrelay_broker_up 1",
        "hookrelay_http_requests_total{route=\"/readyz\",status=\"200\"} 1",
    ] {
        assert!(text.contains(series), "no `{series}` in:\n{text}");
    }
    // Nothing else is served there.
    assert_eq!(get("/admin/api/v1/events").await.unwrap().status(), 404);

    let url = format!("http://127.0.0.1:{port}/readyz");
    let checked = tokio::task::spawn_blocking(move || {
        hookrelay()
            .args(["healthcheck", "--url", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(checked.status.success());

    worker.signal("TERM");
    let status = tokio::task::block_in_place(|| worker.wait_exit(Duration::from_secs(30)));
    assert!(status.success(), "exit status {status:?}");
}
