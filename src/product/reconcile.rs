//! Reconciliation: stores the webhooks Jira gave up delivering.
//!
//! Jira keeps, for 72 hours, the webhooks it failed to deliver to a Connect
//! app, and lists them at `GET /rest/api/3/webhook/failed` (cursor-paged
//! with `after`; each item `{id, body, url, failureTime}`, where `id` is the
//! `X-Atlassian-Webhook-Identifier` the delivery carried). For every
//! installed Connect Jira tenant, on a timer and on demand, this reads the
//! list from where it stopped last time, maps each item's URL back to its
//! event through the descriptor's URL shape (`/jira/events/{event}`), and
//! stores it through intake, deduplicated by the identifier (so a webhook
//! both received and listed is stored once), with `recovered: true`.
//!
//! The cursor is saved after each page whose items are all stored, so a run
//! that stops (an error, a restart) resumes at the page it was on. On the
//! last page the cursor becomes the newest failure time less a millisecond,
//! so that a failure in the same millisecond listed later is still read
//! (and a repeat is only a duplicate).
//!
//! Of several processes on one PostgreSQL, one takes each timed run: a run
//! is claimed in `reconcile_state` by moving its due time.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Call, CallError, Caller, ProductClient};
use crate::config::Config;
use crate::domain::{ClientKey, Event, EventId, Product, Source, Tenant, TenantKind};
use crate::publisher::Publisher;
use crate::store::{Store, StoreError};

/// Items asked for per page.
const PAGE_SIZE: u32 = 100;
/// Most pages read in one timed run (Jira keeps 72 hours; the next run goes on).
const MAX_PAGES: u32 = 200;
/// Most pages read in one run on demand, which an HTTP request waits for.
pub const MAX_PAGES_NOW: u32 = 20;
/// How often the timer looks for tenants due, at most.
const MAX_TICK: Duration = Duration::from_secs(60);

/// What one run did.
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = ReconcileSummary)]
pub struct Summary {
    /// Pages read.
    pub pages: u32,
    /// Items listed on them.
    pub listed: u32,
    /// Stored now: Jira never delivered them.
    pub recovered: u32,
    /// Already stored (delivered, or recovered before).
    pub duplicates: u32,
    /// Not stored: a URL that names no webhook, no body, a body or an
    /// identifier intake would refuse. Each is logged.
    pub skipped: u32,
    /// Where the next run starts.
    pub cursor: Option<String>,
    /// Whether the run read up to the last page; a run on demand stops after
    /// [`MAX_PAGES_NOW`] pages, and the next one goes on from the cursor.
    pub complete: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("there is no tenant `{0}`")]
    UnknownTenant(String),
    /// Only Connect Jira tenants have a failed-webhook list.
    #[error("{0}")]
    NotReconcilable(String),
    #[error("{0}")]
    Call(#[from] CallError),
    /// Jira answered, but not with a page of failed webhooks.
    #[error("{0}")]
    Answer(String),
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
}

/// A page of `GET /rest/api/3/webhook/failed`.
#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    values: Vec<Failed>,
    next: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Failed {
    id: serde_json::Value,
    body: Option<String>,
    url: Option<String>,
    failure_time: Option<i64>,
}

/// Reads failed-webhook lists and stores what is missing.
#[derive(Clone)]
pub struct Reconciler {
    client: ProductClient,
    store: Store,
    publisher: Publisher,
    config: Arc<Config>,
}

impl Reconciler {
    pub fn new(
        client: ProductClient,
        store: Store,
        publisher: Publisher,
        config: Arc<Config>,
    ) -> Self {
        Self {
            client,
            store,
            publisher,
            config,
        }
    }

    /// Runs now for one tenant, from its saved cursor (the admin API's
    /// `POST /tenants/{clientKey}/reconcile`).
    pub async fn reconcile_now(&self, key: &ClientKey) -> Result<Summary, ReconcileError> {
        let tenant = self
            .store
            .tenant(key)
            .await?
            .ok_or_else(|| ReconcileError::UnknownTenant(key.0.clone()))?;
        if tenant.kind != TenantKind::Connect || tenant.product != Product::Jira {
            return Err(ReconcileError::NotReconcilable(format!(
                "tenant `{}` is a {} {} tenant: Jira lists failed webhooks for Connect Jira \
                 installations only",
                key.0,
                tenant.kind.as_str(),
                tenant.product.as_str()
            )));
        }
        let cursor = self
            .store
            .reconcile_state(key)
            .await?
            .and_then(|s| s.cursor);
        self.run(&tenant, cursor, MAX_PAGES_NOW).await
    }

    /// Reads pages from `cursor` until the last one, or an error; progress
    /// is saved page by page, and the run's end recorded either way.
    async fn run(
        &self,
        tenant: &Tenant,
        cursor: Option<String>,
        max_pages: u32,
    ) -> Result<Summary, ReconcileError> {
        let mut summary = Summary {
            cursor,
            ..Summary::default()
        };
        let result = self.pages(tenant, &mut summary, max_pages).await;
        let error = result.as_ref().err().map(ToString::to_string);
        if let Err(e) = self
            .store
            .finish_reconcile(&tenant.client_key, error.as_deref())
            .await
        {
            tracing::warn!(client_key = %tenant.client_key.0, error = %e, "cannot record the end of a reconciliation");
        }
        match &result {
            Ok(()) => tracing::info!(
                client_key = %tenant.client_key.0,
                pages = summary.pages,
                listed = summary.listed,
                recovered = summary.recovered,
                duplicates = summary.duplicates,
                skipped = summary.skipped,
                "reconciled failed webhooks"
            ),
            Err(e) => tracing::warn!(
                client_key = %tenant.client_key.0,
                pages = summary.pages,
                recovered = summary.recovered,
                error = %e,
                "reconciliation stopped; the next run resumes where it stopped"
            ),
        }
        metrics::counter!(crate::telemetry::catalog::RECONCILE_RECOVERED)
            .increment(u64::from(summary.recovered));
        result.map(|()| summary)
    }

    async fn pages(
        &self,
        tenant: &Tenant,
        summary: &mut Summary,
        max_pages: u32,
    ) -> Result<(), ReconcileError> {
        for _ in 0..max_pages {
            let mut path = format!("/rest/api/3/webhook/failed?maxResults={PAGE_SIZE}");
            if let Some(cursor) = &summary.cursor {
                path.push_str("&after=");
                path.push_str(
                    &percent_encoding::utf8_percent_encode(
                        cursor,
                        percent_encoding::NON_ALPHANUMERIC,
                    )
                    .to_string(),
                );
            }
            let page = self.page(&tenant.client_key, path).await?;
            summary.pages += 1;
            let mut recovered = 0;
            let mut newest: Option<i64> = None;
            // Failure times from the future (a clock gone wrong) would move
            // the cursor past failures still to come.
            let now = chrono::Utc::now().timestamp_millis();
            for item in page.values {
                summary.listed += 1;
                newest = newest.max(item.failure_time.filter(|t| (0..=now).contains(t)));
                match self.store_item(tenant, item).await {
                    Ok(Some(false)) => {
                        recovered += 1;
                        summary.recovered += 1;
                    }
                    Ok(Some(true)) => summary.duplicates += 1,
                    Ok(None) => summary.skipped += 1,
                    Err(e) => {
                        // What this page stored so far is counted; the
                        // cursor stays, so the page is read again.
                        let _ = self
                            .store
                            .save_reconcile_cursor(&tenant.client_key, None, recovered)
                            .await;
                        return Err(e.into());
                    }
                }
            }
            let next = page.next.as_deref().and_then(after_of);
            let cursor = match (&next, newest) {
                (Some(after), _) => Some(after.clone()),
                (None, Some(newest)) => Some(newest.saturating_sub(1).max(0).to_string()),
                (None, None) => None,
            };
            if cursor.is_some() {
                summary.cursor = cursor;
            }
            self.store
                .save_reconcile_cursor(&tenant.client_key, summary.cursor.as_deref(), recovered)
                .await?;
            if next.is_none() {
                summary.complete = true;
                return Ok(());
            }
        }
        Ok(())
    }

    async fn page(&self, key: &ClientKey, path: String) -> Result<Page, ReconcileError> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let call = Call {
            method: Method::GET,
            path,
            headers,
            body: Vec::new(),
        };
        let answer = self.client.call(key, call, Caller::Reconcile).await?;
        if !answer.status.is_success() {
            let excerpt =
                crate::triggers::cut(String::from_utf8_lossy(&answer.body).into_owned(), 200);
            return Err(ReconcileError::Answer(format!(
                "Jira answered {} to the failed-webhook list: {excerpt}",
                answer.status.as_u16()
            )));
        }
        serde_json::from_slice(&answer.body).map_err(|e| {
            ReconcileError::Answer(format!("Jira's failed-webhook list is not understood: {e}"))
        })
    }

    /// Stores one listed webhook: `Some(duplicate)` when stored (or already
    /// there), `None` when skipped.
    async fn store_item(&self, tenant: &Tenant, item: Failed) -> Result<Option<bool>, StoreError> {
        let id = match &item.id {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        let skip = |reason: &str| {
            tracing::warn!(client_key = %tenant.client_key.0, webhook_id = %id, url = item.url.as_deref().unwrap_or(""), reason, "failed webhook skipped");
            Ok(None)
        };
        if id.is_empty() || id.len() > 255 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return skip("its identifier is not 1 to 255 visible ASCII characters");
        }
        let Some(event) = item.url.as_deref().and_then(|url| self.event_of(url)) else {
            return skip("its URL names no webhook of this app's descriptor");
        };
        let Some(body) = item.body else {
            return skip("Jira kept no body for it");
        };
        if body.len() > self.config.max_body_bytes {
            return skip("its body is over HOOKRELAY_MAX_BODY_BYTES");
        }
        if let Err(e) = crate::payload::check(&body) {
            return skip(&format!("its body is refused: {e}"));
        }
        let event = Event {
            id: EventId::new(),
            source: Source::Connect,
            product: Some(Product::Jira),
            event,
            source_event: None,
            client_key: Some(tenant.client_key.clone()),
            tenant_base_url: Some(tenant.base_url.clone()),
            webhook_id: Some(id),
            webhook_retry: None,
            webhook_flow: None,
            received_at: crate::domain::now_millis(),
            recovered: true,
            payload: body,
        };
        let stored = crate::intake::accept(&self.store, &self.publisher, event).await?;
        Ok(Some(stored.duplicate))
    }

    /// The event a webhook URL of this app's Jira descriptor stands for:
    /// `<base URL>/jira/events/<event>`, the context path optional.
    fn event_of(&self, url: &str) -> Option<String> {
        let parsed = url::Url::parse(url)
            .or_else(|_| self.config.base_url.join(url))
            .ok()?;
        let path = crate::auth::qsh::strip_context_path(parsed.path(), &self.config.context_path);
        let event = path.strip_prefix("/jira/events/")?;
        let event = percent_encoding::percent_decode_str(event)
            .decode_utf8()
            .ok()?
            .into_owned();
        let subscribed = crate::descriptor::subscribed_events(&self.config, Product::Jira);
        subscribed.contains(&event).then_some(event)
    }

    /// Runs every due Connect Jira tenant's reconciliation, every
    /// `interval`, until `stop`.
    pub async fn run_timer(self, interval: Duration, stop: CancellationToken) {
        let tick = interval.min(MAX_TICK);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            // Stopping mid-run loses nothing: each event is stored whole or
            // not at all, and the cursor moves only past stored pages.
            tokio::select! {
                _ = stop.cancelled() => return,
                done = self.due(interval) => if let Err(e) = done {
                    tracing::warn!(error = %e, "cannot look for tenants to reconcile; trying again later");
                },
            }
        }
    }

    async fn due(&self, interval: Duration) -> Result<(), StoreError> {
        for key in self.store.reconcilable_tenants().await? {
            let now = crate::domain::now_millis();
            let next = now + chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX);
            let Some(cursor) = self.store.claim_reconcile(&key, now, next).await? else {
                continue;
            };
            let Some(tenant) = self.store.tenant(&key).await? else {
                continue;
            };
            let _ = self.run(&tenant, cursor, MAX_PAGES).await;
        }
        Ok(())
    }
}

/// The `after` parameter of a `next` URL.
fn after_of(next: &str) -> Option<String> {
    let url = url::Url::parse(next)
        .or_else(|_| url::Url::parse("http://x/").and_then(|base| base.join(next)))
        .ok()?;
    url.query_pairs()
        .find(|(key, _)| key == "after")
        .map(|(_, value)| value.into_owned())
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cursor_comes_from_next() {
        assert_eq!(
            super::after_of(
                "https://x.atlassian.net/rest/api/3/webhook/failed?after=1573118132000"
            ),
            Some("1573118132000".into())
        );
        assert_eq!(
            super::after_of("/rest/api/3/webhook/failed?maxResults=100&after=12"),
            Some("12".into())
        );
        assert_eq!(super::after_of("https://x/y?after="), None);
        assert_eq!(super::after_of("https://x/y"), None);
    }
}
