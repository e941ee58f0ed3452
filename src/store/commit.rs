//! Intake's group commit: the events of concurrent requests, with their outbox
//! rows, in one transaction (one statement on PostgreSQL; one transaction on
//! SQLite's single writer), each request answered after that commit.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, SqlitePool};

use super::batch::{self, whole_or_each, Batcher, Limits};
use super::{postgres, sqlite, StoreError};
use crate::domain::{Event, EventId};

/// An event to store, and when its outbox row becomes claimable.
pub(crate) type Pending = (Event, DateTime<Utc>);
/// Whether the event was inserted (not a repeat), and the event handed back.
pub(crate) type Written = (bool, Event);

/// Most events in one commit.
const MAX_EVENTS: usize = 256;
/// A commit takes no more events once their payloads come to this.
const MAX_BYTES: usize = 4 * 1024 * 1024;

/// The writes that share commits, each with its writer task.
#[derive(Clone, Debug)]
pub(crate) struct Batched {
    /// Intake's events with their outbox rows.
    pub events: Batcher<Pending, Written>,
    /// Delivery attempts' results.
    pub attempts: Batcher<super::relay::AttemptWrite, super::Recorded>,
    /// In-process messages acknowledged: (queue, event).
    pub acks: Batcher<(String, EventId), ()>,
}

#[derive(Clone)]
pub(crate) enum Writer {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Writer {
    /// The writer tasks.
    pub(crate) fn start(self) -> Batched {
        Batched {
            events: self.clone().events(),
            attempts: super::relay::attempt_writer(self.clone()),
            acks: self.acks(),
        }
    }

    /// How many writes of one kind overlap. SQLite has one writer
    /// connection, so one at a time; PostgreSQL overlaps a few, so one
    /// commit's round trips and fsync are hidden behind another's.
    pub(crate) fn concurrency(&self, postgres: usize) -> usize {
        match self {
            Writer::Postgres(_) => postgres,
            Writer::Sqlite(_) => 1,
        }
    }

    fn events(self) -> Batcher<Pending, Written> {
        let limits = Limits {
            count: MAX_EVENTS,
            bytes: MAX_BYTES,
            size: |(event, _): &Pending| event.payload.len(),
            concurrency: self.concurrency(2),
        };
        Batcher::start("events", limits, move |batch| {
            let writer = self.clone();
            async move { writer.commit(batch).await }
        })
    }

    fn acks(self) -> Batcher<(String, EventId), ()> {
        let limits = Limits {
            count: 1024,
            bytes: usize::MAX,
            size: |_| 0,
            concurrency: self.concurrency(2),
        };
        Batcher::start("acks", limits, move |batch: Vec<(String, EventId)>| {
            let writer = self.clone();
            async move {
                whole_or_each("acks", &batch, |acks| async {
                    match &writer {
                        Writer::Postgres(pool) => postgres::ack_local(pool, acks).await,
                        Writer::Sqlite(pool) => sqlite::ack_local(pool, acks).await,
                    }
                })
                .await
            }
        })
    }

    async fn insert(&self, rows: &[(&Event, DateTime<Utc>)]) -> Result<Vec<bool>, StoreError> {
        match self {
            Writer::Postgres(pool) => postgres::insert_events(pool, rows).await,
            Writer::Sqlite(pool) => sqlite::insert_events(pool, rows).await,
        }
    }

    /// Writes the batch: a repeat within it is written once (the later ones
    /// share the first one's fate); an event the database refuses fails alone.
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
        let written = whole_or_each("events", &rows, |rows| self.insert(rows)).await;
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
                    Err(e) => Err(e.replicate()),
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
