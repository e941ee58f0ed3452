//! Consuming: `Broker::consume` hands out what was published to a queue at least
//! once, with manual acknowledgements, on RabbitMQ and on the in-process broker;
//! a RabbitMQ consumer carries on over a lost connection.
//!
//! These tests drive the library's broker directly (no HTTP app): the relay is
//! the consumer, and it is not what is under test here. RabbitMQ tests use an
//! exchange of their own, and a proxy of their own when they cut the network.

use std::sync::Arc;
use std::time::Duration;

use hookrelay::broker::amqp::AmqpBroker;
use hookrelay::broker::local::LocalBroker;
use hookrelay::broker::{Broker, BrokerStatus, ConsumeError, Consumer, Delivery};
use hookrelay::config::{Config, QueueSettings, RawConfig};
use hookrelay::domain::{now_millis, ClientKey, Event, EventId, Product, Source};
use hookrelay::store::Store;
use lapin::options::{
    BasicPublishOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::Value;

use crate::both_backends;
use crate::helpers::{Backend, TestDb, BASE_URL};
use crate::rabbit::{self, amqp_url, amqp_url_via, delete_topology, test_exchange, Proxy};

/// Long enough for anything that should arrive; what should not arrive is
/// waited for with [`QUIET`].
const ARRIVES: Duration = Duration::from_secs(10);
/// Longer than the in-process lease and poll interval below, so that a message
/// that was going to come back would have.
const QUIET: Duration = Duration::from_millis(1500);

/// The configuration a test's broker runs with: RabbitMQ at `amqp` (or the
/// in-process broker), waits short enough for tests.
fn config(db: &TestDb, exchange: &str, amqp: Option<String>) -> Config {
    RawConfig {
        listen: "127.0.0.1:0".into(),
        base_url: BASE_URL.into(),
        database_url: db.url().to_string(),
        database_acquire_timeout: "2s".into(),
        amqp_url: amqp,
        exchange: exchange.to_string(),
        // The in-process lease: a message neither acked nor requeued would be
        // handed out again after this.
        republish_after: "1s".into(),
        publish_timeout: "500ms".into(),
        amqp_connect_timeout: "1s".into(),
        // Should a test fail before it cleans up, its relay queue goes by itself.
        relay_queue: QueueSettings {
            expires: Some("10m".into()),
            ..QueueSettings::default()
        },
        ..RawConfig::default()
    }
    .validate()
    .expect("test config is valid")
}

fn event(name: &str) -> Event {
    let id = EventId::new();
    Event {
        id,
        source: Source::Connect,
        product: Some(Product::Jira),
        event: name.to_string(),
        source_event: None,
        client_key: Some(ClientKey("jira:consuming-test".into())),
        tenant_base_url: Some("https://consuming.atlassian.net".into()),
        webhook_id: None,
        webhook_retry: None,
        webhook_flow: None,
        recovered: false,
        received_at: now_millis(),
        payload: format!(r#"{{"webhookEvent":"{name}","marker":"{id}"}}"#),
    }
}

async fn publish(broker: &Broker, events: &[Event]) {
    for (event, result) in events.iter().zip(broker.publish(events).await) {
        result.unwrap_or_else(|e| panic!("{} not published: {e}", event.id));
    }
}

async fn wait_up(broker: &Broker) {
    let mut status = broker.status();
    tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(BrokerStatus::is_up),
    )
    .await
    .expect("the broker comes up")
    .unwrap();
}

async fn wait_down(broker: &Broker) {
    let mut status = broker.status();
    tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| matches!(s, BrokerStatus::Down(_))),
    )
    .await
    .expect("the broker notices the cut")
    .unwrap();
}

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(ARRIVES, consumer.next())
        .await
        .expect("a message arrives")
        .expect("the consumer is open")
}

async fn assert_nothing_more(consumer: &mut Consumer) {
    if let Ok(got) = tokio::time::timeout(QUIET, consumer.next()).await {
        panic!(
            "nothing more was expected, got {:?}",
            got.map(|d| d.message().clone())
        );
    }
}

/// The delivery is `event`, as published.
fn assert_is(delivery: &Delivery, event: &Event, redelivered: bool) {
    let m = delivery.message();
    assert_eq!(m.event_id, event.id);
    assert_eq!(m.routing_key, event.routing_key());
    assert_eq!(
        m.redelivered, redelivered,
        "redelivered flag of {}",
        event.id
    );
    let body: Value = serde_json::from_str(&m.body).expect("the body is the JSON envelope");
    assert_eq!(body["id"], event.id.to_string());
    assert_eq!(body["event"], event.event);
    assert_eq!(body["payload"]["marker"], event.id.to_string());
}

/// Acknowledged messages leave the queue, a requeued one comes back marked
/// redelivered, so does one dropped unsettled, a rejected one is dead-lettered,
/// and a message hookrelay could not have published is dead-lettered without
/// reaching the caller.
#[tokio::test]
async fn rabbitmq_consumer_acks_requeues_and_rejects() {
    let db = TestDb::new(Backend::Sqlite).await; // named in the config, never opened
    let exchange = test_exchange();
    let config = Arc::new(config(&db, &exchange, Some(amqp_url())));
    let relay = config.relay_queue.name.clone();
    let broker = Broker::Amqp(AmqpBroker::start(config.clone()));
    wait_up(&broker).await;
    let mut consumer = broker.consume(&relay, 10);

    let events = [
        event("jira:issue_created"),
        event("jira:issue_updated"),
        event("comment_created"),
    ];
    publish(&broker, &events).await;
    let mut got = Vec::new();
    for e in &events {
        let d = next(&mut consumer).await;
        assert_is(&d, e, false);
        got.push(d);
    }
    let mut got = got.into_iter();
    got.next().unwrap().ack().await.unwrap();
    got.next().unwrap().ack().await.unwrap();
    got.next().unwrap().requeue().await.unwrap();
    let again = next(&mut consumer).await;
    assert_is(&again, &events[2], true);
    again.ack().await.unwrap();
    assert_nothing_more(&mut consumer).await;

    // A worker that drops a message without settling it gives it back.
    let dropped = event("jira:issue_deleted");
    publish(&broker, std::slice::from_ref(&dropped)).await;
    drop(next(&mut consumer).await);
    let again = next(&mut consumer).await;
    assert_is(&again, &dropped, true);
    again.ack().await.unwrap();

    // Rejected: into `<queue>.dead`, not back to the consumer.
    let rejected = event("jira:worklog_updated");
    publish(&broker, std::slice::from_ref(&rejected)).await;
    let d = next(&mut consumer).await;
    assert_is(&d, &rejected, false);
    d.reject().await.unwrap();
    assert_nothing_more(&mut consumer).await;
    let mut dead = rabbit::Consumer::read(&format!("{relay}.dead")).await;
    let dead_letters = dead.take(1, ARRIVES).await;
    assert_eq!(
        dead_letters[0].message_id.as_deref(),
        Some(rejected.id.to_string().as_str())
    );

    // Someone else's message on the relay's queue: no event id, so never
    // handed out.
    {
        let connection = rabbit::connect().await;
        let channel = connection.create_channel().await.unwrap();
        channel
            .basic_publish(
                "".into(),
                relay.as_str().into(),
                BasicPublishOptions::default(),
                br#"{"not":"from hookrelay"}"#,
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        let _ = connection.close(200, "done".into()).await;
    }
    let foreign = dead.take(1, ARRIVES).await;
    assert_eq!(foreign[0].message_id, None);
    assert_eq!(foreign[0].body["not"], "from hookrelay");
    // The consumer carries on after it.
    let after = event("jira:issue_created");
    publish(&broker, std::slice::from_ref(&after)).await;
    let d = next(&mut consumer).await;
    assert_is(&d, &after, false);
    d.ack().await.unwrap();

    // Closing the broker ends the consumer.
    broker.close().await;
    let end = tokio::time::timeout(ARRIVES, consumer.next())
        .await
        .expect("next returns once the broker is closed");
    assert!(end.is_none());

    dead.close().await;
    delete_topology(&exchange, &[]).await;
}

/// The network is cut while the consumer holds a message: RabbitMQ hands that
/// message out again on the next connection, the consumer resumes there by
/// itself, and new messages flow.
#[tokio::test]
async fn rabbitmq_consumer_resumes_after_the_connection_is_lost() {
    let db = TestDb::new(Backend::Sqlite).await; // named in the config, never opened
    let exchange = test_exchange();
    let proxy = Proxy::start().await;
    let config = Arc::new(config(&db, &exchange, Some(amqp_url_via(&proxy))));
    let broker = Broker::Amqp(AmqpBroker::start(config.clone()));
    wait_up(&broker).await;
    // A prefetch of one: RabbitMQ sends the second message only once it has the
    // first one's ack, so that ack cannot be lost with the connection (acks are
    // not confirmed, and one in flight when the network goes would come back).
    let mut consumer = broker.consume(&config.relay_queue.name, 1);

    let before = [event("jira:issue_created"), event("jira:issue_updated")];
    publish(&broker, &before).await;
    let first = next(&mut consumer).await;
    assert_is(&first, &before[0], false);
    assert!(
        tokio::time::timeout(QUIET, consumer.next()).await.is_err(),
        "no more than the prefetch is handed out"
    );
    first.ack().await.unwrap();
    let held = next(&mut consumer).await;
    assert_is(&held, &before[1], false);

    proxy.cut();
    wait_down(&broker).await;
    proxy.restore();
    wait_up(&broker).await;

    let again = next(&mut consumer).await;
    assert_is(&again, &before[1], true);
    // The copy from the lost connection can no longer be settled.
    let stale = held.ack().await;
    assert!(
        matches!(
            stale,
            Err(ConsumeError::ChannelClosed | ConsumeError::Channel(_))
        ),
        "{stale:?}"
    );
    again.ack().await.unwrap();

    let after = event("jira:issue_deleted");
    publish(&broker, std::slice::from_ref(&after)).await;
    let d = next(&mut consumer).await;
    assert_is(&d, &after, false);
    d.ack().await.unwrap();
    assert_nothing_more(&mut consumer).await;

    broker.close().await;
    delete_topology(&exchange, &[]).await;
}

/// A consumer of a queue that does not exist yet keeps trying, and reads the
/// queue once someone declares it.
#[tokio::test]
async fn rabbitmq_consumer_waits_for_its_queue() {
    let db = TestDb::new(Backend::Sqlite).await; // named in the config, never opened
    let exchange = test_exchange();
    let later = format!("{exchange}.later");
    let config = Arc::new(config(&db, &exchange, Some(amqp_url())));
    let broker = Broker::Amqp(AmqpBroker::start(config.clone()));
    wait_up(&broker).await;
    let mut consumer = broker.consume(&later, 5);
    // Long enough for the consumer to have been refused at least once.
    assert_nothing_more(&mut consumer).await;

    let connection = rabbit::connect().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            later.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            later.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let e = event("jira:issue_created");
    publish(&broker, std::slice::from_ref(&e)).await;
    let d = next(&mut consumer).await;
    assert_is(&d, &e, false);
    d.ack().await.unwrap();

    broker.close().await;
    let _ = channel
        .queue_delete(later.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    delete_topology(&exchange, &[]).await;
}

both_backends!(in_process_consumer_acks_requeues_and_rejects);

/// A store of the test's own, migrated, without a broker; the database lives
/// as long as the first value.
async fn migrated_store(backend: Backend) -> (TestDb, Config, Store) {
    let db = TestDb::new(backend).await;
    let config = config(&db, &test_exchange(), None);
    let store = Store::connect(&config).await.unwrap();
    store.migrate().await.unwrap();
    (db, config, store)
}

/// The in-process broker behind the same interface: reject removes the message
/// (there are no dead letters in-process), requeue hands it out again, and
/// neither comes back after the lease. A queue never declared yields nothing,
/// and closing the broker ends every consumer.
async fn in_process_consumer_acks_requeues_and_rejects(backend: Backend) {
    let (_db, config, store) = migrated_store(backend).await;
    let broker = Broker::Local(Arc::new(LocalBroker::new(store.clone(), &config)));
    let mut consumer = broker.consume(&config.relay_queue.name, 10);
    let mut nowhere = broker.consume("never-declared", 10);

    // In-process queues refer to stored events, as intake leaves them.
    let events = [event("jira:issue_created"), event("jira:issue_updated")];
    for e in &events {
        store.insert_event(e.clone(), now_millis()).await.unwrap();
    }
    publish(&broker, &events).await;

    let rejected = next(&mut consumer).await;
    assert_is(&rejected, &events[0], false);
    let requeued = next(&mut consumer).await;
    assert_is(&requeued, &events[1], false);
    rejected.reject().await.unwrap();
    requeued.requeue().await.unwrap();
    let again = next(&mut consumer).await;
    assert_is(&again, &events[1], true);
    again.ack().await.unwrap();
    assert_nothing_more(&mut consumer).await;

    assert!(
        tokio::time::timeout(QUIET, nowhere.next()).await.is_err(),
        "an undeclared queue yields nothing (and does not end) until the broker closes"
    );
    broker.close().await;
    for consumer in [&mut consumer, &mut nowhere] {
        let end = tokio::time::timeout(ARRIVES, consumer.next())
            .await
            .expect("next returns once the broker is closed");
        assert!(end.is_none());
    }
    store.close().await;
}

both_backends!(deliveries_taken_at_creation_are_claimed_with_their_events);

/// What the relay relies on to send a new delivery without a claim: one
/// created taken is claimed for the lease with its first attempt counted,
/// and comes back with its event; one not taken is due at once. Created
/// again (a redelivered message), neither is duplicated nor taken again.
async fn deliveries_taken_at_creation_are_claimed_with_their_events(backend: Backend) {
    use hookrelay::domain::{DeliveryState, Subscription};
    use hookrelay::store::{ClaimLimits, DeliveryFilter};
    use std::collections::HashSet;

    let (_db, _, store) = migrated_store(backend).await;
    let now = now_millis();
    let subscription = |url: &str| {
        let secret = hookrelay::relay::signing::generate_secret().into();
        Subscription::new(url.into(), vec!["*".into()], secret, 8, now)
    };
    let (taken_sub, due_sub) = (
        subscription("https://a.test/"),
        subscription("https://b.test/"),
    );
    for sub in [&taken_sub, &due_sub] {
        store.insert_subscription(sub).await.unwrap();
    }
    let event = event("jira:issue_created");
    store.insert_event(event.clone(), now).await.unwrap();
    let subs = [taken_sub.id, due_sub.id];
    let fan = [(event.id, &subs[..])];
    let take: HashSet<_> = [(event.id, taken_sub.id)].into();
    let lease = Duration::from_secs(60);

    let taken = store.create_deliveries(&fan, &take, lease).await.unwrap();
    assert_eq!(taken.deliveries.len(), 1);
    let (taken_id, sub, taken_event) = &taken.deliveries[0];
    assert_eq!(*sub, taken_sub.id);
    assert_eq!(taken_event.id, event.id);
    assert_eq!(taken_event.payload, event.payload);

    let of_event = DeliveryFilter {
        event: Some(event.id),
        limit: 10,
        ..Default::default()
    };
    let all = store.deliveries(&of_event).await.unwrap();
    assert_eq!(all.len(), 2);
    let row = all.iter().find(|d| d.id == *taken_id).unwrap();
    assert_eq!(row.state, DeliveryState::Pending);
    assert_eq!(row.attempts, 1, "the first attempt is counted");
    assert!(
        row.next_attempt_at >= now + chrono::Duration::seconds(59),
        "leased"
    );
    let other = all
        .iter()
        .find(|d| d.subscription_id == due_sub.id)
        .unwrap();
    assert_eq!(other.attempts, 0);

    // A claim finds only the one not taken.
    let claimed = store
        .claim_deliveries(&ClaimLimits {
            rows: 10,
            bytes: u64::MAX,
            lease,
            skip: &[],
            busy: &[],
            per_subscription: 8,
        })
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![other.id]
    );

    // The same message again: nothing new, nothing taken.
    let again = store.create_deliveries(&fan, &take, lease).await.unwrap();
    assert!(again.deliveries.is_empty());
    let after = store.deliveries(&of_event).await.unwrap();
    assert_eq!(after.len(), 2);
    store.close().await;
}
