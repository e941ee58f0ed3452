//! Tenants beyond Connect installations: Forge installations, their app system
//! tokens, and admin-webhook sources with their secrets. The SQL is the same on
//! both backends (`$n` placeholders work on SQLite too); only timestamps are
//! encoded differently, which [`Ts`] does.

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Postgres, Sqlite, Type};

use super::crypt::{FORGE_TOKEN, SOURCE_SECRET};
use super::{Store, StoreError};
use crate::domain::{format_timestamp, ClientKey, Tenant, TenantKind, TenantState};

/// A timestamp as each backend stores it: `TIMESTAMPTZ` on PostgreSQL, fixed
/// width RFC 3339 text on SQLite (see `sqlite.rs`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ts(pub DateTime<Utc>);

impl Type<Sqlite> for Ts {
    fn type_info() -> <Sqlite as Database>::TypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for Ts {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as Database>::ArgumentBuffer<'q>,
    ) -> Result<IsNull, BoxDynError> {
        <String as Encode<'q, Sqlite>>::encode(format_timestamp(self.0), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Ts {
    fn decode(value: <Sqlite as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <String as Decode<'r, Sqlite>>::decode(value)?;
        Ok(Ts(super::sqlite::time(&text)?))
    }
}

impl Type<Postgres> for Ts {
    fn type_info() -> <Postgres as Database>::TypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl<'q> Encode<'q, Postgres> for Ts {
    fn encode_by_ref(
        &self,
        buf: &mut <Postgres as Database>::ArgumentBuffer<'q>,
    ) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<'q, Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Ts {
    fn decode(value: <Postgres as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Ts(<DateTime<Utc> as Decode<'r, Postgres>>::decode(value)?))
    }
}

/// Runs `$body` with `$pool` bound to the backend's pool for writes (or reads,
/// with `read`): the body is the same text, type-checked once per backend.
macro_rules! on_pool {
    ($store:expr, write, |$pool:ident| $body:expr) => {
        match $store {
            Store::Postgres(pg) => {
                let $pool = &pg.pool;
                $body
            }
            Store::Sqlite(pools) => {
                let $pool = &pools.writer;
                $body
            }
        }
    };
    ($store:expr, read, |$pool:ident| $body:expr) => {
        match $store {
            Store::Postgres(pg) => {
                let $pool = &pg.pool;
                $body
            }
            Store::Sqlite(pools) => {
                let $pool = &pools.reader;
                $body
            }
        }
    };
}

/// A Forge installation as its invocation token describes it.
#[derive(Debug, Clone)]
pub struct ForgeInstallation {
    /// `app.installationId`: the tenant's key.
    pub installation_id: ClientKey,
    pub product: crate::domain::Product,
    pub site_url: String,
    pub cloud_id: Option<String>,
    pub api_base_url: Option<String>,
    pub environment: Option<String>,
}

/// What [`Store::use_forge_token`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    First,
    /// Accepted before with the same event.
    Repeat,
    /// Accepted before with another event.
    Conflict,
}

/// A lifecycle event of a Forge installation: the state it moves to, and the
/// token's `iat`, which orders it against others.
#[derive(Debug, Clone, Copy)]
pub struct ForgeLifecycle {
    pub state: TenantState,
    pub at: DateTime<Utc>,
}

/// One secret of an admin-webhook source. `prefix` (its first characters)
/// names it in listings and when it is retired.
#[derive(Clone)]
pub struct SourceSecret {
    pub prefix: String,
    pub secret: SecretString,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for SourceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSecret")
            .field("prefix", &self.prefix)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// What a new admin-webhook source is made of.
#[derive(Debug, Clone)]
pub struct NewSource {
    pub id: ClientKey,
    pub name: String,
    pub base_url: String,
}

const EPOCH: DateTime<Utc> = DateTime::<Utc>::UNIX_EPOCH;

impl Store {
    /// Creates a Forge installation on its first verified call, and keeps its
    /// site details current. A lifecycle event also moves its state, unless a
    /// newer one already did. `false` when the key belongs to another kind of
    /// tenant (nothing is changed).
    pub async fn upsert_forge_installation(
        &self,
        install: &ForgeInstallation,
        lifecycle: Option<ForgeLifecycle>,
    ) -> Result<bool, StoreError> {
        let now = Ts(crate::domain::now_millis());
        let (state, at) = match lifecycle {
            Some(l) => (l.state, Ts(l.at)),
            // An ordinary event: installed, and older than any lifecycle event.
            None => (TenantState::Installed, Ts(EPOCH)),
        };
        let sql = "INSERT INTO tenants (client_key, kind, product, base_url, shared_secret, state,
                                        lifecycle_at, installed_at, updated_at, cloud_id,
                                        api_base_url, environment)
                   VALUES ($1, 'forge', $2, $3, '', $4, $5, $6, $6, $7, $8, $9)
                   ON CONFLICT (client_key) DO UPDATE SET
                       base_url = EXCLUDED.base_url,
                       cloud_id = COALESCE(EXCLUDED.cloud_id, tenants.cloud_id),
                       api_base_url = COALESCE(EXCLUDED.api_base_url, tenants.api_base_url),
                       environment = COALESCE(EXCLUDED.environment, tenants.environment),
                       updated_at = EXCLUDED.updated_at,
                       state = CASE WHEN $10 AND tenants.lifecycle_at < EXCLUDED.lifecycle_at
                                    THEN EXCLUDED.state ELSE tenants.state END,
                       installed_at = CASE WHEN $10 AND EXCLUDED.state = 'installed'
                                           AND tenants.lifecycle_at < EXCLUDED.lifecycle_at
                                      THEN EXCLUDED.installed_at ELSE tenants.installed_at END,
                       lifecycle_at = CASE WHEN $10 AND tenants.lifecycle_at < EXCLUDED.lifecycle_at
                                           THEN EXCLUDED.lifecycle_at ELSE tenants.lifecycle_at END
                   WHERE tenants.kind = 'forge'
                   RETURNING client_key";
        let row: Option<(String,)> = on_pool!(self, write, |pool| sqlx::query_as(sql)
            .bind(&install.installation_id.0)
            .bind(install.product.as_str())
            .bind(&install.site_url)
            .bind(state.as_str())
            .bind(at)
            .bind(now)
            .bind(&install.cloud_id)
            .bind(&install.api_base_url)
            .bind(&install.environment)
            .bind(lifecycle.is_some())
            .fetch_optional(pool)
            .await?);
        Ok(row.is_some())
    }

    /// Records that the Forge Invocation Token `digest` carried the event
    /// `event_key`: the first use, a repeat with the same event (a retry), or a
    /// conflict (the token was accepted with another event: a replay with a new
    /// body). Expired records are purged now and then.
    pub async fn use_forge_token(
        &self,
        digest: &[u8; 32],
        event_key: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<TokenUse, StoreError> {
        if rand::random::<u8>() < 4 {
            let now = Ts(crate::domain::now_millis());
            let purge = "DELETE FROM used_forge_tokens WHERE expires_at < $1";
            let _purged = on_pool!(self, write, |pool| sqlx::query(purge)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected());
        }
        let insert = "INSERT INTO used_forge_tokens (digest, event_key, expires_at)
                      VALUES ($1, $2, $3) ON CONFLICT (digest) DO NOTHING RETURNING event_key";
        let first: Option<(String,)> = on_pool!(self, write, |pool| sqlx::query_as(insert)
            .bind(&digest[..])
            .bind(event_key)
            .bind(Ts(expires_at))
            .fetch_optional(pool)
            .await?);
        if first.is_some() {
            return Ok(TokenUse::First);
        }
        let select = "SELECT event_key FROM used_forge_tokens WHERE digest = $1";
        let used: Option<(String,)> = on_pool!(self, write, |pool| sqlx::query_as(select)
            .bind(&digest[..])
            .fetch_optional(pool)
            .await?);
        Ok(if used.is_some_and(|(key,)| key == event_key) {
            TokenUse::Repeat
        } else {
            TokenUse::Conflict
        })
    }

    /// Keeps a Forge installation's app system token, unless one that expires
    /// later is already kept. Sealed like every secret.
    pub async fn save_forge_token(
        &self,
        installation: &ClientKey,
        token: &SecretString,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        use secrecy::ExposeSecret;
        let sealed = self.seal(FORGE_TOKEN, &installation.0, token)?;
        let now = Ts(crate::domain::now_millis());
        let sql = "INSERT INTO forge_tokens (installation_id, token, expires_at, updated_at)
                   VALUES ($1, $2, $3, $4)
                   ON CONFLICT (installation_id) DO UPDATE SET
                       token = EXCLUDED.token, expires_at = EXCLUDED.expires_at,
                       updated_at = EXCLUDED.updated_at
                   WHERE forge_tokens.expires_at IS NULL
                      OR forge_tokens.expires_at <= EXCLUDED.expires_at";
        let _written = on_pool!(self, write, |pool| sqlx::query(sql)
            .bind(&installation.0)
            .bind(sealed.expose_secret())
            .bind(expires_at.map(Ts))
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// The app system token kept for a Forge installation, and when it expires.
    pub async fn forge_token(
        &self,
        installation: &ClientKey,
    ) -> Result<Option<(SecretString, Option<DateTime<Utc>>)>, StoreError> {
        let sql = "SELECT token, expires_at FROM forge_tokens WHERE installation_id = $1";
        let row: Option<(String, Option<Ts>)> = on_pool!(self, read, |pool| sqlx::query_as(sql)
            .bind(&installation.0)
            .fetch_optional(pool)
            .await?);
        row.map(|(token, expires)| {
            let token = self.open(FORGE_TOKEN, &installation.0, &SecretString::from(token))?;
            Ok((token, expires.map(|t| t.0)))
        })
        .transpose()
    }

    /// Creates an admin-webhook source with its first secret.
    pub async fn create_source(
        &self,
        source: &NewSource,
        secret: &SourceSecret,
    ) -> Result<(), StoreError> {
        let now = Ts(secret.created_at);
        let insert_tenant = "INSERT INTO tenants (client_key, kind, product, base_url, shared_secret,
                                                  state, lifecycle_at, installed_at, updated_at, name)
                             VALUES ($1, 'jira-admin', 'jira', $2, '', 'enabled', $3, $3, $3, $4)";
        on_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(insert_tenant)
                .bind(&source.id.0)
                .bind(&source.base_url)
                .bind(now)
                .bind(&source.name)
                .execute(&mut *tx)
                .await?;
            self.insert_secret(&mut *tx, &source.id, secret).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    async fn insert_secret<'c, DB, E>(
        &self,
        executor: E,
        source: &ClientKey,
        secret: &SourceSecret,
    ) -> Result<(), StoreError>
    where
        DB: Database,
        E: sqlx::Executor<'c, Database = DB>,
        for<'q> String: Encode<'q, DB> + Type<DB>,
        for<'q> Ts: Encode<'q, DB> + Type<DB>,
        for<'q> <DB as Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    {
        use secrecy::ExposeSecret;
        let row = format!("{}:{}", source.0, secret.prefix);
        let sealed = self.seal(SOURCE_SECRET, &row, &secret.secret)?;
        sqlx::query::<DB>(
            "INSERT INTO source_secrets (source_id, prefix, secret, created_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(source.0.clone())
        .bind(secret.prefix.clone())
        .bind(sealed.expose_secret().to_string())
        .bind(Ts(secret.created_at))
        .execute(executor)
        .await?;
        Ok(())
    }

    /// Adds a secret to a source (for rotation); the source must exist.
    pub async fn add_source_secret(
        &self,
        source: &ClientKey,
        secret: &SourceSecret,
    ) -> Result<(), StoreError> {
        on_pool!(self, write, |pool| self
            .insert_secret(pool, source, secret)
            .await)
    }

    /// Retires the secret whose prefix is `prefix`, unless it is the source's
    /// last one. `Ok(None)`: no such secret; `Ok(Some(false))`: the last one.
    pub async fn remove_source_secret(
        &self,
        source: &ClientKey,
        prefix: &str,
    ) -> Result<Option<bool>, StoreError> {
        // The source's row is locked first (an UPDATE takes a row lock on
        // PostgreSQL; SQLite has one writer), so that two removals at once
        // cannot each see two secrets and leave none.
        let lock =
            "UPDATE tenants SET updated_at = $2 WHERE client_key = $1 AND kind = 'jira-admin'";
        let delete = "DELETE FROM source_secrets
                      WHERE source_id = $1 AND prefix = $2
                        AND (SELECT count(*) FROM source_secrets WHERE source_id = $1) > 1
                      RETURNING prefix";
        let now = Ts(crate::domain::now_millis());
        let removed: Option<(String,)> = on_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(lock)
                .bind(&source.0)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let removed = sqlx::query_as(delete)
                .bind(&source.0)
                .bind(prefix)
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            removed
        });
        if removed.is_some() {
            return Ok(Some(true));
        }
        let exists = self
            .source_secrets(source)
            .await?
            .iter()
            .any(|s| s.prefix == prefix);
        Ok(exists.then_some(false))
    }

    /// A source's secrets, oldest first, opened.
    pub async fn source_secrets(
        &self,
        source: &ClientKey,
    ) -> Result<Vec<SourceSecret>, StoreError> {
        let sql = "SELECT prefix, secret, created_at FROM source_secrets
                   WHERE source_id = $1 ORDER BY created_at, prefix";
        let rows: Vec<(String, String, Ts)> = on_pool!(self, read, |pool| sqlx::query_as(sql)
            .bind(&source.0)
            .fetch_all(pool)
            .await?);
        rows.into_iter()
            .map(|(prefix, stored, created_at)| {
                let row = format!("{}:{}", source.0, prefix);
                Ok(SourceSecret {
                    secret: self.open(SOURCE_SECRET, &row, &SecretString::from(stored))?,
                    prefix,
                    created_at: created_at.0,
                })
            })
            .collect()
    }

    /// An admin-webhook source, if `id` is one.
    pub async fn source(&self, id: &ClientKey) -> Result<Option<Tenant>, StoreError> {
        Ok(self
            .tenant(id)
            .await?
            .filter(|t| t.kind == TenantKind::JiraAdmin))
    }

    /// Renames a source or changes its site. A new site drops the API token
    /// attached for the old one, in the same transaction: the token is an
    /// account's credential for that site, and must never be sent to another
    /// host because the URL changed. `None` if there is no such source;
    /// otherwise whether a token was dropped.
    pub async fn update_source(
        &self,
        id: &ClientKey,
        name: Option<&str>,
        base_url: Option<&str>,
    ) -> Result<Option<bool>, StoreError> {
        let now = Ts(crate::domain::now_millis());
        let drop_token = "DELETE FROM tenant_api_tokens
                          WHERE client_key = $1 AND $2 IS NOT NULL
                            AND $2 <> (SELECT base_url FROM tenants WHERE client_key = $1)";
        let sql = "UPDATE tenants SET name = COALESCE($2, name), base_url = COALESCE($3, base_url),
                                      updated_at = $4
                   WHERE client_key = $1 AND kind = 'jira-admin'
                   RETURNING client_key";
        let outcome = on_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            let dropped = sqlx::query(drop_token)
                .bind(&id.0)
                .bind(base_url)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
            let row: Option<(String,)> = sqlx::query_as(sql)
                .bind(&id.0)
                .bind(name)
                .bind(base_url)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            row.map(|_| dropped)
        });
        Ok(outcome)
    }

    /// Deletes a source and its secrets (its events stay). `false` if there
    /// is no such source.
    pub async fn delete_source(&self, id: &ClientKey) -> Result<bool, StoreError> {
        let sql = "DELETE FROM tenants WHERE client_key = $1 AND kind = 'jira-admin'
                   RETURNING client_key";
        let row: Option<(String,)> = on_pool!(self, write, |pool| sqlx::query_as(sql)
            .bind(&id.0)
            .fetch_optional(pool)
            .await?);
        Ok(row.is_some())
    }

    /// Tenants of every kind (or one), newest install first, without secrets.
    pub async fn list_tenants(&self, kind: Option<TenantKind>) -> Result<Vec<Tenant>, StoreError> {
        let kind = kind.map(TenantKind::as_str);
        let mut tenants = match self {
            Store::Postgres(pg) => super::postgres::list_tenants(&pg.pool, kind).await?,
            Store::Sqlite(pools) => super::sqlite::list_tenants(&pools.reader, kind).await?,
        };
        for tenant in &mut tenants {
            tenant.shared_secret = SecretString::from(String::new());
        }
        Ok(tenants)
    }
}
