//! The PostgreSQL backend's SQL.
//!
//! Statements over a batch that read or update a queue table by its rows
//! (the attempts' update, reads by `= ANY`) are marked `persistent(false)`:
//! PostgreSQL plans them for the table as it is on each run. A prepared
//! statement's plan is kept for the connection's life, and one made while a
//! queue table was nearly empty (hookrelay's pools start with empty tables)
//! goes on scanning the whole table once it holds tens of thousands of rows:
//! the attempts' update took 3 ms, and growing, per batch. Plain inserts keep
//! their prepared plan (planning one costs about 0.13 ms); so does the claim
//! of due deliveries, whose plan's shape is fixed (see `claim_deliveries`).

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;

use super::{decode, Claimed, EventFilter, LocalRoute, StoreError};
use crate::domain::{ClientKey, Event, EventId, LifecycleChange, Tenant, TenantState};

#[derive(sqlx::FromRow)]
struct TenantRow {
    client_key: String,
    product: String,
    base_url: String,
    display_url: Option<String>,
    shared_secret: String,
    state: String,
    kind: String,
    name: Option<String>,
    cloud_id: Option<String>,
    api_base_url: Option<String>,
    environment: Option<String>,
    lifecycle_at: DateTime<Utc>,
    installed_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<TenantRow> for Tenant {
    type Error = StoreError;

    fn try_from(row: TenantRow) -> Result<Self, StoreError> {
        Ok(Tenant {
            client_key: ClientKey(row.client_key),
            kind: decode::kind(&row.kind)?,
            product: decode::product(&row.product)?,
            base_url: row.base_url,
            display_url: row.display_url,
            shared_secret: SecretString::from(row.shared_secret),
            name: row.name,
            cloud_id: row.cloud_id,
            api_base_url: row.api_base_url,
            environment: row.environment,
            state: decode::state(&row.state)?,
            lifecycle_at: row.lifecycle_at,
            installed_at: row.installed_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(in crate::store) struct EventRow {
    id: uuid::Uuid,
    source: String,
    product: Option<String>,
    event: String,
    source_event: Option<String>,
    tenant_client_key: Option<String>,
    tenant_base_url: Option<String>,
    webhook_id: Option<String>,
    webhook_retry: Option<i32>,
    webhook_flow: Option<String>,
    recovered: bool,
    received_at: DateTime<Utc>,
    payload: String,
}

impl TryFrom<EventRow> for Event {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        Ok(Event {
            id: EventId(row.id),
            source: decode::source(&row.source)?,
            product: row.product.as_deref().map(decode::product).transpose()?,
            event: row.event,
            source_event: row.source_event,
            client_key: decode::client_key(row.tenant_client_key),
            tenant_base_url: row.tenant_base_url,
            webhook_id: row.webhook_id,
            webhook_retry: row.webhook_retry,
            webhook_flow: row.webhook_flow,
            recovered: row.recovered,
            received_at: row.received_at,
            payload: row.payload,
        })
    }
}

pub async fn tenant(pool: &PgPool, client_key: &ClientKey) -> Result<Option<Tenant>, StoreError> {
    sqlx::query_as::<_, TenantRow>("SELECT * FROM tenants WHERE client_key = $1")
        .bind(&client_key.0)
        .fetch_optional(pool)
        .await?
        .map(Tenant::try_from)
        .transpose()
}

/// Tenants, of one kind or all, newest install first.
pub async fn list_tenants(pool: &PgPool, kind: Option<&str>) -> Result<Vec<Tenant>, StoreError> {
    sqlx::query_as::<_, TenantRow>(
        "SELECT * FROM tenants WHERE ($1::text IS NULL OR kind = $1)
         ORDER BY installed_at DESC, client_key LIMIT 1000",
    )
    .bind(kind)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Tenant::try_from)
    .collect()
}

/// `None` when the change's token was accepted before (nothing is changed);
/// otherwise whether the change was applied (not older than the newest one).
pub async fn apply_lifecycle(
    pool: &PgPool,
    change: &LifecycleChange,
) -> Result<Option<bool>, StoreError> {
    let now = crate::domain::now_millis();
    let mut tx = pool.begin().await?;
    if let Some(token) = &change.token {
        sqlx::query("DELETE FROM used_install_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let first = sqlx::query(
            "INSERT INTO used_install_tokens (digest, expires_at) VALUES ($1, $2)
             ON CONFLICT (digest) DO NOTHING RETURNING digest",
        )
        .bind(&token.digest[..])
        .bind(token.expires_at)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        if !first {
            return Ok(None);
        }
    }
    let applied = match (&change.install, change.state) {
        (Some(install), TenantState::Installed) => sqlx::query(
            "INSERT INTO tenants (client_key, product, base_url, display_url, shared_secret, state,
                                  lifecycle_at, installed_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 'installed', $6, $7, $7)
             ON CONFLICT (client_key) DO UPDATE SET
                 product = EXCLUDED.product, base_url = EXCLUDED.base_url,
                 display_url = EXCLUDED.display_url, shared_secret = EXCLUDED.shared_secret,
                 state = 'installed', lifecycle_at = EXCLUDED.lifecycle_at,
                 installed_at = EXCLUDED.installed_at, updated_at = EXCLUDED.updated_at
             WHERE tenants.lifecycle_at < EXCLUDED.lifecycle_at AND tenants.kind = 'connect'
             RETURNING client_key",
        )
        .bind(&change.client_key.0)
        .bind(change.product.as_str())
        .bind(&install.base_url)
        .bind(&install.display_url)
        .bind(install.shared_secret.expose_secret())
        .bind(change.at)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?
        .is_some(),
        _ => sqlx::query(
            "UPDATE tenants SET state = $2, lifecycle_at = $3, updated_at = $4
             WHERE client_key = $1 AND lifecycle_at <= $3 AND kind = 'connect'
             RETURNING client_key",
        )
        .bind(&change.client_key.0)
        .bind(change.state.as_str())
        .bind(change.at)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?
        .is_some(),
    };
    tx.commit().await?;
    Ok(Some(applied))
}

/// Inserts the events and, in the same statement, their outbox rows; returns
/// whether each was inserted (not a repeat of a stored tenant and webhook
/// identifier). The caller leaves out repeats within the batch.
///
/// Rows go in in the order of their (tenant, webhook identifier), so that two
/// batches that meet on the unique index wait for each other in one order
/// rather than deadlock.
pub async fn insert_events(
    pool: &PgPool,
    batch: &[(&Event, DateTime<Utc>)],
) -> Result<Vec<bool>, StoreError> {
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by_key(|&i| {
        let event = batch[i].0;
        (event.client_key.as_ref().map(|k| &k.0), &event.webhook_id)
    });
    let events: Vec<&Event> = order.iter().map(|&i| batch[i].0).collect();
    let col = |f: fn(&Event) -> Option<&str>| -> Vec<Option<&str>> {
        events.iter().map(|e| f(e)).collect()
    };
    let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.id.0).collect();
    let sources = col(|e| Some(e.source.as_str()));
    let products = col(|e| e.product.map(|p| p.as_str()));
    let names = col(|e| Some(&e.event));
    let client_keys = col(|e| e.client_key.as_ref().map(|k| k.0.as_str()));
    let base_urls = col(|e| e.tenant_base_url.as_deref());
    let webhook_ids = col(|e| e.webhook_id.as_deref());
    let retries: Vec<Option<i32>> = events.iter().map(|e| e.webhook_retry).collect();
    let flows = col(|e| e.webhook_flow.as_deref());
    let received: Vec<DateTime<Utc>> = events.iter().map(|e| e.received_at).collect();
    let payloads = col(|e| Some(&e.payload));
    let publish_at: Vec<DateTime<Utc>> = order.iter().map(|&i| batch[i].1).collect();
    let source_events = col(|e| e.source_event.as_deref());
    let recovered: Vec<bool> = events.iter().map(|e| e.recovered).collect();
    let inserted: Vec<(uuid::Uuid,)> = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::text[], $8::int4[], $9::text[],
                                  $10::timestamptz[], $11::text[], $12::timestamptz[],
                                  $13::text[], $14::bool[])
                 WITH ORDINALITY AS t(id, source, product, event, tenant_client_key,
                                      tenant_base_url, webhook_id, webhook_retry, webhook_flow,
                                      received_at, payload, publish_at, source_event, recovered,
                                      ord)
         ), inserted AS (
             INSERT INTO events (id, source, product, event, tenant_client_key, tenant_base_url,
                                 webhook_id, webhook_retry, webhook_flow, received_at, payload,
                                 source_event, recovered)
             SELECT id, source, product, event, tenant_client_key, tenant_base_url, webhook_id,
                    webhook_retry, webhook_flow, received_at, payload, source_event, recovered
             FROM input ORDER BY ord
             ON CONFLICT (tenant_client_key, webhook_id) DO NOTHING
             RETURNING id
         ), queued AS (
             INSERT INTO outbox (event_id, available_at)
             SELECT i.id, t.publish_at FROM inserted i JOIN input t ON t.id = i.id
         )
         SELECT id FROM inserted",
    )
    .bind(ids)
    .bind(sources)
    .bind(products)
    .bind(names)
    .bind(client_keys)
    .bind(base_urls)
    .bind(webhook_ids)
    .bind(retries)
    .bind(flows)
    .bind(received)
    .bind(payloads)
    .bind(publish_at)
    .bind(source_events)
    .bind(recovered)
    .fetch_all(pool)
    .await?;
    let inserted: std::collections::HashSet<uuid::Uuid> =
        inserted.into_iter().map(|(id,)| id).collect();
    Ok(batch
        .iter()
        .map(|(event, _)| inserted.contains(&event.id.0))
        .collect())
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    event: EventRow,
    attempts: i32,
}

impl TryFrom<ClaimedRow> for Claimed {
    type Error = StoreError;

    fn try_from(row: ClaimedRow) -> Result<Self, StoreError> {
        Ok(Claimed {
            event: row.event.try_into()?,
            attempts: row.attempts,
        })
    }
}

/// The uuids of some ids, for `= ANY($1)`.
pub(in crate::store) fn uuids<T>(ids: &[T], uuid: impl Fn(&T) -> uuid::Uuid) -> Vec<uuid::Uuid> {
    ids.iter().map(uuid).collect()
}

/// Claims up to `limit` rows whose time has come, until `lease_until`. Rows another
/// transaction is claiming are skipped, so two publishers never take the same row.
pub async fn claim_outbox(
    pool: &PgPool,
    limit: i64,
    max_bytes: i64,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Vec<Claimed>, StoreError> {
    // Rows are locked first (no window functions beside FOR UPDATE), then cut
    // to the byte budget by a running sum: the first row always fits.
    sqlx::query_as::<_, ClaimedRow>(
        "WITH candidates AS (
             SELECT o.event_id, o.available_at, octet_length(e.payload) AS size
             FROM outbox o JOIN events e ON e.id = o.event_id
             WHERE o.available_at <= $1
             ORDER BY o.available_at LIMIT $3 FOR UPDATE OF o SKIP LOCKED
         ), within AS (
             SELECT event_id FROM (
                 SELECT event_id, size,
                        sum(size) OVER (ORDER BY available_at, event_id) - size AS before
                 FROM candidates) c
             WHERE before = 0 OR before + size <= $4
         ), claimed AS (
             UPDATE outbox SET available_at = $2, attempts = attempts + 1
             WHERE event_id IN (SELECT event_id FROM within)
             RETURNING event_id, attempts
         )
         SELECT e.*, c.attempts
         FROM claimed c JOIN events e ON e.id = c.event_id ORDER BY e.id",
    )
    .persistent(false)
    .bind(now)
    .bind(lease_until)
    .bind(limit)
    .bind(max_bytes)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Claimed::try_from)
    .collect()
}

pub async fn complete_outbox(pool: &PgPool, ids: &[EventId]) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM outbox WHERE event_id = ANY($1)")
        .persistent(false)
        .bind(uuids(ids, |id| id.0))
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn release_outbox(
    pool: &PgPool,
    ids: &[EventId],
    retry_at: DateTime<Utc>,
    error: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE outbox SET available_at = $2, last_error = $3 WHERE event_id = ANY($1)")
        .persistent(false)
        .bind(uuids(ids, |id| id.0))
        .bind(retry_at)
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn outbox_len(pool: &PgPool) -> Result<i64, StoreError> {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?;
    Ok(n)
}

/// Puts each event on the named in-process queues; a message already there stays.
pub async fn enqueue_local(
    pool: &PgPool,
    routes: &[LocalRoute<'_>],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let queues: Vec<&str> = routes.iter().map(|r| r.queue).collect();
    let ids: Vec<uuid::Uuid> = routes.iter().map(|r| r.event_id.0).collect();
    sqlx::query(
        "INSERT INTO local_queue_messages (queue, event_id, available_at)
         SELECT q, e, $3 FROM UNNEST($1::text[], $2::uuid[]) AS t(q, e)
         ON CONFLICT (queue, event_id) DO NOTHING",
    )
    .persistent(false)
    .bind(queues)
    .bind(ids)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn claim_local(
    pool: &PgPool,
    queue: &str,
    limit: i64,
    max_bytes: i64,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Vec<Claimed>, StoreError> {
    sqlx::query_as::<_, ClaimedRow>(
        "WITH candidates AS (
             SELECT m.event_id, m.available_at, octet_length(e.payload) AS size
             FROM local_queue_messages m JOIN events e ON e.id = m.event_id
             WHERE m.queue = $1 AND m.available_at <= $2
             ORDER BY m.available_at LIMIT $4 FOR UPDATE OF m SKIP LOCKED
         ), within AS (
             SELECT event_id FROM (
                 SELECT event_id, size,
                        sum(size) OVER (ORDER BY available_at, event_id) - size AS before
                 FROM candidates) c
             WHERE before = 0 OR before + size <= $5
         ), claimed AS (
             UPDATE local_queue_messages SET available_at = $3, deliveries = deliveries + 1
             WHERE queue = $1 AND event_id IN (SELECT event_id FROM within)
             RETURNING event_id, deliveries
         )
         SELECT e.*, c.deliveries AS attempts
         FROM claimed c JOIN events e ON e.id = c.event_id ORDER BY e.id",
    )
    .persistent(false)
    .bind(queue)
    .bind(now)
    .bind(lease_until)
    .bind(limit)
    .bind(max_bytes)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Claimed::try_from)
    .collect()
}

/// Acknowledges in-process messages: they leave their queues.
pub async fn ack_local(pool: &PgPool, acks: &[(String, EventId)]) -> Result<Vec<()>, StoreError> {
    let queues: Vec<&str> = acks.iter().map(|(q, _)| q.as_str()).collect();
    let ids: Vec<uuid::Uuid> = acks.iter().map(|(_, id)| id.0).collect();
    sqlx::query(
        "DELETE FROM local_queue_messages
         WHERE (queue, event_id) IN (SELECT * FROM UNNEST($1::text[], $2::uuid[]))",
    )
    .persistent(false)
    .bind(queues)
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(vec![(); acks.len()])
}

/// Hands an in-process message out again at `at`.
pub async fn requeue_local(
    pool: &PgPool,
    queue: &str,
    id: EventId,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE local_queue_messages SET available_at = $3 WHERE queue = $1 AND event_id = $2",
    )
    .bind(queue)
    .bind(id.0)
    .bind(at)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn event_id_by_webhook_id(
    pool: &PgPool,
    client_key: &ClientKey,
    webhook_id: &str,
) -> Result<EventId, StoreError> {
    let (id,): (uuid::Uuid,) =
        sqlx::query_as("SELECT id FROM events WHERE tenant_client_key = $1 AND webhook_id = $2")
            .bind(&client_key.0)
            .bind(webhook_id)
            .fetch_one(pool)
            .await?;
    Ok(EventId(id))
}

pub async fn event(pool: &PgPool, id: EventId) -> Result<Option<Event>, StoreError> {
    sqlx::query_as::<_, EventRow>("SELECT * FROM events WHERE id = $1")
        .bind(id.0)
        .fetch_optional(pool)
        .await?
        .map(Event::try_from)
        .transpose()
}

pub async fn list_events(pool: &PgPool, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
    sqlx::query_as::<_, EventRow>(
        r"SELECT * FROM events
         WHERE ($1::text IS NULL OR event = $1)
           AND ($2::text IS NULL OR tenant_client_key = $2)
           AND ($3::uuid IS NULL OR id < $3)
           AND ($5::text IS NULL OR event LIKE $5 ESCAPE '\')
           AND ($6::text IS NULL OR source = $6)
           AND ($7::text IS NULL OR webhook_id = $7)
           AND ($8::uuid IS NULL OR id >= $8)
         ORDER BY id DESC LIMIT $4",
    )
    .bind(filter.exact_event())
    .bind(filter.client_key.as_ref().map(|k| &k.0))
    .bind(filter.before.map(|id| id.0))
    .bind(filter.limit)
    .bind(filter.like_event())
    .bind(&filter.source)
    .bind(&filter.webhook_id)
    .bind(filter.from.map(|id| id.0))
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Event::try_from)
    .collect()
}
