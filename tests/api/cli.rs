//! The command line inspector as a user runs it: the `hookrelay` binary
//! against a running server's admin API, each subcommand's tables and
//! `--json`, and its exit codes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::binary::hookrelay;
use crate::both_backends;
use crate::helpers::*;
use crate::receiver::Receiver;
use crate::relay::{relaying, TOKEN};

/// Runs `hookrelay <args>` against `url` with the admin token `token`, off
/// the test's runtime (the app and the receiver run on it).
async fn cli_with(url: &str, token: &str, args: &[&str]) -> Output {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["--url".to_string(), url.to_string()]);
    let token = token.to_string();
    tokio::task::spawn_blocking(move || {
        hookrelay()
            .args(&args)
            .env("HOOKRELAY_ADMIN_TOKEN", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

async fn cli(app: &TestApp, args: &[&str]) -> Output {
    cli_with(&app.address, TOKEN, args).await
}

/// Standard output of a run that must have succeeded.
fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// `--json` output of a run that must have succeeded.
fn json_of(output: &Output) -> Value {
    let text = stdout(output);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A run that must have failed with `code`; its standard error, which says
/// why once.
fn failed(output: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {} stderr: {stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "one line of reason: {stderr}");
    assert!(output.stdout.is_empty(), "nothing on stdout");
    stderr
}

/// Posts `jira:issue_created`, `comment_created` and `jira:issue_updated`
/// (payload `{"n": i}`, webhook identifier `wh-i`); their event ids, in order.
async fn three_webhooks(app: &TestApp, site: &Site) -> Vec<String> {
    let mut ids = Vec::new();
    for (i, event) in [
        "jira:issue_created",
        "comment_created",
        "jira:issue_updated",
    ]
    .iter()
    .enumerate()
    {
        let webhook_id = format!("wh-{i}");
        let response = app
            .webhook(
                site,
                event,
                format!(r#"{{"n": {i}}}"#),
                &[("X-Atlassian-Webhook-Identifier", &webhook_id)],
            )
            .await;
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        ids.push(answer["id"].as_str().unwrap().to_string());
    }
    ids
}

/// The ids `events list --json <args>` prints, in its order.
async fn listed_ids(app: &TestApp, args: &[&str]) -> Vec<String> {
    let list = json_of(&cli(app, &[&["events", "list", "--json"], args].concat()).await);
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// The lines of a table whose first column is `first`.
fn rows_starting<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(first))
        .collect()
}

both_backends!(cli_reads_events_manages_subscriptions_and_replays);

async fn cli_reads_events_manages_subscriptions_and_replays(backend: Backend) {
    let app = spawn_app_with(backend, relaying).await;
    let receiver = Receiver::start().await;
    let jira = Site::new("jira");
    app.install(&jira).await;
    let ids = three_webhooks(&app, &jira).await;

    // events list: newest first, a JSON array; filters and pages.
    assert_eq!(
        listed_ids(&app, &[]).await,
        [ids[2].as_str(), &ids[1], &ids[0]]
    );
    let issues = ["--event", "jira:issue_*", "--limit", "1"];
    assert_eq!(listed_ids(&app, &issues).await, [ids[2].as_str()]);
    let next = [&issues[..], &["--cursor", ids[2].as_str()]].concat();
    assert_eq!(
        listed_ids(&app, &next).await,
        [ids[0].as_str()],
        "the comment is filtered out"
    );
    assert_eq!(
        listed_ids(&app, &["--webhook-id", "wh-1"]).await,
        [ids[1].as_str()]
    );
    assert_eq!(listed_ids(&app, &["--source", "connect"]).await.len(), 3);
    assert!(listed_ids(&app, &["--source", "webtrigger"])
        .await
        .is_empty());
    let future = ["--since", "2999-01-01T00:00:00Z"];
    assert!(listed_ids(&app, &future).await.is_empty());
    let table = stdout(
        &cli(
            &app,
            &[
                "events",
                "list",
                "--tenant",
                &jira.client_key,
                "--limit",
                "2",
            ],
        )
        .await,
    );
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("EVENT"),
        "{table}"
    );
    let row = rows_starting(&table, &ids[1]);
    assert_eq!(row.len(), 1, "{table}");
    assert!(row[0].contains("comment_created") && row[0].contains(&jira.client_key));
    assert!(
        rows_starting(&table, &ids[0]).is_empty(),
        "limit 2: {table}"
    );
    assert!(
        table.contains(&format!("more: --cursor {}", ids[1])),
        "{table}"
    );

    // events show: the envelope and the payload.
    let shown = json_of(&cli(&app, &["events", "show", &ids[0], "--json"]).await);
    assert_eq!(shown["event"], "jira:issue_created");
    assert_eq!(shown["payload"]["n"], 0);
    assert_eq!(shown["deliveries"], json!([]));
    let text = stdout(&cli(&app, &["events", "show", &ids[1]]).await);
    assert!(text.contains("comment_created"), "{text}");
    assert!(text.contains(&jira.client_key), "{text}");
    assert!(text.contains("\"n\": 1"), "payload pretty-printed: {text}");
    assert!(text.contains("no deliveries"), "{text}");

    // subscriptions: create (the secret shown once), list, update, show.
    let hook = receiver.url("/hook");
    let created = json_of(
        &cli(
            &app,
            &[
                "subscriptions",
                "create",
                &hook,
                "--event",
                "jira:issue_*",
                "--header",
                "X-Team=ops",
                "--description",
                "from the cli",
                "--json",
            ],
        )
        .await,
    );
    let sub = created["id"].as_str().unwrap().to_string();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["headers"], json!({"X-Team": "ops"}));
    assert_eq!(created["events"], json!(["jira:issue_*"]));
    let listed = json_of(&cli(&app, &["subscriptions", "list", "--json"]).await);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(
        listed[0].get("secret").is_none(),
        "the secret is shown once"
    );
    let table = stdout(&cli(&app, &["subscriptions", "list"]).await);
    let row = rows_starting(&table, &sub);
    assert_eq!(row.len(), 1, "{table}");
    assert!(row[0].contains(&hook) && row[0].contains("jira:issue_*"));
    let disabled = json_of(
        &cli(
            &app,
            &["subscriptions", "update", &sub, "--disable", "--json"],
        )
        .await,
    );
    assert_eq!(disabled["enabled"], false);
    assert_eq!(disabled["description"], "from the cli", "other fields stay");
    let text = stdout(&cli(&app, &["subscriptions", "show", &sub]).await);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["enabled", "false"]),
        "{text}"
    );
    assert!(!text.contains("whsec_"), "{text}");
    // A disabled subscription cannot be replayed to: refused, exit 6.
    let refused = failed(
        &cli(&app, &["replay", &ids[0], "--subscription", &sub]).await,
        6,
    );
    assert!(refused.contains("disabled"), "{refused}");
    stdout(&cli(&app, &["subscriptions", "update", &sub, "--enable"]).await);

    // replay: accepted (exit 0), and the event really goes out again.
    let replayed = json_of(&cli(&app, &["replay", &ids[0], "--json"]).await);
    assert_eq!(replayed["deliveries"][0]["subscription_id"], sub.as_str());
    let text = stdout(&cli(&app, &["replay", &ids[2], "--subscription", &sub]).await);
    assert!(text.starts_with("replay accepted: 1 deliveries"), "{text}");
    let received = receiver.wait_for("/hook", 2, Duration::from_secs(20)).await;
    let mut delivered: Vec<String> = received
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    delivered.sort();
    let mut expected = vec![ids[0].clone(), ids[2].clone()];
    expected.sort();
    assert_eq!(delivered, expected);
    let text = stdout(&cli(&app, &["events", "show", &ids[0]]).await);
    assert!(text.contains("deliveries:"), "{text}");
    assert!(text.contains(&sub), "{text}");

    // tenants list, reaching the server at HOOKRELAY_LISTEN when --url is not given.
    let listen = app.address.trim_start_matches("http://").to_string();
    let output = tokio::task::spawn_blocking(move || {
        hookrelay()
            .args(["tenants", "list"])
            .env("HOOKRELAY_ADMIN_TOKEN", TOKEN)
            .env("HOOKRELAY_LISTEN", listen)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let table = stdout(&output);
    let row = rows_starting(&table, &jira.client_key);
    assert_eq!(row.len(), 1, "{table}");
    assert!(row[0].contains("jira") && row[0].contains(&jira.base_url));
    let tenants = json_of(&cli(&app, &["tenants", "list", "--json"]).await);
    assert_eq!(tenants[0]["client_key"], jira.client_key.as_str());
    assert_eq!(tenants[0]["event_count"], 3);

    // delete, then it is gone: exit 5.
    let text = stdout(&cli(&app, &["subscriptions", "delete", &sub]).await);
    assert_eq!(text.trim(), format!("deleted subscription {sub}"));
    let gone = failed(&cli(&app, &["subscriptions", "show", &sub]).await, 5);
    assert!(gone.contains("not found"), "{gone}");
}

both_backends!(cli_manages_triggers_and_sources);

async fn cli_manages_triggers_and_sources(backend: Backend) {
    let app = spawn_app_with(backend, |raw| {
        relaying(raw);
        raw.script_memory = 32 * 1024 * 1024;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hook.js");
    std::fs::write(
        &script,
        "export default async function (request, context) {\n  \
         return {statusCode: 200, body: 'seen ' + request.method};\n}\n",
    )
    .unwrap();
    let script = script.to_str().unwrap();

    let trigger = json_of(
        &cli(
            &app,
            &[
                "triggers",
                "create",
                "--name",
                "deploy-hook",
                "--mode",
                "sync",
                "--auth",
                "key",
                "--script",
                script,
                "--json",
            ],
        )
        .await,
    );
    let id = trigger["id"].as_str().unwrap().to_string();
    let key = trigger["key"].as_str().unwrap().to_string();
    assert_eq!(trigger["mode"], "sync");
    assert_eq!(trigger["auth"]["type"], "key");
    let path = trigger["url"]
        .as_str()
        .unwrap()
        .strip_prefix(BASE_URL)
        .unwrap()
        .to_string();

    let table = stdout(&cli(&app, &["triggers", "list"]).await);
    let row = rows_starting(&table, &id);
    assert_eq!(row.len(), 1, "{table}");
    assert!(row[0].contains("deploy-hook") && row[0].contains("key (X-Hookrelay-Key)"));
    let text = stdout(&cli(&app, &["triggers", "show", &id]).await);
    assert!(
        text.contains("'seen ' + request.method"),
        "the script: {text}"
    );
    assert!(!text.contains(&key), "the key is shown once: {text}");

    let answer = app
        .client
        .post(app.url(&path))
        .header("X-Hookrelay-Key", &key)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "seen POST");
    let invocations = json_of(&cli(&app, &["triggers", "invocations", &id, "--json"]).await);
    assert_eq!(invocations.as_array().unwrap().len(), 1, "{invocations}");
    assert_eq!(invocations[0]["status_code"], 200);
    let table = stdout(&cli(&app, &["triggers", "invocations", &id]).await);
    let invocation = invocations[0]["id"].as_str().unwrap();
    let row = rows_starting(&table, invocation);
    assert_eq!(row.len(), 1, "{table}");
    assert!(row[0].contains("200"), "{table}");
    // A name the API refuses: exit 6, with its reason.
    let refused = failed(
        &cli(&app, &["triggers", "create", "--name", "Not A Name"]).await,
        6,
    );
    assert!(refused.contains("name"), "{refused}");

    // sources: create (the secret shown once), list, show, delete.
    let text = stdout(
        &cli(
            &app,
            &[
                "sources",
                "create",
                "--name",
                "acme",
                "--base-url",
                "https://acme.atlassian.net",
            ],
        )
        .await,
    );
    let source = text
        .lines()
        .find_map(|l| l.strip_prefix("id "))
        .map(|id| id.trim().to_string())
        .unwrap_or_else(|| panic!("no id line: {text}"));
    assert!(
        text.contains(&format!("{BASE_URL}/in/{source}")),
        "its URL: {text}"
    );
    assert!(text.contains("secret: "), "{text}");
    let listed = json_of(&cli(&app, &["sources", "list", "--json"]).await);
    assert_eq!(listed[0]["id"], source.as_str());
    assert_eq!(listed[0]["name"], "acme");
    let shown = json_of(&cli(&app, &["sources", "show", &source, "--json"]).await);
    assert_eq!(shown["base_url"], "https://acme.atlassian.net");
    assert!(shown.get("secret").is_none());
    stdout(&cli(&app, &["sources", "delete", &source]).await);
    failed(&cli(&app, &["sources", "show", &source]).await, 5);
}

/// What went wrong is in the exit code, and the reason once on standard error.
#[tokio::test]
async fn cli_exit_codes_say_what_went_wrong() {
    let app = spawn_app_with(Backend::Sqlite, relaying).await;

    // A wrong token: 4, with the server's reason.
    let wrong = failed(
        &cli_with(&app.address, "not-the-admin-token", &["tenants", "list"]).await,
        4,
    );
    assert!(wrong.contains("wrong bearer token"), "{wrong}");
    // No token at all: 4 without asking.
    let output = tokio::task::spawn_blocking({
        let url = app.address.clone();
        move || {
            hookrelay()
                .args(["events", "list", "--url", &url])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(failed(&output, 4).contains("HOOKRELAY_ADMIN_TOKEN"));

    // An id that is not there: 5.
    let unknown = uuid::Uuid::now_v7().to_string();
    failed(&cli(&app, &["events", "show", &unknown]).await, 5);
    failed(&cli(&app, &["replay", &unknown]).await, 5);

    // Input the server refuses: 6, with its reason.
    let refused = failed(&cli(&app, &["events", "list", "--limit", "500"]).await, 6);
    assert!(refused.contains("limit must be 1 to 100"), "{refused}");
    failed(
        &cli(
            &app,
            &[
                "subscriptions",
                "create",
                "ftp://example.com/x",
                "--event",
                "jira:issue_created",
            ],
        )
        .await,
        6,
    );

    // Usage: 2 (clap's own, and the CLI's checks).
    let usage = cli(&app, &["subscriptions", "create"]).await;
    assert_eq!(usage.status.code(), Some(2));
    failed(&cli(&app, &["subscriptions", "update", "some-id"]).await, 2);
    failed(
        &cli(
            &app,
            &[
                "subscriptions",
                "create",
                "https://example.com",
                "--event",
                "x",
                "--header",
                "nope",
            ],
        )
        .await,
        2,
    );

    // Nothing listening: 3.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = failed(
        &cli_with(
            &format!("http://127.0.0.1:{port}"),
            TOKEN,
            &["tenants", "list"],
        )
        .await,
        3,
    );
    assert!(down.contains("cannot reach"), "{down}");
}

/// A running `hookrelay tail` whose output lines arrive on channels.
struct Tail {
    child: Child,
    stdout: tokio::sync::mpsc::Receiver<String>,
    stderr: tokio::sync::mpsc::Receiver<String>,
}

impl Tail {
    fn start(url: &str, args: &[&str]) -> Self {
        let mut child = hookrelay()
            .arg("tail")
            .args(args)
            .args(["--url", url])
            .env("HOOKRELAY_ADMIN_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = |pipe: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.blocking_send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().unwrap()));
        let stderr = lines(Box::new(child.stderr.take().unwrap()));
        Tail {
            child,
            stdout,
            stderr,
        }
    }

    async fn line(channel: &mut tokio::sync::mpsc::Receiver<String>, what: &str) -> String {
        tokio::time::timeout(Duration::from_secs(20), channel.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} line within 20 s"))
            .unwrap_or_else(|| panic!("the tail's {what} closed"))
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

both_backends!(cli_tails_events_as_they_are_stored);

async fn cli_tails_events_as_they_are_stored(backend: Backend) {
    let app = spawn_app_with(backend, relaying).await;
    let jira = Site::new("jira");
    app.install(&jira).await;
    let mut json_tail = Tail::start(&app.address, &["--json", "--event", "jira:issue_*"]);
    let mut table_tail = Tail::start(&app.address, &["--tenant", &jira.client_key]);
    // Once it says so, the stream is open: every event stored from now on shows.
    for tail in [&mut json_tail, &mut table_tail] {
        let watching = Tail::line(&mut tail.stderr, "stderr").await;
        assert!(watching.contains("watching"), "{watching}");
    }

    let ids = three_webhooks(&app, &jira).await;

    // --json: one envelope per line, only what the pattern lets through.
    for (id, n) in [(&ids[0], 0), (&ids[2], 2)] {
        let line = Tail::line(&mut json_tail.stdout, "stdout").await;
        let envelope: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(envelope["id"], id.as_str(), "{line}");
        assert_eq!(envelope["payload"]["n"], n);
        assert_eq!(envelope["tenant"]["client_key"], jira.client_key.as_str());
        assert_eq!(envelope["source"], "connect");
    }
    // The table: a line per event of the tenant, with its name and a preview.
    for (id, event) in [
        (&ids[0], "jira:issue_created"),
        (&ids[1], "comment_created"),
        (&ids[2], "jira:issue_updated"),
    ] {
        let line = Tail::line(&mut table_tail.stdout, "stdout").await;
        assert!(
            line.contains(id.as_str()) && line.contains(&format!("  {event}  ")),
            "{line}"
        );
        assert!(line.contains(r#"{"n":"#), "{line}");
    }
}

/// A server in trouble: its 5xx is exit 7, with its reason.
#[tokio::test]
async fn cli_exit_code_says_the_server_failed() {
    let app = spawn_app_with(Backend::Postgres, relaying).await;
    let broken = app.break_store().await;
    let failure = failed(&cli(&app, &["events", "list"]).await, 7);
    assert!(failure.contains("503"), "{failure}");
    assert!(failure.contains("store unavailable"), "{failure}");
    broken.restore().await;
}

/// A stream played by a stand-in server: what `tail` prints, and how it ends
/// when the server drops it for falling behind (exit 8) or closes it (exit 3).
#[tokio::test]
async fn tail_says_when_it_missed_events_or_lost_the_stream() {
    let stand_in = DocServer::start().await;
    let event = json!({"id": "e-1", "source": "connect", "event": "jira:issue_created",
        "tenant": {"client_key": "ck", "base_url": "https://x"}, "payload": {"n": 1}});
    let stream = format!(
        "retry: 3000\n: watching\n\n: keep-alive\n\nevent: event\nid: e-1\ndata: {event}\n\n"
    );
    let path = "/admin/api/v1/events/stream";

    stand_in.publish(
        path,
        "text/event-stream",
        format!("{stream}event: lagged\ndata: {{\"missed\":7}}\n\n"),
    );
    let output = cli_with(&stand_in.url, TOKEN, &["tail", "--json"]).await;
    assert_eq!(output.status.code(), Some(8));
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed, event);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("7 events were not shown"), "{stderr}");

    stand_in.publish(path, "text/event-stream", stream);
    let output = cli_with(&stand_in.url, TOKEN, &["tail"]).await;
    assert_eq!(output.status.code(), Some(3));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(printed.lines().count(), 1, "{printed}");
    assert!(printed.contains("jira:issue_created  ck  e-1"), "{printed}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("closed the live tail"), "{stderr}");
}
