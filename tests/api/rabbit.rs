//! RabbitMQ as the tests see it: names of their own per test, a consumer written
//! with lapin the way a downstream service would write one, and a TCP proxy the
//! test controls, placed between hookrelay and the shared broker so that a test
//! can cut the network without disturbing anyone else.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

pub fn amqp_url() -> String {
    std::env::var("HOOKRELAY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The broker's address, for the proxy to forward to.
fn amqp_addr() -> SocketAddr {
    let url = url::Url::parse(&amqp_url()).unwrap();
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port().unwrap_or(5672);
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .unwrap()
        .next()
        .unwrap()
}

/// `amqp_url()` with its host and port replaced by the proxy's.
pub fn amqp_url_via(proxy: &Proxy) -> String {
    let mut url = url::Url::parse(&amqp_url()).unwrap();
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.port)).unwrap();
    url.to_string()
}

/// An exchange name no other test or earlier run uses.
pub fn test_exchange() -> String {
    format!("hookrelay-test.{}", uuid::Uuid::now_v7().simple())
}

pub async fn connect() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("the test reaches RabbitMQ (scripts/test.sh starts it)")
}

/// Deletes what a test's hookrelay declared: the exchange, its dead-letter
/// exchange, and the named queues with their `.dead` queues.
pub async fn delete_topology(exchange: &str, queues: &[&str]) {
    let connection = connect().await;
    let channel = connection.create_channel().await.unwrap();
    let relay = format!("{exchange}.relay");
    for queue in queues.iter().copied().chain([relay.as_str()]) {
        for name in [queue.to_string(), format!("{queue}.dead")] {
            let _ = channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    for name in [exchange.to_string(), format!("{exchange}.dead")] {
        let _ = channel
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
}

/// One message as a consumer saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    pub delivery_mode: Option<u8>,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
    pub raw: String,
}

/// A downstream service: its own queue bound to the exchange, or one that
/// hookrelay declared, read with manual acknowledgements.
pub struct Consumer {
    messages: mpsc::Receiver<Received>,
    connection: Connection,
}

impl Consumer {
    /// Declares the exchange (as hookrelay does, so the order of start-up does
    /// not matter), a private queue, and binds it with `patterns`.
    pub async fn bind(exchange: &str, patterns: &[&str]) -> Self {
        let connection = connect().await;
        let channel = connection.create_channel().await.unwrap();
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        for pattern in patterns {
            channel
                .queue_bind(
                    queue.name().clone(),
                    exchange.into(),
                    (*pattern).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        Self::consume(connection, channel, queue.name().as_str()).await
    }

    /// Reads a queue that already exists (one hookrelay declared).
    pub async fn read(queue: &str) -> Self {
        let connection = connect().await;
        let channel = connection.create_channel().await.unwrap();
        Self::consume(connection, channel, queue).await
    }

    async fn consume(connection: Connection, channel: lapin::Channel, queue: &str) -> Self {
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (tx, messages) = mpsc::channel(100_000);
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let raw = String::from_utf8(delivery.data.clone()).unwrap();
                let properties = &delivery.properties;
                let headers = properties
                    .headers()
                    .as_ref()
                    .map(|table| {
                        table
                            .inner()
                            .iter()
                            .map(|(k, v)| (k.to_string(), value_text(v)))
                            .collect()
                    })
                    .unwrap_or_default();
                let received = Received {
                    routing_key: delivery.routing_key.to_string(),
                    message_id: properties.message_id().as_ref().map(|s| s.to_string()),
                    content_type: properties.content_type().as_ref().map(|s| s.to_string()),
                    delivery_mode: *properties.delivery_mode(),
                    headers,
                    body: serde_json::from_str(&raw).expect("message bodies are JSON"),
                    raw,
                };
                delivery.ack(BasicAckOptions::default()).await.unwrap();
                if tx.send(received).await.is_err() {
                    break;
                }
            }
        });
        Consumer {
            messages,
            connection,
        }
    }

    /// Waits until `n` messages have arrived (failing after `timeout`).
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Vec<Received> {
        let mut got = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + timeout;
        while got.len() < n {
            match tokio::time::timeout_at(deadline, self.messages.recv()).await {
                Ok(Some(m)) => got.push(m),
                _ => panic!(
                    "{} of {n} messages arrived within {timeout:?}: {:?}",
                    got.len(),
                    got.iter().map(|m| &m.message_id).collect::<Vec<_>>()
                ),
            }
        }
        got
    }

    /// Waits until every id in `ids` has arrived; returns everything received,
    /// duplicates included.
    pub async fn take_ids(&mut self, ids: &[String], timeout: Duration) -> Vec<Received> {
        let mut got: Vec<Received> = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut missing: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        while !missing.is_empty() {
            match tokio::time::timeout_at(deadline, self.messages.recv()).await {
                Ok(Some(m)) => {
                    if let Some(id) = m.message_id.as_deref() {
                        missing.remove(id);
                    }
                    got.push(m);
                }
                _ => panic!(
                    "{} of {} events never arrived within {timeout:?}: {:?}",
                    missing.len(),
                    ids.len(),
                    missing.iter().take(10).collect::<Vec<_>>()
                ),
            }
        }
        got
    }

    /// Whatever else arrives within `window`.
    pub async fn rest(&mut self, window: Duration) -> Vec<Received> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.messages.recv()).await {
            got.push(m);
        }
        got
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

fn value_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}

/// How the proxy treats traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    /// Connections stay open but every byte is dropped, both ways: a network
    /// partition as a peer sees it (no reset, no answer).
    Blackhole,
    /// Every connection is closed and new ones are closed at once.
    Cut,
}

/// A TCP proxy in front of RabbitMQ, owned by one test.
pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    pub async fn start() -> Self {
        let target = amqp_addr();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = watch::Sender::new(Mode::Pass);
        let modes = mode.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *modes.borrow() != Mode::Pass {
                    drop(client);
                    continue;
                }
                tokio::spawn(relay(client, target, modes.subscribe()));
            }
        });
        Proxy { port, mode }
    }

    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    pub fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }

    /// Back to normal; connections from before are closed (their streams are
    /// broken), new ones pass.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Pass);
    }
}

async fn relay(mut client: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_upstream = vec![0u8; 16 * 1024];
    loop {
        let passing = *mode.borrow() == Mode::Pass;
        tokio::select! {
            n = client.read(&mut from_client) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) if passing => if upstream.write_all(&from_client[..n]).await.is_err() { return },
                Ok(_) => {}
            },
            n = upstream.read(&mut from_upstream) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) if passing => if client.write_all(&from_upstream[..n]).await.is_err() { return },
                Ok(_) => {}
            },
            changed = mode.changed() => {
                // Only a partition keeps the connection; anything else ends it.
                if changed.is_err() || *mode.borrow() != Mode::Blackhole {
                    return;
                }
            }
        }
    }
}
