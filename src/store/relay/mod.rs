//! The relay's records: subscriptions, deliveries (one per event and subscription)
//! and the attempt log, on both backends.
//!
//! A pending delivery is claimed the way outbox rows are: its due time moves
//! forward by a lease, so a worker that dies loses nothing, and a fresh `claim`
//! token is written, which the attempt's result must still match when it lands
//! (a replay or an expired lease in the meantime wins). A process with room
//! for a new delivery creates it claimed already, and attempts it at once.

mod postgres;
mod sqlite;

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::batch::{whole_or_each, Batcher, Limits};
use super::commit::Writer;
use super::crypt::SUBSCRIPTION_SECRET;
use super::{lease_window, Store, StoreError};
use crate::domain::{
    Attempt, AttemptOutcome, Delivery, DeliveryId, DeliveryState, Event, EventId, Subscription,
    SubscriptionId,
};

/// A delivery claimed for one attempt, with what the attempt needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: DeliveryId,
    /// The claim token the attempt's result is recorded against.
    pub claim: Uuid,
    /// This attempt's number within the round, from 1.
    pub attempt: i32,
    pub event: Event,
    pub subscription: Subscription,
}

/// Deliveries their creator took at once (see [`Store::create_deliveries`]).
pub struct Taken {
    pub claim: Uuid,
    pub deliveries: Vec<(DeliveryId, SubscriptionId, Event)>,
}

/// The time a taken delivery is created at, its lease's end, and the claim.
struct Window {
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    claim: Uuid,
}

/// What one claim of due deliveries may take.
#[derive(Debug, Clone)]
pub struct ClaimLimits<'a> {
    /// Most deliveries.
    pub rows: u32,
    /// Most payload bytes (one delivery at least, if any is due).
    pub bytes: u64,
    /// How long the claim lasts.
    pub lease: std::time::Duration,
    /// Subscriptions left out (waiting out their rate limit, or full).
    pub skip: &'a [SubscriptionId],
    /// Attempts the claimer has in flight, per subscription: a subscription
    /// gets at most its `max_concurrency` (capped at `per_subscription`)
    /// less these, so that nothing claimed has to be handed back.
    pub busy: &'a [(SubscriptionId, u32)],
    pub per_subscription: u32,
}

impl ClaimLimits<'_> {
    fn rows(&self) -> i64 {
        i64::from(self.rows)
    }

    fn bytes(&self) -> i64 {
        i64::try_from(self.bytes).unwrap_or(i64::MAX)
    }
}

/// The result of one attempt, to be recorded.
#[derive(Debug, Clone)]
pub struct AttemptRecord<'a> {
    pub delivery: &'a DueDelivery,
    pub attempted_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub status_code: Option<i32>,
    pub error: Option<&'a str>,
    pub response_body: Option<&'a str>,
    pub outcome: AttemptOutcome,
    /// When the next attempt is due (used when `outcome` is `Retry`).
    pub next_attempt_at: DateTime<Utc>,
    /// Disable the subscription for this reason (the endpoint answered 410).
    pub disable: Option<&'a str>,
    /// On a failure: disable the subscription if it has been failing since this
    /// time or earlier.
    pub disable_if_failing_since: DateTime<Utc>,
}

/// An attempt's result as the writer takes it: the delivery's ids rather
/// than the delivery, so that it can wait for a shared commit.
#[derive(Debug, Clone)]
pub(crate) struct AttemptWrite {
    pub delivery: DeliveryId,
    pub claim: Uuid,
    pub event: EventId,
    pub subscription: SubscriptionId,
    pub attempted_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub response_body: Option<String>,
    pub outcome: AttemptOutcome,
    pub next_attempt_at: DateTime<Utc>,
    pub disable: Option<String>,
    pub disable_if_failing_since: DateTime<Utc>,
}

impl From<&AttemptRecord<'_>> for AttemptWrite {
    fn from(r: &AttemptRecord<'_>) -> Self {
        Self {
            delivery: r.delivery.id,
            claim: r.delivery.claim,
            event: r.delivery.event.id,
            subscription: r.delivery.subscription.id,
            attempted_at: r.attempted_at,
            duration_ms: r.duration_ms,
            status_code: r.status_code,
            error: r.error.map(str::to_string),
            response_body: r.response_body.map(str::to_string),
            outcome: r.outcome,
            next_attempt_at: r.next_attempt_at,
            disable: r.disable.map(str::to_string),
            disable_if_failing_since: r.disable_if_failing_since,
        }
    }
}

/// The writer of attempts' results: concurrent attempts share a commit.
pub(crate) fn attempt_writer(writer: Writer) -> Batcher<AttemptWrite, Recorded> {
    let limits = Limits {
        count: 256,
        bytes: usize::MAX, // response bodies are cut to a few KiB
        size: |_| 0,
        concurrency: writer.concurrency(2),
    };
    Batcher::start("attempts", limits, move |batch: Vec<AttemptWrite>| {
        let writer = writer.clone();
        async move {
            whole_or_each("attempts", &batch, |records| async {
                match &writer {
                    Writer::Postgres(pool) => postgres::record_attempts(pool, records).await,
                    Writer::Sqlite(pool) => sqlite::record_attempts(pool, records).await,
                }
            })
            .await
        }
    })
}

impl AttemptWrite {
    /// Why the subscription is to be disabled after this failed attempt, given
    /// when its run of failures began; `None` to leave it enabled.
    fn disable_reason(&self, failing_since: DateTime<Utc>) -> Option<String> {
        if let Some(reason) = &self.disable {
            return Some(reason.clone());
        }
        (failing_since <= self.disable_if_failing_since).then(|| {
            format!(
                "every attempt has failed since {}",
                crate::domain::format_timestamp(failing_since)
            )
        })
    }
}

/// How a batch of attempts keeps the failure streaks: the subscriptions whose
/// attempts here all succeeded are cleared together (sorted, once each); the
/// attempts of a subscription with a failure among them are taken one by
/// one, by subscription and then in the order they were made, as one may
/// disable it. Subscriptions are so locked in id order by every writer.
pub(crate) fn streaks(records: &[AttemptWrite]) -> (Vec<SubscriptionId>, Vec<usize>) {
    let failing: std::collections::BTreeSet<SubscriptionId> = records
        .iter()
        .filter(|r| !r.outcome.is_success())
        .map(|r| r.subscription)
        .collect();
    let cleared: std::collections::BTreeSet<SubscriptionId> = records
        .iter()
        .map(|r| r.subscription)
        .filter(|s| !failing.contains(s))
        .collect();
    let mut one_by_one: Vec<usize> = (0..records.len())
        .filter(|&i| failing.contains(&records[i].subscription))
        .collect();
    one_by_one.sort_by_key(|&i| (records[i].subscription, records[i].attempted_at));
    (cleared.into_iter().collect(), one_by_one)
}

/// What recording an attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// False when the claim had been lost (a replay, or the lease ran out): the
    /// attempt is logged, but the delivery was left as the newer owner set it.
    pub current: bool,
    /// The subscription was disabled, for this reason.
    pub disabled: Option<String>,
}

/// Which deliveries [`Store::deliveries`] lists, newest first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub event: Option<EventId>,
    pub subscription: Option<SubscriptionId>,
    pub state: Option<DeliveryState>,
    pub before: Option<DeliveryId>,
    pub limit: i64,
}

/// Which attempts [`Store::attempts`] lists, newest first.
#[derive(Debug, Clone, Default)]
pub struct AttemptFilter {
    pub event: Option<EventId>,
    pub subscription: Option<SubscriptionId>,
    pub before: Option<Uuid>,
    pub limit: i64,
}

impl Store {
    pub async fn insert_subscription(&self, sub: &Subscription) -> Result<(), StoreError> {
        let sub = &self.sealed(sub)?;
        match self {
            Store::Postgres(pool) => postgres::insert_subscription(pool, sub).await,
            Store::Sqlite(pools) => sqlite::insert_subscription(&pools.writer, sub).await,
        }
    }

    /// The subscription as it is written: its secret sealed.
    fn sealed(&self, sub: &Subscription) -> Result<Subscription, StoreError> {
        let mut sealed = sub.clone();
        sealed.secret = self.seal(SUBSCRIPTION_SECRET, &sub.id.to_string(), &sub.secret)?;
        Ok(sealed)
    }

    /// The subscription as it was read, its secret opened.
    fn opened(&self, mut sub: Subscription) -> Result<Subscription, StoreError> {
        sub.secret = self.open(SUBSCRIPTION_SECRET, &sub.id.to_string(), &sub.secret)?;
        Ok(sub)
    }

    /// Writes every field but the id and creation time, if the stored row was
    /// last updated at `read_at`; false if it is gone or was changed since.
    pub async fn update_subscription(
        &self,
        sub: &Subscription,
        read_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let sub = &self.sealed(sub)?;
        match self {
            Store::Postgres(pool) => postgres::update_subscription(pool, sub, read_at).await,
            Store::Sqlite(pools) => sqlite::update_subscription(&pools.writer, sub, read_at).await,
        }
    }

    /// Deletes it with its deliveries and their attempts; false if it was not there.
    pub async fn delete_subscription(&self, id: SubscriptionId) -> Result<bool, StoreError> {
        match self {
            Store::Postgres(pool) => postgres::delete_subscription(pool, id).await,
            Store::Sqlite(pools) => sqlite::delete_subscription(&pools.writer, id).await,
        }
    }

    pub async fn subscription(
        &self,
        id: SubscriptionId,
    ) -> Result<Option<Subscription>, StoreError> {
        let sub = match self {
            Store::Postgres(pool) => postgres::subscription(pool, id).await?,
            Store::Sqlite(pools) => sqlite::subscription(&pools.reader, id).await?,
        };
        sub.map(|sub| self.opened(sub)).transpose()
    }

    /// Every subscription (`enabled_only`: those that get new deliveries), oldest first.
    pub async fn subscriptions(&self, enabled_only: bool) -> Result<Vec<Subscription>, StoreError> {
        let subs = match self {
            Store::Postgres(pool) => postgres::subscriptions(pool, enabled_only).await?,
            Store::Sqlite(pools) => sqlite::subscriptions(&pools.reader, enabled_only).await?,
        };
        subs.into_iter().map(|sub| self.opened(sub)).collect()
    }

    /// Creates a pending delivery of each event to each of its subscriptions,
    /// in one statement. Those in `take` are created claimed by the caller
    /// for `lease`, their first attempt counted, and come back with their
    /// events: they go out without waiting for a claim. The others are due
    /// now. Idempotent: a delivery that exists is left alone (a redelivered
    /// message), and is not taken.
    pub async fn create_deliveries(
        &self,
        fan_out: &[(EventId, &[SubscriptionId])],
        take: &HashSet<(EventId, SubscriptionId)>,
        lease: std::time::Duration,
    ) -> Result<Taken, StoreError> {
        let claim = Uuid::now_v7();
        if fan_out.iter().all(|(_, subs)| subs.is_empty()) {
            return Ok(Taken {
                claim,
                deliveries: Vec::new(),
            });
        }
        let (now, until) = lease_window(lease);
        let window = Window { now, until, claim };
        let deliveries = match self {
            Store::Postgres(pool) => {
                postgres::create_deliveries(pool, fan_out, take, &window).await?
            }
            Store::Sqlite(pools) => {
                sqlite::create_deliveries(&pools.writer, fan_out, take, &window).await?
            }
        };
        Ok(Taken { claim, deliveries })
    }

    /// Claims due deliveries of enabled subscriptions within `limits`, for
    /// `limits.lease`. Each claim counts as an attempt, so a delivery that
    /// kills its worker still runs out of attempts.
    pub async fn claim_deliveries(
        &self,
        limits: &ClaimLimits<'_>,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let (now, until) = lease_window(limits.lease);
        let claim = Uuid::now_v7();
        let due = match self {
            Store::Postgres(pool) => {
                postgres::claim_deliveries(pool, limits, now, until, claim).await?
            }
            Store::Sqlite(pools) => {
                sqlite::claim_deliveries(&pools.writer, limits, now, until, claim).await?
            }
        };
        due.into_iter()
            .map(|mut due| {
                due.subscription = self.opened(due.subscription)?;
                Ok(due)
            })
            .collect()
    }

    /// Hands claimed deliveries back untried: due at `at`, the claim's attempt undone.
    pub async fn unclaim_deliveries(
        &self,
        due: &[DueDelivery],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if due.is_empty() {
            return Ok(());
        }
        match self {
            Store::Postgres(pool) => postgres::unclaim_deliveries(pool, due, at).await,
            Store::Sqlite(pools) => sqlite::unclaim_deliveries(&pools.writer, due, at).await,
        }
    }

    /// Logs an attempt and, if the claim still holds, moves the delivery on, in
    /// one commit; keeps the subscription's failure streak and disables it when
    /// asked to or when the streak is too long. Concurrent calls share commits.
    pub async fn record_attempt(&self, record: &AttemptRecord<'_>) -> Result<Recorded, StoreError> {
        self.batched()
            .attempts
            .call(AttemptWrite::from(record))
            .await
    }

    /// Reopens the event's deliveries to these subscriptions (creating those
    /// missing) as a new round due now, and returns them.
    pub async fn replay_deliveries(
        &self,
        event: EventId,
        subscriptions: &[SubscriptionId],
    ) -> Result<Vec<Delivery>, StoreError> {
        if subscriptions.is_empty() {
            return Ok(Vec::new());
        }
        let now = crate::domain::now_millis();
        match self {
            Store::Postgres(pool) => {
                postgres::replay_deliveries(pool, event, subscriptions, now).await
            }
            Store::Sqlite(pools) => {
                sqlite::replay_deliveries(&pools.writer, event, subscriptions, now).await
            }
        }
    }

    /// Reopens every delivery of the subscription in one of `states`; returns how many.
    pub async fn replay_subscription(
        &self,
        subscription: SubscriptionId,
        states: &[DeliveryState],
    ) -> Result<u64, StoreError> {
        let now = crate::domain::now_millis();
        let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        match self {
            Store::Postgres(pool) => {
                postgres::replay_subscription(pool, subscription, &states, now).await
            }
            Store::Sqlite(pools) => {
                sqlite::replay_subscription(&pools.writer, subscription, &states, now).await
            }
        }
    }

    pub async fn deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        match self {
            Store::Postgres(pool) => postgres::deliveries(pool, filter).await,
            Store::Sqlite(pools) => sqlite::deliveries(&pools.reader, filter).await,
        }
    }

    pub async fn attempts(&self, filter: &AttemptFilter) -> Result<Vec<Attempt>, StoreError> {
        match self {
            Store::Postgres(pool) => postgres::attempts(pool, filter).await,
            Store::Sqlite(pools) => sqlite::attempts(&pools.reader, filter).await,
        }
    }
}

/// Turning a column as a backend stores it into the value it stands for:
/// PostgreSQL has native uuids, timestamps and booleans; SQLite keeps text and
/// integers. One row type per table then serves both backends.
pub(super) trait Column<T> {
    fn value(self) -> Result<T, StoreError>;
}

impl<T> Column<T> for T {
    fn value(self) -> Result<T, StoreError> {
        Ok(self)
    }
}

impl Column<Uuid> for String {
    fn value(self) -> Result<Uuid, StoreError> {
        Uuid::parse_str(&self).map_err(|_| StoreError::Corrupt(format!("bad id `{self}`")))
    }
}

impl Column<DateTime<Utc>> for String {
    fn value(self) -> Result<DateTime<Utc>, StoreError> {
        super::sqlite::time(&self)
    }
}

impl Column<bool> for i64 {
    fn value(self) -> Result<bool, StoreError> {
        Ok(self != 0)
    }
}

fn opt<C: Column<T>, T>(c: Option<C>) -> Result<Option<T>, StoreError> {
    c.map(Column::value).transpose()
}

fn json<T: serde::de::DeserializeOwned>(column: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("subscriptions.{column} is not valid: {e}")))
}

#[derive(sqlx::FromRow)]
struct SubscriptionRow<I, T, B> {
    id: I,
    url: String,
    events: String,
    tenants: Option<String>,
    filter: Option<String>,
    headers: String,
    secret: String,
    transform: Option<String>,
    description: Option<String>,
    rate_limit: Option<i64>,
    max_concurrency: i64,
    enabled: B,
    disabled_reason: Option<String>,
    failing_since: Option<T>,
    created_at: T,
    updated_at: T,
}

impl<I: Column<Uuid>, T: Column<DateTime<Utc>>, B: Column<bool>> TryFrom<SubscriptionRow<I, T, B>>
    for Subscription
{
    type Error = StoreError;

    fn try_from(row: SubscriptionRow<I, T, B>) -> Result<Self, StoreError> {
        Ok(Subscription {
            id: SubscriptionId(row.id.value()?),
            url: row.url,
            events: json("events", &row.events)?,
            tenants: row
                .tenants
                .as_deref()
                .map(|t| json("tenants", t))
                .transpose()?,
            filter: row.filter,
            headers: json("headers", &row.headers)?,
            secret: row.secret.into(),
            transform: row.transform,
            description: row.description,
            rate_limit: row.rate_limit.map(|r| r.clamp(0, u32::MAX.into()) as u32),
            max_concurrency: row.max_concurrency.clamp(1, u32::MAX.into()) as u32,
            enabled: row.enabled.value()?,
            disabled_reason: row.disabled_reason,
            failing_since: opt(row.failing_since)?,
            created_at: row.created_at.value()?,
            updated_at: row.updated_at.value()?,
        })
    }
}

/// The JSON columns of a subscription, as written.
struct SubscriptionColumns {
    events: String,
    tenants: Option<String>,
    headers: String,
}

impl SubscriptionColumns {
    fn of(sub: &Subscription) -> Self {
        let text = |v: serde_json::Result<String>| v.unwrap_or_else(|_| "null".into());
        Self {
            events: text(serde_json::to_string(&sub.events)),
            tenants: sub.tenants.as_ref().map(|t| text(serde_json::to_string(t))),
            headers: text(serde_json::to_string(&sub.headers)),
        }
    }
}

#[derive(sqlx::FromRow)]
struct DeliveryRow<I, T> {
    id: I,
    event_id: I,
    subscription_id: I,
    state: String,
    attempts: i32,
    next_attempt_at: T,
    last_status: Option<i32>,
    last_error: Option<String>,
    created_at: T,
    updated_at: T,
}

impl<I: Column<Uuid>, T: Column<DateTime<Utc>>> TryFrom<DeliveryRow<I, T>> for Delivery {
    type Error = StoreError;

    fn try_from(row: DeliveryRow<I, T>) -> Result<Self, StoreError> {
        Ok(Delivery {
            id: DeliveryId(row.id.value()?),
            event_id: EventId(row.event_id.value()?),
            subscription_id: SubscriptionId(row.subscription_id.value()?),
            state: DeliveryState::parse(&row.state).ok_or_else(|| {
                StoreError::Corrupt(format!("unknown delivery state `{}`", row.state))
            })?,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at.value()?,
            last_status: row.last_status,
            last_error: row.last_error,
            created_at: row.created_at.value()?,
            updated_at: row.updated_at.value()?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AttemptRow<I, T> {
    id: I,
    delivery_id: I,
    event_id: I,
    subscription_id: I,
    attempted_at: T,
    duration_ms: i32,
    status_code: Option<i32>,
    error: Option<String>,
    response_body: Option<String>,
    outcome: String,
}

impl<I: Column<Uuid>, T: Column<DateTime<Utc>>> TryFrom<AttemptRow<I, T>> for Attempt {
    type Error = StoreError;

    fn try_from(row: AttemptRow<I, T>) -> Result<Self, StoreError> {
        Ok(Attempt {
            id: row.id.value()?,
            delivery_id: DeliveryId(row.delivery_id.value()?),
            event_id: EventId(row.event_id.value()?),
            subscription_id: SubscriptionId(row.subscription_id.value()?),
            attempted_at: row.attempted_at.value()?,
            duration_ms: row.duration_ms,
            status_code: row.status_code,
            error: row.error,
            response_body: row.response_body,
            outcome: AttemptOutcome::parse(&row.outcome).ok_or_else(|| {
                StoreError::Corrupt(format!("unknown attempt outcome `{}`", row.outcome))
            })?,
        })
    }
}

/// A claimed delivery row, before its event and subscription are joined in.
#[derive(sqlx::FromRow)]
struct ClaimRow<I> {
    id: I,
    event_id: I,
    subscription_id: I,
    attempts: i32,
}

/// Builds the claimed deliveries from their rows, events and subscriptions.
fn assemble<I: Column<Uuid>>(
    rows: Vec<ClaimRow<I>>,
    claim: Uuid,
    events: Vec<Event>,
    subscriptions: Vec<Subscription>,
) -> Result<Vec<DueDelivery>, StoreError> {
    let events: std::collections::HashMap<EventId, Event> =
        events.into_iter().map(|e| (e.id, e)).collect();
    let subscriptions: std::collections::HashMap<SubscriptionId, Subscription> =
        subscriptions.into_iter().map(|s| (s.id, s)).collect();
    let mut due = Vec::with_capacity(rows.len());
    for row in rows {
        let event_id = EventId(row.event_id.value()?);
        let subscription_id = SubscriptionId(row.subscription_id.value()?);
        // Foreign keys guarantee both; a miss means a concurrent delete, and
        // the delete took the delivery with it.
        let (Some(event), Some(subscription)) =
            (events.get(&event_id), subscriptions.get(&subscription_id))
        else {
            continue;
        };
        due.push(DueDelivery {
            id: DeliveryId(row.id.value()?),
            claim,
            attempt: row.attempts,
            event: event.clone(),
            subscription: subscription.clone(),
        });
    }
    due.sort_by_key(|d| d.id);
    Ok(due)
}
