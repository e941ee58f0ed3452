//! Atlassian's signed-install public keys, fetched from `{install_keys_url}/{kid}`.
//!
//! A key never changes under its `kid`, so found keys are cached for a day. A `kid`
//! the server does not know is remembered for a short while, so that a flood of
//! forged installs cannot turn into a flood of outgoing requests. Fetches are
//! rate-limited per source address and, less tightly, for all sources together,
//! since kids are attacker-chosen: one address sending forged installs with
//! fresh kids spends its own budget, not the one real installs need. A kid
//! already fetched is always served from the cache, whatever the budgets.
//! Fetch failures other than "not found" are not cached: the next install
//! tries again.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use jsonwebtoken::DecodingKey;
use moka::future::Cache;
use url::Url;

use super::AuthError;

const KEY_TTL: Duration = Duration::from_secs(24 * 3600);
const NEGATIVE_TTL: Duration = Duration::from_secs(30);
const MAX_KEYS: u64 = 1_000;
/// A PEM public key is well under this; anything larger is not one.
const MAX_KEY_BYTES: usize = 16 * 1024;
/// Real installs need a fetch once per kid, and kids rotate rarely.
const FETCHES_PER_SECOND: NonZeroU32 = NonZeroU32::new(5).unwrap();
const FETCH_BURST: NonZeroU32 = NonZeroU32::new(20).unwrap();
/// One source address's share: a few fetches at once, then one a second.
const SOURCE_FETCHES_PER_SECOND: NonZeroU32 = NonZeroU32::new(1).unwrap();
const SOURCE_FETCH_BURST: NonZeroU32 = NonZeroU32::new(4).unwrap();
/// Source addresses remembered before the idle ones are forgotten.
const MAX_SOURCES: usize = 10_000;

pub struct InstallKeys {
    base: Url,
    /// Shared client; its timeouts bound every fetch.
    http: reqwest::Client,
    found: Cache<String, Arc<DecodingKey>>,
    missing: Cache<String, ()>,
    fetches: DefaultDirectRateLimiter,
    fetches_by_source: DefaultKeyedRateLimiter<IpAddr>,
}

impl InstallKeys {
    pub fn new(base: Url, http: reqwest::Client) -> Self {
        Self {
            base,
            http,
            found: Cache::builder()
                .max_capacity(MAX_KEYS)
                .time_to_live(KEY_TTL)
                .build(),
            missing: Cache::builder()
                .max_capacity(MAX_KEYS)
                .time_to_live(NEGATIVE_TTL)
                .build(),
            fetches: super::rate_limiter(FETCHES_PER_SECOND, FETCH_BURST),
            fetches_by_source: RateLimiter::keyed(
                Quota::per_second(SOURCE_FETCHES_PER_SECOND).allow_burst(SOURCE_FETCH_BURST),
            ),
        }
    }

    /// The key published under `kid`, for a request from `source` (the TCP
    /// peer; `None` when unknown, which shares one budget).
    pub async fn get(
        &self,
        kid: &str,
        source: Option<IpAddr>,
    ) -> Result<Arc<DecodingKey>, AuthError> {
        // A kid becomes a URL path segment: allow only what real kids contain.
        if kid.is_empty()
            || kid.len() > 128
            || !kid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || kid.starts_with('.')
        {
            return Err(AuthError::BadKid);
        }
        if self.missing.contains_key(kid) {
            return Err(AuthError::UnknownKid);
        }
        let result = self
            .found
            .try_get_with(kid.to_string(), self.fetch(kid, source))
            .await
            .map_err(|e| match &*e {
                FetchError::NotFound => AuthError::UnknownKid,
                FetchError::Unavailable(reason) => AuthError::KeyServer(reason.clone()),
            });
        if matches!(result, Err(AuthError::UnknownKid)) {
            self.missing.insert(kid.to_string(), ()).await;
        }
        result
    }

    async fn fetch(
        &self,
        kid: &str,
        source: Option<IpAddr>,
    ) -> Result<Arc<DecodingKey>, FetchError> {
        let source = source.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        if self.fetches_by_source.len() > MAX_SOURCES {
            self.fetches_by_source.retain_recent();
        }
        if self.fetches_by_source.check_key(&source).is_err() {
            tracing::warn!(kid, %source, "install key fetches from this address are rate-limited");
            return Err(FetchError::Unavailable(
                "install key fetches from this address are rate-limited".into(),
            ));
        }
        if self.fetches.check().is_err() {
            tracing::warn!(kid, %source, "install key fetches are rate-limited");
            return Err(FetchError::Unavailable(
                "install key fetches are rate-limited".into(),
            ));
        }
        let url = format!("{}/{}", self.base.as_str().trim_end_matches('/'), kid);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| FetchError::Unavailable(format!("GET {url}: {e}")))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::FORBIDDEN {
            tracing::warn!(kid, %status, "install key server does not know this kid");
            return Err(FetchError::NotFound);
        }
        if !status.is_success() {
            return Err(FetchError::Unavailable(format!(
                "GET {url}: status {status}"
            )));
        }
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| FetchError::Unavailable(format!("GET {url}: {e}")))?
        {
            if body.len() + chunk.len() > MAX_KEY_BYTES {
                return Err(FetchError::Unavailable(format!(
                    "GET {url}: response too large"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let key = DecodingKey::from_rsa_pem(&body).map_err(|e| {
            FetchError::Unavailable(format!("GET {url}: not an RSA public key in PEM: {e}"))
        })?;
        tracing::info!(kid, "fetched install key");
        Ok(Arc::new(key))
    }
}

#[derive(Debug)]
enum FetchError {
    NotFound,
    Unavailable(String),
}
