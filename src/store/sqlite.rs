//! The SQLite backend's SQL.
//!
//! Ids and timestamps are TEXT here. Timestamps are always written in one
//! fixed-width form (`2026-11-22T10:00:00.123Z`), so that comparing them as text
//! (`lifecycle_at <= ?`) compares them as times.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Sqlite, SqlitePool};

use super::{decode, Claimed, EventFilter, LocalRoute, StoreError};
use crate::domain::{
    format_timestamp, ClientKey, Event, EventId, LifecycleChange, Tenant, TenantState,
};

pub(in crate::store) fn time(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| StoreError::Corrupt(format!("bad timestamp `{s}`")))
}

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
    lifecycle_at: String,
    installed_at: String,
    updated_at: String,
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
            lifecycle_at: time(&row.lifecycle_at)?,
            installed_at: time(&row.installed_at)?,
            updated_at: time(&row.updated_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(in crate::store) struct EventRow {
    id: String,
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
    received_at: String,
    payload: String,
}

impl TryFrom<EventRow> for Event {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        Ok(Event {
            id: decode::event_id(&row.id)?,
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
            received_at: time(&row.received_at)?,
            payload: row.payload,
        })
    }
}

pub async fn tenant(
    pool: &SqlitePool,
    client_key: &ClientKey,
) -> Result<Option<Tenant>, StoreError> {
    sqlx::query_as::<_, TenantRow>("SELECT * FROM tenants WHERE client_key = ?")
        .bind(&client_key.0)
        .fetch_optional(pool)
        .await?
        .map(Tenant::try_from)
        .transpose()
}

/// Tenants, of one kind or all, newest install first.
pub async fn list_tenants(
    pool: &SqlitePool,
    kind: Option<&str>,
) -> Result<Vec<Tenant>, StoreError> {
    sqlx::query_as::<_, TenantRow>(
        "SELECT * FROM tenants WHERE ($1 IS NULL OR kind = $1)
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
    pool: &SqlitePool,
    change: &LifecycleChange,
) -> Result<Option<bool>, StoreError> {
    let now = format_timestamp(crate::domain::now_millis());
    let at = format_timestamp(change.at);
    let mut tx = pool.begin().await?;
    if let Some(token) = &change.token {
        sqlx::query("DELETE FROM used_install_tokens WHERE expires_at < ?1")
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        let first = sqlx::query(
            "INSERT INTO used_install_tokens (digest, expires_at) VALUES (?1, ?2)
             ON CONFLICT (digest) DO NOTHING RETURNING digest",
        )
        .bind(&token.digest[..])
        .bind(format_timestamp(token.expires_at))
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
             VALUES (?1, ?2, ?3, ?4, ?5, 'installed', ?6, ?7, ?7)
             ON CONFLICT (client_key) DO UPDATE SET
                 product = excluded.product, base_url = excluded.base_url,
                 display_url = excluded.display_url, shared_secret = excluded.shared_secret,
                 state = 'installed', lifecycle_at = excluded.lifecycle_at,
                 installed_at = excluded.installed_at, updated_at = excluded.updated_at
             WHERE tenants.lifecycle_at < excluded.lifecycle_at AND tenants.kind = 'connect'
             RETURNING client_key",
        )
        .bind(&change.client_key.0)
        .bind(change.product.as_str())
        .bind(&install.base_url)
        .bind(&install.display_url)
        .bind(install.shared_secret.expose_secret())
        .bind(&at)
        .bind(&now)
        .fetch_optional(&mut *tx)
        .await?
        .is_some(),
        _ => sqlx::query(
            "UPDATE tenants SET state = ?2, lifecycle_at = ?3, updated_at = ?4
             WHERE client_key = ?1 AND lifecycle_at <= ?3 AND kind = 'connect'
             RETURNING client_key",
        )
        .bind(&change.client_key.0)
        .bind(change.state.as_str())
        .bind(&at)
        .bind(&now)
        .fetch_optional(&mut *tx)
        .await?
        .is_some(),
    };
    tx.commit().await?;
    Ok(Some(applied))
}

/// Inserts the events with their outbox rows in one transaction; returns
/// whether each was inserted (not a repeat of a stored tenant and webhook
/// identifier). The caller leaves out repeats within the batch.
pub async fn insert_events(
    pool: &SqlitePool,
    batch: &[(&Event, DateTime<Utc>)],
) -> Result<Vec<bool>, StoreError> {
    // Each statement is a round trip to the connection's thread, so the
    // batch is one multi-row insert for the events and one for the outbox
    // rows of those inserted (13 parameters a row: 256 rows stay far
    // below SQLite's limit of 32,766).
    let mut tx = pool.begin().await?;
    let mut inserted = std::collections::HashSet::with_capacity(batch.len());
    for chunk in batch.chunks(INSERT_CHUNK) {
        let mut events = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (id, source, product, event, tenant_client_key, tenant_base_url,
                                 webhook_id, webhook_retry, webhook_flow, received_at, payload,
                                 source_event, recovered) ",
        );
        events.push_values(chunk, |mut row, (event, _)| {
            row.push_bind(event.id.to_string())
                .push_bind(event.source.as_str())
                .push_bind(event.product.map(|p| p.as_str()))
                .push_bind(&event.event)
                .push_bind(event.client_key.as_ref().map(|k| &k.0))
                .push_bind(&event.tenant_base_url)
                .push_bind(&event.webhook_id)
                .push_bind(event.webhook_retry)
                .push_bind(&event.webhook_flow)
                .push_bind(format_timestamp(event.received_at))
                .push_bind(&event.payload)
                .push_bind(&event.source_event)
                .push_bind(event.recovered);
        });
        events.push(" ON CONFLICT (tenant_client_key, webhook_id) DO NOTHING RETURNING id");
        for (id,) in events
            .build_query_as::<(String,)>()
            .fetch_all(&mut *tx)
            .await?
        {
            inserted.insert(id);
        }
    }
    let new: Vec<(String, String)> = batch
        .iter()
        .map(|(event, publish_at)| (event.id.to_string(), format_timestamp(*publish_at)))
        .filter(|(id, _)| inserted.contains(id))
        .collect();
    for chunk in new.chunks(INSERT_CHUNK) {
        let mut outbox =
            sqlx::QueryBuilder::<Sqlite>::new("INSERT INTO outbox (event_id, available_at) ");
        outbox.push_values(chunk, |mut row, (id, at)| {
            row.push_bind(id).push_bind(at);
        });
        outbox.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(batch
        .iter()
        .map(|(event, _)| inserted.contains(&event.id.to_string()))
        .collect())
}

/// Rows in one multi-row insert.
const INSERT_CHUNK: usize = 256;

/// A JSON array of ids, for `IN (SELECT value FROM json_each(?))`.
pub(in crate::store) fn id_list<T: std::fmt::Display>(ids: impl IntoIterator<Item = T>) -> String {
    serde_json::to_string(&ids.into_iter().map(|id| id.to_string()).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".into())
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    event_id: String,
    attempts: i32,
}

/// Joins claimed rows with their events, in id order.
async fn claimed_events(
    tx: &mut sqlx::SqliteConnection,
    rows: Vec<ClaimRow>,
) -> Result<Vec<Claimed>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<EventId> = rows
        .iter()
        .map(|r| decode::event_id(&r.event_id))
        .collect::<Result<_, _>>()?;
    let mut events: std::collections::HashMap<EventId, Event> = sqlx::query_as::<_, EventRow>(
        "SELECT * FROM events WHERE id IN (SELECT value FROM json_each(?))",
    )
    .bind(id_list(&ids))
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|row| Event::try_from(row).map(|e| (e.id, e)))
    .collect::<Result<_, _>>()?;
    let mut claimed: Vec<Claimed> = rows
        .into_iter()
        .zip(ids)
        .filter_map(|(row, id)| {
            events.remove(&id).map(|event| Claimed {
                event,
                attempts: row.attempts,
            })
        })
        .collect();
    claimed.sort_by_key(|c| c.event.id);
    Ok(claimed)
}

/// Claims up to `limit` rows whose time has come, until `lease_until`. SQLite has
/// one writer, so the update itself is the lock.
pub async fn claim_outbox(
    pool: &SqlitePool,
    limit: i64,
    max_bytes: i64,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Vec<Claimed>, StoreError> {
    let mut tx = pool.begin().await?;
    // Cut to the byte budget by a running sum: the first row always fits.
    let rows = sqlx::query_as::<_, ClaimRow>(
        "UPDATE outbox SET available_at = ?2, attempts = attempts + 1
         WHERE event_id IN (
             SELECT event_id FROM (
                 SELECT o.event_id, length(CAST(e.payload AS BLOB)) AS size,
                        sum(length(CAST(e.payload AS BLOB)))
                            OVER (ORDER BY o.available_at, o.event_id)
                            - length(CAST(e.payload AS BLOB)) AS before
                 FROM outbox o JOIN events e ON e.id = o.event_id
                 WHERE o.available_at <= ?1
                 ORDER BY o.available_at, o.event_id LIMIT ?3)
             WHERE before = 0 OR before + size <= ?4)
         RETURNING event_id, attempts",
    )
    .bind(format_timestamp(now))
    .bind(format_timestamp(lease_until))
    .bind(limit)
    .bind(max_bytes)
    .fetch_all(&mut *tx)
    .await?;
    let claimed = claimed_events(&mut tx, rows).await?;
    tx.commit().await?;
    Ok(claimed)
}

pub async fn complete_outbox(pool: &SqlitePool, ids: &[EventId]) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM outbox WHERE event_id IN (SELECT value FROM json_each(?))")
        .bind(id_list(ids))
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn release_outbox(
    pool: &SqlitePool,
    ids: &[EventId],
    retry_at: DateTime<Utc>,
    error: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE outbox SET available_at = ?2, last_error = ?3
         WHERE event_id IN (SELECT value FROM json_each(?1))",
    )
    .bind(id_list(ids))
    .bind(format_timestamp(retry_at))
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn outbox_len(pool: &SqlitePool) -> Result<i64, StoreError> {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?;
    Ok(n)
}

/// Claims left behind by an earlier run of this process are released at start:
/// a SQLite store belongs to one process, so nobody else holds them.
pub async fn release_claims(pool: &SqlitePool, now: DateTime<Utc>) -> Result<(), StoreError> {
    let now = format_timestamp(now);
    let mut tx = pool.begin().await?;
    for table in ["outbox", "local_queue_messages"] {
        sqlx::query(&format!(
            "UPDATE {table} SET available_at = ?1 WHERE available_at > ?1"
        ))
        .bind(&now)
        .execute(&mut *tx)
        .await?;
    }
    // Delivery attempts cut short by the stop: due again now, under no claim.
    sqlx::query(
        "UPDATE deliveries SET next_attempt_at = ?1, claim = NULL
         WHERE state = 'pending' AND claim IS NOT NULL",
    )
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Puts each event on the named in-process queues; a message already there stays.
pub async fn enqueue_local(
    pool: &SqlitePool,
    routes: &[LocalRoute<'_>],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let now = format_timestamp(now);
    let mut tx = pool.begin().await?;
    for route in routes {
        sqlx::query(
            "INSERT INTO local_queue_messages (queue, event_id, available_at)
             VALUES (?, ?, ?) ON CONFLICT (queue, event_id) DO NOTHING",
        )
        .bind(route.queue)
        .bind(route.event_id.to_string())
        .bind(&now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn claim_local(
    pool: &SqlitePool,
    queue: &str,
    limit: i64,
    max_bytes: i64,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Vec<Claimed>, StoreError> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query_as::<_, ClaimRow>(
        "UPDATE local_queue_messages SET available_at = ?3, deliveries = deliveries + 1
         WHERE queue = ?1 AND event_id IN (
             SELECT event_id FROM (
                 SELECT m.event_id, length(CAST(e.payload AS BLOB)) AS size,
                        sum(length(CAST(e.payload AS BLOB)))
                            OVER (ORDER BY m.available_at, m.event_id)
                            - length(CAST(e.payload AS BLOB)) AS before
                 FROM local_queue_messages m JOIN events e ON e.id = m.event_id
                 WHERE m.queue = ?1 AND m.available_at <= ?2
                 ORDER BY m.available_at, m.event_id LIMIT ?4)
             WHERE before = 0 OR before + size <= ?5)
         RETURNING event_id, deliveries AS attempts",
    )
    .bind(queue)
    .bind(format_timestamp(now))
    .bind(format_timestamp(lease_until))
    .bind(limit)
    .bind(max_bytes)
    .fetch_all(&mut *tx)
    .await?;
    let claimed = claimed_events(&mut tx, rows).await?;
    tx.commit().await?;
    Ok(claimed)
}

/// Acknowledges in-process messages: they leave their queues.
pub async fn ack_local(
    pool: &SqlitePool,
    acks: &[(String, EventId)],
) -> Result<Vec<()>, StoreError> {
    let pairs: Vec<[String; 2]> = acks
        .iter()
        .map(|(queue, id)| [queue.clone(), id.to_string()])
        .collect();
    sqlx::query(
        "DELETE FROM local_queue_messages WHERE (queue, event_id) IN
             (SELECT j.value ->> 0, j.value ->> 1 FROM json_each(?1) AS j)",
    )
    .bind(serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into()))
    .execute(pool)
    .await?;
    Ok(vec![(); acks.len()])
}

/// Hands an in-process message out again at `at`.
pub async fn requeue_local(
    pool: &SqlitePool,
    queue: &str,
    id: EventId,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE local_queue_messages SET available_at = ?3 WHERE queue = ?1 AND event_id = ?2",
    )
    .bind(queue)
    .bind(id.to_string())
    .bind(format_timestamp(at))
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn event_id_by_webhook_id(
    pool: &SqlitePool,
    client_key: &ClientKey,
    webhook_id: &str,
) -> Result<EventId, StoreError> {
    let (id,): (String,) =
        sqlx::query_as("SELECT id FROM events WHERE tenant_client_key = ? AND webhook_id = ?")
            .bind(&client_key.0)
            .bind(webhook_id)
            .fetch_one(pool)
            .await?;
    decode::event_id(&id)
}

pub async fn event(pool: &SqlitePool, id: EventId) -> Result<Option<Event>, StoreError> {
    sqlx::query_as::<_, EventRow>("SELECT * FROM events WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?
        .map(Event::try_from)
        .transpose()
}

pub async fn list_events(
    pool: &SqlitePool,
    filter: &EventFilter,
) -> Result<Vec<Event>, StoreError> {
    // Hyphenated lower-case v7 ids compare as text in time order.
    sqlx::query_as::<_, EventRow>(
        r"SELECT * FROM events
         WHERE (?1 IS NULL OR event = ?1)
           AND (?2 IS NULL OR tenant_client_key = ?2)
           AND (?3 IS NULL OR id < ?3)
           AND (?5 IS NULL OR event LIKE ?5 ESCAPE '\')
           AND (?6 IS NULL OR source = ?6)
           AND (?7 IS NULL OR webhook_id = ?7)
           AND (?8 IS NULL OR id >= ?8)
         ORDER BY id DESC LIMIT ?4",
    )
    .bind(filter.exact_event())
    .bind(filter.client_key.as_ref().map(|k| &k.0))
    .bind(filter.before.map(|id| id.to_string()))
    .bind(filter.limit)
    .bind(filter.like_event())
    .bind(&filter.source)
    .bind(&filter.webhook_id)
    .bind(filter.from.map(|id| id.to_string()))
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Event::try_from)
    .collect()
}
