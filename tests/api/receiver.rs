//! A subscriber played on loopback, for relay-delivery tests: a real HTTP server that
//! records every request and answers POSTs from a per-path script. Also a Standard
//! Webhooks verifier written from the spec
//! (<https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>).
//!
//! The verifier must not call into hookrelay: it grades hookrelay's signatures, so it
//! computes them with its own few lines of `hmac` + `sha2` + `base64`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, HttpServer};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The spec's recommended tolerance for `webhook-timestamp`, either side of now.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// Bodies bigger than this are refused with 413 (actix's default is only 256 kB).
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// A handle to a running receiver; clones share it. The server stops when the last
/// clone is dropped, or at [`Receiver::stop`].
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
}

struct Inner {
    /// Port on 127.0.0.1 the server is bound to.
    port: u16,
    /// What the handler and the test share.
    state: Arc<State>,
    /// To stop the server from `Drop` and [`Receiver::stop`].
    handle: actix_web::dev::ServerHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // `stop` sends its command at once; the returned future only waits for it.
        drop(self.handle.stop(false));
    }
}

struct State {
    log: Mutex<Log>,
    /// Bumped after every arrival, so `wait_for` wakes without polling.
    arrivals: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Log {
    /// Every request, in arrival order, all paths together.
    received: Vec<Received>,
    /// Per path: the scripted replies and how many POSTs have consumed them.
    scripts: HashMap<String, Script>,
}

struct Script {
    replies: Vec<Reply>,
    served: usize,
}

/// How the receiver answers one POST.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status with an empty body.
    Status(u16),
    /// This status and body (`text/plain`).
    WithBody(u16, String),
    /// This status, an empty body and these headers, e.g. 429 with
    /// `("retry-after", "2".into())`.
    WithHeaders(u16, Vec<(&'static str, String)>),
    /// Never answers: the connection stays open until the client gives up or the
    /// receiver stops. Other requests are served meanwhile.
    Hang,
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// When the handler got it (body already read).
    pub at: Instant,
    pub method: String,
    /// The path alone, without the query string.
    pub path: String,
    /// In the order they came; names lower-cased; a repeated header appears once
    /// per value.
    pub headers: Vec<(String, String)>,
    /// The body as sent (non-UTF-8 bytes would be replaced, which JSON never needs).
    pub body: String,
}

impl Received {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON; panics, showing the body, if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "body of {} {} is not JSON ({e}): {}",
                self.method, self.path, self.body
            )
        })
    }
}

impl Receiver {
    /// Binds 127.0.0.1:0 and serves any path and any method.
    pub async fn start() -> Receiver {
        let (arrivals, _) = tokio::sync::watch::channel(0);
        let state = Arc::new(State {
            log: Mutex::new(Log::default()),
            arrivals,
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().unwrap().port();
        let shared = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            actix_web::App::new()
                .app_data(shared.clone())
                .app_data(web::PayloadConfig::new(BODY_LIMIT))
                .default_service(web::to(handle))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listener)
        .expect("listen on the bound port")
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Receiver {
            inner: Arc::new(Inner {
                port,
                state,
                handle,
            }),
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.inner.port)
    }

    /// Replies for POSTs to `path`, in order; the last one repeats forever. Replaces
    /// any earlier script for `path` and starts from its first reply. An unscripted
    /// path (and any other method) gets 200 with body `ok`.
    pub fn script(&self, path: &str, replies: Vec<Reply>) {
        assert!(!replies.is_empty(), "a script needs at least one reply");
        self.inner
            .state
            .log
            .lock()
            .unwrap()
            .scripts
            .insert(path.to_string(), Script { replies, served: 0 });
    }

    /// Every request received at `path` so far, in arrival order.
    pub fn received(&self, path: &str) -> Vec<Received> {
        self.inner.state.received(path)
    }

    /// Waits until at least `n` requests have reached `path` and returns all of them;
    /// panics after `within`, listing everything that did arrive.
    pub async fn wait_for(&self, path: &str, n: usize, within: Duration) -> Vec<Received> {
        let mut arrivals = self.inner.state.arrivals.subscribe();
        let state = &self.inner.state;
        let reached = tokio::time::timeout(
            within,
            arrivals.wait_for(|_| state.received(path).len() >= n),
        )
        .await;
        if reached.is_err() {
            let log = state.log.lock().unwrap();
            let all: Vec<String> = log
                .received
                .iter()
                .map(|r| format!("  {} {} {}", r.method, r.path, shorten(&r.body)))
                .collect();
            panic!(
                "waited {within:?} for {n} request(s) at {path}, got {}; everything received:\n{}",
                log.received.iter().filter(|r| r.path == path).count(),
                if all.is_empty() {
                    "  (nothing)".to_string()
                } else {
                    all.join("\n")
                },
            );
        }
        self.received(path)
    }

    /// Stops the server: open connections (hanging ones too) are dropped, new ones
    /// are refused.
    pub async fn stop(&self) {
        self.inner.handle.stop(false).await;
    }
}

impl State {
    fn received(&self, path: &str) -> Vec<Received> {
        let log = self.log.lock().unwrap();
        log.received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

fn shorten(body: &str) -> String {
    const MAX: usize = 200;
    match body.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &body[..i]),
        None => body.to_string(),
    }
}

async fn handle(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let received = Received {
        at: Instant::now(),
        method: req.method().to_string(),
        path: req.path().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let reply = {
        let mut log = state.log.lock().unwrap();
        let reply = match (req.method() == actix_web::http::Method::POST)
            .then(|| log.scripts.get_mut(req.path()))
            .flatten()
        {
            Some(script) => {
                let i = script.served.min(script.replies.len() - 1);
                script.served += 1;
                script.replies[i].clone()
            }
            None => Reply::WithBody(200, "ok".into()),
        };
        log.received.push(received);
        reply
    };
    // After the lock is released: a waiter's condition takes the lock.
    state.arrivals.send_modify(|n| *n += 1);

    let status = |code: u16| {
        StatusCode::from_u16(code).unwrap_or_else(|_| panic!("scripted status {code} is not valid"))
    };
    match reply {
        Reply::Status(code) => HttpResponse::build(status(code)).finish(),
        Reply::WithBody(code, body) => HttpResponse::build(status(code))
            .content_type("text/plain")
            .body(body),
        Reply::WithHeaders(code, headers) => {
            let mut response = HttpResponse::build(status(code));
            for header in headers {
                response.insert_header(header);
            }
            response.finish()
        }
        Reply::Hang => std::future::pending().await,
    }
}

/// Why a request does not carry a valid Standard Webhooks signature.
#[derive(Debug)]
pub enum VerifyError {
    /// This header is absent (or not text).
    MissingHeader(&'static str),
    /// The secret is not `whsec_` followed by base64.
    BadSecret,
    /// `webhook-timestamp` is not an integer number of seconds.
    BadTimestamp,
    /// `webhook-timestamp` is more than [`TOLERANCE_SECS`] away from now.
    Expired,
    /// No `v1` signature in `webhook-signature` matches.
    NoMatch,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::MissingHeader(name) => write!(f, "missing header {name}"),
            VerifyError::BadSecret => f.write_str("secret is not whsec_<base64>"),
            VerifyError::BadTimestamp => f.write_str("webhook-timestamp is not unix seconds"),
            VerifyError::Expired => write!(
                f,
                "webhook-timestamp is more than {TOLERANCE_SECS}s from now"
            ),
            VerifyError::NoMatch => f.write_str("no v1 signature matches"),
        }
    }
}

impl std::error::Error for VerifyError {}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Verifies `received` per Standard Webhooks against `secret` (`whsec_<base64 key>`)
/// and the clock; returns the `webhook-id` on success.
pub fn verify(secret: &str, received: &Received) -> Result<String, VerifyError> {
    verify_at(secret, received, unix_now())
}

/// [`verify`] with "now" given, in unix seconds.
pub fn verify_at(secret: &str, received: &Received, now: i64) -> Result<String, VerifyError> {
    let header = |name: &'static str| {
        received
            .header(name)
            .ok_or(VerifyError::MissingHeader(name))
    };
    let id = header("webhook-id")?;
    let timestamp = header("webhook-timestamp")?;
    let signatures = header("webhook-signature")?;
    let mac = keyed_mac(secret)?;

    let seconds: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    if (now - seconds).abs() > TOLERANCE_SECS {
        return Err(VerifyError::Expired);
    }

    // The signed content uses the header's text as sent.
    let mut mac = mac;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(received.body.as_bytes());
    let matched = signatures
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, signature)| BASE64.decode(signature).ok())
        // `verify_slice` compares in constant time.
        .any(|signature| mac.clone().verify_slice(&signature).is_ok());
    if matched {
        Ok(id.to_string())
    } else {
        Err(VerifyError::NoMatch)
    }
}

/// `v1,<base64 signature>` of `body` as the spec signs it; for building test
/// requests by hand.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Result<String, VerifyError> {
    let mut mac = keyed_mac(secret)?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())))
}

fn keyed_mac(secret: &str) -> Result<Hmac<Sha256>, VerifyError> {
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|b64| BASE64.decode(b64).ok())
        .filter(|key| !key.is_empty())
        .ok_or(VerifyError::BadSecret)?;
    Ok(Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The reference vector of the Standard Webhooks and Svix libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const PAYLOAD: &str = r#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn signed(signature: &str, body: &str) -> Received {
        Received {
            at: Instant::now(),
            method: "POST".into(),
            path: "/".into(),
            headers: vec![
                ("webhook-id".into(), ID.into()),
                ("webhook-timestamp".into(), TIMESTAMP.to_string()),
                ("webhook-signature".into(), signature.into()),
            ],
            body: body.into(),
        }
    }

    #[test]
    fn reference_vector_signs_and_verifies() {
        assert_eq!(sign(SECRET, ID, TIMESTAMP, PAYLOAD).unwrap(), SIGNATURE);
        let id = verify_at(SECRET, &signed(SIGNATURE, PAYLOAD), TIMESTAMP).unwrap();
        assert_eq!(id, ID);
        // Within the tolerance on either side.
        verify_at(
            SECRET,
            &signed(SIGNATURE, PAYLOAD),
            TIMESTAMP + TOLERANCE_SECS,
        )
        .unwrap();
        verify_at(
            SECRET,
            &signed(SIGNATURE, PAYLOAD),
            TIMESTAMP - TOLERANCE_SECS,
        )
        .unwrap();
    }

    #[test]
    fn tampered_body_fails() {
        let tampered = r#"{"test": 2432232315}"#;
        let err = verify_at(SECRET, &signed(SIGNATURE, tampered), TIMESTAMP).unwrap_err();
        assert!(matches!(err, VerifyError::NoMatch), "{err:?}");
    }

    #[test]
    fn wrong_secret_fails() {
        let other = format!(
            "whsec_{}",
            BASE64.encode(b"some other key of 32 bytes......")
        );
        let err = verify_at(&other, &signed(SIGNATURE, PAYLOAD), TIMESTAMP).unwrap_err();
        assert!(matches!(err, VerifyError::NoMatch), "{err:?}");
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64!",
            "whsec_",
        ] {
            let err = verify_at(bad, &signed(SIGNATURE, PAYLOAD), TIMESTAMP).unwrap_err();
            assert!(matches!(err, VerifyError::BadSecret), "{bad}: {err:?}");
        }
    }

    #[test]
    fn any_matching_v1_signature_passes() {
        let list =
            format!("v1,Zm9yZ2VkIHNpZ25hdHVyZSBvZiAzMiBieXRlcyEhISE= v2,whatever {SIGNATURE}");
        assert_eq!(
            verify_at(SECRET, &signed(&list, PAYLOAD), TIMESTAMP).unwrap(),
            ID
        );
        // The right bytes under another version do not count.
        let other_version = SIGNATURE.replace("v1,", "v1a,");
        let err = verify_at(SECRET, &signed(&other_version, PAYLOAD), TIMESTAMP).unwrap_err();
        assert!(matches!(err, VerifyError::NoMatch), "{err:?}");
    }

    #[test]
    fn timestamps_outside_the_tolerance_fail() {
        for now in [
            TIMESTAMP + TOLERANCE_SECS + 1,
            TIMESTAMP - TOLERANCE_SECS - 1,
        ] {
            let err = verify_at(SECRET, &signed(SIGNATURE, PAYLOAD), now).unwrap_err();
            assert!(matches!(err, VerifyError::Expired), "now={now}: {err:?}");
        }
        // The real clock: the vector is from 2021.
        let err = verify(SECRET, &signed(SIGNATURE, PAYLOAD)).unwrap_err();
        assert!(matches!(err, VerifyError::Expired), "{err:?}");
    }

    #[test]
    fn missing_headers_and_bad_timestamps_fail() {
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            let mut received = signed(SIGNATURE, PAYLOAD);
            received.headers.retain(|(k, _)| k != name);
            let err = verify_at(SECRET, &received, TIMESTAMP).unwrap_err();
            assert!(
                matches!(err, VerifyError::MissingHeader(n) if n == name),
                "{err}"
            );
        }
        let mut received = signed(SIGNATURE, PAYLOAD);
        received.headers[1].1 = "yesterday".into();
        let err = verify_at(SECRET, &received, TIMESTAMP).unwrap_err();
        assert!(matches!(err, VerifyError::BadTimestamp), "{err}");
    }

    const WITHIN: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn scripted_replies_in_order_then_the_last_repeats() {
        let receiver = Receiver::start().await;
        receiver.script("/hook", vec![Reply::Status(500), Reply::Status(200)]);
        let client = reqwest::Client::builder().timeout(WITHIN).build().unwrap();

        let mut statuses = Vec::new();
        for i in 0..3 {
            let response = client
                .post(receiver.url("/hook"))
                .json(&serde_json::json!({ "n": i }))
                .send()
                .await
                .unwrap();
            statuses.push(response.status().as_u16());
        }
        assert_eq!(statuses, [500, 200, 200]);

        let got = receiver.wait_for("/hook", 3, WITHIN).await;
        let bodies: Vec<_> = got
            .iter()
            .map(|r| r.json()["n"].as_i64().unwrap())
            .collect();
        assert_eq!(bodies, [0, 1, 2]);
        assert!(got[0].at <= got[1].at && got[1].at <= got[2].at);
        assert!(got.iter().all(|r| r.method == "POST" && r.path == "/hook"));
        assert_eq!(got[0].header("Content-Type"), Some("application/json"));
        // Other paths are not scripted, and not counted at /hook.
        let other = client
            .get(receiver.url("/elsewhere?x=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(other.status().as_u16(), 200);
        assert_eq!(other.text().await.unwrap(), "ok");
        assert_eq!(receiver.received("/hook").len(), 3);
        assert_eq!(receiver.received("/elsewhere")[0].method, "GET");
    }

    #[tokio::test]
    async fn replies_carry_bodies_and_headers() {
        let receiver = Receiver::start().await;
        receiver.script(
            "/limited",
            vec![Reply::WithHeaders(429, vec![("retry-after", "2".into())])],
        );
        receiver.script("/gone", vec![Reply::WithBody(410, "unsubscribed".into())]);
        let client = reqwest::Client::builder().timeout(WITHIN).build().unwrap();

        let limited = client.post(receiver.url("/limited")).send().await.unwrap();
        assert_eq!(limited.status().as_u16(), 429);
        assert_eq!(limited.headers()["retry-after"], "2");
        let gone = client.post(receiver.url("/gone")).send().await.unwrap();
        assert_eq!(gone.status().as_u16(), 410);
        assert_eq!(gone.text().await.unwrap(), "unsubscribed");
    }

    #[tokio::test]
    async fn a_hanging_path_does_not_hold_up_others() {
        let receiver = Receiver::start().await;
        receiver.script("/hang", vec![Reply::Hang]);
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let url = receiver.url("/hang");
        let hanging = tokio::spawn(async move { impatient.post(url).body("{}").send().await });
        receiver.wait_for("/hang", 1, WITHIN).await;

        // The hanging request is in the handler now; another is still answered.
        let client = reqwest::Client::builder().timeout(WITHIN).build().unwrap();
        let other = client.post(receiver.url("/other")).send().await.unwrap();
        assert_eq!(other.status().as_u16(), 200);
        assert!(!hanging.is_finished(), "the hanging request was answered");

        let err = hanging
            .await
            .unwrap()
            .expect_err("a hanging path never answers");
        assert!(err.is_timeout(), "{err:?}");
    }

    #[tokio::test]
    async fn stop_drops_hanging_connections() {
        let receiver = Receiver::start().await;
        receiver.script("/hang", vec![Reply::Hang]);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let url = receiver.url("/hang");
        let hanging = tokio::spawn(async move { client.post(url).send().await });
        receiver.wait_for("/hang", 1, WITHIN).await;

        tokio::time::timeout(WITHIN, receiver.stop())
            .await
            .expect("the receiver stops with a hanging request open");
        let answer = tokio::time::timeout(WITHIN, hanging)
            .await
            .expect("the hanging client hears the connection close")
            .unwrap();
        assert!(answer.is_err(), "{answer:?}");
        let refused = reqwest::Client::new()
            .post(receiver.url("/other"))
            .send()
            .await;
        assert!(refused.is_err(), "a stopped receiver still answers");
    }

    #[tokio::test]
    async fn a_signed_delivery_verifies_against_the_clock() {
        let receiver = Receiver::start().await;
        let secret = format!(
            "whsec_{}",
            BASE64.encode(b"0123456789abcdef0123456789abcdef")
        );
        let (id, now, body) = ("msg_1", unix_now(), r#"{"event":"x"}"#);
        reqwest::Client::new()
            .post(receiver.url("/signed"))
            .header("webhook-id", id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", sign(&secret, id, now, body).unwrap())
            .body(body)
            .send()
            .await
            .unwrap();
        let got = receiver.wait_for("/signed", 1, WITHIN).await;
        assert_eq!(verify(&secret, &got[0]).unwrap(), id);
    }

    #[tokio::test]
    #[should_panic(expected = "waited")]
    async fn wait_for_panics_listing_what_arrived() {
        let receiver = Receiver::start().await;
        reqwest::Client::new()
            .post(receiver.url("/typo"))
            .send()
            .await
            .unwrap();
        receiver
            .wait_for("/hook", 1, Duration::from_millis(200))
            .await;
    }
}
