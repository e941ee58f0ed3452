//! Web triggers and their invocation log. The SQL is the same on both
//! backends except for claiming due async runs, where PostgreSQL locks rows
//! and SQLite relies on its one writer; ids and timestamps are encoded per
//! backend by [`Uid`] and [`Ts`].

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Postgres, Sqlite, Type};
use uuid::Uuid;

use super::crypt::{TRIGGER_FORWARD_SECRET, TRIGGER_SECRET};
use super::tenants::Ts;
use super::{Store, StoreError};
use crate::domain::{
    EventId, Invocation, InvocationId, InvocationState, Trigger, TriggerAuthType, TriggerId,
    TriggerMode,
};

/// A uuid as each backend stores it: `UUID` on PostgreSQL, hyphenated text on
/// SQLite.
#[derive(Debug, Clone, Copy)]
pub(super) struct Uid(pub Uuid);

impl Type<Sqlite> for Uid {
    fn type_info() -> <Sqlite as Database>::TypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for Uid {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as Database>::ArgumentBuffer<'q>,
    ) -> Result<IsNull, BoxDynError> {
        <String as Encode<'q, Sqlite>>::encode(self.0.to_string(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Uid {
    fn decode(value: <Sqlite as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<'r, Sqlite>>::decode(value)?;
        Ok(Uid(Uuid::parse_str(text)?))
    }
}

impl Type<Postgres> for Uid {
    fn type_info() -> <Postgres as Database>::TypeInfo {
        <Uuid as Type<Postgres>>::type_info()
    }
}

impl<'q> Encode<'q, Postgres> for Uid {
    fn encode_by_ref(
        &self,
        buf: &mut <Postgres as Database>::ArgumentBuffer<'q>,
    ) -> Result<IsNull, BoxDynError> {
        <Uuid as Encode<'q, Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Uid {
    fn decode(value: <Postgres as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Uid(<Uuid as Decode<'r, Postgres>>::decode(value)?))
    }
}

#[derive(sqlx::FromRow)]
struct TriggerRow {
    id: String,
    name: String,
    methods: String,
    mode: String,
    auth_type: String,
    auth_header: Option<String>,
    secret: String,
    script: Option<String>,
    forward_url: Option<String>,
    forward_secret: String,
    timeout_ms: i32,
    enabled: bool,
    description: Option<String>,
    version: i32,
    created_at: Ts,
    updated_at: Ts,
    tenant: Option<String>,
}

#[derive(sqlx::FromRow)]
struct InvocationRow {
    id: Uid,
    trigger_id: String,
    event_id: Uid,
    mode: String,
    state: String,
    attempts: i32,
    next_attempt_at: Option<Ts>,
    status_code: Option<i32>,
    response: Option<String>,
    error: Option<String>,
    console: Option<String>,
    duration_ms: Option<i32>,
    created_at: Ts,
    updated_at: Ts,
}

impl TryFrom<InvocationRow> for Invocation {
    type Error = StoreError;

    fn try_from(row: InvocationRow) -> Result<Self, StoreError> {
        Ok(Invocation {
            id: InvocationId(row.id.0),
            trigger_id: TriggerId(row.trigger_id),
            event_id: EventId(row.event_id.0),
            mode: TriggerMode::parse(&row.mode)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown mode `{}`", row.mode)))?,
            state: InvocationState::parse(&row.state)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown state `{}`", row.state)))?,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at.map(|t| t.0),
            status_code: row.status_code,
            response: row.response,
            error: row.error,
            console: row.console,
            duration_ms: row.duration_ms,
            created_at: row.created_at.0,
            updated_at: row.updated_at.0,
        })
    }
}

/// An invocation together with the request it carried (its event's payload).
#[derive(Debug, Clone)]
pub struct InvocationWithRequest {
    pub invocation: Invocation,
    pub request: String,
}

#[derive(sqlx::FromRow)]
struct InvocationRequestRow {
    #[sqlx(flatten)]
    invocation: InvocationRow,
    payload: String,
}

/// An async run claimed by this process: the invocation and its claim, which
/// its result must still match when it is written.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    pub invocation: Invocation,
    pub claim: Uuid,
}

/// What one async run came to.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub state: InvocationState,
    pub status_code: Option<i32>,
    pub response: Option<String>,
    pub error: Option<String>,
    pub console: Option<String>,
    pub duration_ms: i32,
    /// For a run that will be tried again.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// A trigger's columns as written, besides its plain fields.
struct TriggerColumns {
    secret: SecretString,
    forward_secret: SecretString,
    methods: String,
}

/// Binds `$1` to `$13` of an insert or update of a trigger (`id` to
/// `version`, in table order); each statement binds the rest itself.
macro_rules! bind_trigger {
    ($query:expr, $t:expr, $cols:expr) => {
        $query
            .bind(&$t.id.0)
            .bind(&$t.name)
            .bind(&$cols.methods)
            .bind($t.mode.as_str())
            .bind($t.auth.as_str())
            .bind(&$t.auth_header)
            .bind($cols.secret.expose_secret())
            .bind(&$t.script)
            .bind(&$t.forward_url)
            .bind(i32::try_from($t.timeout_ms).unwrap_or(i32::MAX))
            .bind($t.enabled)
            .bind(&$t.description)
            .bind(i32::try_from($t.version).unwrap_or(i32::MAX))
    };
}

const INVOCATION_COLUMNS: &str = "i.id, i.trigger_id, i.event_id, i.mode, i.state, i.attempts,
     i.next_attempt_at, i.status_code, i.response, i.error, i.console, i.duration_ms,
     i.created_at, i.updated_at";

impl Store {
    fn trigger_from(&self, row: TriggerRow) -> Result<Trigger, StoreError> {
        let corrupt = |what: &str, value: &str| StoreError::Corrupt(format!("{what} `{value}`"));
        Ok(Trigger {
            secret: self.open(TRIGGER_SECRET, &row.id, &SecretString::from(row.secret))?,
            forward_secret: self.open(
                TRIGGER_FORWARD_SECRET,
                &row.id,
                &SecretString::from(row.forward_secret),
            )?,
            id: TriggerId(row.id),
            methods: serde_json::from_str(&row.methods)
                .map_err(|_| corrupt("trigger methods", &row.methods))?,
            mode: TriggerMode::parse(&row.mode)
                .ok_or_else(|| corrupt("trigger mode", &row.mode))?,
            auth: TriggerAuthType::parse(&row.auth_type)
                .ok_or_else(|| corrupt("trigger auth", &row.auth_type))?,
            name: row.name,
            auth_header: row.auth_header,
            script: row.script,
            forward_url: row.forward_url,
            timeout_ms: u32::try_from(row.timeout_ms).unwrap_or(0),
            enabled: row.enabled,
            description: row.description,
            tenant: row.tenant.map(crate::domain::ClientKey),
            version: i64::from(row.version),
            created_at: row.created_at.0,
            updated_at: row.updated_at.0,
        })
    }

    /// The columns of a trigger as they are written: secrets sealed, methods
    /// as JSON.
    fn trigger_columns(&self, trigger: &Trigger) -> Result<TriggerColumns, StoreError> {
        Ok(TriggerColumns {
            secret: self.seal(TRIGGER_SECRET, &trigger.id.0, &trigger.secret)?,
            forward_secret: self.seal(
                TRIGGER_FORWARD_SECRET,
                &trigger.id.0,
                &trigger.forward_secret,
            )?,
            methods: serde_json::to_string(&trigger.methods)
                .map_err(|e| StoreError::Invalid(e.to_string()))?,
        })
    }

    /// Saves a new trigger. `Ok(false)` when its name is taken.
    pub async fn insert_trigger(&self, trigger: &Trigger) -> Result<bool, StoreError> {
        let cols = self.trigger_columns(trigger)?;
        let sql = "INSERT INTO triggers (id, name, methods, mode, auth_type, auth_header, secret,
                                         script, forward_url, timeout_ms, enabled, description,
                                         version, created_at, updated_at, forward_secret, tenant)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                           $17)
                   ON CONFLICT (name) DO NOTHING";
        let inserted = on_pool!(self, write, |pool| bind_trigger!(
            sqlx::query(sql),
            trigger,
            cols
        )
        .bind(Ts(trigger.created_at))
        .bind(Ts(trigger.updated_at))
        .bind(cols.forward_secret.expose_secret())
        .bind(trigger.tenant.as_ref().map(|k| &k.0))
        .execute(pool)
        .await?
        .rows_affected());
        Ok(inserted > 0)
    }

    /// Writes a changed trigger if it is still at `read_version`. `Ok(None)`
    /// when it changed meanwhile (or is gone); `Ok(Some(false))` when its new
    /// name is taken.
    pub async fn update_trigger(
        &self,
        trigger: &Trigger,
        read_version: i64,
    ) -> Result<Option<bool>, StoreError> {
        let cols = self.trigger_columns(trigger)?;
        let taken = "SELECT id FROM triggers WHERE name = $1 AND id <> $2";
        let sql = "UPDATE triggers SET name = $2, methods = $3, mode = $4, auth_type = $5,
                       auth_header = $6, secret = $7, script = $8, forward_url = $9,
                       timeout_ms = $10, enabled = $11, description = $12, version = $13,
                       updated_at = $14, forward_secret = $16, tenant = $17
                   WHERE id = $1 AND version = $15";
        let outcome = on_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            let other: Option<(String,)> = sqlx::query_as(taken)
                .bind(&trigger.name)
                .bind(&trigger.id.0)
                .fetch_optional(&mut *tx)
                .await?;
            if other.is_some() {
                Some(false)
            } else {
                let updated = bind_trigger!(sqlx::query(sql), trigger, cols)
                    .bind(Ts(trigger.updated_at))
                    .bind(i32::try_from(read_version).unwrap_or(i32::MAX))
                    .bind(cols.forward_secret.expose_secret())
                    .bind(trigger.tenant.as_ref().map(|k| &k.0))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                (updated > 0).then_some(true)
            }
        });
        Ok(outcome)
    }

    /// Deletes a trigger and its invocation log (its events stay).
    pub async fn delete_trigger(&self, id: &TriggerId) -> Result<bool, StoreError> {
        let sql = "DELETE FROM triggers WHERE id = $1";
        let deleted = on_pool!(self, write, |pool| sqlx::query(sql)
            .bind(&id.0)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(deleted > 0)
    }

    pub async fn trigger(&self, id: &TriggerId) -> Result<Option<Trigger>, StoreError> {
        let sql = "SELECT * FROM triggers WHERE id = $1";
        let row: Option<TriggerRow> = on_pool!(self, read, |pool| sqlx::query_as(sql)
            .bind(&id.0)
            .fetch_optional(pool)
            .await?);
        row.map(|r| self.trigger_from(r)).transpose()
    }

    /// Every trigger, by name.
    pub async fn triggers(&self) -> Result<Vec<Trigger>, StoreError> {
        let sql = "SELECT * FROM triggers ORDER BY name";
        let rows: Vec<TriggerRow> = on_pool!(self, read, |pool| sqlx::query_as(sql)
            .fetch_all(pool)
            .await?);
        rows.into_iter().map(|r| self.trigger_from(r)).collect()
    }

    /// Records a finished invocation (a sync call).
    pub async fn insert_invocation(&self, invocation: &Invocation) -> Result<(), StoreError> {
        self.put_invocation(invocation, false).await.map(|_| ())
    }

    /// Records an async invocation when its event comes off the queue, once:
    /// `false` when it was already recorded (a redelivered message).
    pub async fn queue_invocation(&self, invocation: &Invocation) -> Result<bool, StoreError> {
        self.put_invocation(invocation, true).await
    }

    async fn put_invocation(&self, i: &Invocation, if_absent: bool) -> Result<bool, StoreError> {
        let sql = if if_absent {
            "INSERT INTO trigger_invocations (id, trigger_id, event_id, mode, state, attempts,
                 next_attempt_at, status_code, response, error, console, duration_ms,
                 created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (id) DO NOTHING"
        } else {
            "INSERT INTO trigger_invocations (id, trigger_id, event_id, mode, state, attempts,
                 next_attempt_at, status_code, response, error, console, duration_ms,
                 created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        };
        let inserted = on_pool!(self, write, |pool| sqlx::query(sql)
            .bind(Uid(i.id.0))
            .bind(&i.trigger_id.0)
            .bind(Uid(i.event_id.0))
            .bind(i.mode.as_str())
            .bind(i.state.as_str())
            .bind(i.attempts)
            .bind(i.next_attempt_at.map(Ts))
            .bind(i.status_code)
            .bind(&i.response)
            .bind(&i.error)
            .bind(&i.console)
            .bind(i.duration_ms)
            .bind(Ts(i.created_at))
            .bind(Ts(i.updated_at))
            .execute(pool)
            .await?
            .rows_affected());
        Ok(inserted > 0)
    }

    /// A trigger's invocations, newest first, each with its request.
    pub async fn invocations(
        &self,
        trigger: &TriggerId,
        before: Option<InvocationId>,
        limit: i64,
    ) -> Result<Vec<InvocationWithRequest>, StoreError> {
        let sql = format!(
            "SELECT {INVOCATION_COLUMNS}, e.payload FROM trigger_invocations i
             JOIN events e ON e.id = i.event_id
             WHERE i.trigger_id = $1 AND ($2 IS NULL OR i.id < $2)
             ORDER BY i.id DESC LIMIT $3"
        );
        let rows: Vec<InvocationRequestRow> = on_pool!(self, read, |pool| sqlx::query_as(&sql)
            .bind(&trigger.0)
            .bind(before.map(|b| Uid(b.0)))
            .bind(limit)
            .fetch_all(pool)
            .await?);
        rows.into_iter()
            .map(|row| {
                Ok(InvocationWithRequest {
                    invocation: row.invocation.try_into()?,
                    request: row.payload,
                })
            })
            .collect()
    }

    /// The invocations an event led to (one, unless it was replayed while sync).
    pub async fn event_invocations(&self, event: EventId) -> Result<Vec<Invocation>, StoreError> {
        let sql = format!(
            "SELECT {INVOCATION_COLUMNS} FROM trigger_invocations i WHERE i.event_id = $1
             ORDER BY i.id"
        );
        let rows: Vec<InvocationRow> = on_pool!(self, read, |pool| sqlx::query_as(&sql)
            .bind(Uid(event.0))
            .fetch_all(pool)
            .await?);
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Claims up to `limit` due async runs for `lease`: each one's attempt
    /// count goes up and it is not due again until the lease runs out.
    pub async fn claim_runs(
        &self,
        limit: i64,
        lease: std::time::Duration,
    ) -> Result<Vec<ClaimedRun>, StoreError> {
        let now = crate::domain::now_millis();
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let claim = Uuid::now_v7();
        let returning = INVOCATION_COLUMNS.replace("i.", "");
        let rows: Vec<InvocationRow> = match self {
            Store::Postgres(pg) => {
                let sql = format!(
                    "UPDATE trigger_invocations SET next_attempt_at = $2, claim = $3,
                         attempts = attempts + 1, updated_at = $1
                     WHERE id IN (SELECT id FROM trigger_invocations
                                  WHERE state = 'pending' AND next_attempt_at <= $1
                                  ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED)
                     RETURNING {returning}"
                );
                sqlx::query_as(&sql)
                    .bind(Ts(now))
                    .bind(Ts(until))
                    .bind(Uid(claim))
                    .bind(limit)
                    .fetch_all(&pg.pool)
                    .await?
            }
            // One writer: the select and the update cannot interleave with another claim.
            Store::Sqlite(pools) => {
                let sql = format!(
                    "UPDATE trigger_invocations SET next_attempt_at = $2, claim = $3,
                         attempts = attempts + 1, updated_at = $1
                     WHERE id IN (SELECT id FROM trigger_invocations
                                  WHERE state = 'pending' AND next_attempt_at <= $1
                                  ORDER BY next_attempt_at LIMIT $4)
                     RETURNING {returning}"
                );
                sqlx::query_as(&sql)
                    .bind(Ts(now))
                    .bind(Ts(until))
                    .bind(Uid(claim))
                    .bind(limit)
                    .fetch_all(&pools.writer)
                    .await?
            }
        };
        rows.into_iter()
            .map(|row| {
                Ok(ClaimedRun {
                    invocation: row.try_into()?,
                    claim,
                })
            })
            .collect()
    }

    /// Writes a claimed run's result, if the claim still holds (a replay or
    /// another process's reclaim after the lease wins). `false` when it did not.
    pub async fn finish_run(
        &self,
        run: &ClaimedRun,
        record: &RunRecord,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE trigger_invocations SET state = $3, status_code = $4, response = $5,
                       error = $6, console = $7, duration_ms = $8, next_attempt_at = $9,
                       claim = NULL, updated_at = $10
                   WHERE id = $1 AND claim = $2";
        let updated = on_pool!(self, write, |pool| sqlx::query(sql)
            .bind(Uid(run.invocation.id.0))
            .bind(Uid(run.claim))
            .bind(record.state.as_str())
            .bind(record.status_code)
            .bind(&record.response)
            .bind(&record.error)
            .bind(&record.console)
            .bind(record.duration_ms)
            .bind(record.next_attempt_at.map(Ts))
            .bind(Ts(crate::domain::now_millis()))
            .execute(pool)
            .await?
            .rows_affected());
        Ok(updated > 0)
    }

    /// Runs an event's async script again (a replay): its invocation is due
    /// now, as a new round. `false` when the event has no such invocation.
    pub async fn replay_run(&self, event: EventId) -> Result<bool, StoreError> {
        let now = Ts(crate::domain::now_millis());
        let sql = "UPDATE trigger_invocations SET state = 'pending', attempts = 0,
                       next_attempt_at = $2, claim = NULL, updated_at = $2
                   WHERE event_id = $1 AND mode = 'async' AND state <> 'accepted'";
        let updated = on_pool!(self, write, |pool| sqlx::query(sql)
            .bind(Uid(event.0))
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(updated > 0)
    }
}
