//! The admin API as the command line reaches it: one HTTP client with
//! timeouts, the bearer token, and the mapping of every failure to an
//! [`CliError`] whose exit code says what went wrong.
//!
//! It knows URLs and status codes, not what the answers mean: the commands
//! read the JSON they get.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an ordinary request may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest silence on a connection. The live tail sends a keep-alive comment
/// every 15 s, so a tail silent this long has lost its server.
const READ_TIMEOUT: Duration = Duration::from_secs(45);

/// Why a command failed, and so the process's exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or the settings cannot be used as given.
    #[error("{0}")]
    Usage(String),
    /// No answer: nothing listening, a timeout, a connection lost.
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// No token, or the server refused it.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// A 4xx other than the two above: the request was refused as invalid
    /// (or conflicts with the resource's state).
    #[error("refused ({status}): {detail}")]
    Refused { status: u16, detail: String },
    /// A 5xx.
    #[error("server error ({status}): {detail}")]
    Server { status: u16, detail: String },
    /// The live tail fell behind and the server closed it: events were missed.
    #[error("the live tail fell behind and the server closed it; {0} events were not shown")]
    Lagged(u64),
    /// Standard output was closed by its reader (`| head`): not a failure.
    #[error("standard output closed")]
    OutputClosed,
    /// Anything else: an answer that is not what the API promises, output that
    /// cannot be written.
    #[error("{0}")]
    Other(String),
}

impl CliError {
    /// The exit code; the README's "Command line" section lists them.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::OutputClosed => 0,
            CliError::Other(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Unreachable { .. } => 3,
            CliError::Unauthorized(_) => 4,
            CliError::NotFound(_) => 5,
            CliError::Refused { .. } => 6,
            CliError::Server { .. } => 7,
            CliError::Lagged(_) => 8,
        }
    }
}

/// A client of one server's admin API.
pub struct AdminClient {
    http: reqwest::Client,
    /// The server's root, without a trailing slash.
    base: String,
    token: Option<SecretString>,
}

impl AdminClient {
    pub fn new(base: &str, token: Option<SecretString>) -> Result<Self, CliError> {
        let parsed = url::Url::parse(base)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                CliError::Usage(format!("--url must be an http(s) URL, not `{base}`"))
            })?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hookrelay-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Other(format!("cannot build the HTTP client: {e}")))?;
        Ok(AdminClient {
            http,
            base: parsed.as_str().trim_end_matches('/').to_string(),
            token,
        })
    }

    /// `path` under `/admin/api/v1`, with `query` pairs whose value is given.
    fn url(&self, path: &str, query: &[(&str, Option<&str>)]) -> String {
        let mut url = format!("{}/admin/api/v1{path}", self.base);
        let mut pairs = form_urlencoded::Serializer::new(String::new());
        for (key, value) in query {
            if let Some(value) = value {
                pairs.append_pair(key, value);
            }
        }
        let pairs = pairs.finish();
        if !pairs.is_empty() {
            url.push('?');
            url.push_str(&pairs);
        }
        url
    }

    fn request(&self, method: Method, url: &str) -> Result<reqwest::RequestBuilder, CliError> {
        let token = self.token.as_ref().ok_or_else(|| {
            CliError::Unauthorized(
                "no admin token: set HOOKRELAY_ADMIN_TOKEN (the server's admin_token)".into(),
            )
        })?;
        Ok(self
            .http
            .request(method, url)
            .bearer_auth(token.expose_secret()))
    }

    fn unreachable(&self, e: &reqwest::Error) -> CliError {
        let reason = if e.is_timeout() {
            "timed out".to_string()
        } else if e.is_connect() {
            // reqwest's own text ("error sending request") hides the cause.
            let mut cause: &dyn std::error::Error = e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            cause.to_string()
        } else {
            e.to_string()
        };
        CliError::Unreachable {
            url: self.base.clone(),
            reason,
        }
    }

    /// Sends a request and reads its JSON answer; `None` for an empty one (204).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, Option<&str>)],
        body: Option<&Value>,
    ) -> Result<Option<Value>, CliError> {
        let url = self.url(path, query);
        let mut request = self.request(method, &url)?.timeout(REQUEST_TIMEOUT);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let response = checked(response).await?;
        let text = response.text().await.map_err(|e| self.unreachable(&e))?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| CliError::Other(format!("the server's answer is not JSON: {e}")))
    }

    /// [`Self::call`] for a request that must answer with JSON.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, Option<&str>)],
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        self.call(method, path, query, body)
            .await?
            .ok_or_else(|| CliError::Other("the server answered with no body".into()))
    }

    /// `GET path` for its JSON answer.
    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.json(Method::GET, path, &[], None).await
    }

    /// Opens the live tail; the answer's body is the event stream.
    pub async fn stream(
        &self,
        path: &str,
        query: &[(&str, Option<&str>)],
    ) -> Result<reqwest::Response, CliError> {
        let url = self.url(path, query);
        // No total timeout: a tail runs until stopped; the read timeout still
        // catches a server that went silent.
        let response = self
            .request(Method::GET, &url)?
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        checked(response).await
    }

    /// The error for a connection lost while reading a streamed answer.
    pub fn lost(&self, e: &reqwest::Error) -> CliError {
        self.unreachable(e)
    }
}

/// The response if it is a success; otherwise the error its status stands
/// for, with the server's `detail` (or `error`) as the reason.
async fn checked(response: reqwest::Response) -> Result<reqwest::Response, CliError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    // The body is only read for its reason; one that cannot be read still
    // leaves the status to go by.
    let body = response.text().await.unwrap_or_default();
    let detail = reason(&body).unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_string()
    });
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => CliError::Unauthorized(detail),
        StatusCode::NOT_FOUND => CliError::NotFound(detail),
        s if s.is_client_error() => CliError::Refused {
            status: s.as_u16(),
            detail,
        },
        s if s.is_server_error() => CliError::Server {
            status: s.as_u16(),
            detail,
        },
        s => CliError::Other(format!("unexpected answer {s}: {detail}")),
    })
}

/// The reason in an `{"error", "detail"}` body: `detail`, else `error`.
fn reason(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    ["detail", "error"]
        .iter()
        .find_map(|k| value.get(k).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_reason_of_an_error_body() {
        assert_eq!(
            reason(r#"{"error":"bad_request","detail":"limit must be 1 to 100"}"#).as_deref(),
            Some("limit must be 1 to 100")
        );
        assert_eq!(
            reason(r#"{"error":"not_found"}"#).as_deref(),
            Some("not_found")
        );
        assert_eq!(reason("<html>"), None);
    }

    #[test]
    fn builds_urls_with_only_the_given_query_pairs() {
        let client = AdminClient::new("http://127.0.0.1:8080/", None).unwrap();
        assert_eq!(
            client.url(
                "/events",
                &[("event", Some("jira:issue_*")), ("tenant", None)]
            ),
            "http://127.0.0.1:8080/admin/api/v1/events?event=jira%3Aissue_*"
        );
        assert_eq!(
            client.url("/tenants", &[]),
            "http://127.0.0.1:8080/admin/api/v1/tenants"
        );
        assert!(matches!(
            AdminClient::new("127.0.0.1:8080", None),
            Err(CliError::Usage(_))
        ));
    }
}
