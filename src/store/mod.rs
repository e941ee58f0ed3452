//! Persistence: tenants, events, the outbox of events not yet confirmed by the
//! broker, and the in-process broker's queues, in PostgreSQL (production) or
//! SQLite (the embedded default), with the same behaviour on both.
//!
//! All SQL lives in `postgres.rs` and `sqlite.rs`, one file per backend; this file
//! picks the backend and classifies errors. A write returns only after its commit,
//! which is what lets intake answer 2xx. Nothing here knows about HTTP.
//!
//! Secret columns are sealed on the way in and opened on the way out by the
//! methods here (see `crypt.rs`), so callers only ever see plaintext secrets.

mod batch;
mod commit;
pub mod crypt;
mod postgres;
mod relay;
mod sqlite;
pub mod stats;
#[macro_use]
mod tenants;
mod bridge;
mod inspector;
mod triggers;

pub use bridge::{Activity, ApiKey, ApiToken, ReconcileState};
pub use inspector::{Health, Overview, UiSession};
pub use relay::{AttemptFilter, AttemptRecord, ClaimLimits, DeliveryFilter, DueDelivery, Recorded};
pub use tenants::{ForgeInstallation, ForgeLifecycle, NewSource, SourceSecret, TokenUse};
pub use triggers::{ClaimedRun, InvocationWithRequest, RunRecord};

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::config::Config;
use chrono::{DateTime, Utc};
use crypt::{Crypt, SecretColumn, SECRET_COLUMNS, TENANT_SECRET};

use crate::domain::{ClientKey, Event, EventId, LifecycleChange, LifecycleOutcome, Stored, Tenant};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is too busy: callers answer 503.
    #[error("store unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("store query failed")]
    Query(#[source] sqlx::Error),
    /// A value the database cannot hold (PostgreSQL's data exceptions, such as
    /// a NUL character in text): the caller's input, answered 400.
    #[error("value cannot be stored: {0}")]
    Invalid(String),
    #[error("store migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored row is not valid: {0}")]
    Corrupt(String),
    /// A secret that cannot be sealed or opened (its key is not configured, or it
    /// was altered or copied from another row), or a key that cannot be loaded.
    #[error("{0}")]
    Secret(String),
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// The same error again, for another caller waiting on the same failed
    /// write or read (the driver's errors cannot be cloned: the copy carries
    /// their message).
    pub fn replicate(&self) -> StoreError {
        let message = || sqlx::Error::Protocol(crate::relay::deliver::chain(self));
        match self {
            StoreError::Unavailable(_) => StoreError::Unavailable(message()),
            StoreError::Invalid(s) => StoreError::Invalid(s.clone()),
            StoreError::Corrupt(s) => StoreError::Corrupt(s.clone()),
            StoreError::Secret(s) => StoreError::Secret(s.clone()),
            StoreError::Query(_) | StoreError::Migrate(_) => StoreError::Query(message()),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if matches!(e, sqlx::Error::PoolTimedOut) {
            metrics::counter!(crate::telemetry::catalog::DB_POOL_TIMEOUTS).increment(1);
        }
        if is_unavailable(&e) {
            return StoreError::Unavailable(e);
        }
        match &e {
            // Class 22, data exception: 22021 a NUL or invalid byte, 22001 too long, ...
            sqlx::Error::Database(db)
                if db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some()
                    && db.code().is_some_and(|c| c.starts_with("22")) =>
            {
                StoreError::Invalid(db.message().to_string())
            }
            _ => StoreError::Query(e),
        }
    }
}

/// A connection that sat idle for a while is checked before it is handed
/// out (a restarted database leaves dead ones in the pool); one in steady use
/// is not, which saves a round trip per statement. (The pool still checks
/// every connection when it comes back.)
async fn ping_if_idle<C: sqlx::Connection>(
    conn: &mut C,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> Result<bool, sqlx::Error> {
    // A failed ping drops the connection and the pool takes or opens another.
    Ok(meta.idle_for < Duration::from_secs(1) || conn.ping().await.is_ok())
}

/// Errors that mean "the store is not there right now", as opposed to a bad query.
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                // PostgreSQL: connection exceptions (08), insufficient resources
                // (53), operator intervention (57P: shutdown, cannot connect now),
                // and a database that refuses connections (55000).
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P")
                    || code == "55000"
            } else {
                // SQLite primary result codes: BUSY, LOCKED, IOERR, FULL, CANTOPEN.
                code.parse::<i32>()
                    .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14))
            }
        }
        _ => false,
    }
}

/// A byte budget as SQL takes it.
fn clamp_bytes(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Which events [`Store::list_events`] returns.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// An event name, or a pattern with `*` for any run of characters.
    pub event: Option<String>,
    pub client_key: Option<ClientKey>,
    pub source: Option<String>,
    pub webhook_id: Option<String>,
    /// Only events older than this one (the page cursor, or a time's bound).
    pub before: Option<EventId>,
    /// Only this one and newer ones.
    pub from: Option<EventId>,
    pub limit: i64,
}

impl EventFilter {
    /// The exact name to look for, when `event` has no `*`.
    fn exact_event(&self) -> Option<&str> {
        self.event.as_deref().filter(|e| !e.contains('*'))
    }

    /// `event` as a `LIKE` pattern (escaped with `\`), when it has a `*`.
    fn like_event(&self) -> Option<String> {
        let event = self.event.as_deref().filter(|e| e.contains('*'))?;
        let mut like = String::with_capacity(event.len() + 4);
        for c in event.chars() {
            match c {
                '*' => like.push('%'),
                '%' | '_' | '\\' => {
                    like.push('\\');
                    like.push(c);
                }
                c => like.push(c),
            }
        }
        Some(like)
    }
}

/// A row claimed from the outbox or from an in-process queue, with its event.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub event: Event,
    /// How many times it has been claimed, this claim included.
    pub attempts: i32,
}

/// One event put on one in-process queue.
#[derive(Debug, Clone, Copy)]
pub struct LocalRoute<'a> {
    pub queue: &'a str,
    pub event_id: EventId,
}

/// SQLite runs one write at a time whatever the pool size, and writers that meet
/// a lock sleep and retry (seconds of tail latency under load, measured with
/// `cargo bench --bench intake`). So writes go through one connection, where they
/// queue in order, and reads through a pool of their own (WAL lets them run
/// beside the writer).
#[derive(Clone, Debug)]
pub struct SqlitePools {
    reader: SqlitePool,
    writer: SqlitePool,
    crypt: Arc<Crypt>,
    /// The writes that share commits, through `writer`.
    batched: commit::Batched,
}

/// The PostgreSQL pool, with the keys secrets are sealed with.
#[derive(Clone, Debug)]
pub struct PgPools {
    pool: PgPool,
    crypt: Arc<Crypt>,
    /// The writes that share commits.
    batched: commit::Batched,
}

impl std::ops::Deref for PgPools {
    type Target = PgPool;

    fn deref(&self) -> &PgPool {
        &self.pool
    }
}

/// The store: a connection pool to one of the two backends. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgPools),
    Sqlite(SqlitePools),
}

/// What `hookrelay secrets reencrypt` did to one secret column.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reencrypted {
    /// `table.column`.
    pub column: String,
    /// Sealed with an older key, now with the current one.
    pub reencrypted: u64,
    /// Plaintext before, sealed now.
    pub encrypted: u64,
    /// Already sealed with the current key.
    pub current: u64,
    /// Changed by someone else between the read and the write (and so written
    /// with that writer's key): run the command again to be sure.
    pub changed_meanwhile: u64,
}

impl Store {
    /// Opens the pool (creating the SQLite file if needed) without migrating.
    pub async fn connect(config: &Config) -> Result<Self, StoreError> {
        let url = config.database_url.expose_secret();
        if config.is_postgres() {
            let options = PgConnectOptions::from_str(url).map_err(StoreError::Query)?;
            let pool = PgPoolOptions::new()
                .max_connections(config.database_max_connections)
                .acquire_timeout(config.database_acquire_timeout)
                .test_before_acquire(false)
                .before_acquire(|conn, meta| Box::pin(ping_if_idle(conn, meta)))
                .connect_with(options.clone())
                .await
                .map_err(|e| (e, options));
            let pool = match pool {
                Ok(pool) => pool,
                // The pool retries a refused or unreachable database until its
                // timeout and then says only "pool timed out": one direct
                // attempt tells the operator why.
                Err((sqlx::Error::PoolTimedOut, options)) => {
                    use sqlx::ConnectOptions;
                    let attempt =
                        tokio::time::timeout(config.database_acquire_timeout, options.connect())
                            .await;
                    return Err(match attempt {
                        Ok(Err(e)) => e.into(),
                        _ => sqlx::Error::PoolTimedOut.into(),
                    });
                }
                Err((e, _)) => return Err(e.into()),
            };
            let crypt = if config.encryption_keys.is_empty() {
                tracing::warn!(
                    "secrets are stored unencrypted: set HOOKRELAY_ENCRYPTION_KEY \
                     (or HOOKRELAY_ENCRYPTION_KEY_FILE) to encrypt them at rest"
                );
                Crypt::plaintext()
            } else {
                Crypt::new(&config.encryption_keys)?
            };
            Ok(Store::Postgres(PgPools {
                batched: commit::Writer::Postgres(pool.clone()).start(),
                pool,
                crypt: Arc::new(crypt),
            }))
        } else {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(StoreError::Query)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(match config.sqlite_synchronous {
                    crate::config::SqliteSync::Full => SqliteSynchronous::Full,
                    crate::config::SqliteSync::Normal => SqliteSynchronous::Normal,
                })
                .busy_timeout(config.database_acquire_timeout)
                .foreign_keys(true);
            let pool = |max: u32| {
                SqlitePoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(config.database_acquire_timeout)
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| Box::pin(ping_if_idle(conn, meta)))
                    .connect_with(options.clone())
            };
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let crypt = Arc::new(sqlite_crypt(config, &options, in_memory)?);
            let writer = pool(1).await?;
            // An in-memory database exists once per connection: share the one.
            let reader = if in_memory {
                writer.clone()
            } else {
                pool(config.database_max_connections).await?
            };
            Ok(Store::Sqlite(SqlitePools {
                batched: commit::Writer::Sqlite(writer.clone()).start(),
                reader,
                writer,
                crypt,
            }))
        }
    }

    /// Applies the migrations in `migrations/<backend>/` (idempotent; PostgreSQL
    /// takes an advisory lock, so several processes may start at once).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pg) => {
                sqlx::migrate!("./migrations/postgres")
                    .run(&pg.pool)
                    .await?
            }
            Store::Sqlite(pools) => {
                sqlx::migrate!("./migrations/sqlite")
                    .run(&pools.writer)
                    .await?
            }
        }
        Ok(())
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// A round trip to the database, bounded by `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let query = async {
            match self {
                Store::Postgres(pg) => sqlx::query("SELECT 1").execute(&pg.pool).await.map(drop),
                Store::Sqlite(pools) => sqlx::query("SELECT 1")
                    .execute(&pools.reader)
                    .await
                    .map(drop),
            }
        };
        match tokio::time::timeout(timeout, query).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut)),
        }
    }

    pub async fn tenant(&self, client_key: &ClientKey) -> Result<Option<Tenant>, StoreError> {
        let tenant = match self {
            Store::Postgres(pool) => postgres::tenant(pool, client_key).await?,
            Store::Sqlite(pools) => sqlite::tenant(&pools.reader, client_key).await?,
        };
        tenant
            .map(|mut tenant| {
                tenant.shared_secret =
                    self.open(TENANT_SECRET, &tenant.client_key.0, &tenant.shared_secret)?;
                Ok(tenant)
            })
            .transpose()
    }

    /// Applies a verified lifecycle callback unless a newer one was already applied,
    /// or its signed-install token was accepted before. `installed` upserts the
    /// whole installation (a reinstall replaces the secret), and only when strictly
    /// newer: a callback issued in the same second cannot replace a secret.
    pub async fn apply_lifecycle(
        &self,
        change: &LifecycleChange,
    ) -> Result<LifecycleOutcome, StoreError> {
        let mut sealed = change.clone();
        if let Some(install) = &mut sealed.install {
            install.shared_secret =
                self.seal(TENANT_SECRET, &change.client_key.0, &install.shared_secret)?;
        }
        let change = &sealed;
        let applied = match self {
            Store::Postgres(pool) => postgres::apply_lifecycle(pool, change).await?,
            Store::Sqlite(pools) => sqlite::apply_lifecycle(&pools.writer, change).await?,
        };
        let Some(applied) = applied else {
            return Ok(LifecycleOutcome::Replayed);
        };
        if applied {
            Ok(LifecycleOutcome::Applied)
        } else if self.tenant(&change.client_key).await?.is_some() {
            Ok(LifecycleOutcome::Stale)
        } else {
            Ok(LifecycleOutcome::UnknownTenant)
        }
    }

    /// Stores an event once per (tenant, webhook identifier), together with its
    /// outbox row, and returns after the commit, with the event handed back.
    /// The row becomes claimable by any publisher at `publish_at`: now, or
    /// later when this process means to publish the event itself. A repeat
    /// returns the id of the event stored first. Concurrent calls share
    /// commits (see `commit.rs`).
    pub async fn insert_event(
        &self,
        event: Event,
        publish_at: DateTime<Utc>,
    ) -> Result<(Stored, Event), StoreError> {
        let (inserted, event) = self.batched().events.call((event, publish_at)).await?;
        if inserted {
            let stored = Stored {
                id: event.id,
                duplicate: false,
            };
            return Ok((stored, event));
        }
        // Only a (tenant, webhook id) collision makes an insert a no-op.
        let (Some(client_key), Some(webhook_id)) = (&event.client_key, &event.webhook_id) else {
            return Err(StoreError::Corrupt(
                "insert ignored without a webhook identifier".into(),
            ));
        };
        let id = match self {
            Store::Postgres(pool) => {
                postgres::event_id_by_webhook_id(pool, client_key, webhook_id).await?
            }
            Store::Sqlite(pools) => {
                sqlite::event_id_by_webhook_id(&pools.reader, client_key, webhook_id).await?
            }
        };
        let stored = Stored {
            id,
            duplicate: true,
        };
        Ok((stored, event))
    }

    /// Claims up to `limit` outbox rows that are due, whose payloads come to at
    /// most `max_bytes` (one at least, if any is due), for `lease` (after which
    /// another publisher may claim them again). Two concurrent callers never get
    /// the same row.
    pub async fn claim_outbox(
        &self,
        limit: u32,
        max_bytes: u64,
        lease: std::time::Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let (now, until) = lease_window(lease);
        let max_bytes = clamp_bytes(max_bytes);
        match self {
            Store::Postgres(pool) => {
                postgres::claim_outbox(pool, limit.into(), max_bytes, now, until).await
            }
            Store::Sqlite(pools) => {
                sqlite::claim_outbox(&pools.writer, limit.into(), max_bytes, now, until).await
            }
        }
    }

    /// The broker confirmed these events: they leave the outbox.
    pub async fn complete_outbox(&self, ids: &[EventId]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        match self {
            Store::Postgres(pool) => postgres::complete_outbox(pool, ids).await,
            Store::Sqlite(pools) => sqlite::complete_outbox(&pools.writer, ids).await,
        }
    }

    /// Publishing these failed: they become claimable again at `retry_at`.
    pub async fn release_outbox(
        &self,
        ids: &[EventId],
        retry_at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        match self {
            Store::Postgres(pool) => postgres::release_outbox(pool, ids, retry_at, error).await,
            Store::Sqlite(pools) => {
                sqlite::release_outbox(&pools.writer, ids, retry_at, error).await
            }
        }
    }

    /// Events not yet confirmed by the broker.
    pub async fn outbox_len(&self) -> Result<i64, StoreError> {
        match self {
            Store::Postgres(pool) => postgres::outbox_len(pool).await,
            Store::Sqlite(pools) => sqlite::outbox_len(&pools.reader).await,
        }
    }

    /// At start: a SQLite store has a single process, so claims left by a previous
    /// run (one killed mid-publish) can be taken again at once. PostgreSQL may be
    /// shared by several processes, whose claims are left to expire.
    pub async fn release_stale_claims(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(_) => Ok(()),
            Store::Sqlite(pools) => {
                sqlite::release_claims(&pools.writer, crate::domain::now_millis()).await
            }
        }
    }

    /// Puts events on in-process queues (idempotent per queue and event).
    pub async fn enqueue_local(&self, routes: &[LocalRoute<'_>]) -> Result<(), StoreError> {
        if routes.is_empty() {
            return Ok(());
        }
        let now = crate::domain::now_millis();
        match self {
            Store::Postgres(pool) => postgres::enqueue_local(pool, routes, now).await,
            Store::Sqlite(pools) => sqlite::enqueue_local(&pools.writer, routes, now).await,
        }
    }

    /// Claims up to `limit` due messages of an in-process queue, for `lease`,
    /// whose payloads come to at most `max_bytes` (one at least, if any is due).
    pub async fn claim_local(
        &self,
        queue: &str,
        limit: u32,
        max_bytes: u64,
        lease: std::time::Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let (now, until) = lease_window(lease);
        let max_bytes = clamp_bytes(max_bytes);
        match self {
            Store::Postgres(pool) => {
                postgres::claim_local(pool, queue, limit.into(), max_bytes, now, until).await
            }
            Store::Sqlite(pools) => {
                sqlite::claim_local(&pools.writer, queue, limit.into(), max_bytes, now, until).await
            }
        }
    }

    /// Acknowledges (`requeue_at` None: removes) or requeues an in-process
    /// message. Concurrent acknowledgements share one delete.
    pub async fn settle_local(
        &self,
        queue: &str,
        id: EventId,
        requeue_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        match (self, requeue_at) {
            (_, None) => self.batched().acks.call((queue.to_string(), id)).await,
            (Store::Postgres(pool), Some(at)) => postgres::requeue_local(pool, queue, id, at).await,
            (Store::Sqlite(pools), Some(at)) => {
                sqlite::requeue_local(&pools.writer, queue, id, at).await
            }
        }
    }

    pub async fn event(&self, id: EventId) -> Result<Option<Event>, StoreError> {
        match self {
            Store::Postgres(pool) => postgres::event(pool, id).await,
            Store::Sqlite(pools) => sqlite::event(&pools.reader, id).await,
        }
    }

    /// Events matching `filter`, newest first (ids are time-ordered).
    pub async fn list_events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        match self {
            Store::Postgres(pool) => postgres::list_events(pool, filter).await,
            Store::Sqlite(pools) => sqlite::list_events(&pools.reader, filter).await,
        }
    }

    fn batched(&self) -> &commit::Batched {
        match self {
            Store::Postgres(pg) => &pg.batched,
            Store::Sqlite(pools) => &pools.batched,
        }
    }

    fn crypt(&self) -> &Crypt {
        match self {
            Store::Postgres(pg) => &pg.crypt,
            Store::Sqlite(pools) => &pools.crypt,
        }
    }

    /// The form a secret is stored in, in `column` of the row `row`.
    fn seal(
        &self,
        column: SecretColumn,
        row: &str,
        secret: &SecretString,
    ) -> Result<SecretString, StoreError> {
        self.crypt().seal(column, row, secret)
    }

    /// The secret a stored value (read into a `SecretString` as it is) stands for.
    fn open(
        &self,
        column: SecretColumn,
        row: &str,
        stored: &SecretString,
    ) -> Result<SecretString, StoreError> {
        self.crypt().open(column, row, stored.expose_secret())
    }

    /// At start: refuses a store holding secrets sealed with a key that is not
    /// configured (it reads only the distinct key ids).
    pub async fn check_secret_keys(&self) -> Result<(), StoreError> {
        let mut prefixes = Vec::new();
        for column in SECRET_COLUMNS {
            let sql = column.sealed_prefixes_sql();
            let found: Vec<String> = match self {
                Store::Postgres(pg) => sqlx::query_scalar(&sql).fetch_all(&pg.pool).await?,
                Store::Sqlite(pools) => sqlx::query_scalar(&sql).fetch_all(&pools.reader).await?,
            };
            prefixes.extend(found);
        }
        self.crypt().check_prefixes(&prefixes)
    }

    /// Seals every secret with the current key (plaintext ones included), row by
    /// row, each write conditional on the value read, so it is safe while other
    /// processes run. Idempotent.
    pub async fn reencrypt_secrets(&self) -> Result<Vec<Reencrypted>, StoreError> {
        let crypt = self.crypt();
        if !crypt.is_enabled() {
            return Err(StoreError::Secret(
                "no encryption key is configured: set HOOKRELAY_ENCRYPTION_KEY".into(),
            ));
        }
        let mut report = Vec::new();
        for column in SECRET_COLUMNS {
            let mut done = Reencrypted {
                column: column.name(),
                ..Reencrypted::default()
            };
            let sql = column.rows_sql();
            let rows: Vec<(String, String)> = match self {
                Store::Postgres(pg) => sqlx::query_as(&sql).fetch_all(&pg.pool).await?,
                Store::Sqlite(pools) => sqlx::query_as(&sql).fetch_all(&pools.reader).await?,
            };
            for (row, stored) in rows {
                let stored = SecretString::from(stored);
                if crypt.is_current(stored.expose_secret()) {
                    done.current += 1;
                    continue;
                }
                let plain = self.open(column, &row, &stored)?;
                let sealed = self.seal(column, &row, &plain)?;
                let (old, new) = (stored.expose_secret(), sealed.expose_secret());
                let sql = column.swap_sql();
                let swapped = match self {
                    Store::Postgres(pg) => {
                        let query = sqlx::query(&sql).bind(&row).bind(old).bind(new);
                        query.execute(&pg.pool).await?.rows_affected()
                    }
                    Store::Sqlite(pools) => {
                        let query = sqlx::query(&sql).bind(&row).bind(old).bind(new);
                        query.execute(&pools.writer).await?.rows_affected()
                    }
                } > 0;
                match (swapped, old.starts_with(crypt::SEALED)) {
                    (false, _) => done.changed_meanwhile += 1,
                    (true, true) => done.reencrypted += 1,
                    (true, false) => done.encrypted += 1,
                }
            }
            report.push(done);
        }
        Ok(report)
    }

    pub async fn close(&self) {
        match self {
            Store::Postgres(pool) => pool.close().await,
            Store::Sqlite(pools) => {
                pools.writer.close().await;
                pools.reader.close().await;
            }
        }
    }
}

/// The keys of a SQLite store: the configured ones, or else the key file
/// beside the database (made at the first start), or for an in-memory database
/// a key of its own.
fn sqlite_crypt(
    config: &Config,
    options: &SqliteConnectOptions,
    in_memory: bool,
) -> Result<Crypt, StoreError> {
    if !config.encryption_keys.is_empty() {
        return Crypt::new(&config.encryption_keys);
    }
    if in_memory {
        return Ok(Crypt::ephemeral());
    }
    let path = crypt::key_file_for(options.get_filename());
    let (key, created) = crypt::load_or_create_key_file(&path)?;
    if created {
        tracing::info!(key_file = %path.display(), "generated the key that encrypts secrets at rest; keep it with the database");
    } else {
        tracing::info!(key_file = %path.display(), "secrets at rest are encrypted with this key file");
    }
    Crypt::new(&[key])
}

/// Now, and the end of a lease taken now.
fn lease_window(lease: std::time::Duration) -> (DateTime<Utc>, DateTime<Utc>) {
    let now = crate::domain::now_millis();
    let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    (
        now,
        now.checked_add_signed(lease)
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    )
}

/// Row decoding shared by both backends: text columns into domain types.
mod decode {
    use crate::domain::{ClientKey, EventId, Product, Source, TenantKind, TenantState};

    use super::StoreError;

    pub fn product(s: &str) -> Result<Product, StoreError> {
        Product::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown product `{s}`")))
    }

    pub fn kind(s: &str) -> Result<TenantKind, StoreError> {
        TenantKind::parse(s)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown tenant kind `{s}`")))
    }

    pub fn state(s: &str) -> Result<TenantState, StoreError> {
        TenantState::parse(s)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown tenant state `{s}`")))
    }

    pub fn source(s: &str) -> Result<Source, StoreError> {
        Source::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown source `{s}`")))
    }

    pub fn event_id(s: &str) -> Result<EventId, StoreError> {
        uuid::Uuid::parse_str(s)
            .map(EventId)
            .map_err(|_| StoreError::Corrupt(format!("bad event id `{s}`")))
    }

    pub fn client_key(s: Option<String>) -> Option<ClientKey> {
        s.map(ClientKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sqlite_synchronous` reaches every SQLite connection.
    #[tokio::test]
    async fn sqlite_synchronous_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        for (setting, pragma) in [
            (crate::config::SqliteSync::Full, 2),
            (crate::config::SqliteSync::Normal, 1),
        ] {
            let raw = crate::config::RawConfig {
                database_url: format!("sqlite://{}", dir.path().join("s.db").display()),
                sqlite_synchronous: setting,
                ..Default::default()
            };
            let store = Store::connect(&raw.validate().unwrap()).await.unwrap();
            let Store::Sqlite(pools) = &store else {
                panic!("not SQLite")
            };
            for pool in [&pools.writer, &pools.reader] {
                let (level,): (i64,) = sqlx::query_as("PRAGMA synchronous")
                    .fetch_one(pool)
                    .await
                    .unwrap();
                assert_eq!(level, pragma, "{setting:?}");
            }
            store.close().await;
        }
    }
}
