//! The host behind a script's `context.app.fetch` (the product client, on
//! the run's tenant) and its global `fetch` (any URL the delivery guard
//! allows).

use std::collections::BTreeMap;
use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;

use super::{allowed_method, end_to_end, Call, Caller, ProductClient};
use crate::budget::Held;
use crate::domain::ClientKey;
use crate::script::{Bridge, Host, HostFuture, HostRequest, HostResponse, HostTarget};

/// Most calls one run may make, both kinds together.
pub const MAX_CALLS_PER_RUN: usize = 20;

/// What scripts call out with; one per process, cheap to clone.
#[derive(Clone)]
pub struct ScriptCalls {
    pub product: ProductClient,
    /// The deliveries' client: the guard against private destinations
    /// (unless allowed), no redirects, bounded waits.
    pub web: reqwest::Client,
    pub allow_private: bool,
}

impl ScriptCalls {
    /// A bridge for one run acting on `tenant`; `what` names the run in
    /// errors and logs (`trigger deploy-hook`).
    pub fn bridge(&self, tenant: Option<ClientKey>, what: String) -> Arc<Bridge> {
        Arc::new(Bridge {
            host: Arc::new(RunHost {
                calls: self.clone(),
                tenant,
                what,
            }),
            runtime: tokio::runtime::Handle::current(),
            max_calls: MAX_CALLS_PER_RUN,
        })
    }
}

struct RunHost {
    calls: ScriptCalls,
    tenant: Option<ClientKey>,
    what: String,
}

impl Host for RunHost {
    fn fetch(&self, request: HostRequest) -> HostFuture {
        let calls = self.calls.clone();
        let tenant = self.tenant.clone();
        let what = self.what.clone();
        // The call runs on the main runtime, away from the run's span: this
        // one names the run in the call's log lines.
        let span = tracing::info_span!("script call", run = %what);
        Box::pin(tracing::Instrument::instrument(
            async move {
                let method = Method::from_bytes(request.method.as_bytes())
                    .ok()
                    .filter(allowed_method)
                    .ok_or_else(|| {
                        super::CallError::BadMethod(request.method.clone()).to_string()
                    })?;
                let headers = headers(&request.headers)?;
                let body = request.body.unwrap_or_default().into_bytes();
                match request.target {
                    HostTarget::App => {
                        let tenant = tenant.ok_or_else(|| {
                            format!(
                                "context.app.fetch: {what} has no tenant to act on (a trigger \
                             acts on its `tenant`, a transform on its event's tenant)"
                            )
                        })?;
                        let call = Call {
                            method,
                            path: request.url,
                            headers,
                            body,
                        };
                        let mut answer = calls
                            .product
                            .call(&tenant, call, Caller::Script)
                            .await
                            .map_err(|e| format!("context.app.fetch: {e}"))?;
                        let held = std::mem::replace(&mut answer.held, Held::none());
                        Ok(response(
                            answer.status.as_u16(),
                            &answer.headers,
                            &answer.body,
                            held,
                        ))
                    }
                    HostTarget::Web => calls.web_fetch(method, &request.url, headers, body).await,
                }
            },
            span,
        ))
    }
}

impl ScriptCalls {
    /// A script's `fetch`, logged with its method, host (never the whole
    /// URL, whose query may hold a secret), status and duration.
    async fn web_fetch(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<HostResponse, String> {
        let started = std::time::Instant::now();
        let host = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let shown = method.clone();
        let result = self.web_fetch_inner(method, url, headers, body).await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &result {
            Ok(answer) => {
                tracing::info!(method = %shown, %host, status = answer.status, duration_ms, "script fetch")
            }
            Err(error) => {
                tracing::warn!(method = %shown, %host, %error, duration_ms, "script fetch failed")
            }
        }
        result
    }

    async fn web_fetch_inner(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<HostResponse, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("fetch: not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "fetch: only http and https URLs, not `{}`",
                parsed.scheme()
            ));
        }
        if !self.allow_private {
            crate::relay::destination::check_literal(&parsed).map_err(|e| format!("fetch: {e}"))?;
        }
        let mut request = self
            .web
            .request(method, parsed)
            .headers(end_to_end(&headers));
        if !body.is_empty() {
            request = request.body(body);
        }
        let mut answer = request
            .send()
            .await
            .map_err(|e| format!("fetch: {}", crate::relay::deliver::chain(&e.without_url())))?;
        let (bytes, held) = self
            .product
            .read_body(&mut answer)
            .await
            .map_err(|e| match e {
                super::CallError::Unreachable(detail) => format!("fetch: {detail}"),
                other => format!("fetch: {other}"),
            })?;
        Ok(response(
            answer.status().as_u16(),
            &end_to_end(answer.headers()),
            &bytes,
            held,
        ))
    }
}

fn headers(given: &[(String, String)]) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, value) in given {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{name}` is not a header name"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header `{name}` is not valid"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn response(status: u16, headers: &HeaderMap, body: &[u8], held: Held) -> HostResponse {
    let mut joined: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        joined
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    HostResponse {
        status,
        headers: joined,
        body: String::from_utf8_lossy(body).into_owned(),
        held,
    }
}
