//! `hookrelay dev site` as a newcomer runs it: the binary against a running
//! hookrelay that trusts its key server (the site is installed, every bundled
//! event or a given file is stored; with `--receiver` each is delivered and
//! a replay arrives), against one that does not (a clear message, exit 1),
//! and with options it cannot use.

use std::process::Output;
use std::time::Duration;

use hookrelay::config::RawConfig;
use serde_json::Value;

use crate::binary::{hookrelay, Served};
use crate::both_backends;
use crate::helpers::*;

const TOKEN: &str = "dev-site-admin-token-0123";

/// Runs `hookrelay dev site <args>`.
async fn dev_site(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        hookrelay()
            .args(["dev", "site"])
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// `hookrelay dev site --url <app> --keys-listen <keys_listen> <extra>`.
async fn dev_site_at(app: &TestApp, keys_listen: &str, extra: &[&str]) -> Output {
    let mut args = vec!["--url", app.address.as_str(), "--keys-listen", keys_listen];
    args.extend_from_slice(extra);
    dev_site(&args).await
}

/// A server fetching install keys from `http://<keys_listen>`, after
/// `adjust` has had its say.
async fn app_trusting(
    backend: Backend,
    keys_listen: &str,
    adjust: impl FnOnce(&mut RawConfig),
) -> TestApp {
    let keys_url = format!("http://{keys_listen}");
    spawn_app_with(backend, |c| {
        c.install_keys_url = keys_url;
        c.admin_token = Some(TOKEN.into());
        adjust(c);
    })
    .await
}

/// The standard output of a run that must have succeeded.
fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "dev site failed ({:?}): {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The client key the run says it installed.
fn client_key(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.split_once(" as clientKey ").map(|(_, k)| k.trim()))
        .unwrap_or_else(|| panic!("no install line in: {stdout}"))
        .to_string()
}

/// `(event, event id)` of every webhook the run says was accepted, in order.
fn accepted(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l.split_once("sent ")?.1;
            let (event, rest) = rest.split_once(" → ")?;
            let (status, id) = rest.split_once(", event id ")?;
            assert!(status.starts_with('2'), "{l}");
            Some((event.to_string(), id.trim().to_string()))
        })
        .collect()
}

async fn admin_get(app: &TestApp, path: &str) -> Value {
    let response = app
        .client
        .get(app.url(&format!("/admin/api/v1{path}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

/// `(event, id)` of the tenant's stored events, oldest first.
async fn stored(app: &TestApp, client_key: &str) -> Vec<(String, String)> {
    let page = admin_get(app, &format!("/events?tenant={client_key}&limit=100")).await;
    let mut events: Vec<(String, String)> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    events.reverse();
    events
}

both_backends!(dev_site_installs_a_site_and_its_events_are_stored);

async fn dev_site_installs_a_site_and_its_events_are_stored(backend: Backend) {
    let keys_listen = format!("127.0.0.1:{}", free_port());
    let app = app_trusting(backend, &keys_listen, |_| {}).await;

    // Every bundled Jira event, twice.
    let output = dev_site_at(&app, &keys_listen, &["--interval", "0s", "--count", "2"]).await;
    let stdout = stdout_of(&output);
    let jira = client_key(&stdout);
    assert!(jira.starts_with("jira:hookrelay-dev-"), "{stdout}");
    let tenant = admin_get(&app, &format!("/tenants/{jira}")).await;
    assert_eq!(tenant["state"], "installed", "{tenant}");
    assert_eq!(tenant["product"], "jira", "{tenant}");
    let sent = accepted(&stdout);
    let events: Vec<&str> = sent.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        events,
        [
            "jira:issue_created",
            "jira:issue_updated",
            "comment_created",
            "jira:issue_created",
            "jira:issue_updated",
            "comment_created"
        ],
        "{stdout}"
    );
    assert_eq!(stored(&app, &jira).await, sent, "one stored event per line");
    let (_, last) = sent.last().unwrap();
    assert!(
        stdout.contains(&format!("/events/{last}/replay")),
        "{stdout}"
    );

    // A Confluence site from the same key server, sending a file of its own:
    // a new site per run, its payload stored as given.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("page.json");
    let payload = serde_json::json!({"page": {"id": "4242", "title": "from a file"}});
    std::fs::write(&file, payload.to_string()).unwrap();
    let output = dev_site_at(
        &app,
        &keys_listen,
        &[
            "--product",
            "confluence",
            "--file",
            file.to_str().unwrap(),
            "--event",
            "page_created",
        ],
    )
    .await;
    let stdout = stdout_of(&output);
    let wiki = client_key(&stdout);
    assert!(wiki.starts_with("confluence:hookrelay-dev-"), "{stdout}");
    assert_ne!(wiki, jira);
    let sent = accepted(&stdout);
    assert_eq!(stored(&app, &wiki).await, sent, "{stdout}");
    assert_eq!(sent.len(), 1, "{stdout}");
    let event = admin_get(&app, &format!("/events/{}", sent[0].1)).await;
    assert_eq!(event["event"], "page_created", "{event}");
    assert_eq!(event["payload"], payload, "{event}");
}

#[tokio::test]
async fn dev_site_refused_install_says_what_to_set_and_exits_1() {
    let keys_listen = format!("127.0.0.1:{}", free_port());
    // The server fetches install keys from another key server (the test's
    // own), which, like Atlassian's, knows no key of the site's.
    let app = spawn_app_with(Backend::Sqlite, |c| c.admin_token = Some(TOKEN.into())).await;
    let output = dev_site_at(&app, &keys_listen, &[]).await;
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("HOOKRELAY_INSTALL_KEYS_URL=http://{keys_listen}")),
        "{stderr}"
    );
    assert!(stderr.contains("401"), "{stderr}");
    assert!(!stdout.contains("sent "), "nothing sent: {stdout}");
    let tenants = admin_get(&app, "/tenants").await;
    assert_eq!(tenants["data"], serde_json::json!([]), "{tenants}");
}

#[tokio::test]
async fn dev_site_reports_a_refused_webhook_and_exits_1() {
    let keys_listen = format!("127.0.0.1:{}", free_port());
    let app = app_trusting(Backend::Sqlite, &keys_listen, |c| c.max_body_bytes = 1024).await;
    // The bundled jira:issue_created payload is over 5 KiB: too large here.
    let output = dev_site_at(&app, &keys_listen, &["--event", "jira:issue_created"]).await;
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.contains("sent jira:issue_created → 413, refused: "),
        "{stdout}"
    );
    assert!(
        stderr.contains("refused 1 of the site's webhooks"),
        "{stderr}"
    );
    let jira = client_key(&stdout);
    assert_eq!(stored(&app, &jira).await, vec![], "nothing stored");
}

#[tokio::test]
async fn dev_site_with_options_it_cannot_use_exits_2_before_starting() {
    // --file without --event: a usage error.
    let output = dev_site(&["--file", "/nonexistent.json"]).await;
    assert_eq!(output.status.code(), Some(2));
    // An event with no bundled payload, a file that is not there or not
    // JSON: said before any server is needed (none listens at this URL).
    let dir = tempfile::tempdir().unwrap();
    let not_json = dir.path().join("x.json");
    std::fs::write(&not_json, "{nope").unwrap();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    for (args, says) in [
        (
            vec!["--event", "jira:worklog_created"],
            "--file PATH --event jira:worklog_created",
        ),
        (
            vec!["--receiver"],
            "--receiver needs --admin-token (or HOOKRELAY_ADMIN_TOKEN)",
        ),
        (
            vec!["--file", "/nonexistent.json", "--event", "x"],
            "cannot read --file",
        ),
        (
            vec!["--file", not_json.to_str().unwrap(), "--event", "x"],
            "is not JSON",
        ),
    ] {
        let mut all = vec!["--url", nowhere.as_str()];
        all.extend(args);
        let output = dev_site(&all).await;
        assert_eq!(output.status.code(), Some(2), "{all:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{all:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{all:?}: nothing started");
    }
    // It is a client: a server setting that would stop `serve` is not its
    // concern, and is not what it reports.
    let output = tokio::task::spawn_blocking(move || {
        hookrelay()
            .args(["dev", "site", "--url", nowhere.as_str()])
            .args(["--event", "jira:worklog_created"])
            .env("HOOKRELAY_LISTEN", "not an address")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no bundled jira payload"), "{stderr}");
}

/// Ctrl-C (SIGINT) or SIGTERM: either way the run cleans up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_site_receiver_prints_deliveries_and_replays_then_unsubscribes_on_ctrl_c() {
    receiver_run_then_stopped_by("INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_site_receiver_unsubscribes_on_sigterm_too() {
    receiver_run_then_stopped_by("TERM").await;
}

async fn receiver_run_then_stopped_by(signal: &str) {
    let keys_listen = format!("127.0.0.1:{}", free_port());
    let app = app_trusting(Backend::Sqlite, &keys_listen, |c| {
        c.allow_private_destinations = true;
    })
    .await;
    let mut run = Served::stdout_of(&[
        "dev",
        "site",
        "--url",
        &app.address,
        "--keys-listen",
        &keys_listen,
        "--event",
        "jira:issue_created",
        "--receiver",
        "--admin-token",
        TOKEN,
    ]);
    // The waits block: off the runtime's threads, which serve the app.
    let wait = Duration::from_secs(30);
    let mut wait_for = |pred: &dyn Fn(&str) -> bool| {
        tokio::task::block_in_place(|| run.wait_for(wait, |l| pred(l)))
    };
    let line = wait_for(&|l| l.contains("subscribed the receiver at "));
    let subscription = line
        .rsplit_once("(subscription ")
        .map(|(_, id)| id.trim_end_matches(')').to_string())
        .unwrap();
    let line = wait_for(&|l| l.contains("sent jira:issue_created → "));
    let (_, id) = accepted(&line).pop().unwrap();
    let delivered = format!("received jira:issue_created event id {id} ");
    let line = wait_for(&|l| l.contains(&delivered));
    assert!(line.contains(", signature valid)"), "{line}");
    wait_for(&|l| l.contains("Ctrl-C to stop"));

    // A replay reaches the receiver while it stays up.
    let response = app
        .client
        .post(app.url(&format!("/admin/api/v1/events/{id}/replay")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let line = wait_for(&|l| l.contains(&delivered));
    assert!(line.contains("signature valid"), "{line}");

    run.signal(signal);
    let status = tokio::task::block_in_place(|| run.wait_exit(wait));
    assert!(status.success(), "{status:?}");
    let lines = tokio::task::block_in_place(|| run.all_lines(wait));
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("deleted subscription {subscription}"))),
        "{lines:?}"
    );
    let subscriptions = admin_get(&app, "/subscriptions").await;
    assert_eq!(
        subscriptions["data"],
        serde_json::json!([]),
        "{subscriptions}"
    );
}
