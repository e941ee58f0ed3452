//! The relay's SQL for PostgreSQL.
//! Batch statements are planned afresh on each run: see `store/postgres.rs`.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    assemble, streaks, AttemptFilter, AttemptRow, AttemptWrite, ClaimLimits, ClaimRow,
    DeliveryFilter, DeliveryRow, DueDelivery, Recorded, SubscriptionColumns, SubscriptionRow,
    Window,
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
    take: &HashSet<(EventId, SubscriptionId)>,
    window: &Window,
) -> Result<Vec<(DeliveryId, SubscriptionId, Event)>, StoreError> {
    let pairs: Vec<(EventId, SubscriptionId)> = fan_out
        .iter()
        .flat_map(|(event, subs)| subs.iter().map(move |sub| (*event, *sub)))
        .collect();
    let ids: Vec<Uuid> = pairs.iter().map(|_| DeliveryId::new().0).collect();
    let taken: Vec<(Uuid, Uuid, Uuid)> = sqlx::query_as(
        "WITH created AS (
             INSERT INTO deliveries (id, event_id, subscription_id, state, next_attempt_at,
                 claim, attempts, created_at, updated_at)
             SELECT t.d, t.e, t.s, 'pending', CASE WHEN t.take THEN $6 ELSE $5 END,
                    CASE WHEN t.take THEN $7::uuid END, CASE WHEN t.take THEN 1 ELSE 0 END,
                    $5, $5
             FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::bool[]) AS t(d, e, s, take)
             JOIN subscriptions sub ON sub.id = t.s -- one deleted meanwhile is skipped
             ON CONFLICT (event_id, subscription_id) DO NOTHING
             RETURNING id, event_id, subscription_id, claim
         )
         SELECT id, event_id, subscription_id FROM created WHERE claim IS NOT NULL",
    )
    .bind(ids)
    .bind(uuids(&pairs, |(e, _)| e.0))
    .bind(uuids(&pairs, |(_, s)| s.0))
    .bind(pairs.iter().map(|p| take.contains(p)).collect::<Vec<_>>())
    .bind(window.now)
    .bind(window.until)
    .bind(window.claim)
    .fetch_all(pool)
    .await?;
    if taken.is_empty() {
        return Ok(Vec::new());
    }
    let events = events_by_id(pool, taken.iter().map(|(_, e, _)| *e).collect()).await?;
    // An event gone meanwhile (retention) leaves its delivery to its lease.
    Ok(taken
        .into_iter()
        .filter_map(|(id, event, sub)| {
            let event = events.get(&EventId(event))?.clone();
            Some((DeliveryId(id), SubscriptionId(sub), event))
        })
        .collect())
}

/// Events by id.
async fn events_by_id(
    conn: impl sqlx::PgExecutor<'_>,
    ids: Vec<Uuid>,
) -> Result<std::collections::HashMap<EventId, Event>, StoreError> {
    sqlx::query_as::<_, EventRow>("SELECT * FROM events WHERE id = ANY($1)")
        .persistent(false)
        .bind(ids)
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(|row| Event::try_from(row).map(|e| (e.id, e)))
        .collect()
}

/// Due rows are locked first, read from the due index alone in its order
/// (no join the planner could put before the LIMIT), then cut to
/// each subscription's room and to the byte budget (the first row always
/// fits); rows locked but left out stay as they were.
pub async fn claim_deliveries(
    pool: &PgPool,
    limits: &ClaimLimits<'_>,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    claim: Uuid,
) -> Result<Vec<DueDelivery>, StoreError> {
    let mut tx = pool.begin().await?;
    // Whatever the statistics say (they lag far behind a queue that grows by
    // thousands a second, and once estimated 5 due rows for 30,000), the due
    // rows are read from the due index in its order and the few taken are
    // looked up by key: a bitmap scan and sort of every due row cost 4 ms a
    // claim. With the plan's shape fixed, it is prepared once. (The penalty
    // that turns a scan off also lifts the plan's cost above the threshold
    // of JIT compilation, which would cost 300 ms a claim: off too.)
    sqlx::query(
        "SELECT set_config('enable_seqscan', 'off', true),
                set_config('enable_bitmapscan', 'off', true), set_config('jit', 'off', true)",
    )
    .execute(&mut *tx)
    .await?;
    let rows = sqlx::query_as::<_, ClaimRow<Uuid>>(
        "WITH candidates AS MATERIALIZED (
             SELECT d.id, d.event_id, d.subscription_id, d.next_attempt_at
             FROM deliveries d
             WHERE d.state = 'pending' AND d.next_attempt_at <= $1
               AND d.subscription_id <> ALL($4)
               AND d.subscription_id <> ALL(ARRAY(SELECT id FROM subscriptions
                                                  WHERE NOT enabled))
             ORDER BY d.next_attempt_at LIMIT $3 FOR UPDATE OF d SKIP LOCKED
         ), ranked AS (
             SELECT c.id, octet_length(e.payload) AS size,
                    LEAST(s.max_concurrency, $9) - COALESCE(b.taken, 0) AS room,
                    row_number() OVER (PARTITION BY c.subscription_id
                                       ORDER BY c.next_attempt_at, c.id) AS n,
                    sum(octet_length(e.payload)) OVER (ORDER BY c.next_attempt_at, c.id)
                        - octet_length(e.payload) AS before
             FROM candidates c JOIN subscriptions s ON s.id = c.subscription_id
                  JOIN events e ON e.id = c.event_id
                  LEFT JOIN UNNEST($7::uuid[], $8::int8[]) AS b(sub, taken)
                       ON b.sub = c.subscription_id
         ), within AS (
             SELECT id FROM ranked WHERE n <= room AND (before = 0 OR before + size <= $6)
         )
         UPDATE deliveries SET next_attempt_at = $2, claim = $5, attempts = attempts + 1,
             updated_at = $1
         WHERE id IN (SELECT id FROM within)
         RETURNING id, event_id, subscription_id, attempts",
    )
    .bind(now)
    .bind(lease_until)
    .bind(limits.rows())
    .bind(uuids(limits.skip, |s| s.0))
    .bind(claim)
    .bind(limits.bytes())
    .bind(uuids(limits.busy, |(s, _)| s.0))
    .bind(
        limits
            .busy
            .iter()
            .map(|(_, n)| i64::from(*n))
            .collect::<Vec<_>>(),
    )
    .bind(i64::from(limits.per_subscription))
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let event_ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let sub_ids: Vec<Uuid> = rows.iter().map(|r| r.subscription_id).collect();
    let events = events_by_id(&mut *tx, event_ids)
        .await?
        .into_values()
        .collect();
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
    .persistent(false)
    .bind(uuids(due, |d| d.id.0))
    .bind(due[0].claim)
    .bind(at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records the attempts in one transaction: the attempts in one insert, the
/// deliveries in one update. A subscription whose attempts here all
/// succeeded has its failure streak cleared in one statement for all such
/// subscriptions; one with a failure is taken attempt by attempt, in order,
/// as it may be disabled. Rows are locked deliveries first, then
/// subscriptions in id order, the order every writer uses.
pub(crate) async fn record_attempts(
    pool: &PgPool,
    records: &[AttemptWrite],
) -> Result<Vec<Recorded>, StoreError> {
    let column = |f: fn(&AttemptWrite) -> Option<&str>| -> Vec<Option<&str>> {
        records.iter().map(f).collect()
    };
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO delivery_attempts (id, delivery_id, event_id, subscription_id,
             attempted_at, duration_ms, status_code, error, response_body, outcome)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[],
                              $5::timestamptz[], $6::int4[], $7::int4[], $8::text[],
                              $9::text[], $10::text[])",
    )
    .bind(records.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>())
    .bind(uuids(records, |r| r.delivery.0))
    .bind(uuids(records, |r| r.event.0))
    .bind(uuids(records, |r| r.subscription.0))
    .bind(records.iter().map(|r| r.attempted_at).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.duration_ms).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.status_code).collect::<Vec<_>>())
    .bind(column(|r| r.error.as_deref()))
    .bind(column(|r| r.response_body.as_deref()))
    .bind(column(|r| Some(r.outcome.as_str())))
    .execute(&mut *tx)
    .await?;
    // Only where the claim still holds: a replay or a new claim since owns it.
    let current: std::collections::HashSet<Uuid> = sqlx::query_as::<_, (Uuid,)>(
        "UPDATE deliveries d SET state = t.state, next_attempt_at = t.next, claim = NULL,
             last_status = t.status, last_error = t.error, updated_at = t.at
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::int4[],
                     $6::text[], $7::timestamptz[]) AS t(id, claim, state, next, status, error, at)
         WHERE d.id = t.id AND d.claim = t.claim
         RETURNING d.id",
    )
    .persistent(false)
    .bind(uuids(records, |r| r.delivery.0))
    .bind(uuids(records, |r| r.claim))
    .bind(column(|r| Some(r.outcome.state().as_str())))
    .bind(
        records
            .iter()
            .map(|r| r.next_attempt_at)
            .collect::<Vec<_>>(),
    )
    .bind(records.iter().map(|r| r.status_code).collect::<Vec<_>>())
    .bind(column(|r| r.error.as_deref()))
    .bind(records.iter().map(|r| r.attempted_at).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(id,)| id)
    .collect();

    let (cleared, one_by_one) = streaks(records);
    if !cleared.is_empty() {
        sqlx::query(
            "UPDATE subscriptions SET failing_since = NULL
             WHERE id = ANY($1) AND failing_since IS NOT NULL",
        )
        .bind(uuids(&cleared, |s| s.0))
        .execute(&mut *tx)
        .await?;
    }
    let mut disabled: Vec<Option<String>> = vec![None; records.len()];
    for i in one_by_one {
        disabled[i] = streak(&mut tx, &records[i]).await?;
    }
    tx.commit().await?;
    Ok(records
        .iter()
        .zip(disabled)
        .map(|(r, disabled)| Recorded {
            current: current.contains(&r.delivery.0),
            disabled,
        })
        .collect())
}

/// Keeps a subscription's failure streak through one attempt: a success
/// ends it, a failure starts it (if none is running) and may disable the
/// subscription. Returns why it was disabled, if it was just now.
async fn streak(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    r: &AttemptWrite,
) -> Result<Option<String>, StoreError> {
    if r.outcome.is_success() {
        sqlx::query(
            "UPDATE subscriptions SET failing_since = NULL
             WHERE id = $1 AND failing_since IS NOT NULL",
        )
        .bind(r.subscription.0)
        .execute(&mut **tx)
        .await?;
        return Ok(None);
    }
    let failing_since = sqlx::query_as::<_, (DateTime<Utc>,)>(
        "UPDATE subscriptions SET failing_since = COALESCE(failing_since, $2)
         WHERE id = $1 RETURNING failing_since",
    )
    .bind(r.subscription.0)
    .bind(r.attempted_at)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(reason) = failing_since.and_then(|(since,)| r.disable_reason(since)) else {
        return Ok(None);
    };
    let done = sqlx::query(
        "UPDATE subscriptions SET enabled = FALSE, disabled_reason = $2, updated_at = $3
         WHERE id = $1 AND enabled",
    )
    .bind(r.subscription.0)
    .bind(&reason)
    .bind(r.attempted_at)
    .execute(&mut **tx)
    .await?;
    Ok((done.rows_affected() > 0).then_some(reason))
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
