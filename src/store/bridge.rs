//! What the bridge keeps: API tokens attached to admin-webhook sources, the
//! API keys external systems call the proxy with, each tenant's activity,
//! and where reconciliation of Jira's failed webhooks got to. The SQL is the
//! same on both backends.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use super::crypt::API_TOKEN;
use super::tenants::Ts;
use super::{Store, StoreError};
use crate::domain::ClientKey;

/// An Atlassian API token (basic auth with the account's email) attached to
/// a tenant.
#[derive(Clone)]
pub struct ApiToken {
    pub email: String,
    pub token: SecretString,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("email", &self.email)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// A proxy API key, as kept: its hash, never the key. `None` scopes mean any.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// The key's first characters, to recognise it by.
    pub prefix: String,
    pub tenants: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    /// Refused after this; `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last accepted call (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Events stored for a tenant, and when the newest was received.
#[derive(Debug, Clone, Copy, Default)]
pub struct Activity {
    pub event_count: i64,
    pub last_event_at: Option<DateTime<Utc>>,
}

/// Reconciliation of one tenant: the cursor into Jira's failed-webhook list
/// and how the last run went.
#[derive(Debug, Clone)]
pub struct ReconcileState {
    pub cursor: Option<String>,
    pub next_run_at: DateTime<Utc>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub recovered: i64,
}

/// A `reconcile_state` row: cursor, next run, last run, last error, recovered.
type StateRow = (Option<String>, Ts, Option<Ts>, Option<String>, i64);

#[derive(sqlx::FromRow)]
struct ApiKeyRow {
    id: String,
    name: String,
    prefix: String,
    tenants: Option<String>,
    methods: Option<String>,
    paths: Option<String>,
    created_at: Ts,
    expires_at: Option<Ts>,
    last_used_at: Option<Ts>,
}

impl TryFrom<ApiKeyRow> for ApiKey {
    type Error = StoreError;

    fn try_from(row: ApiKeyRow) -> Result<Self, StoreError> {
        let list = |text: Option<String>| {
            text.map(|t| {
                serde_json::from_str::<Vec<String>>(&t)
                    .map_err(|_| StoreError::Corrupt(format!("api key scope `{t}`")))
            })
            .transpose()
        };
        Ok(ApiKey {
            tenants: list(row.tenants)?,
            methods: list(row.methods)?,
            paths: list(row.paths)?,
            id: row.id,
            name: row.name,
            prefix: row.prefix,
            created_at: row.created_at.0,
            expires_at: row.expires_at.map(|t| t.0),
            last_used_at: row.last_used_at.map(|t| t.0),
        })
    }
}

fn scope_text(scope: &Option<Vec<String>>) -> Option<String> {
    scope
        .as_ref()
        .map(|s| serde_json::to_string(s).unwrap_or_else(|_| "[]".into()))
}

const API_KEY_COLUMNS: &str =
    "id, name, prefix, tenants, methods, paths, created_at, expires_at, last_used_at";

impl Store {
    /// Attaches (or replaces) a tenant's API token. `false`: no such tenant.
    pub async fn set_api_token(
        &self,
        tenant: &ClientKey,
        token: &ApiToken,
    ) -> Result<bool, StoreError> {
        let sealed = self.seal(API_TOKEN, &tenant.0, &token.token)?;
        let sql = "INSERT INTO tenant_api_tokens (client_key, email, token, created_at)
                   SELECT client_key, $2, $3, $4 FROM tenants WHERE client_key = $1
                   ON CONFLICT (client_key) DO UPDATE SET
                       email = EXCLUDED.email, token = EXCLUDED.token,
                       created_at = EXCLUDED.created_at";
        let written = on_pool!(self, write, |pool| sqlx::query(sql)
            .bind(&tenant.0)
            .bind(&token.email)
            .bind(sealed.expose_secret())
            .bind(Ts(token.created_at))
            .execute(pool)
            .await?
            .rows_affected());
        Ok(written > 0)
    }

    /// The API token attached to a tenant, opened.
    pub async fn api_token(&self, tenant: &ClientKey) -> Result<Option<ApiToken>, StoreError> {
        let sql = "SELECT email, token, created_at FROM tenant_api_tokens WHERE client_key = $1";
        let row: Option<(String, String, Ts)> = on_pool!(self, read, |pool| sqlx::query_as(sql)
            .bind(&tenant.0)
            .fetch_optional(pool)
            .await?);
        row.map(|(email, token, created_at)| {
            Ok(ApiToken {
                email,
                token: self.open(API_TOKEN, &tenant.0, &SecretString::from(token))?,
                created_at: created_at.0,
            })
        })
        .transpose()
    }

    /// Removes a tenant's API token; `false` when it had none.
    pub async fn delete_api_token(&self, tenant: &ClientKey) -> Result<bool, StoreError> {
        let sql = "DELETE FROM tenant_api_tokens WHERE client_key = $1";
        let deleted = on_pool!(self, write, |pool| sqlx::query(sql)
            .bind(&tenant.0)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(deleted > 0)
    }

    /// Keeps a new API key under the hash of its secret part.
    pub async fn insert_api_key(&self, key: &ApiKey, hash: &str) -> Result<(), StoreError> {
        let sql = "INSERT INTO api_keys (id, name, key_hash, prefix, tenants, methods, paths,
                                         created_at, expires_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
        let _inserted = on_pool!(self, write, |pool| sqlx::query(sql)
            .bind(&key.id)
            .bind(&key.name)
            .bind(hash)
            .bind(&key.prefix)
            .bind(scope_text(&key.tenants))
            .bind(scope_text(&key.methods))
            .bind(scope_text(&key.paths))
            .bind(Ts(key.created_at))
            .bind(key.expires_at.map(Ts))
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// The API key whose secret hashes to `hash`.
    pub async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1");
        let row: Option<ApiKeyRow> = on_pool!(self, read, |pool| sqlx::query_as(&sql)
            .bind(hash)
            .fetch_optional(pool)
            .await?);
        row.map(ApiKey::try_from).transpose()
    }

    /// The API key `id`.
    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let row: Option<ApiKeyRow> = on_pool!(self, read, |pool| sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await?);
        row.map(ApiKey::try_from).transpose()
    }

    /// Every API key, oldest first.
    pub async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id");
        let rows: Vec<ApiKeyRow> = on_pool!(self, read, |pool| sqlx::query_as(&sql)
            .fetch_all(pool)
            .await?);
        rows.into_iter().map(ApiKey::try_from).collect()
    }

    /// Notes that a key was used at `at`.
    pub async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        let sql = "UPDATE api_keys SET last_used_at = $2 WHERE id = $1";
        let _touched = on_pool!(self, write, |pool| sqlx::query(sql)
            .bind(id)
            .bind(Ts(at))
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Deletes an API key; `false` when there is none with `id`.
    pub async fn delete_api_key(&self, id: &str) -> Result<bool, StoreError> {
        let sql = "DELETE FROM api_keys WHERE id = $1";
        let deleted = on_pool!(self, write, |pool| sqlx::query(sql)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(deleted > 0)
    }

    /// Events stored for one tenant, and the newest one's time.
    pub async fn tenant_activity(&self, tenant: &ClientKey) -> Result<Activity, StoreError> {
        let sql = "SELECT count(*), max(received_at) FROM events WHERE tenant_client_key = $1";
        let (event_count, last): (i64, Option<Ts>) =
            on_pool!(self, read, |pool| sqlx::query_as(sql)
                .bind(&tenant.0)
                .fetch_one(pool)
                .await?);
        Ok(Activity {
            event_count,
            last_event_at: last.map(|t| t.0),
        })
    }

    /// Activity of every tenant that has events, by client key.
    pub async fn activity(
        &self,
    ) -> Result<std::collections::HashMap<String, Activity>, StoreError> {
        let sql = "SELECT tenant_client_key, count(*), max(received_at) FROM events
                   WHERE tenant_client_key IS NOT NULL GROUP BY tenant_client_key";
        let rows: Vec<(String, i64, Option<Ts>)> = on_pool!(self, read, |pool| sqlx::query_as(sql)
            .fetch_all(pool)
            .await?);
        Ok(rows
            .into_iter()
            .map(|(key, event_count, last)| {
                let activity = Activity {
                    event_count,
                    last_event_at: last.map(|t| t.0),
                };
                (key, activity)
            })
            .collect())
    }

    /// Every installed (or enabled) Connect Jira tenant: the ones Jira keeps
    /// a failed-webhook list for.
    pub async fn reconcilable_tenants(&self) -> Result<Vec<ClientKey>, StoreError> {
        let sql = "SELECT client_key FROM tenants
                   WHERE kind = 'connect' AND product = 'jira'
                     AND state IN ('installed', 'enabled')
                   ORDER BY client_key";
        let rows: Vec<(String,)> = on_pool!(self, read, |pool| sqlx::query_as(sql)
            .fetch_all(pool)
            .await?);
        Ok(rows.into_iter().map(|(key,)| ClientKey(key)).collect())
    }

    /// Takes the next timed reconciliation of `tenant` if it is due (none
    /// yet, or `next_run_at` passed), moving it to `next`: of several
    /// processes, one gets it. `Some(cursor)` when taken.
    pub async fn claim_reconcile(
        &self,
        tenant: &ClientKey,
        now: DateTime<Utc>,
        next: DateTime<Utc>,
    ) -> Result<Option<Option<String>>, StoreError> {
        let sql = "INSERT INTO reconcile_state (client_key, next_run_at) VALUES ($1, $2)
                   ON CONFLICT (client_key) DO UPDATE SET next_run_at = EXCLUDED.next_run_at
                   WHERE reconcile_state.next_run_at <= $3
                   RETURNING cursor";
        let row: Option<(Option<String>,)> = on_pool!(self, write, |pool| sqlx::query_as(sql)
            .bind(&tenant.0)
            .bind(Ts(next))
            .bind(Ts(now))
            .fetch_optional(pool)
            .await?);
        Ok(row.map(|(cursor,)| cursor))
    }

    /// Where reconciliation of `tenant` stands, if it ever ran.
    pub async fn reconcile_state(
        &self,
        tenant: &ClientKey,
    ) -> Result<Option<ReconcileState>, StoreError> {
        let sql = "SELECT cursor, next_run_at, last_run_at, last_error, recovered
                   FROM reconcile_state WHERE client_key = $1";
        let row: Option<StateRow> = on_pool!(self, read, |pool| sqlx::query_as(sql)
            .bind(&tenant.0)
            .fetch_optional(pool)
            .await?);
        Ok(row.map(
            |(cursor, next_run_at, last_run_at, last_error, recovered)| ReconcileState {
                cursor,
                next_run_at: next_run_at.0,
                last_run_at: last_run_at.map(|t| t.0),
                last_error,
                recovered,
            },
        ))
    }

    /// Records progress: the cursor after a page whose items are all stored,
    /// and how many of them were new.
    pub async fn save_reconcile_cursor(
        &self,
        tenant: &ClientKey,
        cursor: Option<&str>,
        recovered: i64,
    ) -> Result<(), StoreError> {
        let now = Ts(crate::domain::now_millis());
        let sql = "INSERT INTO reconcile_state (client_key, cursor, next_run_at, recovered)
                   VALUES ($1, $2, $3, $4)
                   ON CONFLICT (client_key) DO UPDATE SET
                       cursor = COALESCE(EXCLUDED.cursor, reconcile_state.cursor),
                       recovered = reconcile_state.recovered + EXCLUDED.recovered";
        let _written = on_pool!(self, write, |pool| sqlx::query(sql)
            .bind(&tenant.0)
            .bind(cursor)
            .bind(now)
            .bind(recovered)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Records the end of a run, and its error if it failed.
    pub async fn finish_reconcile(
        &self,
        tenant: &ClientKey,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = Ts(crate::domain::now_millis());
        let sql = "INSERT INTO reconcile_state (client_key, next_run_at, last_run_at, last_error)
                   VALUES ($1, $2, $2, $3)
                   ON CONFLICT (client_key) DO UPDATE SET
                       last_run_at = EXCLUDED.last_run_at, last_error = EXCLUDED.last_error";
        let _written = on_pool!(self, write, |pool| sqlx::query(sql)
            .bind(&tenant.0)
            .bind(now)
            .bind(error)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }
}
