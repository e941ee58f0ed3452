//! Tenants by client key, cached in front of the store.
//!
//! Every webhook needs its tenant's secret; the cache keeps that off the database.
//! It is bounded in size and age, and remembers for a moment that a client key is
//! unknown, so that a flood of tokens naming one unknown key costs one read.
//!
//! Lifecycle changes made by this process invalidate their entry at once. Changes
//! made by another process (a reinstall with a new secret, an uninstall) are picked
//! up when the entry ages out, or sooner: a request that the cached data would
//! refuse is checked again against the store before it is refused (see
//! [`super::Authenticator::verify_tenant_request`]). Rechecks are rate-limited
//! for the whole process ([`RECHECKS_PER_SECOND`]), so a flood of forged tokens
//! costs the database a bounded number of reads, while real traffic, which almost
//! never needs a recheck, is not held back by it.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::DefaultDirectRateLimiter;
use moka::future::Cache;

use crate::domain::{ClientKey, Tenant};
use crate::store::{Store, StoreError};

const MAX_TENANTS: u64 = 10_000;
/// How long "no such tenant" is remembered.
const MISSING_TTL: Duration = Duration::from_secs(2);
/// Store reads to confirm a refusal, per second, for the whole process.
pub const RECHECKS_PER_SECOND: NonZeroU32 = NonZeroU32::new(50).unwrap();
const RECHECK_BURST: NonZeroU32 = NonZeroU32::new(100).unwrap();

pub struct TenantCache {
    store: Store,
    found: Cache<String, Tenant>,
    missing: Cache<String, ()>,
    rechecks: DefaultDirectRateLimiter,
}

impl TenantCache {
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self {
            store,
            found: Cache::builder()
                .max_capacity(MAX_TENANTS)
                .time_to_live(ttl)
                .build(),
            missing: Cache::builder()
                .max_capacity(MAX_TENANTS)
                .time_to_live(MISSING_TTL)
                .build(),
            rechecks: super::rate_limiter(RECHECKS_PER_SECOND, RECHECK_BURST),
        }
    }

    /// The tenant, and whether the answer came from the cache.
    pub async fn get(&self, client_key: &str) -> Result<(Option<Tenant>, bool), StoreError> {
        if let Some(tenant) = self.found.get(client_key).await {
            return Ok((Some(tenant), true));
        }
        if self.missing.contains_key(client_key) {
            return Ok((None, true));
        }
        // Concurrent misses of one key share one read; the others wait for it.
        let read = self
            .found
            .try_get_with_by_ref(client_key, async {
                match self.load(client_key).await {
                    Ok(Some(tenant)) => Ok(tenant),
                    Ok(None) => Err(None),
                    Err(e) => Err(Some(e)),
                }
            })
            .await;
        match read {
            Ok(tenant) => Ok((Some(tenant), false)),
            Err(e) => match &*e {
                None => Ok((None, false)),
                Some(e) => Err(e.replicate()),
            },
        }
    }

    /// Reads the tenant from the store again, unless the recheck budget is spent
    /// (then `None`: the cached answer stands).
    pub async fn recheck(&self, client_key: &str) -> Option<Result<Option<Tenant>, StoreError>> {
        if self.rechecks.check().is_err() {
            tracing::warn!("tenant recheck budget spent; refusing on cached data");
            return None;
        }
        Some(self.read(client_key).await)
    }

    /// Reads the tenant from the store and caches the answer.
    async fn read(&self, client_key: &str) -> Result<Option<Tenant>, StoreError> {
        let tenant = self.load(client_key).await?;
        match &tenant {
            Some(t) => self.found.insert(client_key.to_string(), t.clone()).await,
            None => self.found.invalidate(client_key).await,
        }
        Ok(tenant)
    }

    /// Reads the tenant from the store; remembers for a moment if it is unknown.
    async fn load(&self, client_key: &str) -> Result<Option<Tenant>, StoreError> {
        // No stored key holds NUL (PostgreSQL text cannot), so no tenant has it.
        if client_key.contains('\0') {
            return Ok(None);
        }
        let tenant = self
            .store
            .tenant(&ClientKey(client_key.to_string()))
            .await?;
        match &tenant {
            Some(_) => self.missing.invalidate(client_key).await,
            None => self.missing.insert(client_key.to_string(), ()).await,
        }
        Ok(tenant)
    }

    /// Forgets everything about `client_key`, after a lifecycle change.
    pub async fn invalidate(&self, client_key: &str) {
        self.found.invalidate(client_key).await;
        self.missing.invalidate(client_key).await;
    }
}
