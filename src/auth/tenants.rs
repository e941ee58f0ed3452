//! Tenants by client key, cached in front of the store.
//!
//! Every webhook needs its tenant's secret; the cache keeps that off the database.
//! It is bounded in size and age. Lifecycle changes made by this process invalidate
//! their entry at once; changes made by another process are picked up when the age
//! runs out, or sooner when a signature fails against a cached secret (see
//! [`super::Authenticator::verify_tenant_request`]).

use std::time::Duration;

use moka::future::Cache;

use crate::domain::{ClientKey, Tenant};
use crate::store::{Store, StoreError};

const MAX_TENANTS: u64 = 10_000;

pub struct TenantCache {
    store: Store,
    cache: Cache<String, Tenant>,
}

impl TenantCache {
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self {
            store,
            cache: Cache::builder()
                .max_capacity(MAX_TENANTS)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The tenant, and whether it came from the cache.
    pub async fn get(&self, client_key: &str) -> Result<(Option<Tenant>, bool), StoreError> {
        if let Some(tenant) = self.cache.get(client_key).await {
            return Ok((Some(tenant), true));
        }
        Ok((self.refresh(client_key).await?, false))
    }

    /// Reads the tenant from the store, replacing whatever was cached.
    pub async fn refresh(&self, client_key: &str) -> Result<Option<Tenant>, StoreError> {
        let tenant = self
            .store
            .tenant(&ClientKey(client_key.to_string()))
            .await?;
        match &tenant {
            Some(t) => self.cache.insert(client_key.to_string(), t.clone()).await,
            None => self.cache.invalidate(client_key).await,
        }
        Ok(tenant)
    }

    pub async fn invalidate(&self, client_key: &str) {
        self.cache.invalidate(client_key).await;
    }
}
