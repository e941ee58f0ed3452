//! Reconciliation, black-box: hookrelay reads a Connect Jira tenant's list of
//! webhooks Jira failed to deliver (`GET /rest/api/3/webhook/failed`, played
//! by the fake product of `bridge.rs`, which verifies every call's JWT) and
//! stores each through intake, once, marked as recovered.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::both_backends;
use crate::bridge::{bridging, install, Answer, FakeProduct};
use crate::helpers::*;
use crate::receiver::{verify, Receiver};
use crate::relay::AdminApi;

const FAILED: &str = "/rest/api/3/webhook/failed";

/// One failed webhook as Jira lists it: `body` is the webhook's JSON as a
/// string, `url` where it should have gone.
fn item(id: &str, event: &str, body: &Value) -> Value {
    json!({
        "id": id,
        "body": body.to_string(),
        "url": format!("{BASE_URL}/jira/events/{event}"),
        "failureTime": (now() - 600) * 1000,
    })
}

/// A page of the list; `next` is the cursor of the page after it, if any.
fn page(fake: &FakeProduct, values: Vec<Value>, next: Option<&str>) -> Answer {
    let mut page = json!({"values": values, "maxResults": 100});
    if let Some(next) = next {
        page["next"] = json!(format!("{}{FAILED}?after={next}", fake.url));
    }
    Answer::json(200, page)
}

fn issue_body(event: &str, key: &str) -> Value {
    let mut body: Value =
        serde_json::from_str(&fixture("payloads/jira_issue_created.json")).unwrap();
    body["webhookEvent"] = json!(event);
    body["issue"]["key"] = json!(key);
    body
}

async fn reconcile(address: &str, client_key: &str) -> (u16, Value) {
    AdminApi::of(address)
        .post(&format!("/tenants/{client_key}/reconcile"), json!({}))
        .await
}

/// The tenant's events as the admin API lists them, newest first.
async fn listed(admin: &AdminApi, site: &Site) -> Vec<Value> {
    admin
        .get(&format!("/events?tenant={}&limit=100", site.client_key))
        .await["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The full event (with payload) of each listed event, by webhook id.
async fn by_webhook_id(admin: &AdminApi, site: &Site) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for e in listed(admin, site).await {
        let full = admin
            .get(&format!("/events/{}", e["id"].as_str().unwrap()))
            .await;
        out.push((full["webhook_id"].as_str().unwrap_or("").to_string(), full));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

both_backends!(
    failed_webhooks_are_recovered_once_across_pages,
    a_run_stopped_mid_way_resumes_from_its_cursor,
    the_timer_reconciles_on_its_own
);

/// Three pages: each item stored once with its identifier and marked
/// recovered (in the admin API and in deliveries); the one already received
/// as a webhook counted as a duplicate; one for a URL of no webhook skipped;
/// every call signed; a second run stores nothing new.
async fn failed_webhooks_are_recovered_once_across_pages(backend: Backend) {
    let fake = FakeProduct::start().await;
    let receiver = Receiver::start().await;
    let app = spawn_app_with(backend, bridging).await;
    let admin = AdminApi::of(&app.address);
    let site = fake.connect_site("jira");
    install(&app, &site).await;
    let (_, secret) = admin
        .subscribe(
            json!({"url": receiver.url("/all"), "events": ["*"], "tenants": [site.client_key]}),
        )
        .await;

    let a = issue_body("jira:issue_created", "ACME-1");
    let b = issue_body("jira:issue_created", "ACME-2");
    let c = issue_body("jira:issue_updated", "ACME-1");
    let d = issue_body("jira:issue_created", "ACME-3");
    let stray = issue_body("jira:issue_created", "ACME-4");
    // b came through as a webhook after all.
    let response = app
        .webhook(
            &site,
            "jira:issue_created",
            b.to_string(),
            &[("X-Atlassian-Webhook-Identifier", "wh-b")],
        )
        .await;
    assert_eq!(response.status().as_u16(), 200);

    fake.on_query(
        "GET",
        FAILED,
        &[],
        vec![page(
            &fake,
            vec![
                item("wh-a", "jira:issue_created", &a),
                item("wh-b", "jira:issue_created", &b),
            ],
            Some("c1"),
        )],
    );
    let mut strayed = item("wh-x", "jira:issue_created", &stray);
    strayed["url"] = json!(format!("{BASE_URL}/jira/events/no_such_webhook"));
    fake.on_query(
        "GET",
        FAILED,
        &[("after", "c1")],
        vec![page(
            &fake,
            vec![item("wh-c", "jira:issue_updated", &c), strayed],
            Some("c2"),
        )],
    );
    fake.on_query(
        "GET",
        FAILED,
        &[("after", "c2")],
        vec![page(
            &fake,
            vec![item("wh-d", "jira:issue_created", &d)],
            None,
        )],
    );

    let (status, summary) = reconcile(&app.address, &site.client_key).await;
    assert_eq!(status, 200, "{summary}");
    let counts: Value = ["pages", "listed", "recovered", "duplicates", "skipped"]
        .iter()
        .map(|k| (k.to_string(), summary[*k].clone()))
        .collect::<serde_json::Map<_, _>>()
        .into();
    assert_eq!(
        counts,
        json!({"pages": 3, "listed": 5, "recovered": 3, "duplicates": 1, "skipped": 1}),
        "{summary}"
    );
    fake.assert_all_verified();
    let calls = fake.seen_at(FAILED);
    assert_eq!(calls.len(), 3, "{calls:#?}");
    for call in &calls {
        call.assert_from(&site.client_key);
        assert_eq!(call.method, "GET");
    }
    assert_eq!(calls[0].param("after"), None);
    assert_eq!(calls[1].param("after").as_deref(), Some("c1"));
    assert_eq!(calls[2].param("after").as_deref(), Some("c2"));

    let events = by_webhook_id(&admin, &site).await;
    let ids: Vec<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["wh-a", "wh-b", "wh-c", "wh-d"], "stored once each");
    for (id, event) in &events {
        let (expected_event, body) = match id.as_str() {
            "wh-a" => ("jira:issue_created", &a),
            "wh-b" => ("jira:issue_created", &b),
            "wh-c" => ("jira:issue_updated", &c),
            _ => ("jira:issue_created", &d),
        };
        assert_eq!(event["event"], expected_event, "{id}: {event:#}");
        assert_eq!(&event["payload"], body, "{id}");
        assert_eq!(event["tenant"]["client_key"], site.client_key.as_str());
        if id == "wh-b" {
            assert!(
                event.get("recovered").is_none_or(|r| r == false),
                "the webhook was received, not recovered: {event:#}"
            );
        } else {
            assert_eq!(event["recovered"], true, "{id}: {event:#}");
        }
    }

    // Deliveries carry the flag too.
    let got = receiver.wait_for("/all", 4, Duration::from_secs(15)).await;
    let mut delivered: Vec<(String, bool)> = got
        .iter()
        .map(|r| {
            verify(&secret, r).expect("signed");
            let envelope = r.json();
            (
                envelope["webhook_id"].as_str().unwrap().to_string(),
                envelope["recovered"] == true,
            )
        })
        .collect();
    delivered.sort();
    assert_eq!(
        delivered,
        [
            ("wh-a".to_string(), true),
            ("wh-b".into(), false),
            ("wh-c".into(), true),
            ("wh-d".into(), true)
        ]
    );

    // Again: whatever it reads, nothing new is stored.
    let (status, summary) = reconcile(&app.address, &site.client_key).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["recovered"], 0, "{summary}");
    assert_eq!(by_webhook_id(&admin, &site).await.len(), 4);
    fake.assert_all_verified();

    // Unknown tenant: 404; not a Connect Jira tenant: 409.
    let (status, body) = reconcile(&app.address, "jira:no-such-tenant").await;
    assert_eq!(status, 404, "{body}");
    let wiki = fake.connect_site("confluence");
    install(&app, &wiki).await;
    let (status, body) = reconcile(&app.address, &wiki.client_key).await;
    assert_eq!(status, 409, "{body}");
    let (status, source) = admin
        .post(
            "/sources",
            json!({"type": "jira-admin", "name": "acme", "base_url": fake.url}),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    let (status, body) = reconcile(&app.address, source["id"].as_str().unwrap()).await;
    assert_eq!(status, 409, "{body}");
}

/// Page 2 fails: 502, page 1's events are stored. After a restart, the next
/// run starts from page 1's cursor and does not read page 1 again.
async fn a_run_stopped_mid_way_resumes_from_its_cursor(backend: Backend) {
    let fake = FakeProduct::start().await;
    let app = spawn_app_with(backend, bridging).await;
    let admin = AdminApi::of(&app.address);
    let site = fake.connect_site("jira");
    install(&app, &site).await;
    fake.on_query(
        "GET",
        FAILED,
        &[],
        vec![page(
            &fake,
            vec![
                item(
                    "wh-1",
                    "jira:issue_created",
                    &issue_body("jira:issue_created", "ACME-1"),
                ),
                item(
                    "wh-2",
                    "jira:issue_created",
                    &issue_body("jira:issue_created", "ACME-2"),
                ),
            ],
            Some("p2"),
        )],
    );
    fake.on_query(
        "GET",
        FAILED,
        &[("after", "p2")],
        vec![
            Answer::json(500, json!({"errorMessages": ["Internal server error"]})),
            page(
                &fake,
                vec![item(
                    "wh-3",
                    "jira:issue_created",
                    &issue_body("jira:issue_created", "ACME-3"),
                )],
                None,
            ),
        ],
    );

    let (status, body) = reconcile(&app.address, &site.client_key).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    let ids: Vec<String> = by_webhook_id(&admin, &site)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["wh-1", "wh-2"], "page 1 is kept");

    app.stop().await;
    let (peer, _) = app.restart().await;
    let (status, summary) = reconcile(&peer.address, &site.client_key).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["pages"], 1, "{summary}");
    assert_eq!(summary["recovered"], 1, "{summary}");
    let calls = fake.seen_at(FAILED);
    let afters: Vec<Option<String>> = calls.iter().map(|c| c.param("after")).collect();
    assert_eq!(
        afters,
        [None, Some("p2".to_string()), Some("p2".to_string())],
        "page 1 is read once"
    );
    let peer_admin = AdminApi::of(&peer.address);
    let ids: Vec<String> = by_webhook_id(&peer_admin, &site)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["wh-1", "wh-2", "wh-3"]);
    fake.assert_all_verified();

    // The cursor is the tenant's own: another tenant starts at the top.
    let elsewhere = FakeProduct::start().await;
    let neighbour = elsewhere.connect_site("jira");
    install_on(&peer.address, &app, &neighbour).await;
    elsewhere.on_query(
        "GET",
        FAILED,
        &[],
        vec![page(
            &elsewhere,
            vec![item(
                "wh-n",
                "jira:issue_created",
                &issue_body("jira:issue_created", "NEXT-1"),
            )],
            None,
        )],
    );
    let (status, summary) = reconcile(&peer.address, &neighbour.client_key).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["recovered"], 1, "{summary}");
    let calls = elsewhere.seen_at(FAILED);
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0].param("after"), None);
    calls[0].assert_from(&neighbour.client_key);
    elsewhere.assert_all_verified();
}

/// Installs `site` on the hookrelay at `address` (a restarted process).
async fn install_on(address: &str, app: &TestApp, site: &Site) {
    let path = format!("/{}/lifecycle/installed", site.product);
    let token = install_token(
        KID_A,
        "keys/install-a.pem",
        install_claims(site, &path, now()),
    );
    let response = app
        .client
        .post(format!("{address}{path}"))
        .header("Authorization", format!("JWT {token}"))
        .json(&site.lifecycle_body("installed"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
}

/// With `reconcile_interval` set, the background job finds the failed
/// webhook on its own.
async fn the_timer_reconciles_on_its_own(backend: Backend) {
    let fake = FakeProduct::start().await;
    let app = spawn_app_with(backend, |raw| {
        bridging(raw);
        raw.reconcile_interval = "1s".into();
    })
    .await;
    let admin = AdminApi::of(&app.address);
    let site = fake.connect_site("jira");
    fake.on_query(
        "GET",
        FAILED,
        &[],
        vec![page(
            &fake,
            vec![item(
                "wh-timer",
                "jira:issue_created",
                &issue_body("jira:issue_created", "ACME-9"),
            )],
            None,
        )],
    );
    install(&app, &site).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        let events = listed(&admin, &site).await;
        if let Some(e) = events.first() {
            break e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "nothing recovered in 10 s; the fake saw {:#?}",
            fake.seen()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(event["webhook_id"], "wh-timer", "{event:#}");
    assert_eq!(event["recovered"], true, "{event:#}");
    assert_eq!(listed(&admin, &site).await.len(), 1);
    fake.assert_all_verified();
    assert!(fake.seen_at(FAILED).iter().all(|c| c.verified.is_ok()));
}
