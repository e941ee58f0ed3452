//! The relay: subscriptions through the admin API, signed deliveries to a real
//! HTTP receiver (whose verifier is written from the Standard Webhooks spec, not
//! taken from hookrelay), retries, dead letters, replays, the destination guard,
//! and deliveries that survive every process being killed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use hookrelay::config::RawConfig;
use serde_json::{json, Value};

use crate::binary::Served;
use crate::both_backends;
use crate::helpers::*;
use crate::publishing::{accepted, installed_then_stopped_on, serve, serve_env, sigkill};
use crate::rabbit::{amqp_url, delete_topology, test_exchange};
use crate::receiver::{verify, Receiver, Reply};

pub(crate) const TOKEN: &str = "admin-token-0123456789";

/// Relay settings for tests: loopback receivers allowed, short waits.
pub(crate) fn relaying(raw: &mut RawConfig) {
    raw.admin_token = Some(TOKEN.into());
    raw.allow_private_destinations = true;
    raw.retry_schedule = vec!["300ms".into(), "300ms".into()];
    raw.delivery_timeout = "2s".into();
    raw.delivery_connect_timeout = "1s".into();
    raw.relay_poll_interval = "200ms".into();
}

/// The admin API of one hookrelay.
pub(crate) struct AdminApi {
    base: String,
    client: reqwest::Client,
}

impl AdminApi {
    pub(crate) fn of(address: &str) -> Self {
        Self {
            base: format!("{address}/admin/api/v1"),
            client: reqwest::Client::new(),
        }
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub(crate) async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Creates a subscription; returns (id, secret).
    pub(crate) async fn subscribe(&self, body: Value) -> (String, String) {
        let (status, created) = self.post("/subscriptions", body).await;
        assert_eq!(status, 201, "{created}");
        (
            created["id"].as_str().unwrap().to_string(),
            created["secret"].as_str().unwrap().to_string(),
        )
    }

    /// Polls `path` until `done` holds for its body; returns the body.
    pub(crate) async fn wait(
        &self,
        path: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let body = self.get(path).await;
            if done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path} never got there: {body:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The event ids of deliveries, each checked against `secret` and the envelope.
fn verified_ids(secret: &str, received: &[crate::receiver::Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| {
            let id = verify(secret, r).unwrap_or_else(|e| panic!("bad signature: {e:?}"));
            let body = r.json();
            assert_eq!(body["id"], id.as_str(), "webhook-id is the event id");
            assert_eq!(r.header("content-type"), Some("application/json"));
            id
        })
        .collect()
}

/// Sends a fixture as `event` from `site`; returns the event id.
async fn send_fixture(app: &TestApp, site: &Site, event: &str, payload: &str) -> String {
    accepted(app.webhook(site, event, fixture(payload), &[]).await).await
}

both_backends!(
    fan_out_delivers_signed_envelopes_to_matching_subscriptions,
    payloads_at_the_limits_are_relayed_byte_for_byte
);

/// Three subscriptions with different patterns, tenants and filters each get
/// exactly the events they match, signed, with the envelope as the body.
async fn fan_out_delivers_signed_envelopes_to_matching_subscriptions(backend: Backend) {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(backend, relaying).await;
    let admin = AdminApi::of(&app.address);
    let jira = Site::new("jira");
    let other = Site::new("jira");
    let wiki = Site::new("confluence");
    for site in [&jira, &other, &wiki] {
        app.install(site).await;
    }

    let (issues, issues_secret) = admin
        .subscribe(json!({
            "url": receiver.url("/issues"),
            "events": ["jira:issue_*"],
            "headers": {"X-Team": "ops"},
        }))
        .await;
    let (_, pages_secret) = admin
        .subscribe(json!({"url": receiver.url("/pages"), "events": ["page_*"]}))
        .await;
    // Everything from one tenant, but only what the filter selects: events
    // about an issue of Medium priority.
    let given_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (filtered, secret) = admin
        .subscribe(json!({
            "url": receiver.url("/filtered"),
            "events": ["*"],
            "tenants": [jira.client_key],
            "filter": "$.payload.issue[?@.priority.name == 'Medium']",
            "secret": given_secret,
        }))
        .await;
    assert_eq!(secret, given_secret, "a given secret is kept");

    let send = |site, event, payload| send_fixture(&app, site, event, payload);
    let created = send(
        &jira,
        "jira:issue_created",
        "payloads/jira_issue_created.json",
    )
    .await;
    let updated = send(
        &jira,
        "jira:issue_updated",
        "payloads/jira_issue_updated.json",
    )
    .await;
    let comment = send(
        &jira,
        "comment_created",
        "payloads/jira_comment_created.json",
    )
    .await;
    let page = send(
        &wiki,
        "page_updated",
        "payloads/confluence_page_updated.json",
    )
    .await;
    let elsewhere = send(
        &other,
        "jira:issue_created",
        "payloads/jira_issue_created.json",
    )
    .await;

    let got = receiver
        .wait_for("/issues", 3, Duration::from_secs(15))
        .await;
    let ids: HashSet<String> = verified_ids(&issues_secret, &got).into_iter().collect();
    assert_eq!(
        ids,
        HashSet::from([created.clone(), updated.clone(), elsewhere.clone()])
    );
    assert!(got.iter().all(|r| r.header("x-team") == Some("ops")));
    let got = receiver
        .wait_for("/pages", 1, Duration::from_secs(15))
        .await;
    assert_eq!(verified_ids(&pages_secret, &got), vec![page.clone()]);
    let body = got[0].json();
    assert_eq!(body["event"], "page_updated");
    assert_eq!(body["product"], "confluence");
    assert_eq!(body["tenant"]["client_key"], wiki.client_key);
    let fixture_payload: Value =
        serde_json::from_str(&fixture("payloads/confluence_page_updated.json")).unwrap();
    assert_eq!(body["payload"], fixture_payload);

    // The filter selects `jira`'s events about a Medium issue: the created one
    // and the comment on it, not the updated one (a Blocker) nor `other`'s.
    let expected = HashSet::from([created.clone(), comment.clone()]);
    let got = receiver
        .wait_for("/filtered", expected.len(), Duration::from_secs(15))
        .await;
    let ids: HashSet<String> = verified_ids(given_secret, &got).into_iter().collect();
    assert_eq!(ids, expected);

    // Nothing more arrives: each subscription got only its own, once.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.received("/issues").len(), 3);
    assert_eq!(receiver.received("/pages").len(), 1);
    assert_eq!(receiver.received("/filtered").len(), expected.len());
    assert!(!receiver
        .received("/issues")
        .iter()
        .any(|r| r.json()["id"] == comment));

    // The event shows its delivery and the attempt; reads never show a secret.
    // The receiver sees a request before hookrelay has recorded its answer.
    let event = admin
        .wait(
            &format!("/events/{created}"),
            Duration::from_secs(10),
            |e| {
                e["deliveries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|d| d["state"] == "delivered")
            },
        )
        .await;
    let deliveries = event["deliveries"].as_array().unwrap();
    let to_issues = deliveries
        .iter()
        .find(|d| d["subscription_id"] == issues.as_str())
        .expect("a delivery to the issues subscription");
    assert_eq!(to_issues["state"], "delivered");
    assert_eq!(to_issues["attempt_count"], 1);
    assert_eq!(to_issues["attempts"][0]["status_code"], 200);
    assert_eq!(to_issues["attempts"][0]["outcome"], "delivered");
    assert_eq!(to_issues["attempts"][0]["response_body"], "ok");
    let shown = admin.get(&format!("/subscriptions/{filtered}")).await;
    assert!(shown.get("secret").is_none(), "{shown}");
    let listed = admin.get("/subscriptions").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 3);
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s.get("secret").is_none()));
    receiver.stop().await;
}

both_backends!(retries_dead_letters_and_replays);

both_backends!(an_endpoint_never_has_more_requests_than_its_max_concurrency);

/// A backlog for an endpoint that does not answer: it gets exactly its
/// `max_concurrency` requests at once, however many deliveries are due and
/// however many slots the process has free.
async fn an_endpoint_never_has_more_requests_than_its_max_concurrency(backend: Backend) {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(backend, |raw| {
        relaying(raw);
        raw.delivery_timeout = "30s".into();
    })
    .await;
    let admin = AdminApi::of(&app.address);
    let site = Site::new("jira");
    app.install(&site).await;
    receiver.script("/hang", vec![Reply::Hang]);
    admin
        .subscribe(json!({"url": receiver.url("/hang"), "events": ["*"], "max_concurrency": 3}))
        .await;
    for _ in 0..12 {
        accepted(app.webhook(&site, "jira:issue_created", "{}", &[]).await).await;
    }
    receiver.wait_for("/hang", 3, Duration::from_secs(10)).await;
    // Time for more to go out, if anything let them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.received("/hang").len(), 3);
}

both_backends!(deliveries_never_wait_for_the_poll);

/// The dispatcher is woken whenever a delivery may be due and is never left
/// to its poll. With the poll a minute away, a burst goes to an endpoint
/// that takes one request at a time and to one beside it. All of it arrives
/// within seconds: new deliveries are handed over at creation while nothing
/// waits, and the rest are claimed as slots come free. So does a second
/// burst, once the first has drained.
async fn deliveries_never_wait_for_the_poll(backend: Backend) {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(backend, |raw| {
        relaying(raw);
        raw.relay_poll_interval = "60s".into();
    })
    .await;
    let admin = AdminApi::of(&app.address);
    let site = Site::new("jira");
    app.install(&site).await;
    admin
        .subscribe(json!({"url": receiver.url("/one"), "events": ["*"], "max_concurrency": 1}))
        .await;
    admin
        .subscribe(json!({"url": receiver.url("/many"), "events": ["*"]}))
        .await;
    let mut sent = 0;
    for burst in [30, 5] {
        let sends = (0..burst).map(|_| app.webhook(&site, "jira:issue_created", "{}", &[]));
        for response in futures_util::future::join_all(sends).await {
            accepted(response).await;
        }
        sent += burst;
        for path in ["/one", "/many"] {
            receiver.wait_for(path, sent, Duration::from_secs(15)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for path in ["/one", "/many"] {
        assert_eq!(receiver.received(path).len(), sent, "{path}: once each");
    }
    receiver.stop().await;
}

/// 500 then 200; 429 with Retry-After; 410; a delivery that runs out of
/// attempts and is replayed with the same event id.
async fn retries_dead_letters_and_replays(backend: Backend) {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(backend, relaying).await;
    let admin = AdminApi::of(&app.address);
    let site = Site::new("jira");
    app.install(&site).await;

    receiver.script("/flaky", vec![Reply::Status(500), Reply::Status(200)]);
    receiver.script(
        "/busy",
        vec![
            Reply::WithHeaders(429, vec![("retry-after", "2".into())]),
            Reply::Status(204),
        ],
    );
    receiver.script("/gone", vec![Reply::Status(410)]);
    receiver.script("/down", vec![Reply::WithBody(503, "try later".into())]);
    let mut subs = std::collections::HashMap::new();
    for path in ["/flaky", "/busy", "/gone", "/down"] {
        let (id, secret) = admin
            .subscribe(json!({"url": receiver.url(path), "events": ["jira:issue_created"]}))
            .await;
        subs.insert(path, (id, secret));
    }
    let event = accepted(app.webhook(&site, "jira:issue_created", "{}", &[]).await).await;

    // 500, then 200 on the second attempt.
    let got = receiver
        .wait_for("/flaky", 2, Duration::from_secs(15))
        .await;
    assert_eq!(
        verified_ids(&subs["/flaky"].1, &got),
        vec![event.clone(); 2]
    );
    let (flaky, _) = &subs["/flaky"];
    let attempts = admin
        .wait(
            &format!("/subscriptions/{flaky}/attempts"),
            Duration::from_secs(5),
            |b| b["data"].as_array().unwrap().len() == 2,
        )
        .await;
    let attempts = attempts["data"].as_array().unwrap();
    // Newest first.
    assert_eq!(attempts[0]["status_code"], 200);
    assert_eq!(attempts[0]["outcome"], "delivered");
    assert_eq!(attempts[1]["status_code"], 500);
    assert_eq!(attempts[1]["outcome"], "retry");

    // 429 with Retry-After: 2 outweighs the 300 ms schedule.
    let got = receiver.wait_for("/busy", 2, Duration::from_secs(15)).await;
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(1900), "retried after {gap:?}");

    // 410 disables the subscription, with the reason, and is not retried.
    let (gone, _) = &subs["/gone"];
    let shown = admin
        .wait(
            &format!("/subscriptions/{gone}"),
            Duration::from_secs(10),
            |b| b["enabled"] == false,
        )
        .await;
    assert!(
        shown["disabled_reason"].as_str().unwrap().contains("410"),
        "{shown}"
    );
    assert_eq!(receiver.received("/gone").len(), 1);

    // 503 on every attempt: dead after 1 + 2 retries, kept and listed.
    let (down, down_secret) = &subs["/down"];
    let dead = admin
        .wait(
            &format!("/subscriptions/{down}/deliveries?state=dead"),
            Duration::from_secs(15),
            |b| b["data"].as_array().unwrap().len() == 1,
        )
        .await;
    assert_eq!(dead["data"][0]["event_id"], event.as_str());
    assert_eq!(dead["data"][0]["attempt_count"], 3);
    assert_eq!(dead["data"][0]["last_status"], 503);
    assert_eq!(receiver.received("/down").len(), 3);
    let detail = admin.get(&format!("/events/{event}")).await;
    let to_down = detail["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["subscription_id"] == down.as_str())
        .unwrap()
        .clone();
    let outcomes: Vec<&str> = to_down["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "dead"]);
    assert_eq!(to_down["attempts"][0]["response_body"], "try later");

    // The endpoint recovers; a bulk replay of the dead deliveries arrives with
    // the same event id.
    receiver.script("/down", vec![Reply::Status(200)]);
    let (status, replayed) = admin
        .post(&format!("/subscriptions/{down}/replay"), json!({}))
        .await;
    assert_eq!(
        (status, &replayed["replayed"]),
        (202, &json!(1)),
        "{replayed}"
    );
    let got = receiver.wait_for("/down", 4, Duration::from_secs(10)).await;
    assert_eq!(verified_ids(down_secret, &got[3..]), vec![event.clone()]);
    admin
        .wait(
            &format!("/subscriptions/{down}/deliveries?state=delivered"),
            Duration::from_secs(5),
            |b| b["data"].as_array().unwrap().len() == 1,
        )
        .await;

    // A replay of the event to one subscription sends it once more, same id.
    let (status, body) = admin
        .post(
            &format!("/events/{event}/replay"),
            json!({"subscription_id": flaky}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let got = receiver
        .wait_for("/flaky", 3, Duration::from_secs(10))
        .await;
    assert_eq!(got[2].json()["id"], event.as_str());
    // A disabled subscription is not replayed to.
    let (status, _) = admin
        .post(
            &format!("/events/{event}/replay"),
            json!({"subscription_id": gone}),
        )
        .await;
    assert_eq!(status, 409);
    receiver.stop().await;
}

/// One endpoint hangs past the timeout; another answers at once and gets every
/// event promptly, while the hanging one is retried on its schedule.
#[tokio::test]
async fn a_hanging_endpoint_does_not_hold_up_a_healthy_one() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(Backend::Sqlite, |raw| {
        relaying(raw);
        raw.delivery_timeout = "1s".into();
        raw.delivery_connect_timeout = "500ms".into();
        raw.retry_schedule = vec!["1s".into(), "1s".into()];
    })
    .await;
    let admin = AdminApi::of(&app.address);
    let site = Site::new("jira");
    app.install(&site).await;
    receiver.script("/hang", vec![Reply::Hang]);
    let (hanging, _) = admin
        .subscribe(json!({"url": receiver.url("/hang"), "events": ["*"], "max_concurrency": 2}))
        .await;
    let (_, secret) = admin
        .subscribe(json!({"url": receiver.url("/ok"), "events": ["*"]}))
        .await;

    let started = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(accepted(app.webhook(&site, "jira:issue_created", "{}", &[]).await).await);
    }
    let got = receiver.wait_for("/ok", 20, Duration::from_secs(10)).await;
    let healthy_done = got.last().unwrap().at - started;
    let mut delivered = verified_ids(&secret, &got);
    delivered.sort();
    ids.sort();
    assert_eq!(delivered, ids);
    // The hanging endpoint holds at most its 2 slots for a second at a time; the
    // healthy one never waits for them.
    assert!(
        healthy_done < Duration::from_secs(5),
        "healthy endpoint took {healthy_done:?}"
    );

    // Its first delivery times out and is retried after the schedule's 1 s.
    let first = receiver.wait_for("/hang", 1, Duration::from_secs(5)).await[0].json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let detail = admin
        .wait(&format!("/events/{first}"), Duration::from_secs(15), |b| {
            b["deliveries"].as_array().unwrap().iter().any(|d| {
                d["subscription_id"] == hanging.as_str()
                    && d["attempts"].as_array().unwrap().len() >= 2
            })
        })
        .await;
    let attempts = detail["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["subscription_id"] == hanging.as_str())
        .unwrap()["attempts"]
        .clone();
    assert_eq!(attempts[0]["error"], "timed out", "{attempts}");
    assert_eq!(attempts[0]["outcome"], "retry");
    assert!(attempts[0]["duration_ms"].as_i64().unwrap() >= 900);
    let at = |i: usize| {
        chrono::DateTime::parse_from_rfc3339(attempts[i]["attempted_at"].as_str().unwrap()).unwrap()
    };
    // Attempt 2 starts after attempt 1's 1 s timeout plus a jittered 0.8-1.2 s.
    let gap = (at(1) - at(0)).num_milliseconds();
    assert!(gap >= 1700, "second attempt {gap} ms after the first");
    receiver.stop().await;
}

/// The destination guard: a subscription to a literal private address is refused
/// when made, and a name that resolves to loopback is refused at delivery time.
#[tokio::test]
async fn private_destinations_are_refused() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(Backend::Sqlite, |raw| {
        relaying(raw);
        raw.allow_private_destinations = false;
    })
    .await;
    let admin = AdminApi::of(&app.address);
    let site = Site::new("jira");
    app.install(&site).await;

    for url in [
        receiver.url("/x"),
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://[::1]:8080/".to_string(),
        "http://[::ffff:0:7f00:1]/".to_string(),
        "http://[::ffff:0:a9fe:a9fe]/latest/meta-data".to_string(),
        "http://10.1.2.3/".to_string(),
    ] {
        let (status, body) = admin
            .post("/subscriptions", json!({"url": url, "events": ["*"]}))
            .await;
        assert_eq!(status, 400, "{url}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains("refused"),
            "{body}"
        );
    }
    // `localhost` is a name: it passes here and is refused once resolved.
    let url = receiver.url("/x").replace("127.0.0.1", "localhost");
    let (sub, _) = admin.subscribe(json!({"url": url, "events": ["*"]})).await;
    let event = accepted(app.webhook(&site, "jira:issue_created", "{}", &[]).await).await;
    let detail = admin
        .wait(&format!("/events/{event}"), Duration::from_secs(10), |b| {
            b["deliveries"][0]["state"] == "failed"
        })
        .await;
    let attempt = &detail["deliveries"][0]["attempts"][0];
    assert_eq!(detail["deliveries"][0]["subscription_id"], sub.as_str());
    assert!(
        attempt["error"].as_str().unwrap().contains("loopback"),
        "{attempt}"
    );
    assert_eq!(attempt["status_code"], Value::Null);
    assert!(
        receiver.received("/x").is_empty(),
        "nothing reached the receiver"
    );
    receiver.stop().await;
}

/// A subscription whose every attempt fails for longer than
/// `HOOKRELAY_DISABLE_FAILING_AFTER` is disabled, with the reason.
#[tokio::test]
async fn a_subscription_failing_for_too_long_is_disabled() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(Backend::Sqlite, |raw| {
        relaying(raw);
        raw.disable_failing_after = "1s".into();
        raw.retry_schedule = vec!["300ms".into(); 20];
    })
    .await;
    let admin = AdminApi::of(&app.address);
    let site = Site::new("jira");
    app.install(&site).await;
    receiver.script("/failing", vec![Reply::Status(500)]);
    let (sub, _) = admin
        .subscribe(json!({"url": receiver.url("/failing"), "events": ["*"]}))
        .await;
    accepted(app.webhook(&site, "jira:issue_created", "{}", &[]).await).await;
    let shown = admin
        .wait(
            &format!("/subscriptions/{sub}"),
            Duration::from_secs(10),
            |b| b["enabled"] == false,
        )
        .await;
    let reason = shown["disabled_reason"].as_str().unwrap();
    assert!(
        reason.contains("every attempt has failed since"),
        "{reason}"
    );
    // Attempts stop; re-enabling resumes the pending delivery.
    let count = receiver.received("/failing").len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.received("/failing").len(), count);
    receiver.script("/failing", vec![Reply::Status(200)]);
    let (status, body) = admin
        .call(
            reqwest::Method::PATCH,
            &format!("/subscriptions/{sub}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["disabled_reason"], Value::Null);
    receiver
        .wait_for("/failing", count + 1, Duration::from_secs(10))
        .await;
    receiver.stop().await;
}

/// Bad subscriptions get a 400 that says why; missing ones 404.
#[tokio::test]
async fn subscriptions_are_checked_and_managed() {
    let app = spawn_app_with(Backend::Sqlite, relaying).await;
    let admin = AdminApi::of(&app.address);
    let url = "https://example.com/hook";
    for (body, expect) in [
        (json!({"events": ["*"]}), "required"),
        (json!({"url": url}), "required"),
        (json!({"url": "ftp://example.com", "events": ["*"]}), "http"),
        (json!({"url": url, "events": []}), "events"),
        (json!({"url": url, "events": ["page updated"]}), "pattern"),
        (
            json!({"url": url, "events": ["*"], "filter": "$.payload["}),
            "JSONPath",
        ),
        (
            json!({"url": url, "events": ["*"], "secret": "hunter2"}),
            "whsec_",
        ),
        (
            json!({"url": url, "events": ["*"], "headers": {"webhook-id": "x"}}),
            "set by hookrelay",
        ),
        (
            json!({"url": url, "events": ["*"], "tenants": []}),
            "tenants",
        ),
        (
            json!({"url": url, "events": ["*"], "rate_limit": 0}),
            "rate_limit",
        ),
        (
            json!({"url": url, "events": ["*"], "colour": "red"}),
            "unknown field",
        ),
    ] {
        let (status, answer) = admin.post("/subscriptions", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let detail = answer["detail"].as_str().unwrap();
        assert!(detail.contains(expect), "{body}: {detail}");
    }
    let (id, _) = admin
        .subscribe(json!({"url": url, "events": ["*"], "rate_limit": 5}))
        .await;
    let (status, patched) = admin
        .call(
            reqwest::Method::PATCH,
            &format!("/subscriptions/{id}"),
            Some(json!({"events": ["page_*"], "rate_limit": null, "enabled": false})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["events"], json!(["page_*"]));
    assert_eq!(patched["rate_limit"], Value::Null);
    assert_eq!(patched["enabled"], false);
    assert!(patched.get("secret").is_none());
    let (status, _) = admin
        .call(
            reqwest::Method::DELETE,
            &format!("/subscriptions/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = admin
        .call(reqwest::Method::GET, &format!("/subscriptions/{id}"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = admin
        .call(reqwest::Method::GET, "/subscriptions/not-a-uuid", None)
        .await;
    assert_eq!(status, 404);
    let unauthenticated = reqwest::get(format!("{}/admin/api/v1/subscriptions", app.address))
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}

/// Production shape: `serve` and `worker` on PostgreSQL and RabbitMQ. With
/// deliveries pending (the endpoint failing), every hookrelay process is
/// killed; after a restart every delivery completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_survive_killing_every_process_on_rabbitmq() {
    deliveries_survive_killing_every_process(Backend::Postgres).await
}

/// The embedded default: one `serve` on SQLite and the in-process broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_survive_killing_every_process_embedded() {
    deliveries_survive_killing_every_process(Backend::Sqlite).await
}

async fn deliveries_survive_killing_every_process(backend: Backend) {
    let receiver = Receiver::start().await;
    receiver.script("/hook", vec![Reply::Status(503)]);
    let exchange = test_exchange();
    let (app, site) = installed_then_stopped_on(backend).await;
    let mut env = serve_env(app.db.url(), &exchange, &amqp_url());
    let with_worker = backend == Backend::Postgres;
    if !with_worker {
        env.retain(|(k, _)| *k != "HOOKRELAY_AMQP_URL");
    }
    env.extend([
        ("HOOKRELAY_ADMIN_TOKEN", TOKEN.to_string()),
        ("HOOKRELAY_ALLOW_PRIVATE_DESTINATIONS", "true".to_string()),
        (
            "HOOKRELAY_RETRY_SCHEDULE",
            "500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms".to_string(),
        ),
        ("HOOKRELAY_DELIVERY_TIMEOUT", "2s".to_string()),
        ("HOOKRELAY_DELIVERY_CONNECT_TIMEOUT", "1s".to_string()),
        ("HOOKRELAY_RELAY_POLL_INTERVAL", "200ms".to_string()),
    ]);
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (mut server, address) = serve(&env).await;
    let mut worker = with_worker.then(|| {
        let mut worker = Served::run("worker", &envs);
        tokio::task::block_in_place(|| {
            worker.wait_for(Duration::from_secs(30), |l| {
                l.contains("hookrelay worker is relaying")
            })
        });
        worker
    });
    let admin = AdminApi::of(&address);
    let (_, secret) = admin
        .subscribe(json!({"url": receiver.url("/hook"), "events": ["*"]}))
        .await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(accepted(app.webhook_to(&address, &site, "jira:issue_created").await).await);
    }
    // Every delivery has been attempted and is waiting for a retry.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tried: HashSet<String> = receiver
            .received("/hook")
            .iter()
            .map(|r| r.json()["id"].as_str().unwrap().to_string())
            .collect();
        if tried.len() == ids.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of 6 attempted",
            tried.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sigkill(&mut server);
    if let Some(worker) = &mut worker {
        sigkill(worker);
    }

    receiver.script("/hook", vec![Reply::Status(200)]);
    let before = receiver.received("/hook").len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        receiver.received("/hook").len(),
        before,
        "nothing runs while all are dead"
    );
    let worker = with_worker.then(|| Served::run("worker", &envs));
    let (_server, address) = serve(&env).await;
    let admin = AdminApi::of(&address);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let received = receiver.received("/hook");
        let delivered: HashSet<String> = verified_ids(&secret, &received[before..])
            .into_iter()
            .collect();
        if delivered.len() == ids.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} delivered after the restart",
            delivered.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The receiver sees a request before hookrelay has recorded its answer.
    for id in &ids {
        admin
            .wait(&format!("/events/{id}"), Duration::from_secs(10), |d| {
                d["deliveries"][0]["state"] == "delivered"
            })
            .await;
    }
    if let Some(mut worker) = worker {
        worker.signal("TERM");
        tokio::task::block_in_place(|| worker.wait_exit(Duration::from_secs(10)));
        delete_topology(&exchange, &[]).await;
    }
    receiver.stop().await;
}

/// A subscription's rate limit spaces its deliveries out; none is lost.
#[tokio::test]
async fn rate_limit_spaces_deliveries_out() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(Backend::Sqlite, relaying).await;
    let admin = AdminApi::of(&app.address);
    let site = Site::new("jira");
    app.install(&site).await;
    let (_, secret) = admin
        .subscribe(json!({"url": receiver.url("/limited"), "events": ["*"], "rate_limit": 2}))
        .await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(accepted(app.webhook(&site, "jira:issue_created", "{}", &[]).await).await);
    }
    let got = receiver
        .wait_for("/limited", 6, Duration::from_secs(15))
        .await;
    let mut delivered = verified_ids(&secret, &got);
    delivered.sort();
    ids.sort();
    assert_eq!(delivered, ids);
    // Two at once, then one every half second: the sixth at about 2 s.
    let spread = got[5].at - got[0].at;
    assert!(
        spread >= Duration::from_millis(1500),
        "6 deliveries within {spread:?}"
    );
    receiver.stop().await;
}

/// `worker` shares deliveries with `serve` through the store, which SQLite
/// cannot do across processes: it refuses to start, and says why.
#[test]
fn worker_refuses_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let output = crate::binary::hookrelay()
        .arg("worker")
        .env(
            "HOOKRELAY_DATABASE_URL",
            format!("sqlite://{}/w.db", dir.path().display()),
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs PostgreSQL"), "{stderr}");
}

/// A payload at the nesting limit, with numbers and escapes a reparse would
/// rewrite, reaches a subscriber and the admin API byte for byte, also through
/// a filter that makes the relay read the whole envelope; one past the limit
/// is refused at intake rather than dead-lettered by the relay.
async fn payloads_at_the_limits_are_relayed_byte_for_byte(backend: Backend) {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(backend, relaying).await;
    let admin = AdminApi::of(&app.address);
    let site = Site::new("jira");
    app.install(&site).await;
    let (_, plain) = admin
        .subscribe(json!({"url": receiver.url("/plain"), "events": ["*"]}))
        .await;
    let (_, filtered) = admin
        .subscribe(json!({
            "url": receiver.url("/filtered"),
            "events": ["*"],
            "filter": "$[?@.big > 1]",
        }))
        .await;

    let deep = crate::webhooks::nested(63);
    let payload = format!(
        "{{ \"big\": 1e308, \"long\": 123456789012345678901234567890, \"zero\": -0, \
         \"smile\": \"\\ud83d\\ude00\", \"deep\": {deep} }}"
    );
    let id = accepted(
        app.webhook(&site, "jira:issue_created", payload.clone(), &[])
            .await,
    )
    .await;
    for path in ["/plain", "/filtered"] {
        let secret = if path == "/plain" { &plain } else { &filtered };
        let got = receiver.wait_for(path, 1, Duration::from_secs(15)).await;
        assert_eq!(verified_ids(secret, &got), vec![id.clone()], "{path}");
        let verbatim = format!("\"payload\":{payload}}}");
        assert!(got[0].body.ends_with(&verbatim), "{path}: {}", got[0].body);
    }
    let detail = admin.get(&format!("/events/{id}")).await;
    assert_eq!(
        detail["payload"]["deep"],
        serde_json::from_str::<Value>(&deep).unwrap()
    );

    let refused = app
        .webhook(
            &site,
            "jira:issue_created",
            crate::webhooks::nested(65),
            &[],
        )
        .await;
    assert_eq!(refused.status(), 400);
    assert_eq!(
        app.events(&site).await.len(),
        1,
        "only the accepted event stored"
    );
}

/// Deleting subscriptions while their deliveries are being attempted and
/// recorded (an endpoint failing fast, so attempts are recorded all the time)
/// answers 204 every time: the delete waits for the rows it needs instead of
/// deadlocking with the attempt being recorded.
#[tokio::test]
async fn deleting_a_subscription_during_its_attempts_succeeds() {
    let receiver = Receiver::start().await;
    receiver.script("/failing", vec![Reply::Status(500)]);
    let app = spawn_app_with(Backend::Postgres, |raw| {
        relaying(raw);
        raw.retry_schedule = vec!["10ms".into(); 20];
        raw.relay_concurrency = 64;
        raw.subscription_concurrency = 32;
    })
    .await;
    let admin = AdminApi::of(&app.address);
    let site = Site::new("jira");
    app.install(&site).await;
    for round in 0..4 {
        let mut ids = Vec::new();
        for _ in 0..3 {
            let (id, _) = admin
                .subscribe(json!({"url": receiver.url("/failing"), "events": ["*"]}))
                .await;
            ids.push(id);
        }
        let before = receiver.received("/failing").len();
        let sends = (0..40).map(|_| app.webhook(&site, "jira:issue_created", "{}", &[]));
        for response in futures_util::future::join_all(sends).await {
            assert_eq!(response.status(), 200);
        }
        // Attempts are under way.
        receiver
            .wait_for("/failing", before + 60, Duration::from_secs(20))
            .await;
        let paths: Vec<String> = ids
            .iter()
            .map(|id| format!("/subscriptions/{id}"))
            .collect();
        let deletes = paths
            .iter()
            .map(|path| admin.call(reqwest::Method::DELETE, path, None));
        for (status, body) in futures_util::future::join_all(deletes).await {
            assert_eq!(status, 204, "round {round}: {body}");
        }
    }
    receiver.stop().await;
}
