//! The product client: calls a tenant's Jira or Confluence REST API as the
//! app. Scripts (`context.app.fetch`), the proxy and reconciliation all go
//! through [`ProductClient::call`], so there is one signer and one set of
//! bounds.
//!
//! # How a call is signed
//!
//! - **Connect installation**: `Authorization: JWT <token>`, HS256 with the
//!   tenant's shared secret, `iss` = the app key, `iat`, `exp` three minutes
//!   ahead, and `qsh` of the outgoing method, path and query as the product
//!   sees them, that is with the context path of the tenant's base URL
//!   (`/wiki` for Confluence) stripped.
//! - **Forge installation**: to its `apiBaseUrl`, with the newest app system
//!   token Forge sent with an event as a bearer token.
//! - **Admin-webhook source**: with the Atlassian API token an admin attached
//!   (basic auth, account email and token).
//!
//! # Bounds
//!
//! Only a relative path under the tenant's base URL is taken, never a full
//! URL: `..` segments, `//`, encoded slashes and backslashes are refused, and
//! the URL built is checked to stay on the tenant's host and under its base
//! path. Each call has a total time limit (retries included), the answer a
//! size cap, and each tenant a rate limit in this process. On `429` or `503`
//! with `Retry-After`, an idempotent method is tried again (at most
//! [`MAX_RETRIES`] times, waiting at most [`MAX_RETRY_WAIT`] each time).
//! Secrets and tokens never reach a log line; each call is logged with the
//! tenant, method, path, status and duration.
//!
//! # Metrics
//!
//! `hookrelay_bridge_calls_total{caller,outcome}` and
//! `hookrelay_bridge_call_duration_seconds{caller}`.

pub mod reconcile;
pub mod script;

use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;

use crate::auth::qsh;
use crate::budget::{ByteBudget, Held};
use crate::config::Config;
use crate::domain::{ClientKey, Tenant, TenantKind, TenantState};
use crate::relay::deliver::chain;
use crate::store::{Store, StoreError};

pub use script::ScriptCalls;

/// How many times an idempotent call is tried again after a `429` or `503`.
pub const MAX_RETRIES: u32 = 2;
/// The longest `Retry-After` waited for; a longer one is answered as it came.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);
/// The longest wait for the tenant's rate limit before the call is refused.
const MAX_RATE_WAIT: Duration = Duration::from_secs(1);
/// How long a Connect JWT made for a call is valid.
const TOKEN_LIFETIME: i64 = 180;

/// Who is calling, for the log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Script,
    Proxy,
    Reconcile,
}

impl Caller {
    pub fn as_str(self) -> &'static str {
        match self {
            Caller::Script => "script",
            Caller::Proxy => "proxy",
            Caller::Reconcile => "reconcile",
        }
    }
}

/// A call to make: a relative path with its query, as the caller wrote it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    /// `/rest/api/3/issue?fields=summary`: relative to the tenant's base URL.
    pub path: String,
    /// The caller's headers; credentials and hop-by-hop ones are dropped.
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// The product's answer, as it came (hop-by-hop headers and cookies left out).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The `content-length` the product declared (for a `HEAD`, the length
    /// of the body a `GET` would have had).
    pub declared_length: Option<u64>,
    /// The body's share of the answers' byte budget, given back when the
    /// answer is dropped.
    pub held: Held,
}

/// Why a call was not made, or got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("there is no tenant `{0}`")]
    UnknownTenant(String),
    /// Uninstalled, or (Connect) the app is disabled on the site.
    #[error("the site of tenant `{0}` is {1}: the app cannot call it")]
    NotInstalled(String, &'static str),
    /// Nothing to sign with: no token yet, an expired one, no API token.
    #[error("{0}")]
    NoCredentials(String),
    #[error("{0}")]
    BadPath(String),
    /// A method REST APIs do not answer (`TRACE` would echo the credential).
    #[error("method {0} is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")]
    BadMethod(String),
    #[error("too many calls to this site: try again in {}s", .0.as_secs().max(1))]
    RateLimited(Duration),
    #[error("the product could not be reached: {0}")]
    Unreachable(String),
    #[error("the product did not answer within {}s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("the answer is over {0} bytes")]
    TooLarge(usize),
    /// The answers in flight already hold the bytes this one needs.
    #[error("too many large answers in flight; try again shortly")]
    Busy,
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
}

/// Every `outcome` label of the bridge's call counter: answered (`ok`, or
/// `error_status` for a 4xx/5xx from the product), or why there was no answer.
pub const CALL_OUTCOMES: &[&str] = &[
    "ok",
    "error_status",
    "no_tenant",
    "no_credentials",
    "bad_path",
    "bad_method",
    "rate_limited",
    "unreachable",
    "timeout",
    "too_large",
    "busy",
    "store",
];

impl CallError {
    /// The `outcome` label of the metrics (one of [`CALL_OUTCOMES`]).
    fn label(&self) -> &'static str {
        match self {
            CallError::UnknownTenant(_) | CallError::NotInstalled(..) => "no_tenant",
            CallError::NoCredentials(_) => "no_credentials",
            CallError::BadPath(_) => "bad_path",
            CallError::BadMethod(_) => "bad_method",
            CallError::RateLimited(_) => "rate_limited",
            CallError::Unreachable(_) => "unreachable",
            CallError::Timeout(_) => "timeout",
            CallError::TooLarge(_) => "too_large",
            CallError::Busy => "busy",
            CallError::Store(_) => "store",
        }
    }
}

/// Calls tenants' product APIs as the app. Cheap to clone.
#[derive(Clone)]
pub struct ProductClient {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    http: reqwest::Client,
    app_key: String,
    limiter: DefaultKeyedRateLimiter<String>,
    timeout: Duration,
    max_response: usize,
    /// What the bodies of answers being read and carried may take together.
    answers: ByteBudget,
}

/// Most bytes of answers held at once: twice the largest answer, and at
/// least this.
const MIN_ANSWERS_BUDGET: usize = 64 * 1024 * 1024;
/// How long reading an answer waits for room in the budget.
const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// Where a call goes and how it is signed, worked out from the tenant.
struct Target {
    url: url::Url,
    authorization: HeaderValue,
}

impl ProductClient {
    pub fn new(config: &Config, store: Store) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5).min(config.bridge_timeout))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("hookrelay/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let per_second = std::num::NonZeroU32::new(config.bridge_rate_limit)
            .unwrap_or(std::num::NonZeroU32::MIN);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                http,
                app_key: config.app_key.clone(),
                limiter: RateLimiter::keyed(Quota::per_second(per_second)),
                timeout: config.bridge_timeout,
                max_response: config.bridge_max_response,
                answers: ByteBudget::new(
                    config
                        .bridge_max_response
                        .saturating_mul(2)
                        .max(MIN_ANSWERS_BUDGET),
                ),
            }),
        })
    }

    /// Reads the body of an answer (the product's, or one a script's
    /// `fetch` got), refusing one over the size cap, with its share of the
    /// answers' byte budget, waiting a little for room when the answers in
    /// flight hold all of it.
    pub async fn read_body(
        &self,
        response: &mut reqwest::Response,
    ) -> Result<(Vec<u8>, Held), CallError> {
        let limit = self.inner.max_response;
        if response
            .content_length()
            .is_some_and(|length| length > limit as u64)
        {
            return Err(CallError::TooLarge(limit));
        }
        let mut body = Vec::new();
        let mut held = Held::none();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| CallError::Unreachable(chain(&e.without_url())))?
        {
            if body.len() + chunk.len() > limit {
                return Err(CallError::TooLarge(limit));
            }
            let room = self.inner.answers.take(chunk.len(), BUDGET_WAIT).await;
            held.add(room.ok_or(CallError::Busy)?);
            body.extend_from_slice(&chunk);
        }
        Ok((body, held))
    }

    /// Calls `tenant` as the app. The answer is the product's, whatever its
    /// status; an error means no answer came (or none could be asked for).
    pub async fn call(
        &self,
        tenant: &ClientKey,
        call: Call,
        caller: Caller,
    ) -> Result<Answer, CallError> {
        let started = Instant::now();
        let method = call.method.clone();
        let path = call.path.split('?').next().unwrap_or("").to_owned();
        let result = self.call_inner(tenant, call).await;
        let elapsed = started.elapsed();
        let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        metrics::histogram!(crate::telemetry::catalog::BRIDGE_DURATION, "caller" => caller.as_str())
            .record(elapsed.as_secs_f64());
        let outcome = match &result {
            Ok(answer) if answer.status.is_success() => "ok",
            Ok(_) => "error_status",
            Err(e) => e.label(),
        };
        metrics::counter!(crate::telemetry::catalog::BRIDGE_CALLS, "caller" => caller.as_str(), "outcome" => outcome)
            .increment(1);
        match &result {
            Ok(answer) => tracing::info!(
                caller = caller.as_str(),
                client_key = %tenant.0,
                %method,
                %path,
                status = answer.status.as_u16(),
                duration_ms,
                "product call"
            ),
            Err(error) => tracing::warn!(
                caller = caller.as_str(),
                client_key = %tenant.0,
                %method,
                %path,
                %error,
                duration_ms,
                "product call failed"
            ),
        }
        result
    }

    async fn call_inner(&self, key: &ClientKey, call: Call) -> Result<Answer, CallError> {
        if !allowed_method(&call.method) {
            return Err(CallError::BadMethod(call.method.to_string()));
        }
        let tenant = self
            .inner
            .store
            .tenant(key)
            .await?
            .ok_or_else(|| CallError::UnknownTenant(key.0.clone()))?;
        match (tenant.state, tenant.kind) {
            (TenantState::Uninstalled, _) => {
                return Err(CallError::NotInstalled(key.0.clone(), "uninstalled"))
            }
            (TenantState::Disabled, TenantKind::Connect) => {
                return Err(CallError::NotInstalled(key.0.clone(), "disabled"))
            }
            _ => {}
        }
        let deadline = Instant::now() + self.inner.timeout;
        self.wait_for_rate(key).await?;
        let mut retries = 0;
        loop {
            // Signed afresh for each try: a JWT is short-lived.
            let target = self.target(&tenant, &call).await?;
            let answer = tokio::time::timeout_at(deadline.into(), self.send(&target, &call))
                .await
                .map_err(|_| CallError::Timeout(self.inner.timeout))??;
            let retry_wait = retry_wait(&call.method, &answer, retries, deadline);
            let Some(wait) = retry_wait else {
                return Ok(answer);
            };
            tracing::info!(
                status = answer.status.as_u16(),
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "product asked to retry later; waiting as Retry-After says"
            );
            tokio::time::sleep(wait).await;
            retries += 1;
        }
    }

    /// Waits for the tenant's rate limit, up to [`MAX_RATE_WAIT`].
    async fn wait_for_rate(&self, key: &ClientKey) -> Result<(), CallError> {
        let waited = Instant::now();
        loop {
            match self.inner.limiter.check_key(&key.0) {
                Ok(()) => return Ok(()),
                Err(not_until) => {
                    let now = governor::clock::Clock::now(self.inner.limiter.clock());
                    let wait = not_until.wait_time_from(now);
                    if waited.elapsed() + wait > MAX_RATE_WAIT {
                        return Err(CallError::RateLimited(wait));
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The URL and the `Authorization` of a call to `tenant`.
    async fn target(&self, tenant: &Tenant, call: &Call) -> Result<Target, CallError> {
        let key = &tenant.client_key.0;
        match tenant.kind {
            TenantKind::Connect => {
                let (url, context_path) = build_url(&tenant.base_url, &call.path)?;
                let canonical = qsh::canonical_request(
                    call.method.as_str(),
                    url.path(),
                    url.query().unwrap_or(""),
                    &context_path,
                );
                let now = chrono::Utc::now().timestamp();
                let claims = serde_json::json!({
                    "iss": self.inner.app_key,
                    "iat": now,
                    "exp": now + TOKEN_LIFETIME,
                    "qsh": qsh::query_string_hash(&canonical),
                });
                let token = jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                    &claims,
                    &jsonwebtoken::EncodingKey::from_secret(
                        tenant.shared_secret.expose_secret().as_bytes(),
                    ),
                )
                .map_err(|e| CallError::NoCredentials(format!("cannot sign the call: {e}")))?;
                Ok(Target {
                    url,
                    authorization: sensitive(format!("JWT {token}"))?,
                })
            }
            TenantKind::Forge => {
                let base = tenant.api_base_url.as_deref().ok_or_else(|| {
                    CallError::NoCredentials(format!(
                        "Forge installation `{key}` sent no apiBaseUrl yet; \
                         it comes with the next event Forge sends"
                    ))
                })?;
                let path = forge_path(tenant.product, &call.path);
                let (url, _) = build_url(base, &path)?;
                let (token, expires_at) = self
                    .inner
                    .store
                    .forge_token(&tenant.client_key)
                    .await?
                    .ok_or_else(|| {
                    CallError::NoCredentials(format!(
                        "Forge installation `{key}` has sent no app system token yet: \
                         add a remote with `auth.appSystemToken: true` to the app's manifest; \
                         the token comes with the next event"
                    ))
                })?;
                if let Some(expires_at) = expires_at {
                    if expires_at <= chrono::Utc::now() {
                        return Err(CallError::NoCredentials(format!(
                            "the app system token of Forge installation `{key}` expired at {}; \
                             a new one comes with the next event Forge sends",
                            crate::domain::format_timestamp(expires_at)
                        )));
                    }
                }
                Ok(Target {
                    url,
                    authorization: sensitive(format!("Bearer {}", token.expose_secret()))?,
                })
            }
            TenantKind::JiraAdmin => {
                let (url, _) = build_url(&tenant.base_url, &call.path)?;
                let token = self
                    .inner
                    .store
                    .api_token(&tenant.client_key)
                    .await?
                    .ok_or_else(|| {
                        CallError::NoCredentials(format!(
                            "source `{key}` has no API token: attach one with \
                             PUT /admin/api/v1/sources/{key}/api-token"
                        ))
                    })?;
                use base64::Engine;
                let pair = format!("{}:{}", token.email, token.token.expose_secret());
                let basic = base64::engine::general_purpose::STANDARD.encode(pair);
                Ok(Target {
                    url,
                    authorization: sensitive(format!("Basic {basic}"))?,
                })
            }
        }
    }

    async fn send(&self, target: &Target, call: &Call) -> Result<Answer, CallError> {
        let mut headers = forwardable(&call.headers);
        headers.insert(AUTHORIZATION, target.authorization.clone());
        let mut request = self
            .inner
            .http
            .request(call.method.clone(), target.url.clone())
            .headers(headers);
        if !call.body.is_empty() {
            request = request.body(call.body.clone());
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| CallError::Unreachable(chain(&e.without_url())))?;
        let declared_length = response
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let (body, held) = self.read_body(&mut response).await?;
        Ok(Answer {
            status: response.status(),
            headers: forwardable(response.headers()),
            body,
            declared_length,
            held,
        })
    }
}

/// How long to wait before trying again, if the answer asks for it, the
/// method may be repeated, tries are left and the wait fits before `deadline`.
fn retry_wait(
    method: &Method,
    answer: &Answer,
    retries: u32,
    deadline: Instant,
) -> Option<Duration> {
    let asks = matches!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    );
    if !asks || !method.is_idempotent() || retries >= MAX_RETRIES {
        return None;
    }
    let value = answer
        .headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    let wait = crate::relay::retry::parse_retry_after(value, chrono::Utc::now())?;
    (wait <= MAX_RETRY_WAIT && Instant::now() + wait < deadline).then_some(wait)
}

/// A header value that must never be printed.
fn sensitive(value: String) -> Result<HeaderValue, CallError> {
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| CallError::NoCredentials("the credential is not a valid header".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Headers that carry the caller's own credentials (or hand out new ones),
/// and so are never passed between a caller and the product.
fn is_credential(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "authorization" | "proxy-authorization" | "proxy-authenticate" | "cookie" | "set-cookie"
    )
}

/// Headers that are about one hop of a request, never passed on.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-connection"
            | "accept-encoding"
            | "content-encoding"
            | "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "x-real-ip"
    )
}

/// `headers` without hop-by-hop ones and credentials: what passes between a
/// caller and the product, which only hookrelay authenticates to.
pub fn forwardable(headers: &HeaderMap) -> HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name) && !is_credential(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// `headers` without hop-by-hop ones: what a script's own `fetch` sends and
/// gets, credentials included (the script brings its own).
pub fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// The methods a call may use: the ones REST APIs answer. `TRACE` (which
/// may echo the request, credentials and all), `CONNECT` and made-up ones
/// are refused.
pub fn allowed_method(method: &Method) -> bool {
    matches!(
        method.as_str(),
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS"
    )
}

/// The URL of `path` (with its query) under `base`, and the base's context
/// path. Refuses anything that could leave the base: a path that is not
/// relative, `.` or `..` segments, empty segments, encoded slashes or
/// backslashes, control characters and fragments. A path that already starts
/// with the context path (`/wiki/rest/api/content` on a Confluence base ending
/// in `/wiki`) is taken as written from the site's root.
pub fn build_url(base: &str, path: &str) -> Result<(url::Url, String), CallError> {
    let bad = |why: &str| CallError::BadPath(format!("path `{}`: {why}", cut(path)));
    check_path(path).map_err(bad)?;
    let base = url::Url::parse(base).map_err(|e| {
        CallError::NoCredentials(format!("the tenant's base URL is not valid: {e}"))
    })?;
    let context_path = base.path().trim_end_matches('/').to_owned();
    let (path_part, query) = match path.split_once('?') {
        Some((part, query)) => (part, Some(query)),
        None => (path, None),
    };
    let stripped = qsh::strip_context_path(path_part, &context_path);
    let mut relative = if stripped.is_empty() { "/" } else { stripped }.to_owned();
    if let Some(query) = query {
        relative.push('?');
        relative.push_str(query);
    }
    let mut origin = base.clone();
    origin.set_path("");
    origin.set_query(None);
    origin.set_fragment(None);
    let text = format!(
        "{}{context_path}{relative}",
        origin.as_str().trim_end_matches('/')
    );
    let url = url::Url::parse(&text).map_err(|e| bad(&e.to_string()))?;
    let stays = url.scheme() == base.scheme()
        && url.host() == base.host()
        && url.port_or_known_default() == base.port_or_known_default();
    if !stays || (!context_path.is_empty() && !url.path().starts_with(&context_path)) {
        return Err(bad("it leaves the site's base URL"));
    }
    Ok((url, context_path))
}

/// The path of a call to a Forge installation's `apiBaseUrl`. Confluence
/// lives under `/wiki` there (`/ex/confluence/<cloudId>/wiki/rest/api/…`),
/// while a Connect tenant's base URL already ends in `/wiki`: so that one
/// script works for both, a Confluence path without `/wiki` gets it.
fn forge_path(product: crate::domain::Product, path: &str) -> std::borrow::Cow<'_, str> {
    let has_wiki = path == "/wiki" || path.starts_with("/wiki/") || path.starts_with("/wiki?");
    if product == crate::domain::Product::Confluence && !has_wiki {
        std::borrow::Cow::Owned(format!("/wiki{path}"))
    } else {
        std::borrow::Cow::Borrowed(path)
    }
}

/// Why `path` cannot be a relative product path, if it cannot.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    let (path_part, query) = path.split_once('?').unwrap_or((path, ""));
    if !path_part.starts_with('/') {
        return Err("it must start with `/` (a path under the site, not a URL)");
    }
    if path_part.len() > 4 * 1024 || query.len() > 28 * 1024 {
        return Err("it is over 4 KiB (or its query over 28 KiB)");
    }
    if path.contains('#') || path_part.contains('\\') {
        return Err("it must not contain `#`, nor `\\` before the query");
    }
    // A `;` starts a path parameter, which servers such as Tomcat strip
    // before they resolve `..`: `/allowed/..;/other` would leave a path
    // scope. Atlassian's REST APIs use none.
    if path_part.contains(';') {
        return Err("it must not contain `;` before the query");
    }
    if path.chars().any(|c| c.is_control() || c == ' ') {
        return Err("it must not contain spaces or control characters");
    }
    let lower = path_part.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err("it must not contain encoded slashes");
    }
    let segments: Vec<&str> = path_part[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        if decoded == "." || decoded == ".." {
            return Err("it must not contain `.` or `..` segments");
        }
        if segment.is_empty() && i + 1 < segments.len() {
            return Err("it must not contain empty segments (`//`)");
        }
    }
    Ok(())
}

fn cut(path: &str) -> String {
    crate::triggers::cut(path.to_owned(), 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_label_is_registered_at_start() {
        let errors = [
            CallError::UnknownTenant("t".into()),
            CallError::NotInstalled("t".into(), "uninstalled"),
            CallError::NoCredentials("none".into()),
            CallError::BadPath("p".into()),
            CallError::BadMethod("TRACE".into()),
            CallError::RateLimited(Duration::from_secs(1)),
            CallError::Unreachable("refused".into()),
            CallError::Timeout(Duration::from_secs(1)),
            CallError::TooLarge(1),
            CallError::Busy,
            CallError::Store(StoreError::Invalid("away".into())),
        ];
        for e in &errors {
            assert!(CALL_OUTCOMES.contains(&e.label()), "{}", e.label());
        }
    }

    #[test]
    fn paths_stay_under_the_base() {
        let (url, context) =
            build_url("https://x.atlassian.net/wiki", "/rest/api/content?limit=1").unwrap();
        assert_eq!(
            url.as_str(),
            "https://x.atlassian.net/wiki/rest/api/content?limit=1"
        );
        assert_eq!(context, "/wiki");
        let (url, _) = build_url("https://x.atlassian.net/wiki/", "/wiki/rest/api/space").unwrap();
        assert_eq!(url.as_str(), "https://x.atlassian.net/wiki/rest/api/space");
        let (url, _) = build_url("https://x.atlassian.net/wiki", "/wiki?limit=1").unwrap();
        assert_eq!(url.as_str(), "https://x.atlassian.net/wiki/?limit=1");
        let (url, _) =
            build_url("https://x.atlassian.net", "/rest/api/3/search?jql=a\\b;c").unwrap();
        assert_eq!(url.path(), "/rest/api/3/search");
        let (url, _) = build_url("https://x.atlassian.net", "/rest/api/3/issue/").unwrap();
        assert_eq!(url.as_str(), "https://x.atlassian.net/rest/api/3/issue/");
        for bad in [
            "rest/api/3/issue",
            "https://evil.example/x",
            "//evil.example/x",
            "/rest/../../admin",
            "/rest/%2e%2e/admin",
            "/rest/%2E./admin",
            "/rest//api",
            "/rest/api%2F3",
            "/rest\\api",
            "/rest/api#frag",
            "/rest/api 3",
            "/rest/.",
            "/rest/api/3/issue/..;/..;/admin",
            "/rest/api/3/issue;x=1",
            "/@evil.example/",
        ] {
            let result = build_url("https://x.atlassian.net/wiki", bad);
            if bad == "/@evil.example/" {
                // A segment with `@` is a path, never a host.
                assert_eq!(
                    result.unwrap().0.host_str(),
                    Some("x.atlassian.net"),
                    "{bad}"
                );
                continue;
            }
            assert!(
                matches!(result, Err(CallError::BadPath(_))),
                "{bad} was taken"
            );
        }
    }

    #[test]
    fn forge_confluence_paths_are_under_wiki() {
        use crate::domain::Product;
        assert_eq!(
            forge_path(Product::Confluence, "/rest/api/content"),
            "/wiki/rest/api/content"
        );
        assert_eq!(
            forge_path(Product::Confluence, "/wiki/api/v2/pages?limit=1"),
            "/wiki/api/v2/pages?limit=1"
        );
        assert_eq!(
            forge_path(Product::Confluence, "/wikipedia"),
            "/wiki/wikipedia"
        );
        assert_eq!(
            forge_path(Product::Jira, "/rest/api/3/issue"),
            "/rest/api/3/issue"
        );
    }

    #[test]
    fn only_idempotent_methods_are_retried_and_only_within_bounds() {
        let answer = |status: u16, after: &str| Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: [(
                reqwest::header::RETRY_AFTER,
                HeaderValue::from_str(after).unwrap(),
            )]
            .into_iter()
            .collect(),
            body: Vec::new(),
            declared_length: None,
            held: Held::none(),
        };
        let later = Instant::now() + Duration::from_secs(30);
        assert_eq!(
            retry_wait(&Method::GET, &answer(429, "1"), 0, later),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            retry_wait(&Method::PUT, &answer(503, "2"), 1, later),
            Some(Duration::from_secs(2))
        );
        assert_eq!(retry_wait(&Method::POST, &answer(429, "1"), 0, later), None);
        assert_eq!(retry_wait(&Method::GET, &answer(500, "1"), 0, later), None);
        assert_eq!(
            retry_wait(&Method::GET, &answer(429, "1"), MAX_RETRIES, later),
            None
        );
        assert_eq!(retry_wait(&Method::GET, &answer(429, "60"), 0, later), None);
        let soon = Instant::now() + Duration::from_millis(500);
        assert_eq!(retry_wait(&Method::GET, &answer(429, "1"), 0, soon), None);
    }

    #[test]
    fn credentials_and_hop_headers_are_not_passed_on() {
        let headers: HeaderMap = [
            ("authorization", "Bearer x"),
            ("cookie", "a=b"),
            ("content-type", "application/json"),
            ("x-atlassian-token", "no-check"),
            ("connection", "close"),
        ]
        .into_iter()
        .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
        .collect();
        let kept = forwardable(&headers);
        let mut names: Vec<&str> = kept.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-atlassian-token"]);
    }
}
