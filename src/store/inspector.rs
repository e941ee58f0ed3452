//! What the inspector (the web UI) reads and keeps beyond the admin API's
//! rows: its sign-in sessions, and the counts its pages chart. The SQL is the
//! same on both backends except where a time is cut to the minute.
//!
//! Time ranges are bounds on the v7 primary keys of events and attempts, which
//! begin with their creation time, so every count here walks an index range.

use chrono::{DateTime, Utc};

use super::{Store, StoreError};
use crate::domain::{EventId, SubscriptionId};

/// An inspector session, found by the hash of its cookie.
#[derive(Debug, Clone)]
pub struct UiSession {
    pub csrf: String,
    pub token_print: String,
    pub expires_at: i64,
}

/// The overview's figures.
#[derive(Debug, Clone, Default)]
pub struct Overview {
    /// Events stored per minute (`YYYY-MM-DDTHH:MM`, UTC), oldest first; minutes
    /// with none are left out.
    pub events_per_minute: Vec<(String, i64)>,
    /// Attempts since the bound, and how many delivered.
    pub attempts: i64,
    pub delivered: i64,
    /// Events not yet confirmed by the broker, and the oldest one's id.
    pub outbox: i64,
    pub oldest_unpublished: Option<EventId>,
    pub dead_deliveries: i64,
    pub pending_deliveries: i64,
}

/// One subscription's attempts since a bound.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub attempts: i64,
    pub delivered: i64,
    pub last_failure_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Opens a session; expired ones are removed on the way.
    pub async fn create_ui_session(
        &self,
        id_hash: &str,
        session: &UiSession,
        now: i64,
    ) -> Result<(), StoreError> {
        on_pool!(self, write, |pool| {
            sqlx::query("DELETE FROM ui_sessions WHERE expires_at <= $1")
                .bind(now)
                .execute(pool)
                .await?;
            sqlx::query(
                "INSERT INTO ui_sessions (id_hash, csrf, token_print, expires_at)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(id_hash)
            .bind(&session.csrf)
            .bind(&session.token_print)
            .bind(session.expires_at)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    pub async fn ui_session(&self, id_hash: &str) -> Result<Option<UiSession>, StoreError> {
        let sql = "SELECT csrf, token_print, expires_at FROM ui_sessions WHERE id_hash = $1";
        let row: Option<(String, String, i64)> = on_pool!(self, read, |pool| sqlx::query_as(sql)
            .bind(id_hash)
            .fetch_optional(pool)
            .await?);
        Ok(row.map(|(csrf, token_print, expires_at)| UiSession {
            csrf,
            token_print,
            expires_at,
        }))
    }

    pub async fn delete_ui_session(&self, id_hash: &str) -> Result<(), StoreError> {
        on_pool!(self, write, |pool| sqlx::query(
            "DELETE FROM ui_sessions WHERE id_hash = $1"
        )
        .bind(id_hash)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// The overview's figures: events per minute since `events_since`, attempts
    /// since `attempts_since`, and what waits now.
    pub async fn overview(
        &self,
        events_since: DateTime<Utc>,
        attempts_since: DateTime<Utc>,
    ) -> Result<Overview, StoreError> {
        let minute = match self {
            Store::Postgres(_) => {
                r#"to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI')"#
            }
            Store::Sqlite(_) => "substr(received_at, 1, 16)",
        };
        let per_minute = format!(
            "SELECT {minute} AS minute, count(*) FROM events WHERE id >= $1
             GROUP BY minute ORDER BY minute"
        );
        let attempts = "SELECT count(*), count(*) FILTER (WHERE outcome = 'delivered')
                        FROM delivery_attempts WHERE id >= $1";
        let waiting = "SELECT (SELECT count(*) FROM outbox),
                              (SELECT count(*) FROM deliveries WHERE state = 'dead'),
                              (SELECT count(*) FROM deliveries WHERE state = 'pending')";
        let oldest = "SELECT min(event_id) FROM outbox";
        let events_from = EventId::first_at(events_since);
        let attempts_from = EventId::first_at(attempts_since);
        let (events_per_minute, (attempts, delivered), (outbox, dead, pending), oldest) =
            on_pool!(self, read, |pool| {
                let per_minute: Vec<(String, i64)> = sqlx::query_as(&per_minute)
                    .bind(bound(self, events_from))
                    .fetch_all(pool)
                    .await?;
                let attempts: (i64, i64) = sqlx::query_as(attempts)
                    .bind(bound(self, attempts_from))
                    .fetch_one(pool)
                    .await?;
                let waiting: (i64, i64, i64) = sqlx::query_as(waiting).fetch_one(pool).await?;
                let oldest: Option<String> = match self {
                    Store::Postgres(_) => {
                        let id: Option<uuid::Uuid> = sqlx::query_scalar(
                            "SELECT event_id FROM outbox ORDER BY event_id LIMIT 1",
                        )
                        .fetch_optional(pool)
                        .await?;
                        id.map(|id| id.to_string())
                    }
                    Store::Sqlite(_) => sqlx::query_scalar(oldest).fetch_one(pool).await?,
                };
                (per_minute, attempts, waiting, oldest)
            });
        Ok(Overview {
            events_per_minute,
            attempts,
            delivered,
            outbox,
            oldest_unpublished: oldest
                .and_then(|id| uuid::Uuid::parse_str(&id).ok())
                .map(EventId),
            dead_deliveries: dead,
            pending_deliveries: pending,
        })
    }

    /// Each subscription's attempts since `since`.
    pub async fn subscription_health(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(SubscriptionId, Health)>, StoreError> {
        let sql = "SELECT subscription_id, count(*),
                          count(*) FILTER (WHERE outcome = 'delivered'),
                          max(CASE WHEN outcome <> 'delivered' THEN id END)
                   FROM delivery_attempts WHERE id >= $1 GROUP BY subscription_id";
        let from = EventId::first_at(since);
        let rows: Vec<(String, i64, i64, Option<String>)> = match self {
            Store::Postgres(pg) => {
                let rows: Vec<(uuid::Uuid, i64, i64, Option<uuid::Uuid>)> =
                    sqlx::query_as(sql).bind(from.0).fetch_all(&pg.pool).await?;
                rows.into_iter()
                    .map(|(s, n, d, f)| (s.to_string(), n, d, f.map(|f| f.to_string())))
                    .collect()
            }
            Store::Sqlite(pools) => {
                sqlx::query_as(sql)
                    .bind(from.0.to_string())
                    .fetch_all(&pools.reader)
                    .await?
            }
        };
        Ok(rows
            .into_iter()
            .filter_map(|(sub, attempts, delivered, failure)| {
                let sub = uuid::Uuid::parse_str(&sub).ok()?;
                Some((
                    SubscriptionId(sub),
                    Health {
                        attempts,
                        delivered,
                        last_failure_at: failure
                            .and_then(|f| uuid::Uuid::parse_str(&f).ok())
                            .and_then(|f| uuid_time(&f)),
                    },
                ))
            })
            .collect())
    }
}

/// An id bound as each backend stores ids: a uuid, or its text.
fn bound(store: &Store, id: EventId) -> IdBound {
    match store {
        Store::Postgres(_) => IdBound::Uuid(id.0),
        Store::Sqlite(_) => IdBound::Text(id.0.to_string()),
    }
}

enum IdBound {
    Uuid(uuid::Uuid),
    Text(String),
}

impl sqlx::Type<sqlx::Postgres> for IdBound {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <uuid::Uuid as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Postgres> for IdBound {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        match self {
            IdBound::Uuid(id) => {
                <uuid::Uuid as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(id, buf)
            }
            IdBound::Text(_) => Err("a text id bound on PostgreSQL".into()),
        }
    }
}

impl sqlx::Type<sqlx::Sqlite> for IdBound {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <String as sqlx::Type<sqlx::Sqlite>>::type_info()
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Sqlite> for IdBound {
    fn encode_by_ref(
        &self,
        buf: &mut Vec<sqlx::sqlite::SqliteArgumentValue<'q>>,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        match self {
            IdBound::Text(id) => <String as sqlx::Encode<sqlx::Sqlite>>::encode(id.clone(), buf),
            IdBound::Uuid(_) => Err("a uuid id bound on SQLite".into()),
        }
    }
}

/// When a v7 id was made.
fn uuid_time(id: &uuid::Uuid) -> Option<DateTime<Utc>> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
}
