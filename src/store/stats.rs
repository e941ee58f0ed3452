//! The few numbers `/metrics` samples from the store: the outbox backlog, the
//! deliveries due and given up on, the subscriptions disabled, and the pools'
//! use. Each is one cheap query (the counts ride on indexes) and is read every
//! few seconds by the telemetry sampler, never on a request's path.

use chrono::{DateTime, Utc};

use super::{Store, StoreError};

/// What the store holds that an operator watches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpsStats {
    /// Events not yet confirmed by the broker.
    pub outbox_len: i64,
    /// When the oldest of them was received.
    pub outbox_oldest: Option<DateTime<Utc>>,
    /// Pending deliveries of enabled subscriptions whose attempt is due.
    pub deliveries_due: i64,
    /// Deliveries given up on (`failed` or `dead`).
    pub deliveries_dead: i64,
    pub subscriptions_disabled: i64,
}

/// One connection pool's use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// `main` (PostgreSQL), or `reader`/`writer` (SQLite).
    pub name: &'static str,
    pub in_use: u32,
    pub idle: u32,
    pub max: u32,
}

const PG_STATS: &str = "SELECT
    (SELECT count(*) FROM outbox),
    (SELECT min(e.received_at) FROM outbox o JOIN events e ON e.id = o.event_id),
    (SELECT count(*) FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id
      WHERE d.state = 'pending' AND d.next_attempt_at <= $1 AND s.enabled),
    (SELECT count(*) FROM deliveries WHERE state IN ('failed', 'dead')),
    (SELECT count(*) FROM subscriptions WHERE NOT enabled)";

const SQLITE_STATS: &str = "SELECT
    (SELECT count(*) FROM outbox),
    (SELECT min(e.received_at) FROM outbox o JOIN events e ON e.id = o.event_id),
    (SELECT count(*) FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id
      WHERE d.state = 'pending' AND d.next_attempt_at <= ?1 AND s.enabled),
    (SELECT count(*) FROM deliveries WHERE state IN ('failed', 'dead')),
    (SELECT count(*) FROM subscriptions WHERE NOT enabled)";

impl Store {
    /// The operator's numbers, read in one statement.
    pub async fn ops_stats(&self, now: DateTime<Utc>) -> Result<OpsStats, StoreError> {
        match self {
            Store::Postgres(pg) => {
                let row: (i64, Option<DateTime<Utc>>, i64, i64, i64) = sqlx::query_as(PG_STATS)
                    .bind(now)
                    .fetch_one(&pg.pool)
                    .await?;
                Ok(OpsStats {
                    outbox_len: row.0,
                    outbox_oldest: row.1,
                    deliveries_due: row.2,
                    deliveries_dead: row.3,
                    subscriptions_disabled: row.4,
                })
            }
            Store::Sqlite(pools) => {
                let row: (i64, Option<String>, i64, i64, i64) = sqlx::query_as(SQLITE_STATS)
                    .bind(crate::domain::format_timestamp(now))
                    .fetch_one(&pools.reader)
                    .await?;
                let outbox_oldest = match row.1 {
                    Some(at) => Some(
                        DateTime::parse_from_rfc3339(&at)
                            .map_err(|e| StoreError::Corrupt(format!("received_at `{at}`: {e}")))?
                            .with_timezone(&Utc),
                    ),
                    None => None,
                };
                Ok(OpsStats {
                    outbox_len: row.0,
                    outbox_oldest,
                    deliveries_due: row.2,
                    deliveries_dead: row.3,
                    subscriptions_disabled: row.4,
                })
            }
        }
    }

    /// Each pool's connections, from the pool's own counters (no query).
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        fn stats<DB: sqlx::Database>(name: &'static str, pool: &sqlx::Pool<DB>) -> PoolStats {
            let size = pool.size();
            let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX).min(size);
            PoolStats {
                name,
                in_use: size - idle,
                idle,
                max: pool.options().get_max_connections(),
            }
        }
        match self {
            Store::Postgres(pg) => vec![stats("main", &pg.pool)],
            Store::Sqlite(pools) => vec![
                stats("writer", &pools.writer),
                stats("reader", &pools.reader),
            ],
        }
    }
}
