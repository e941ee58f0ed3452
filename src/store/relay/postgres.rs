//! The relay's SQL for PostgreSQL.

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    assemble, AttemptFilter, AttemptRow, AttemptWrite, ClaimRow, DeliveryFilter, DeliveryRow,
    DueDelivery, Recorded, SubscriptionColumns, SubscriptionRow,
};
use crate::domain::{Attempt, Delivery, DeliveryId, Event, EventId, Subscription, SubscriptionId};
use crate::store::postgres::{uuids, EventRow};
use crate::store::StoreError;

type SubRow = SubscriptionRow<Uuid, DateTime<Utc>, bool>;

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds the fields an insert and an update share, in column order, as the
/// parameters after the id (`url` to `failing_since`).
fn bind_fields<'q>(
    query: Query<'q>,
    sub: &'q Subscription,
    cols: &'q SubscriptionColumns,
) -> Query<'q> {
    query
        .bind(&sub.url)
        .bind(&cols.events)
        .bind(&cols.tenants)
        .bind(&sub.filter)
        .bind(&cols.headers)
        .bind(sub.secret.expose_secret())
        .bind(&sub.description)
        .bind(sub.rate_limit.map(i64::from))
        .bind(i64::from(sub.max_concurrency))
        .bind(sub.enabled)
        .bind(&sub.disabled_reason)
        .bind(&sub.transform)
        .bind(sub.failing_since)
}

pub async fn insert_subscription(pool: &PgPool, sub: &Subscription) -> Result<(), StoreError> {
    let cols = SubscriptionColumns::of(sub);
    bind_fields(
        sqlx::query(
            "INSERT INTO subscriptions (id, url, events, tenants, filter, headers, secret,
             description, rate_limit, max_concurrency, enabled, disabled_reason,
             transform, failing_since, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(sub.id.0),
        sub,
        &cols,
    )
    .bind(sub.created_at)
    .bind(sub.updated_at)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn update_subscription(
    pool: &PgPool,
    sub: &Subscription,
    read_at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let cols = SubscriptionColumns::of(sub);
    let done = bind_fields(
        sqlx::query(
            "UPDATE subscriptions SET url = $2, events = $3, tenants = $4, filter = $5,
             headers = $6, secret = $7, description = $8, rate_limit = $9,
             max_concurrency = $10, enabled = $11, disabled_reason = $12,
             transform = $13, failing_since = $14, updated_at = $15
         WHERE id = $1 AND updated_at = $16",
        )
        .bind(sub.id.0),
        sub,
        &cols,
    )
    .bind(sub.updated_at)
    .bind(read_at)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Deletes a subscription with its deliveries and attempts. The deliveries go
/// first, in the order an attempt being recorded locks rows (delivery, then
/// subscription), so that deleting while deliveries are attempted waits rather
/// than deadlocks; a deadlock that happens anyway (with a new delivery created
/// meanwhile) is retried.
pub async fn delete_subscription(pool: &PgPool, id: SubscriptionId) -> Result<bool, StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match try_delete_subscription(pool, id).await {
            Err(sqlx::Error::Database(db))
                if db.code().as_deref() == Some("40P01") && tries < 5 =>
            {
                tracing::info!(subscription_id = %id, "deadlock deleting a subscription; retrying");
            }
            done => return Ok(done?),
        }
    }
}

async fn try_delete_subscription(pool: &PgPool, id: SubscriptionId) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "DELETE FROM deliveries WHERE id IN
             (SELECT id FROM deliveries WHERE subscription_id = $1 ORDER BY id FOR UPDATE)",
    )
    .bind(id.0)
    .execute(&mut *tx)
    .await?;
    let done = sqlx::query("DELETE FROM subscriptions WHERE id = $1")
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected() > 0)
}

pub async fn subscription(
    pool: &PgPool,
    id: SubscriptionId,
) -> Result<Option<Subscription>, StoreError> {
    sqlx::query_as::<_, SubRow>("SELECT * FROM subscriptions WHERE id = $1")
        .bind(id.0)
        .fetch_optional(pool)
        .await?
        .map(Subscription::try_from)
        .transpose()
}

pub async fn subscriptions(
    pool: &PgPool,
    enabled_only: bool,
) -> Result<Vec<Subscription>, StoreError> {
    sqlx::query_as::<_, SubRow>("SELECT * FROM subscriptions WHERE enabled OR NOT $1 ORDER BY id")
        .bind(enabled_only)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(Subscription::try_from)
        .collect()
}

pub async fn create_deliveries(
    pool: &PgPool,
    fan_out: &[(EventId, &[SubscriptionId])],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let pairs = fan_out
        .iter()
        .flat_map(|(event, subs)| subs.iter().map(move |sub| (event.0, sub.0)));
    let (events, subs): (Vec<Uuid>, Vec<Uuid>) = pairs.unzip();
    let ids: Vec<Uuid> = events.iter().map(|_| DeliveryId::new().0).collect();
    sqlx::query(
        "INSERT INTO deliveries (id, event_id, subscription_id, state, next_attempt_at,
             created_at, updated_at)
         SELECT t.d, t.e, t.s, 'pending', $4, $4, $4
         FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[]) AS t(d, e, s)
         JOIN subscriptions sub ON sub.id = t.s -- one deleted meanwhile is skipped
         ON CONFLICT (event_id, subscription_id) DO NOTHING",
    )
    .bind(ids)
    .bind(events)
    .bind(subs)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

/// `(rows, bytes)`: at most that many deliveries, whose payloads come to at
/// most that many bytes (the first always fits).
pub async fn claim_deliveries(
    pool: &PgPool,
    (limit, max_bytes): (i64, i64),
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    skip: &[SubscriptionId],
    claim: Uuid,
) -> Result<Vec<DueDelivery>, StoreError> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query_as::<_, ClaimRow<Uuid>>(
        "WITH candidates AS (
             SELECT d.id, d.next_attempt_at, octet_length(e.payload) AS size
             FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id
                  JOIN events e ON e.id = d.event_id
             WHERE d.state = 'pending' AND d.next_attempt_at <= $1 AND s.enabled
               AND NOT (d.subscription_id = ANY($4))
             ORDER BY d.next_attempt_at LIMIT $3 FOR UPDATE OF d SKIP LOCKED
         ), within AS (
             SELECT id FROM (
                 SELECT id, size, sum(size) OVER (ORDER BY next_attempt_at, id) - size AS before
                 FROM candidates) c
             WHERE before = 0 OR before + size <= $6
         )
         UPDATE deliveries SET next_attempt_at = $2, claim = $5, attempts = attempts + 1,
             updated_at = $1
         WHERE id IN (SELECT id FROM within)
         RETURNING id, event_id, subscription_id, attempts",
    )
    .bind(now)
    .bind(lease_until)
    .bind(limit)
    .bind(uuids(skip, |s| s.0))
    .bind(claim)
    .bind(max_bytes)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let event_ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let sub_ids: Vec<Uuid> = rows.iter().map(|r| r.subscription_id).collect();
    let events = sqlx::query_as::<_, EventRow>("SELECT * FROM events WHERE id = ANY($1)")
        .bind(event_ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(Event::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    let subscriptions =
        sqlx::query_as::<_, SubRow>("SELECT * FROM subscriptions WHERE id = ANY($1)")
            .bind(sub_ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(Subscription::try_from)
            .collect::<Result<Vec<_>, _>>()?;
    tx.commit().await?;
    assemble(rows, claim, events, subscriptions)
}

pub async fn unclaim_deliveries(
    pool: &PgPool,
    due: &[DueDelivery],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET next_attempt_at = $3, claim = NULL, attempts = attempts - 1
         WHERE id = ANY($1) AND claim = $2",
    )
    .bind(uuids(due, |d| d.id.0))
    .bind(due[0].claim)
    .bind(at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records the attempts in one transaction, in the order of their
/// subscriptions, so that two writers lock subscription rows in one order.
pub(crate) async fn record_attempts(
    pool: &PgPool,
    records: &[AttemptWrite],
) -> Result<Vec<Recorded>, StoreError> {
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by_key(|&i| (records[i].subscription.0, records[i].delivery.0));
    let mut recorded = vec![None; records.len()];
    let mut tx = pool.begin().await?;
    for i in order {
        recorded[i] = Some(record_attempt(&mut tx, &records[i]).await?);
    }
    tx.commit().await?;
    Ok(recorded.into_iter().flatten().collect())
}

async fn record_attempt(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    r: &AttemptWrite,
) -> Result<Recorded, StoreError> {
    sqlx::query(
        "INSERT INTO delivery_attempts (id, delivery_id, event_id, subscription_id,
             attempted_at, duration_ms, status_code, error, response_body, outcome)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(Uuid::now_v7())
    .bind(r.delivery.0)
    .bind(r.event.0)
    .bind(r.subscription.0)
    .bind(r.attempted_at)
    .bind(r.duration_ms)
    .bind(r.status_code)
    .bind(&r.error)
    .bind(&r.response_body)
    .bind(r.outcome.as_str())
    .execute(&mut **tx)
    .await?;
    let current = sqlx::query(
        "UPDATE deliveries SET state = $3, next_attempt_at = $4, claim = NULL,
             last_status = $5, last_error = $6, updated_at = $7
         WHERE id = $1 AND claim = $2",
    )
    .bind(r.delivery.0)
    .bind(r.claim)
    .bind(r.outcome.state().as_str())
    .bind(r.next_attempt_at)
    .bind(r.status_code)
    .bind(&r.error)
    .bind(r.attempted_at)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        > 0;
    let disabled = if r.outcome.is_success() {
        sqlx::query(
            "UPDATE subscriptions SET failing_since = NULL
             WHERE id = $1 AND failing_since IS NOT NULL",
        )
        .bind(r.subscription.0)
        .execute(&mut **tx)
        .await?;
        None
    } else {
        let failing_since = sqlx::query_as::<_, (DateTime<Utc>,)>(
            "UPDATE subscriptions SET failing_since = COALESCE(failing_since, $2)
             WHERE id = $1 RETURNING failing_since",
        )
        .bind(r.subscription.0)
        .bind(r.attempted_at)
        .fetch_optional(&mut **tx)
        .await?;
        match failing_since.and_then(|(since,)| r.disable_reason(since)) {
            Some(reason) => sqlx::query(
                "UPDATE subscriptions SET enabled = FALSE, disabled_reason = $2, updated_at = $3
                 WHERE id = $1 AND enabled",
            )
            .bind(r.subscription.0)
            .bind(&reason)
            .bind(r.attempted_at)
            .execute(&mut **tx)
            .await?
            .rows_affected()
            .gt(&0)
            .then_some(reason),
            None => None,
        }
    };
    Ok(Recorded { current, disabled })
}

pub async fn replay_deliveries(
    pool: &PgPool,
    event: EventId,
    subscriptions: &[SubscriptionId],
    now: DateTime<Utc>,
) -> Result<Vec<Delivery>, StoreError> {
    let ids: Vec<Uuid> = subscriptions.iter().map(|_| DeliveryId::new().0).collect();
    sqlx::query_as::<_, DeliveryRow<Uuid, DateTime<Utc>>>(
        "INSERT INTO deliveries (id, event_id, subscription_id, state, next_attempt_at,
             created_at, updated_at)
         SELECT t.d, $2, t.s, 'pending', $4, $4, $4
         FROM UNNEST($1::uuid[], $3::uuid[]) AS t(d, s)
         JOIN subscriptions sub ON sub.id = t.s -- one deleted meanwhile is skipped
         ON CONFLICT (event_id, subscription_id) DO UPDATE SET state = 'pending',
             attempts = 0, next_attempt_at = $4, claim = NULL, updated_at = $4
         RETURNING *",
    )
    .bind(ids)
    .bind(event.0)
    .bind(uuids(subscriptions, |s| s.0))
    .bind(now)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Delivery::try_from)
    .collect()
}

pub async fn replay_subscription(
    pool: &PgPool,
    subscription: SubscriptionId,
    states: &[&str],
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = $3,
             claim = NULL, updated_at = $3
         WHERE subscription_id = $1 AND state = ANY($2)",
    )
    .bind(subscription.0)
    .bind(states)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

pub async fn deliveries(
    pool: &PgPool,
    filter: &DeliveryFilter,
) -> Result<Vec<Delivery>, StoreError> {
    sqlx::query_as::<_, DeliveryRow<Uuid, DateTime<Utc>>>(
        "SELECT * FROM deliveries
         WHERE ($1::uuid IS NULL OR event_id = $1)
           AND ($2::uuid IS NULL OR subscription_id = $2)
           AND ($3::text IS NULL OR state = $3)
           AND ($4::uuid IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5",
    )
    .bind(filter.event.map(|e| e.0))
    .bind(filter.subscription.map(|s| s.0))
    .bind(filter.state.map(|s| s.as_str()))
    .bind(filter.before.map(|d| d.0))
    .bind(filter.limit)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Delivery::try_from)
    .collect()
}

pub async fn attempts(pool: &PgPool, filter: &AttemptFilter) -> Result<Vec<Attempt>, StoreError> {
    sqlx::query_as::<_, AttemptRow<Uuid, DateTime<Utc>>>(
        "SELECT * FROM delivery_attempts
         WHERE ($1::uuid IS NULL OR event_id = $1)
           AND ($2::uuid IS NULL OR subscription_id = $2)
           AND ($3::uuid IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4",
    )
    .bind(filter.event.map(|e| e.0))
    .bind(filter.subscription.map(|s| s.0))
    .bind(filter.before)
    .bind(filter.limit)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Attempt::try_from)
    .collect()
}
