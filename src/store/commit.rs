//! Intake's group commit: the events of concurrent requests, with their outbox
//! rows, in one transaction (one statement on PostgreSQL; one transaction on
//! SQLite's single writer), each request answered after that commit.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, SqlitePool};

use super::batch::{self, Batcher, Limits};
use super::{postgres, sqlite, StoreError};
use crate::domain::Event;

/// An event to store, and when its outbox row becomes claimable.
pub(crate) type Pending = (Event, DateTime<Utc>);
/// Whether the event was inserted (not a repeat), and the event handed back.
pub(crate) type Written = (bool, Event);

/// Most events in one commit.
const MAX_EVENTS: usize = 256;
/// A commit takes no more events once their payloads come to this.
const MAX_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone)]
pub(crate) enum Writer {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Writer {
    /// The writer task. SQLite has one writer connection, so one commit at a
    /// time; PostgreSQL overlaps a few, so one commit's round trips and fsync
    /// are hidden behind another's.
    pub(crate) fn start(self) -> Batcher<Pending, Written> {
        let concurrency = match self {
            Writer::Postgres(_) => 4,
            Writer::Sqlite(_) => 1,
        };
        let limits = Limits {
            count: MAX_EVENTS,
            bytes: MAX_BYTES,
            size: |(event, _): &Pending| event.payload.len(),
            concurrency,
        };
        Batcher::start("events", limits, move |batch| {
            let writer = self.clone();
            async move { writer.commit(batch).await }
        })
    }

    async fn insert(&self, rows: &[(&Event, DateTime<Utc>)]) -> Result<Vec<bool>, StoreError> {
        match self {
            Writer::Postgres(pool) => postgres::insert_events(pool, rows).await,
            Writer::Sqlite(pool) => sqlite::insert_events(pool, rows).await,
        }
    }

    /// Writes the batch: a repeat within it is written once (the later ones
    /// share the first one's fate). If the batch fails for a reason other
    /// than an outage (a value one event carries that the database refuses),
    /// each event is written alone, so that only that one fails.
    async fn commit(&self, batch: Vec<Pending>) -> Vec<Result<Written, StoreError>> {
        let firsts = batch::firsts(
            batch
                .iter()
                .map(|(e, _)| e.client_key.as_ref().zip(e.webhook_id.as_ref())),
        );
        let rows: Vec<(&Event, DateTime<Utc>)> = batch
            .iter()
            .zip(&firsts)
            .filter(|(_, first)| first.is_none())
            .map(|((event, at), _)| (event, *at))
            .collect();
        let written: Vec<Result<bool, StoreError>> = match self.insert(&rows).await {
            Ok(done) => done.into_iter().map(Ok).collect(),
            Err(e) if e.is_unavailable() || rows.len() == 1 => {
                let mut all: Vec<_> = (1..rows.len()).map(|_| Err(batch::replicate(&e))).collect();
                all.insert(0, Err(e));
                all
            }
            Err(e) => {
                tracing::warn!(
                    error = %crate::relay::deliver::chain(&e),
                    events = rows.len(),
                    "a batch of events could not be stored; storing them one by one"
                );
                let mut one_by_one = Vec::with_capacity(rows.len());
                for row in &rows {
                    let result = self.insert(std::slice::from_ref(row)).await;
                    one_by_one.push(result.and_then(|done| {
                        done.first()
                            .copied()
                            .ok_or_else(|| StoreError::Corrupt("an insert answered nothing".into()))
                    }));
                }
                one_by_one
            }
        };
        // Back to the batch's order: a repeat gets its first's outcome, as
        // "not inserted" (the caller then looks up the first's id).
        let mut written = written.into_iter();
        let mut outcomes: Vec<Result<bool, StoreError>> = Vec::with_capacity(batch.len());
        for first in &firsts {
            let outcome = match first {
                None => written.next().unwrap_or_else(|| {
                    Err(StoreError::Corrupt("an insert answered nothing".into()))
                }),
                Some(i) => match &outcomes[*i] {
                    Ok(_) => Ok(false),
                    Err(e) => Err(batch::replicate(e)),
                },
            };
            outcomes.push(outcome);
        }
        batch
            .into_iter()
            .zip(outcomes)
            .map(|((event, _), outcome)| outcome.map(|inserted| (inserted, event)))
            .collect()
    }
}
