//! Publishing: every stored event reaches the broker, confirmed, exactly as
//! the README's "Broker" section says, and nothing acknowledged is lost
//! when the broker goes away, the exchange is deleted, or a process is killed.
//!
//! RabbitMQ tests use an exchange and queues of their own, and a proxy of their
//! own when they break the network; the shared broker is never disturbed.

use std::collections::HashMap;
use std::time::Duration;

use hookrelay::broker::Broker;
use hookrelay::config::{QueueKind, QueueSettings, RawConfig};
use serde_json::Value;

use crate::binary::Served;
use crate::both_backends;
use crate::helpers::*;
use crate::rabbit::*;

/// hookrelay on RabbitMQ at `url`, publishing to `exchange`, with waits short
/// enough for tests.
pub fn on_rabbitmq(raw: &mut RawConfig, exchange: &str, url: String) {
    raw.amqp_url = Some(url);
    raw.exchange = exchange.to_string();
    raw.republish_after = "3s".into();
    raw.publish_timeout = "1s".into();
    raw.amqp_connect_timeout = "1s".into();
    // Should a test fail before it cleans up, its relay queue goes by itself.
    raw.relay_queue.expires = Some("10m".into());
}

/// The settings above as `serve` reads them from its environment.
pub fn serve_env(db_url: &str, exchange: &str, amqp: &str) -> Vec<(&'static str, String)> {
    vec![
        ("HOOKRELAY_LISTEN", "127.0.0.1:0".into()),
        ("HOOKRELAY_BASE_URL", BASE_URL.into()),
        ("HOOKRELAY_DATABASE_URL", db_url.into()),
        ("HOOKRELAY_AMQP_URL", amqp.into()),
        ("HOOKRELAY_EXCHANGE", exchange.into()),
        ("HOOKRELAY_REPUBLISH_AFTER", "2s".into()),
        ("HOOKRELAY_PUBLISH_TIMEOUT", "1s".into()),
        ("HOOKRELAY_AMQP_CONNECT_TIMEOUT", "1s".into()),
        ("HOOKRELAY_RELAY_QUEUE__EXPIRES", "10m".into()),
        ("HOOKRELAY_LOG_FORMAT", "json".into()),
    ]
}

/// Starts `hookrelay serve` and returns it with its address once it is ready
/// (store and broker up).
pub async fn serve(env: &[(&'static str, String)]) -> (Served, String) {
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut served = Served::start(&envs);
    let line = tokio::task::block_in_place(|| {
        served.wait_for(Duration::from_secs(60), |l| {
            l.contains("hookrelay is serving")
        })
    });
    let logged: Value = serde_json::from_str(&line).unwrap();
    let address = format!("http://127.0.0.1:{}", logged["fields"]["port"]);
    wait_for_broker(&address, "up").await;
    (served, address)
}

pub async fn installed_then_stopped() -> (TestApp, Site) {
    installed_then_stopped_on(Backend::Postgres).await
}

/// A database with a Jira site installed, through an in-process app
/// that has stopped again, so that only the `serve` processes a test starts
/// publish from it.
pub async fn installed_then_stopped_on(backend: Backend) -> (TestApp, Site) {
    let app = spawn_app(backend).await;
    let site = Site::new("jira");
    app.install(&site).await;
    app.stop().await;
    (app, site)
}

pub fn sigkill(served: &mut Served) {
    served.signal("KILL");
    tokio::task::block_in_place(|| served.wait_exit(Duration::from_secs(10)));
}

/// Polls `/readyz` until the broker reports `status`; returns the body.
pub async fn wait_for_broker(address: &str, status: &str) -> Value {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = client.get(format!("{address}/readyz")).send().await {
            let code = response.status();
            let body: Value = response.json().await.unwrap();
            if body["broker"]["status"] == status {
                assert_eq!(code.is_success(), status == "up", "{body}");
                return body;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker never became {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a webhook and returns the event id of its 200 answer.
pub async fn accepted(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_string()
}

async fn wait_outbox_empty(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.store.outbox_len().await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox never drained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count_ids(received: &[Received]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for m in received {
        *counts
            .entry(m.message_id.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    counts
}

both_backends!(rabbitmq_consumers_get_every_event_once);

async fn rabbitmq_consumers_get_every_event_once(backend: Backend) {
    let exchange = test_exchange();
    let jira_only = format!("{exchange}.jira-only");
    let app = spawn_app_with(backend, |raw| {
        on_rabbitmq(raw, &exchange, amqp_url());
        raw.queues = vec![QueueSettings {
            name: jira_only.clone(),
            bindings: vec!["jira.*".into()],
            kind: QueueKind::Classic,
            max_length: Some(1000),
            message_ttl: Some("1h".into()),
            expires: Some("10m".into()),
        }];
    })
    .await;
    wait_for_broker(&app.address, "up").await;
    // A downstream service with its own queue, bound after hookrelay started.
    let mut all = Consumer::bind(&exchange, &["#"]).await;

    let jira = Site::new("jira");
    let confluence = Site::new("confluence");
    app.install(&jira).await;
    app.install(&confluence).await;
    let cases = [
        (
            &jira,
            "jira:issue_created",
            "payloads/jira_issue_created.json",
            "jira.issue_created",
        ),
        (
            &jira,
            "jira:issue_updated",
            "payloads/jira_issue_updated.json",
            "jira.issue_updated",
        ),
        (
            &jira,
            "comment_created",
            "payloads/jira_comment_created.json",
            "jira.comment_created",
        ),
        (
            &confluence,
            "page_updated",
            "payloads/confluence_page_updated.json",
            "confluence.page_updated",
        ),
    ];
    let mut sent = Vec::new();
    for (site, event, file, key) in cases {
        let webhook_id = uuid::Uuid::now_v7().to_string();
        let payload = fixture(file);
        let response = app
            .webhook(
                site,
                event,
                payload.clone(),
                &[("X-Atlassian-Webhook-Identifier", &webhook_id)],
            )
            .await;
        sent.push((
            accepted(response).await,
            site,
            event,
            payload,
            key,
            webhook_id,
        ));
    }
    // A Jira retry of the first webhook is stored once, so published once.
    let (first_id, first_site, first_event, first_payload, _, first_webhook) = &sent[0];
    let retry = app
        .webhook(
            first_site,
            first_event,
            first_payload.clone(),
            &[("X-Atlassian-Webhook-Identifier", first_webhook)],
        )
        .await;
    assert_eq!(&accepted(retry).await, first_id);

    let mut received = all.take(sent.len(), Duration::from_secs(20)).await;
    received.extend(all.rest(Duration::from_secs(1)).await);
    assert_eq!(received.len(), sent.len(), "each event exactly once");
    for (id, site, event, payload, key, webhook_id) in &sent {
        let m = received
            .iter()
            .find(|m| m.message_id.as_ref() == Some(id))
            .unwrap_or_else(|| panic!("{event} {id} not received"));
        assert_eq!(&m.routing_key, key);
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        assert_eq!(m.delivery_mode, Some(2), "persistent");
        assert_eq!(m.headers["event"], *event);
        assert_eq!(m.headers["tenant"], site.client_key);
        let body = &m.body;
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["source"], "connect");
        assert_eq!(body["product"], site.product);
        assert_eq!(body["event"], *event);
        assert_eq!(body["tenant"]["client_key"], site.client_key);
        assert_eq!(body["tenant"]["base_url"], site.base_url);
        assert_eq!(body["webhook_id"], webhook_id.as_str());
        assert!(body["received_at"].as_str().unwrap().ends_with('Z'));
        // The payload is the body exactly as Jira or Confluence sent it.
        assert!(m.raw.contains(payload.trim()), "payload not verbatim");
    }

    // A queue from `[[queues]]`, declared by hookrelay: only what its binding says.
    let mut jira_queue = Consumer::read(&jira_only).await;
    let jira_messages = jira_queue.take(3, Duration::from_secs(10)).await;
    assert!(jira_messages
        .iter()
        .all(|m| m.routing_key.starts_with("jira.")));
    assert!(jira_queue.rest(Duration::from_millis(300)).await.is_empty());

    wait_outbox_empty(&app).await;
    all.close().await;
    jira_queue.close().await;
    delete_topology(&exchange, &[&jira_only]).await;
}

/// The broker is unreachable at start and again later: hookrelay serves intake
/// throughout, `/readyz` says what is wrong, and every event acknowledged in the
/// meantime is published when the broker returns.
#[tokio::test]
async fn events_accepted_while_the_broker_is_cut_off_arrive_afterwards() {
    let exchange = test_exchange();
    let proxy = Proxy::start().await;
    proxy.cut();
    let app = spawn_app_with(Backend::Postgres, |raw| {
        on_rabbitmq(raw, &exchange, amqp_url_via(&proxy))
    })
    .await;
    let body = wait_for_broker(&app.address, "down").await;
    assert_eq!(body["broker"]["kind"], "rabbitmq");
    assert!(body["broker"]["reason"].is_string(), "{body}");
    let mut consumer = Consumer::bind(&exchange, &["#"]).await;
    let site = Site::new("jira");
    app.install(&site).await;

    let mut before_start = Vec::new();
    for _ in 0..3 {
        before_start
            .push(accepted(app.webhook(&site, "jira:issue_created", "{}", &[]).await).await);
    }
    proxy.restore();
    wait_for_broker(&app.address, "up").await;
    consumer
        .take_ids(&before_start, Duration::from_secs(20))
        .await;

    // Mid-stream: some events go through, then the network is cut.
    let mut live = Vec::new();
    for _ in 0..5 {
        live.push(accepted(app.webhook(&site, "jira:issue_updated", "{}", &[]).await).await);
    }
    consumer.take_ids(&live, Duration::from_secs(20)).await;
    // Confirmed too (a consumer can see a message before its confirm is back).
    wait_outbox_empty(&app).await;
    proxy.cut();
    wait_for_broker(&app.address, "down").await;
    let mut during = Vec::new();
    for _ in 0..10 {
        during.push(accepted(app.webhook(&site, "jira:issue_deleted", "{}", &[]).await).await);
    }
    assert!(app.store.outbox_len().await.unwrap() >= 10);
    let early = consumer.rest(Duration::from_millis(300)).await;
    assert!(early.is_empty(), "nothing can pass a cut network");

    proxy.restore();
    wait_for_broker(&app.address, "up").await;
    let received = consumer.take_ids(&during, Duration::from_secs(30)).await;
    assert!(
        received
            .iter()
            .all(|m| m.routing_key == "jira.issue_deleted"),
        "{:?}",
        received
            .iter()
            .map(|m| (&m.routing_key, &m.message_id))
            .collect::<Vec<_>>()
    );
    wait_outbox_empty(&app).await;
    consumer.close().await;
    delete_topology(&exchange, &[]).await;
}

/// Someone deletes the exchange while hookrelay runs: the next publish fails on
/// the channel, hookrelay reconnects, declares its topology again and publishes.
#[tokio::test]
async fn a_deleted_exchange_is_declared_again() {
    let exchange = test_exchange();
    let queue = format!("{exchange}.all");
    let app = spawn_app_with(Backend::Postgres, |raw| {
        on_rabbitmq(raw, &exchange, amqp_url());
        raw.queues = vec![QueueSettings {
            name: queue.clone(),
            bindings: vec!["#".into()],
            expires: Some("10m".into()),
            ..QueueSettings::default()
        }];
    })
    .await;
    wait_for_broker(&app.address, "up").await;
    let mut consumer = Consumer::read(&queue).await;
    let site = Site::new("jira");
    app.install(&site).await;
    let first = accepted(app.webhook(&site, "jira:issue_created", "{}", &[]).await).await;
    consumer.take_ids(&[first], Duration::from_secs(10)).await;

    delete_topology_exchange_only(&exchange).await;
    let second = accepted(app.webhook(&site, "jira:issue_updated", "{}", &[]).await).await;
    consumer.take_ids(&[second], Duration::from_secs(20)).await;
    consumer.close().await;
    delete_topology(&exchange, &[&queue]).await;
}

async fn delete_topology_exchange_only(exchange: &str) {
    let connection = connect().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_delete(exchange.into(), Default::default())
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
}

/// The relay's queue deleted while another queue is still bound to the
/// exchange: every event still reaches the relay queue. Its copy comes back
/// unroutable, the event stays in the outbox with that reason, the topology is
/// declared again, and the event is published again; nothing is counted as
/// published before the relay queue holds it.
#[tokio::test]
async fn a_deleted_relay_queue_is_declared_again_and_loses_nothing() {
    let exchange = test_exchange();
    let all = format!("{exchange}.all");
    let relay = format!("{exchange}.relay");
    let app = spawn_app_with(Backend::Postgres, |raw| {
        on_rabbitmq(raw, &exchange, amqp_url());
        // The test reads the relay queue itself.
        raw.relay_enabled = false;
        raw.queues = vec![QueueSettings {
            name: all.clone(),
            bindings: vec!["#".into()],
            expires: Some("10m".into()),
            ..QueueSettings::default()
        }];
    })
    .await;
    wait_for_broker(&app.address, "up").await;
    {
        let connection = connect().await;
        let channel = connection.create_channel().await.unwrap();
        channel
            .queue_delete(relay.as_str().into(), Default::default())
            .await
            .unwrap();
        let _ = connection.close(200, "done".into()).await;
    }
    let site = Site::new("jira");
    app.install(&site).await;
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(accepted(app.webhook(&site, "jira:issue_created", "{}", &[]).await).await);
    }

    let mut db = app.db.connect_pg().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let reason = loop {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT last_error FROM outbox WHERE event_id = $1::uuid")
                .bind(&ids[0])
                .fetch_optional(&mut db)
                .await
                .unwrap();
        match row {
            Some((Some(reason),)) => break Some(reason),
            Some((None,)) => {}
            // Already published again, after the queue was declared again.
            None => break None,
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed publish recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if let Some(reason) = reason {
        assert!(reason.contains("unroutable"), "{reason}");
    }
    wait_outbox_empty(&app).await;

    let mut relayed = Consumer::read(&relay).await;
    relayed.take_ids(&ids, Duration::from_secs(20)).await;
    let mut downstream = Consumer::read(&all).await;
    downstream.take_ids(&ids, Duration::from_secs(20)).await;
    relayed.close().await;
    downstream.close().await;
    delete_topology(&exchange, &[&all]).await;
}

/// `serve` is killed with SIGKILL after the commit and before the broker's
/// confirm (the proxy swallows everything, so no confirm can come). A new
/// process publishes what the dead one had claimed, once its claims expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_commit_and_confirm_loses_nothing() {
    let exchange = test_exchange();
    let (app, site) = installed_then_stopped().await;

    let proxy = Proxy::start().await;
    let mut consumer = Consumer::bind(&exchange, &["#"]).await;
    let env = serve_env(app.db.url(), &exchange, &amqp_url_via(&proxy));
    let (mut first, address) = serve(&env).await;

    proxy.blackhole();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(accepted(app.webhook_to(&address, &site, "jira:issue_created").await).await);
    }
    sigkill(&mut first);
    assert!(
        consumer.rest(Duration::from_millis(300)).await.is_empty(),
        "nothing was confirmed before the kill"
    );
    assert_eq!(app.store.outbox_len().await.unwrap(), 5);

    proxy.restore();
    let (_second, _) = serve(&env).await;
    consumer.take_ids(&ids, Duration::from_secs(30)).await;
    consumer.close().await;
    delete_topology(&exchange, &[]).await;
}

/// Two `serve` processes on one database and one broker publish each event once;
/// one of them is killed mid-stream and nothing it acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_publish_each_event_once_and_survive_a_kill() {
    let exchange = test_exchange();
    let (app, site) = installed_then_stopped().await;

    let mut consumer = Consumer::bind(&exchange, &["#"]).await;
    let env = serve_env(app.db.url(), &exchange, &amqp_url());
    let (mut a, address_a) = serve(&env).await;
    let (_b, address_b) = serve(&env).await;

    let mut ids = Vec::new();
    for i in 0..40 {
        let address = if i % 2 == 0 { &address_a } else { &address_b };
        ids.push(accepted(app.webhook_to(address, &site, "jira:issue_created").await).await);
    }
    let mut received = consumer.take_ids(&ids, Duration::from_secs(20)).await;
    // Longer than a claim: a second publish of anything would show by now.
    received.extend(consumer.rest(Duration::from_secs(3)).await);
    let counts = count_ids(&received);
    assert!(
        counts.values().all(|&n| n == 1),
        "published more than once: {:?}",
        counts.iter().filter(|(_, &n)| n > 1).collect::<Vec<_>>()
    );
    assert_eq!(counts.len(), ids.len());

    // Mid-stream, A dies; the requests it answered 200 must all be published.
    let mut acknowledged = Vec::new();
    for i in 0..40 {
        if i == 20 {
            sigkill(&mut a);
        }
        let address = if i % 2 == 0 && i < 20 {
            &address_a
        } else {
            &address_b
        };
        acknowledged
            .push(accepted(app.webhook_to(address, &site, "jira:issue_updated").await).await);
    }
    consumer
        .take_ids(&acknowledged, Duration::from_secs(30))
        .await;
    consumer.close().await;
    delete_topology(&exchange, &[]).await;
}

both_backends!(in_process_broker_delivers_at_least_once_across_a_restart);

/// The embedded default: no RabbitMQ. Events go from the outbox into durable
/// in-process queues; what a consumer did not acknowledge before the process
/// stopped is handed out again after the restart.
async fn in_process_broker_delivers_at_least_once_across_a_restart(backend: Backend) {
    let app = spawn_app_with(backend, |raw| {
        raw.republish_after = "1s".into();
        raw.publish_timeout = "500ms".into();
        // This test reads the relay's queue itself.
        raw.relay_enabled = false;
    })
    .await;
    let ready = wait_for_broker(&app.address, "up").await;
    assert_eq!(ready["broker"]["kind"], "in-process");
    let Broker::Local(broker) = &*app.broker else {
        panic!("no AMQP URL, so the in-process broker")
    };
    broker.declare("downstream", &["jira.*".into()]);
    let mut consumer = broker.consume("downstream", 10, usize::MAX).unwrap();

    let jira = Site::new("jira");
    let confluence = Site::new("confluence");
    app.install(&jira).await;
    app.install(&confluence).await;
    let mut jira_ids = Vec::new();
    for _ in 0..3 {
        jira_ids.push(
            accepted(
                app.webhook(
                    &jira,
                    "jira:issue_created",
                    fixture("payloads/jira_issue_created.json"),
                    &[],
                )
                .await,
            )
            .await,
        );
    }
    let page = accepted(
        app.webhook(
            &confluence,
            "page_updated",
            fixture("payloads/confluence_page_updated.json"),
            &[],
        )
        .await,
    )
    .await;

    let mut deliveries = Vec::new();
    for _ in 0..3 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("delivered")
            .unwrap();
        deliveries.push(delivery);
    }
    let got: Vec<String> = deliveries
        .iter()
        .map(|d| d.message.event_id.to_string())
        .collect();
    assert_eq!(
        got, jira_ids,
        "the jira.* binding gets the Jira events, in order"
    );
    for d in &deliveries {
        assert_eq!(d.message.routing_key, "jira.issue_created");
        assert!(!d.message.redelivered);
        let body: Value = serde_json::from_str(&d.message.body).unwrap();
        assert_eq!(body["id"], d.message.event_id.to_string());
        assert_eq!(body["tenant"]["client_key"], jira.client_key);
        assert_eq!(body["payload"]["webhookEvent"], "jira:issue_created");
    }
    // The relay's queue is bound to everything.
    let mut relay = broker
        .consume(&app.config.relay_queue.name, 100, usize::MAX)
        .unwrap();
    let mut relayed = Vec::new();
    for _ in 0..4 {
        let d = tokio::time::timeout(Duration::from_secs(10), relay.next())
            .await
            .expect("relayed")
            .unwrap();
        relayed.push(d.message.event_id.to_string());
    }
    assert!(relayed.contains(&page));

    // One acknowledged; two still held when the process stops.
    let mut deliveries = deliveries.into_iter();
    deliveries.next().unwrap().ack().await.unwrap();
    let held: Vec<String> = jira_ids[1..].to_vec();
    drop(deliveries);
    drop(consumer);
    app.stop().await;

    let (peer, broker) = app.restart().await;
    let Broker::Local(broker) = &*broker else {
        panic!("in-process broker")
    };
    broker.declare("downstream", &["jira.*".into()]);
    let mut consumer = broker.consume("downstream", 10, usize::MAX).unwrap();
    let mut again = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("redelivered after the restart")
            .unwrap();
        assert!(d.message.redelivered);
        again.push(d.message.event_id.to_string());
        d.ack().await.unwrap();
    }
    assert_eq!(again, held);
    let newer = accepted(
        app.webhook_to(&peer.address, &jira, "jira:issue_updated")
            .await,
    )
    .await;
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("new events still flow")
        .unwrap();
    assert_eq!(d.message.event_id.to_string(), newer);
    d.ack().await.unwrap();
    // Nothing acknowledged comes back.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), consumer.next())
            .await
            .is_err(),
        "an acknowledged message was handed out again"
    );
}

/// The broker link goes silent (a partition: packets vanish, no reset). The
/// probe reports the broker down in `/readyz` within seconds, events accepted
/// meanwhile wait in the outbox, and once the link is back every one of them
/// reaches a consumer.
#[tokio::test]
async fn a_black_holed_link_is_reported_down_within_seconds_and_recovers() {
    let exchange = test_exchange();
    let proxy = Proxy::start().await;
    let app = spawn_app_with(Backend::Postgres, |raw| {
        on_rabbitmq(raw, &exchange, amqp_url_via(&proxy));
        raw.amqp_heartbeat = "2s".into();
    })
    .await;
    wait_for_broker(&app.address, "up").await;
    let mut consumer = Consumer::bind(&exchange, &["#"]).await;
    let site = Site::new("jira");
    app.install(&site).await;
    let first = accepted(app.webhook(&site, "jira:issue_created", "{}", &[]).await).await;
    consumer.take_ids(&[first], Duration::from_secs(10)).await;

    proxy.blackhole();
    let silent = tokio::time::Instant::now();
    let down = wait_for_broker(&app.address, "down").await;
    let noticed = silent.elapsed();
    // Before the probe, a silent link was noticed after 10-12 s.
    assert!(
        noticed < Duration::from_secs(6),
        "noticed after {noticed:?}: {down}"
    );

    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(accepted(app.webhook(&site, "jira:issue_created", "{}", &[]).await).await);
    }
    proxy.restore();
    wait_for_broker(&app.address, "up").await;
    consumer.take_ids(&ids, Duration::from_secs(20)).await;
    wait_outbox_empty(&app).await;
    consumer.close().await;
    delete_topology(&exchange, &[]).await;
}
