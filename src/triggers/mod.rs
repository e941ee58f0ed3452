//! Web triggers: what a call looks like to a script (the request object, in
//! the shape of Forge web triggers), who may make it (the per-trigger auth),
//! and what a script may answer (the response object). Nothing here does I/O:
//! the HTTP handlers read the request, the store keeps triggers and their
//! invocations, [`crate::script`] runs the code, and [`runner`] runs async
//! scripts from the queue.

pub mod runner;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::OwnedSemaphorePermit;

use crate::domain::{EventId, InvocationId, Trigger, TriggerAuthType, TriggerId};
use crate::script::{Line, Permit, Run, RunKind, ScriptRef};

/// How much of a handler's response the invocation log keeps.
pub const RECORD_LIMIT: usize = 16 * 1024;

/// Runs `source`, the script of `trigger`, on `request` in a reserved
/// runtime, with the context every trigger script gets. Sync calls and async
/// runs both come here; the compiled script is cached per trigger version.
pub async fn run_script(
    permit: Permit,
    trigger: &Trigger,
    source: &str,
    request: Value,
    event_id: EventId,
    invocation_id: InvocationId,
    bridge: Arc<crate::script::Bridge>,
) -> Run {
    let context = serde_json::json!({
        "trigger": {"id": trigger.id.0, "name": trigger.name},
        "event_id": event_id,
        "invocation_id": invocation_id,
    });
    let script = ScriptRef {
        key: format!("trigger:{}:{}", trigger.id, trigger.version),
        source: source.into(),
    };
    let timeout = Duration::from_millis(u64::from(trigger.timeout_ms));
    permit
        .run(
            &script,
            vec![request, context],
            timeout,
            RunKind::Trigger,
            Some(bridge),
        )
        .await
}

/// Cuts `text` to at most `limit` bytes, on a character boundary.
pub fn cut(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Sync runs in flight per trigger in this process, so that one slow or
/// flooded trigger cannot hold every runtime and starve the others. Each
/// trigger that has a run in flight or a caller waiting has a [`Line`] of
/// `cap` slots; it is dropped when the last of them is done.
#[derive(Default)]
pub struct InFlight(Mutex<HashMap<TriggerId, Arc<Line>>>);

/// One run counted against its trigger; uncounted when dropped.
pub struct InFlightGuard {
    // Fields drop in this order: the slot is given back before the line is
    // let go of.
    _slot: OwnedSemaphorePermit,
    _line: Holder,
}

/// A hold on one trigger's line, by a run or a waiting caller; the last one
/// to let go removes the line.
struct Holder {
    lines: Arc<InFlight>,
    id: TriggerId,
    /// Always `Some` until dropped, where it is let go of under the lock.
    line: Option<Arc<Line>>,
}

impl InFlight {
    /// A slot among `id`'s `cap`, now or after waiting as a [`Line`] does;
    /// `None` when its line is full or no slot came free within `wait`.
    pub async fn take(
        self: &Arc<Self>,
        id: &TriggerId,
        cap: usize,
        max_waiting: usize,
        wait: Duration,
    ) -> Option<InFlightGuard> {
        let line = self
            .lock()
            .entry(id.clone())
            .or_insert_with(|| Arc::new(Line::new(cap)))
            .clone();
        // Held from here on, so that a refusal (or a cancelled wait) also
        // removes the line when nobody else holds it.
        let holder = Holder {
            lines: self.clone(),
            id: id.clone(),
            line: Some(line),
        };
        let slot = holder.line.as_ref()?.take(max_waiting, wait).await?;
        Some(InFlightGuard {
            _slot: slot,
            _line: holder,
        })
    }

    /// Triggers with a run in flight or a caller waiting.
    #[cfg(test)]
    fn busy_triggers(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TriggerId, Arc<Line>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let mut lines = self.lines.lock();
        if let Some(line) = self.line.take() {
            // Lines are cloned, and let go of, only under this lock: two
            // holders (the map and this one) mean nobody else runs or waits.
            if Arc::strong_count(&line) == 2 {
                lines.remove(&self.id);
            }
            drop(line);
        }
    }
}

/// The request object a script receives (and the event's payload).
#[derive(Debug, Serialize)]
pub struct RequestObject {
    pub method: String,
    /// Lower-case name → every value sent, in order.
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: String,
    /// The path as received, from `/x1/` on.
    pub path: String,
    /// The part after the trigger id: `""` or starting with `/`.
    #[serde(rename = "userPath")]
    pub user_path: String,
    #[serde(rename = "queryParameters")]
    pub query_parameters: BTreeMap<String, Vec<String>>,
}

/// Why a call was refused before anything was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("request body is not UTF-8")]
    NotUtf8,
    #[error("{0}")]
    Unauthorized(String),
}

impl RequestObject {
    /// Builds the request object. `path` is the request path from `/x1/` on,
    /// as received (not decoded); `id_len` the length of the trigger id in it.
    /// `hide` names a header left out (the trigger's key: it must not end up
    /// in the stored event).
    pub fn new(
        method: &str,
        headers: &actix_web::http::header::HeaderMap,
        body: &[u8],
        path: &str,
        query: &str,
        hide: Option<&str>,
    ) -> Result<Self, CallError> {
        let body = std::str::from_utf8(body)
            .map_err(|_| CallError::NotUtf8)?
            .to_string();
        let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers.iter() {
            if hide.is_some_and(|h| name.as_str().eq_ignore_ascii_case(h)) {
                continue;
            }
            by_name
                .entry(name.as_str().to_ascii_lowercase())
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        // "/x1/<id>" then the user's part.
        let after_prefix = path.strip_prefix("/x1/").unwrap_or(path);
        let user_path = match after_prefix.find('/') {
            Some(i) => after_prefix[i..].to_string(),
            None => String::new(),
        };
        Ok(RequestObject {
            method: method.to_string(),
            headers: by_name,
            body,
            path: path.to_string(),
            user_path,
            query_parameters: query_parameters(query),
        })
    }
}

/// `a=1&a=2` and `a=1,2` both give `a: ["1", "2"]`; names and values are
/// percent-decoded (and `+` is a space), after splitting on `,`, so an encoded
/// comma (`%2C`) stays inside its value.
pub fn query_parameters(query: &str) -> BTreeMap<String, Vec<String>> {
    let decode = |s: &str| {
        let spaced = s.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let values = out.entry(decode(name)).or_default();
        values.extend(value.split(',').map(decode));
    }
    out
}

/// Checks the caller's credentials for `trigger`. `now` is the Unix time, for
/// the Standard Webhooks timestamp.
pub fn authenticate(
    trigger: &Trigger,
    headers: &actix_web::http::header::HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<(), CallError> {
    use secrecy::ExposeSecret as _;
    use subtle::ConstantTimeEq as _;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let secret = trigger.secret.expose_secret();
    let named = auth_header(trigger);
    match trigger.auth {
        TriggerAuthType::None => Ok(()),
        TriggerAuthType::Key => {
            let given = header(named).ok_or_else(|| missing(named))?;
            if bool::from(given.trim().as_bytes().ct_eq(secret.as_bytes())) {
                Ok(())
            } else {
                Err(CallError::Unauthorized(format!("wrong key in {named}")))
            }
        }
        TriggerAuthType::HmacSha256 => {
            use hmac::{Hmac, Mac};
            let given = header(named).ok_or_else(|| missing(named))?.trim();
            let hex_digest = given.strip_prefix("sha256=").unwrap_or(given);
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hex_digest, &mut digest).map_err(|_| {
                CallError::Unauthorized(format!(
                    "{named} must be sha256=<64 hex characters> or <64 hex characters>"
                ))
            })?;
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
                .expect("HMAC takes a key of any length");
            mac.update(body);
            mac.verify_slice(&digest)
                .map_err(|_| CallError::Unauthorized(format!("{named} does not match the body")))
        }
        TriggerAuthType::StandardWebhooks => {
            let id = header("webhook-id").ok_or_else(|| missing("webhook-id"))?;
            let timestamp = header("webhook-timestamp")
                .ok_or_else(|| missing("webhook-timestamp"))?
                .trim()
                .parse::<i64>()
                .map_err(|_| {
                    CallError::Unauthorized("webhook-timestamp is not a Unix time".into())
                })?;
            let signature =
                header("webhook-signature").ok_or_else(|| missing("webhook-signature"))?;
            if (now - timestamp).abs() > SIGNATURE_TOLERANCE_SECS {
                return Err(CallError::Unauthorized(
                    "webhook-timestamp is more than 5 minutes from now".into(),
                ));
            }
            let key = crate::relay::signing::key(secret)
                .map_err(|e| CallError::Unauthorized(format!("trigger secret unusable: {e}")))?;
            if crate::relay::signing::verify(&key, id, timestamp, body, signature) {
                Ok(())
            } else {
                Err(CallError::Unauthorized(
                    "webhook-signature does not match".into(),
                ))
            }
        }
    }
}

/// How far a Standard Webhooks timestamp may be from now.
pub const SIGNATURE_TOLERANCE_SECS: i64 = 5 * 60;

fn missing(header: &str) -> CallError {
    CallError::Unauthorized(format!("missing {header} header"))
}

/// The header a `key` or `hmac-sha256` trigger reads its credential from.
pub fn auth_header(trigger: &Trigger) -> &str {
    trigger
        .auth_header
        .as_deref()
        .or(trigger.auth.default_header())
        .unwrap_or("")
}

/// A script's (or forward endpoint's) answer, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub status_text: Option<String>,
}

/// Headers the server sets itself; a handler's values for them are dropped.
const SERVER_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "date",
];

impl HandlerResponse {
    /// Checks a handler's return value: an object with an integer `statusCode`
    /// of 100–599 (200–599 in practice: see below), `headers` of name → array
    /// of strings, a string `body` and `statusText`. The error names what is wrong.
    pub fn from_value(value: Option<&Value>) -> Result<Self, String> {
        let Some(Value::Object(object)) = value else {
            return Err(format!(
                "the handler must return an object with statusCode; it returned {}",
                kind(value)
            ));
        };
        let status = match object.get("statusCode") {
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|s| (100..=599).contains(s))
                .ok_or_else(|| format!("statusCode must be an integer 100-599, not {n}"))?,
            None => return Err("statusCode is missing".into()),
            Some(other) => {
                return Err(format!(
                    "statusCode must be an integer 100-599, not {}",
                    kind(Some(other))
                ))
            }
        };
        // An informational status is not a final answer in HTTP/1.1; a
        // client would wait for the real one.
        if status < 200 {
            return Err(format!(
                "statusCode {status} is informational and cannot end a request"
            ));
        }
        let headers = match object.get("headers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(map)) => headers(map)?,
            Some(other) => {
                return Err(format!(
                    "headers must be an object of name → array of strings, not {}",
                    kind(Some(other))
                ))
            }
        };
        let text = |field: &str| match object.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!(
                "{field} must be a string, not {}",
                kind(Some(other))
            )),
        };
        Ok(HandlerResponse {
            status: status as u16,
            headers,
            body: text("body")?.unwrap_or_default(),
            status_text: text("statusText")?,
        })
    }
}

fn headers(map: &Map<String, Value>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (name, values) in map {
        if actix_web::http::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("header name `{name}` is not valid"));
        }
        let Value::Array(values) = values else {
            return Err(format!(
                "header `{name}` must be an array of strings, not {}",
                kind(Some(values))
            ));
        };
        for value in values {
            let Value::String(value) = value else {
                return Err(format!(
                    "header `{name}` must be an array of strings, not one holding {}",
                    kind(Some(value))
                ));
            };
            if actix_web::http::header::HeaderValue::from_str(value).is_err() {
                return Err(format!("header `{name}` has a value that is not valid"));
            }
            if !SERVER_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                out.push((name.clone(), value.clone()));
            }
        }
    }
    Ok(out)
}

fn kind(value: Option<&Value>) -> &'static str {
    match value {
        None => "undefined",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "a boolean",
        Some(Value::Number(_)) => "a number",
        Some(Value::String(_)) => "a string",
        Some(Value::Array(_)) => "an array",
        Some(Value::Object(_)) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_trigger_share_waits_bounded_and_is_dropped_when_idle() {
        let shares = Arc::new(InFlight::default());
        let id = TriggerId("t".into());
        let other = TriggerId("u".into());
        let wait = Duration::from_secs(5);
        let first = shares.take(&id, 1, 1, wait).await.unwrap();
        // Another trigger is not held up by this one's full share.
        let beside = shares.take(&other, 1, 1, wait).await.unwrap();
        drop(beside);
        assert_eq!(shares.busy_triggers(), 1);
        // One caller may wait; it gets the slot as soon as it is given back.
        let waiter = tokio::spawn({
            let (shares, id) = (shares.clone(), id.clone());
            async move { shares.take(&id, 1, 1, wait).await.is_some() }
        });
        while shares.lock()[&id].waiting() == 0 {
            tokio::task::yield_now().await;
        }
        // The line is full: a second waiter is refused at once.
        assert!(shares.take(&id, 1, 1, wait).await.is_none());
        drop(first);
        assert!(waiter.await.unwrap());
        assert_eq!(shares.busy_triggers(), 0);
        // A wait that runs out is refused, and leaves nothing behind.
        let held = shares.take(&id, 1, 1, wait).await.unwrap();
        let short = Duration::from_millis(20);
        assert!(shares.take(&id, 1, 1, short).await.is_none());
        drop(held);
        assert_eq!(shares.busy_triggers(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn trigger_shares_taken_at_once_from_many_threads_leave_nothing_behind() {
        let shares = Arc::new(InFlight::default());
        let tasks: Vec<_> = (0..400)
            .map(|n| {
                let shares = shares.clone();
                tokio::spawn(async move {
                    let id = TriggerId(format!("t{}", n % 3));
                    let wait = Duration::from_millis(1);
                    if let Some(guard) = shares.take(&id, 1, 2, wait).await {
                        tokio::task::yield_now().await;
                        drop(guard);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(shares.busy_triggers(), 0);
    }

    #[test]
    fn query_values_split_on_commas_and_repeat() {
        let q =
            query_parameters("apples=green&apples=red&grapes=green,red&x=a%2Cb&sp=a+b%20c&flag");
        assert_eq!(q["apples"], vec!["green", "red"]);
        assert_eq!(q["grapes"], vec!["green", "red"]);
        assert_eq!(q["x"], vec!["a,b"]);
        assert_eq!(q["sp"], vec!["a b c"]);
        assert_eq!(q["flag"], vec![""]);
        assert!(query_parameters("").is_empty());
    }

    #[test]
    fn responses_are_checked() {
        let ok = HandlerResponse::from_value(Some(&json!({
            "statusCode": 201, "headers": {"x-a": ["1", "2"]}, "body": "hi", "statusText": "Created"
        })))
        .unwrap();
        assert_eq!(ok.status, 201);
        assert_eq!(ok.headers.len(), 2);
        assert_eq!(ok.body, "hi");
        for bad in [
            json!(42),
            json!("x"),
            json!([]),
            json!({}),
            json!({"statusCode": "200"}),
            json!({"statusCode": 200.5}),
            json!({"statusCode": 600}),
            json!({"statusCode": 99}),
            json!({"statusCode": 200, "headers": {"a": "b"}}),
            json!({"statusCode": 200, "headers": {"a": [1]}}),
            json!({"statusCode": 200, "headers": {"bad name": ["x"]}}),
            json!({"statusCode": 200, "body": {"a": 1}}),
        ] {
            assert!(HandlerResponse::from_value(Some(&bad)).is_err(), "{bad}");
        }
        assert!(HandlerResponse::from_value(None).is_err());
        let minimal = HandlerResponse::from_value(Some(&json!({"statusCode": 204}))).unwrap();
        assert_eq!(minimal.body, "");
    }
}
