//! The relay's SQL for SQLite: ids and timestamps as TEXT (see `store/sqlite.rs`),
//! id lists as JSON arrays read with `json_each`.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sqlx::{Sqlite, SqlitePool};
use uuid::Uuid;

use super::{
    assemble, streaks, AttemptFilter, AttemptRow, AttemptWrite, ClaimLimits, ClaimRow, Column,
    DeliveryFilter, DeliveryRow, DueDelivery, Recorded, SubscriptionColumns, SubscriptionRow,
    Window,
};
use crate::domain::format_timestamp;
use crate::domain::{Attempt, Delivery, DeliveryId, Event, EventId, Subscription, SubscriptionId};
use crate::store::sqlite::{id_list, time, EventRow};
use crate::store::StoreError;

type SubRow = SubscriptionRow<String, String, i64>;

/// `[[delivery id, subscription id], …]` for new deliveries, read with `json_each`.
fn new_deliveries(subscriptions: &[SubscriptionId]) -> String {
    let pairs: Vec<[String; 2]> = subscriptions
        .iter()
        .map(|s| [DeliveryId::new().to_string(), s.to_string()])
        .collect();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into())
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

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
        .bind(sub.failing_since.map(format_timestamp))
}

pub async fn insert_subscription(pool: &SqlitePool, sub: &Subscription) -> Result<(), StoreError> {
    let cols = SubscriptionColumns::of(sub);
    bind_fields(
        sqlx::query(
            "INSERT INTO subscriptions (id, url, events, tenants, filter, headers, secret,
             description, rate_limit, max_concurrency, enabled, disabled_reason,
             transform, failing_since, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )
        .bind(sub.id.to_string()),
        sub,
        &cols,
    )
    .bind(format_timestamp(sub.created_at))
    .bind(format_timestamp(sub.updated_at))
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn update_subscription(
    pool: &SqlitePool,
    sub: &Subscription,
    read_at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let cols = SubscriptionColumns::of(sub);
    let done = bind_fields(
        sqlx::query(
            "UPDATE subscriptions SET url = ?2, events = ?3, tenants = ?4, filter = ?5,
             headers = ?6, secret = ?7, description = ?8, rate_limit = ?9,
             max_concurrency = ?10, enabled = ?11, disabled_reason = ?12,
             transform = ?13, failing_since = ?14, updated_at = ?15
         WHERE id = ?1 AND updated_at = ?16",
        )
        .bind(sub.id.to_string()),
        sub,
        &cols,
    )
    .bind(format_timestamp(sub.updated_at))
    .bind(format_timestamp(read_at))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn delete_subscription(
    pool: &SqlitePool,
    id: SubscriptionId,
) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM subscriptions WHERE id = ?1")
        .bind(id.to_string())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn subscription(
    pool: &SqlitePool,
    id: SubscriptionId,
) -> Result<Option<Subscription>, StoreError> {
    sqlx::query_as::<_, SubRow>("SELECT * FROM subscriptions WHERE id = ?1")
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?
        .map(Subscription::try_from)
        .transpose()
}

pub async fn subscriptions(
    pool: &SqlitePool,
    enabled_only: bool,
) -> Result<Vec<Subscription>, StoreError> {
    sqlx::query_as::<_, SubRow>("SELECT * FROM subscriptions WHERE enabled OR NOT ?1 ORDER BY id")
        .bind(enabled_only)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(Subscription::try_from)
        .collect()
}

pub async fn create_deliveries(
    pool: &SqlitePool,
    fan_out: &[(EventId, &[SubscriptionId])],
    take: &HashSet<(EventId, SubscriptionId)>,
    window: &Window,
) -> Result<Vec<(DeliveryId, SubscriptionId, Event)>, StoreError> {
    let rows: Vec<(String, String, String, bool)> = fan_out
        .iter()
        .flat_map(|(event, subs)| {
            subs.iter().map(move |sub| {
                (
                    DeliveryId::new().to_string(),
                    event.to_string(),
                    sub.to_string(),
                    take.contains(&(*event, *sub)),
                )
            })
        })
        .collect();
    let mut tx = pool.begin().await?;
    let taken = sqlx::query_as::<_, (String, String, String, Option<String>)>(
        "INSERT INTO deliveries (id, event_id, subscription_id, state, next_attempt_at,
             claim, attempts, created_at, updated_at)
         SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, 'pending',
                CASE WHEN j.value ->> 3 THEN ?3 ELSE ?2 END,
                CASE WHEN j.value ->> 3 THEN ?4 END,
                CASE WHEN j.value ->> 3 THEN 1 ELSE 0 END, ?2, ?2
         FROM json_each(?1) AS j
         JOIN subscriptions s ON s.id = j.value ->> 2 -- one deleted meanwhile is skipped
         WHERE true ON CONFLICT (event_id, subscription_id) DO NOTHING
         RETURNING id, event_id, subscription_id, claim",
    )
    .bind(serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into()))
    .bind(format_timestamp(window.now))
    .bind(format_timestamp(window.until))
    .bind(window.claim.to_string())
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .filter(|row| row.3.is_some())
    .map(|(id, event, sub, _)| (id, event, sub))
    .collect::<Vec<_>>();
    if taken.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    let events: std::collections::HashMap<String, Event> = sqlx::query_as::<_, EventRow>(
        "SELECT * FROM events WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(id_list(taken.iter().map(|(_, e, _)| e)))
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|row| Event::try_from(row).map(|e| (e.id.to_string(), e)))
    .collect::<Result<_, _>>()?;
    tx.commit().await?;
    // An event gone meanwhile (retention) leaves its delivery to its lease.
    taken
        .into_iter()
        .filter_map(|(id, event, sub)| Some((id, sub, events.get(&event)?.clone())))
        .map(|(id, sub, event)| Ok((DeliveryId(id.value()?), SubscriptionId(sub.value()?), event)))
        .collect()
}

/// Due rows in order, cut to each subscription's room and to the byte
/// budget (the first row always fits).
pub async fn claim_deliveries(
    pool: &SqlitePool,
    limits: &ClaimLimits<'_>,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    claim: Uuid,
) -> Result<Vec<DueDelivery>, StoreError> {
    let busy: Vec<(String, u32)> = limits
        .busy
        .iter()
        .map(|(s, n)| (s.to_string(), *n))
        .collect();
    let mut tx = pool.begin().await?;
    let rows = sqlx::query_as::<_, ClaimRow<String>>(
        "UPDATE deliveries SET next_attempt_at = ?2, claim = ?5, attempts = attempts + 1,
             updated_at = ?1
         WHERE id IN (
             SELECT id FROM (
                 SELECT c.id, c.size, c.room - COALESCE(b.value ->> 1, 0) AS room,
                        row_number() OVER (PARTITION BY c.subscription_id
                                           ORDER BY c.next_attempt_at, c.id) AS n,
                        sum(c.size) OVER (ORDER BY c.next_attempt_at, c.id) - c.size AS before
                 FROM (
                     SELECT d.id, d.subscription_id, d.next_attempt_at,
                            length(CAST(e.payload AS BLOB)) AS size,
                            min(s.max_concurrency, ?8) AS room
                     FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id
                          JOIN events e ON e.id = d.event_id
                     WHERE d.state = 'pending' AND d.next_attempt_at <= ?1 AND s.enabled
                       AND d.subscription_id NOT IN (SELECT value FROM json_each(?4))
                     ORDER BY d.next_attempt_at, d.id LIMIT ?3) c
                 LEFT JOIN json_each(?7) b ON b.value ->> 0 = c.subscription_id)
             WHERE n <= room AND (before = 0 OR before + size <= ?6))
         RETURNING id, event_id, subscription_id, attempts",
    )
    .bind(format_timestamp(now))
    .bind(format_timestamp(lease_until))
    .bind(limits.rows())
    .bind(id_list(limits.skip))
    .bind(claim.to_string())
    .bind(limits.bytes())
    .bind(serde_json::to_string(&busy).unwrap_or_else(|_| "[]".into()))
    .bind(i64::from(limits.per_subscription))
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let event_ids = id_list(rows.iter().map(|r| &r.event_id));
    let sub_ids = id_list(rows.iter().map(|r| &r.subscription_id));
    let events = sqlx::query_as::<_, EventRow>(
        "SELECT * FROM events WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(event_ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(Event::try_from)
    .collect::<Result<Vec<_>, _>>()?;
    let subscriptions = sqlx::query_as::<_, SubRow>(
        "SELECT * FROM subscriptions WHERE id IN (SELECT value FROM json_each(?1))",
    )
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
    pool: &SqlitePool,
    due: &[DueDelivery],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET next_attempt_at = ?3, claim = NULL, attempts = attempts - 1
         WHERE id IN (SELECT value FROM json_each(?1)) AND claim = ?2",
    )
    .bind(id_list(due.iter().map(|d| d.id)))
    .bind(due[0].claim.to_string())
    .bind(format_timestamp(at))
    .execute(pool)
    .await?;
    Ok(())
}

/// Records the attempts in one transaction, in as few statements as the
/// PostgreSQL side (each is a round trip to the connection's thread): the
/// attempts in one insert, the deliveries in one update, the streaks of
/// subscriptions that only succeeded cleared in one more (see [`streaks`]).
pub(crate) async fn record_attempts(
    pool: &SqlitePool,
    records: &[AttemptWrite],
) -> Result<Vec<Recorded>, StoreError> {
    let mut tx = pool.begin().await?;
    let mut current = std::collections::HashSet::with_capacity(records.len());
    // 10 parameters a row: a chunk stays far below SQLite's 32,766.
    for chunk in records.chunks(256) {
        let mut attempts = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO delivery_attempts (id, delivery_id, event_id, subscription_id,
                 attempted_at, duration_ms, status_code, error, response_body, outcome) ",
        );
        attempts.push_values(chunk, |mut row, r| {
            row.push_bind(Uuid::now_v7().to_string())
                .push_bind(r.delivery.to_string())
                .push_bind(r.event.to_string())
                .push_bind(r.subscription.to_string())
                .push_bind(format_timestamp(r.attempted_at))
                .push_bind(r.duration_ms)
                .push_bind(r.status_code)
                .push_bind(&r.error)
                .push_bind(&r.response_body)
                .push_bind(r.outcome.as_str());
        });
        attempts.build().execute(&mut *tx).await?;
        // Only where the claim still holds: a replay or a new claim since owns it.
        let mut deliveries = sqlx::QueryBuilder::<Sqlite>::new(
            "WITH t (id, claim, state, next, status, error, at) AS (",
        );
        deliveries.push_values(chunk, |mut row, r| {
            row.push_bind(r.delivery.to_string())
                .push_bind(r.claim.to_string())
                .push_bind(r.outcome.state().as_str())
                .push_bind(format_timestamp(r.next_attempt_at))
                .push_bind(r.status_code)
                .push_bind(&r.error)
                .push_bind(format_timestamp(r.attempted_at));
        });
        deliveries.push(
            ") UPDATE deliveries SET state = t.state, next_attempt_at = t.next, claim = NULL,
                 last_status = t.status, last_error = t.error, updated_at = t.at
             FROM t WHERE deliveries.id = t.id AND deliveries.claim = t.claim
             RETURNING deliveries.id",
        );
        for (id,) in deliveries
            .build_query_as::<(String,)>()
            .fetch_all(&mut *tx)
            .await?
        {
            current.insert(id);
        }
    }
    let (cleared, one_by_one) = streaks(records);
    if !cleared.is_empty() {
        sqlx::query(
            "UPDATE subscriptions SET failing_since = NULL
             WHERE id IN (SELECT value FROM json_each(?1)) AND failing_since IS NOT NULL",
        )
        .bind(id_list(&cleared))
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
            current: current.contains(&r.delivery.to_string()),
            disabled,
        })
        .collect())
}

/// Keeps a subscription's failure streak through one attempt: a success
/// ends it, a failure starts it (if none is running) and may disable the
/// subscription. Returns why it was disabled, if it was just now.
async fn streak(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    r: &AttemptWrite,
) -> Result<Option<String>, StoreError> {
    if r.outcome.is_success() {
        sqlx::query(
            "UPDATE subscriptions SET failing_since = NULL
             WHERE id = ?1 AND failing_since IS NOT NULL",
        )
        .bind(r.subscription.to_string())
        .execute(&mut **tx)
        .await?;
        return Ok(None);
    }
    let failing_since = sqlx::query_as::<_, (String,)>(
        "UPDATE subscriptions SET failing_since = COALESCE(failing_since, ?2)
         WHERE id = ?1 RETURNING failing_since",
    )
    .bind(r.subscription.to_string())
    .bind(format_timestamp(r.attempted_at))
    .fetch_optional(&mut **tx)
    .await?;
    let failing_since = failing_since.map(|(t,)| time(&t)).transpose()?;
    let Some(reason) = failing_since.and_then(|since| r.disable_reason(since)) else {
        return Ok(None);
    };
    let done = sqlx::query(
        "UPDATE subscriptions SET enabled = FALSE, disabled_reason = ?2, updated_at = ?3
         WHERE id = ?1 AND enabled",
    )
    .bind(r.subscription.to_string())
    .bind(&reason)
    .bind(format_timestamp(r.attempted_at))
    .execute(&mut **tx)
    .await?;
    Ok((done.rows_affected() > 0).then_some(reason))
}

pub async fn replay_deliveries(
    pool: &SqlitePool,
    event: EventId,
    subscriptions: &[SubscriptionId],
    now: DateTime<Utc>,
) -> Result<Vec<Delivery>, StoreError> {
    sqlx::query_as::<_, DeliveryRow<String, String>>(
        "INSERT INTO deliveries (id, event_id, subscription_id, state, next_attempt_at,
             created_at, updated_at)
         SELECT j.value ->> 0, ?2, j.value ->> 1, 'pending', ?3, ?3, ?3 FROM json_each(?1) AS j
         JOIN subscriptions s ON s.id = j.value ->> 1 -- one deleted meanwhile is skipped
         WHERE true ON CONFLICT (event_id, subscription_id) DO UPDATE SET state = 'pending',
             attempts = 0, next_attempt_at = ?3, claim = NULL, updated_at = ?3
         RETURNING *",
    )
    .bind(new_deliveries(subscriptions))
    .bind(event.to_string())
    .bind(format_timestamp(now))
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Delivery::try_from)
    .collect()
}

pub async fn replay_subscription(
    pool: &SqlitePool,
    subscription: SubscriptionId,
    states: &[&str],
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?3,
             claim = NULL, updated_at = ?3
         WHERE subscription_id = ?1 AND state IN (SELECT value FROM json_each(?2))",
    )
    .bind(subscription.to_string())
    .bind(serde_json::to_string(states).unwrap_or_else(|_| "[]".into()))
    .bind(format_timestamp(now))
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

pub async fn deliveries(
    pool: &SqlitePool,
    filter: &DeliveryFilter,
) -> Result<Vec<Delivery>, StoreError> {
    sqlx::query_as::<_, DeliveryRow<String, String>>(
        "SELECT * FROM deliveries
         WHERE (?1 IS NULL OR event_id = ?1)
           AND (?2 IS NULL OR subscription_id = ?2)
           AND (?3 IS NULL OR state = ?3)
           AND (?4 IS NULL OR id < ?4)
         ORDER BY id DESC LIMIT ?5",
    )
    .bind(filter.event.map(|e| e.to_string()))
    .bind(filter.subscription.map(|s| s.to_string()))
    .bind(filter.state.map(|s| s.as_str()))
    .bind(filter.before.map(|d| d.to_string()))
    .bind(filter.limit)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Delivery::try_from)
    .collect()
}

pub async fn attempts(
    pool: &SqlitePool,
    filter: &AttemptFilter,
) -> Result<Vec<Attempt>, StoreError> {
    sqlx::query_as::<_, AttemptRow<String, String>>(
        "SELECT * FROM delivery_attempts
         WHERE (?1 IS NULL OR event_id = ?1)
           AND (?2 IS NULL OR subscription_id = ?2)
           AND (?3 IS NULL OR id < ?3)
         ORDER BY id DESC LIMIT ?4",
    )
    .bind(filter.event.map(|e| e.to_string()))
    .bind(filter.subscription.map(|s| s.to_string()))
    .bind(filter.before.map(|d| d.to_string()))
    .bind(filter.limit)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Attempt::try_from)
    .collect()
}
