//! Wiring: builds the store, the broker, the publisher, the authenticator and the
//! HTTP server from a [`Config`], and runs them until a shutdown token fires.
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
use crate::store::Store;
use crate::telemetry;

pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    store: Store,
    broker: Arc<Broker>,
    publisher: PublisherTask,
    shutdown_timeout: Duration,
}

impl Application {
    /// Connects to the store, applies migrations and binds the listener. The server
    /// does not serve until [`Application::run_until_stopped`] is awaited.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let config = Arc::new(config);
        let store = Store::connect(&config)
            .await
            .with_context(|| format!("cannot open the {} store", backend_name(&config)))?;
        store
            .migrate()
            .await
            .context("cannot apply database migrations")?;
        store
            .release_stale_claims()
            .await
            .context("cannot release the claims of an earlier run")?;

        // Never waits for the broker: events are stored and wait in the outbox
        // until it is reachable.
        let broker = Arc::new(match config.amqp_url {
            Some(_) => Broker::Amqp(AmqpBroker::start(config.clone())),
            None => Broker::Local(Arc::new(LocalBroker::new(store.clone(), &config))),
        });
        let (publisher, publisher_task) = publisher::start(store.clone(), broker.clone(), &config);

        // One client for every outgoing call of this process, with bounded waits.
        let http_client = reqwest::Client::builder()
            .connect_timeout(config.install_keys_timeout.min(Duration::from_secs(5)))
            .timeout(config.install_keys_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hookrelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        let tenants = Arc::new(TenantCache::new(store.clone(), config.tenant_cache_ttl));
        let auth = Authenticator::new(&config, tenants, http_client);
        let state = web::Data::new(AppState {
            config: config.clone(),
            store: store.clone(),
            auth,
            metrics: telemetry::metrics_handle(),
            publisher,
            broker: broker.clone(),
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
            "hookrelay is serving"
        );
        Ok(Self {
            port,
            server,
            store,
            broker,
            publisher: publisher_task,
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
        let stopper = tokio::spawn(async move {
            shutdown.cancelled().await;
            tracing::info!("shutting down: finishing in-flight requests");
            handle.stop(true).await;
        });
        let result = self.server.await;
        stopper.abort();
        // Intake has stopped: publish what it handed over, within the same bound.
        if tokio::time::timeout(self.shutdown_timeout, self.publisher.stop())
            .await
            .is_err()
        {
            tracing::warn!("publisher did not finish in time; its events stay in the outbox");
        }
        self.broker.close().await;
        self.store.close().await;
        tracing::info!("stopped");
        result
    }
}

fn backend_name(config: &Config) -> &'static str {
    if config.is_postgres() {
        "PostgreSQL"
    } else {
        "SQLite"
    }
}
