//! hookrelay: the durable front door for Atlassian events and the fan-out behind it.
//!
//! # Layout
//!
//! - [`budget`]: byte budgets, so that memory is bounded in bytes, not counts.
//! - [`config`]: settings from defaults, a TOML file and `HOOKRELAY_*` variables,
//!   validated once into [`config::Config`].
//! - [`telemetry`]: tracing subscriber and the Prometheus recorder.
//! - [`domain`]: the types that flow (event ids, client keys, tenants, the envelope).
//! - [`auth`]: Connect JWTs, the query string hash, signed-install keys, and the
//!   [`auth::Verified`] proof a handler needs before it acts.
//! - [`store`]: tenants, events, the outbox, the in-process queues and the
//!   relay's subscriptions, deliveries and attempts, in
//!   PostgreSQL or SQLite; SQL per backend.
//! - [`broker`]: RabbitMQ (lapin, publisher confirms) or the in-process broker,
//!   behind one interface; topology and connection life.
//! - [`payload`]: what intake accepts as a payload, so every later reader can carry it.
//! - [`product`]: the bridge's client: calls a tenant's Jira or Confluence
//!   API as the app (Connect JWT, Forge system token, or an API token).
//! - [`publisher`]: moves committed events from the outbox to the broker.
//! - [`relay`]: consumes the relay queue and delivers events to subscriptions
//!   over HTTP, signed, with retries.
//! - [`script`]: the sandboxed JavaScript runtime that web triggers and
//!   subscription transforms run in.
//! - [`sources`]: the sources besides Connect (Forge Remote, Jira admin
//!   webhooks): each proves who sent a request and builds the event.
//! - [`triggers`]: web triggers: the request and response objects of a call,
//!   per-trigger auth, and the runner of async scripts.
//! - [`intake`]: the one step every source ends in: store the event with its
//!   outbox row, answer after the commit, hand it to the publisher.
//! - [`forge_app`]: the Forge app that connects a site (`hookrelay forge`).
//! - [`descriptor`]: the app descriptor per product, from `descriptor/`.
//! - [`http`]: routes, handlers and the one place errors become answers.
//! - [`startup`]: builds an [`startup::Application`] from a config and runs it.
//! - [`cli`]: the command line inspector (`hookrelay tail`, `events`, `replay`,
//!   …), a client of a running server's admin API.
//! - [`healthcheck`]: `hookrelay healthcheck`, a container's probe of `/readyz`.
//! - [`bench`]: `hookrelay bench`, which measures a running hookrelay as a Jira site would.
//! - [`dev`]: `hookrelay dev site`, which plays a Jira or Confluence site against a
//!   running hookrelay, and the site simulator it shares with the bench.
//!
//! The binary (`src/main.rs`) only parses the command line and calls in here.

pub mod auth;
pub mod bench;
pub mod broker;
pub mod budget;
pub mod cli;
pub mod config;
pub mod descriptor;
pub mod dev;
pub mod domain;
pub mod feed;
pub mod forge_app;
pub mod healthcheck;
pub mod http;
pub mod intake;
pub mod payload;
pub mod product;
pub mod publisher;
pub mod relay;
pub mod script;
pub mod sources;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod triggers;
pub mod ui;
