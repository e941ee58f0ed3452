//! Wiring: builds the store, the broker, the publisher, the relay, the
//! authenticator and the HTTP server from a [`Config`], and runs them until a
//! shutdown token fires. [`Worker`] is the relay alone (`hookrelay worker`).
//!
//! `main` and the tests build the very same [`Application`]; the tests bind port 0
//! and ask [`Application::port`] where it landed.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpServer};
use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::auth::tenants::TenantCache;
use crate::auth::Authenticator;
use crate::broker::amqp::AmqpBroker;
use crate::broker::local::LocalBroker;
use crate::broker::Broker;
use crate::config::Config;
use crate::http::{self, AppState};
use crate::publisher::{self, PublisherTask};
use crate::relay::{self, Relay};
use crate::store::Store;
use crate::telemetry;

/// Resolves when the process gets SIGTERM (never, off Unix or when the
/// handler cannot be set up). With Ctrl-C, what every long-running command
/// stops on.
pub async fn sigterm() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        term.recv().await;
        return;
    }
    std::future::pending::<()>().await
}

pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    store: Store,
    broker: Arc<Broker>,
    publisher: PublisherTask,
    /// Closed when shutdown starts, so that live tails end and let the drain finish.
    feed: crate::feed::Feed,
    relay: Option<Relay>,
    /// Reconciliation of failed webhooks on a timer, when it is on.
    reconciler: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    /// Refreshes the gauges read from the store; stops when dropped.
    sampler: tokio_util::sync::DropGuard,
    shutdown_timeout: Duration,
}

impl Application {
    /// Connects to the store, applies migrations and binds the listener. The server
    /// does not serve until [`Application::run_until_stopped`] is awaited.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // First, so that what is recorded while starting (script capacity, the
        // broker's state) is kept.
        let metrics = telemetry::metrics_handle();
        let config = Arc::new(config);
        let (store, broker) = open(&config).await?;
        let (publisher, publisher_task) = publisher::start(store.clone(), broker.clone(), &config);
        let feed = publisher.feed().clone();
        let relay_wake = Arc::new(tokio::sync::Notify::new());
        let scripts = script_engine(&config);
        let script_calls = script_calls(&config, &store)?;
        let relay = if config.relay_enabled {
            Some(relay::start(
                config.clone(),
                store.clone(),
                &broker,
                relay_wake.clone(),
                scripts.clone(),
                script_calls.clone(),
            )?)
        } else {
            None
        };

        // One client for every outgoing call of this process, with bounded waits.
        let http_client = reqwest::Client::builder()
            .connect_timeout(config.install_keys_timeout.min(Duration::from_secs(5)))
            .timeout(config.install_keys_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hookrelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        let tenants = Arc::new(TenantCache::new(store.clone(), config.tenant_cache_ttl));
        let forge = Arc::new(crate::sources::forge::ForgeVerifier::new(
            config.forge.clone(),
            config.jwt_leeway,
            http_client.clone(),
        ));
        let auth = Authenticator::new(&config, tenants, http_client);
        let reconciler = config.reconcile_interval.map(|interval| {
            let stop = CancellationToken::new();
            let reconciler = crate::product::reconcile::Reconciler::new(
                script_calls.product.clone(),
                store.clone(),
                publisher.clone(),
                config.clone(),
            );
            let task = tokio::spawn(reconciler.run_timer(interval, stop.clone()));
            (stop, task)
        });
        let state = web::Data::new(AppState {
            config: config.clone(),
            store: store.clone(),
            auth,
            metrics,
            publisher,
            broker: broker.clone(),
            relay_wake,
            bodies: crate::budget::ByteBudget::new(config.intake_memory),
            forge,
            source_secrets: http::source_secret_cache(),
            forge_tokens: http::forge_token_cache(),
            scripts,
            forward_client: relay::deliver::client(&config)
                .context("cannot build the HTTP client for forwards")?,
            trigger_runs: Arc::default(),
            product: script_calls.product.clone(),
            script_calls,
            key_touches: http::key_touches(),
            wrong_tokens: crate::ui::wrong_tokens(),
        });

        let listener = TcpListener::bind(&config.listen)
            .with_context(|| format!("cannot listen on {} (HOOKRELAY_LISTEN)", config.listen))?;
        let port = listener.local_addr()?.port();
        let mut server = HttpServer::new(move || http::app(state.clone()));
        if config.http_workers > 0 {
            server = server.workers(config.http_workers);
        }
        let server = server
            .listen(listener)?
            .disable_signals()
            .shutdown_timeout(config.shutdown_timeout.as_secs())
            .run();
        tracing::info!(
            listen = %config.listen,
            port,
            base_url = %config.base_url,
            store = store.backend(),
            broker = broker.kind(),
            exchange = %config.exchange,
            relay = relay.is_some(),
            "hookrelay is serving"
        );
        let sampler = telemetry::spawn_sampler(store.clone());
        Ok(Self {
            port,
            server,
            store,
            broker,
            publisher: publisher_task,
            feed,
            relay,
            reconciler,
            sampler,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker events are published to; tests and in-process consumers read
    /// the in-process one through it.
    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting connections, lets
    /// in-flight requests finish (up to the shutdown timeout) and closes the store.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let handle = self.server.handle();
        // The relay stops beside the HTTP drain, not after it, so that the two
        // share one grace period.
        let grace = self.shutdown_timeout;
        let relay = self.relay.map(|relay| {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                relay.stop(grace).await;
            })
        });
        let feed = self.feed.clone();
        let stopper = tokio::spawn(async move {
            shutdown.cancelled().await;
            tracing::info!("shutting down: finishing in-flight requests");
            feed.close();
            handle.stop(true).await;
        });
        let result = self.server.await;
        stopper.abort();
        if let Some((stop, task)) = self.reconciler {
            stop.cancel();
            if tokio::time::timeout(self.shutdown_timeout, task)
                .await
                .is_err()
            {
                tracing::warn!("reconciliation did not stop in time");
            }
        }
        if let Some(relay) = relay {
            let _ = relay.await;
        }
        // Intake has stopped: publish what it handed over, within the same bound.
        if tokio::time::timeout(self.shutdown_timeout, self.publisher.stop())
            .await
            .is_err()
        {
            tracing::warn!("publisher did not finish in time; its events stay in the outbox");
        }
        drop(self.sampler);
        self.broker.close().await;
        self.store.close().await;
        tracing::info!("stopped");
        result
    }
}

/// What scripts call out with: the product client and the deliveries' client.
fn script_calls(config: &Config, store: &Store) -> anyhow::Result<crate::product::ScriptCalls> {
    Ok(crate::product::ScriptCalls {
        product: crate::product::ProductClient::new(config, store.clone())
            .context("cannot build the HTTP client for product calls")?,
        web: relay::deliver::client(config)
            .context("cannot build the HTTP client for scripts' fetch")?,
        allow_private: config.allow_private_destinations,
    })
}

/// The process's one script runtime, for web triggers and transforms.
fn script_engine(config: &Config) -> crate::script::Engine {
    crate::script::Engine::start(crate::script::EngineSettings {
        memory_limit: config.script_memory,
        concurrency: config.script_concurrency,
        // A short wait for a runtime, long enough to ride out a burst that
        // runs in milliseconds each; beyond it, or with this many waiting, a
        // call is answered 503 rather than queued.
        max_waiting: config.script_concurrency * 16,
        wait: Duration::from_secs(1),
        console_limit: 16 * 1024,
        output_limit: config.max_body_bytes,
    })
}

/// Opens and migrates the store, and starts the broker. Never waits for the
/// broker: events are stored and wait in the outbox until it is reachable.
async fn open(config: &Arc<Config>) -> anyhow::Result<(Store, Arc<Broker>)> {
    let store = Store::connect(config)
        .await
        .with_context(|| format!("cannot open the {} store", backend_name(config)))?;
    store
        .migrate()
        .await
        .context("cannot apply database migrations")?;
    store
        .check_secret_keys()
        .await
        .context("cannot read the secrets in the store with the configured encryption keys")?;
    store
        .release_stale_claims()
        .await
        .context("cannot release the claims of an earlier run")?;
    let broker = Arc::new(match config.amqp_url {
        Some(_) => Broker::Amqp(AmqpBroker::start(config.clone())),
        None => Broker::Local(Arc::new(LocalBroker::new(store.clone(), config))),
    });
    Ok((store, broker))
}

/// `hookrelay worker`: relay workers only, as competing consumers of the relay
/// queue beside any number of `serve` processes.
pub struct Worker {
    store: Store,
    broker: Arc<Broker>,
    relay: Relay,
    /// `/healthz`, `/readyz` and `/metrics`, on the worker's own listen address.
    probes: actix_web::dev::Server,
    port: u16,
    /// Refreshes the gauges read from the store; stops when dropped.
    sampler: tokio_util::sync::DropGuard,
    shutdown_timeout: Duration,
}

impl Worker {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // First, so that what is recorded while starting is kept.
        telemetry::metrics_handle();
        let config = Arc::new(config);
        // A SQLite store belongs to one process (its claims are released at
        // every start), so a worker beside `serve` would take over live claims.
        if !config.is_postgres() {
            anyhow::bail!(
                "`hookrelay worker` needs PostgreSQL (HOOKRELAY_DATABASE_URL=postgres://…); \
                 on SQLite, `serve` runs the relay itself"
            );
        }
        let (store, broker) = open(&config).await?;
        let wake = Arc::new(tokio::sync::Notify::new());
        let relay = relay::start(
            config.clone(),
            store.clone(),
            &broker,
            wake,
            script_engine(&config),
            script_calls(&config, &store)?,
        )?;
        let probes = web::Data::new(http::ops::Probes {
            store: store.clone(),
            broker: broker.clone(),
            metrics: telemetry::metrics_handle(),
            forge: None,
        });
        let listener = TcpListener::bind(&config.listen).with_context(|| {
            format!(
                "cannot listen on {} (HOOKRELAY_LISTEN; a worker beside `serve` needs its own)",
                config.listen
            )
        })?;
        let port = listener.local_addr()?.port();
        // Probes are few and cheap: one HTTP thread is plenty.
        let probes = HttpServer::new(move || http::ops::ops_app(probes.clone()))
            .workers(1)
            .listen(listener)?
            .disable_signals()
            .shutdown_timeout(config.shutdown_timeout.as_secs())
            .run();
        tracing::info!(
            listen = %config.listen,
            port,
            store = store.backend(),
            broker = broker.kind(),
            queue = %config.relay_queue.name,
            "hookrelay worker is relaying"
        );
        let sampler = telemetry::spawn_sampler(store.clone());
        Ok(Self {
            store,
            broker,
            relay,
            probes,
            port,
            sampler,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// The port `/healthz`, `/readyz` and `/metrics` are served on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Relays until `shutdown`, then lets attempts in flight finish (up to the
    /// shutdown timeout).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        let probes = self.probes.handle();
        let served = tokio::spawn(self.probes);
        shutdown.cancelled().await;
        tracing::info!("shutting down: finishing delivery attempts in flight");
        self.relay.stop(self.shutdown_timeout).await;
        // Ready until the last attempt is done, so an orchestrator waits for it.
        probes.stop(true).await;
        if let Ok(Err(e)) = served.await {
            tracing::warn!(error = %e, "the probe server stopped with an error");
        }
        drop(self.sampler);
        self.broker.close().await;
        self.store.close().await;
        tracing::info!("stopped");
    }
}

fn backend_name(config: &Config) -> &'static str {
    if config.is_postgres() {
        "PostgreSQL"
    } else {
        "SQLite"
    }
}
