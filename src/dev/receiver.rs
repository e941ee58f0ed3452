//! `hookrelay dev site --receiver`: a small HTTP endpoint on loopback that
//! prints each delivery hookrelay makes to it and answers 204 (401 when the
//! signature is not valid), so that a newcomer sees events relayed (and
//! replayed) as a subscriber would.
//!
//! Each delivery's Standard Webhooks signature is checked with the
//! subscription's secret, by hookrelay's own [`crate::relay::signing::verify`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use actix_web::dev::ServerHandle;
use actix_web::{web, HttpRequest, HttpResponse};
use anyhow::Context;
use serde::Deserialize;
use url::Url;

use super::site::{bind, serve};
use crate::relay::signing;

/// Largest delivery read: above hookrelay's default body limit and its envelope.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// The part of the envelope the receiver prints.
#[derive(Deserialize)]
struct Envelope {
    id: String,
    event: String,
}

struct State {
    /// The subscription's signing key, known once it is made.
    key: OnceLock<Vec<u8>>,
    /// Event ids delivered so far.
    seen: Mutex<HashSet<String>>,
}

/// The endpoint deliveries arrive at.
pub struct Receiver {
    /// What the subscription's `url` is.
    pub url: String,
    state: Arc<State>,
    handle: ServerHandle,
}

impl Receiver {
    /// Listens on `listen`; `public` is the URL hookrelay reaches it at, when
    /// not the listen address.
    pub fn start(listen: &str, public: Option<&Url>) -> anyhow::Result<Self> {
        let (listener, url) = bind(listen, public).with_context(|| {
            format!("cannot listen on {listen} for the receiver (--receiver-listen)")
        })?;
        let url = format!("{}/hookrelay-dev", url?.as_str().trim_end_matches('/'));
        let state = Arc::new(State {
            key: OnceLock::new(),
            seen: Mutex::new(HashSet::new()),
        });
        let handle = serve(listener, state.clone(), MAX_BODY, 1, receive, "receiver")?;
        Ok(Self { url, state, handle })
    }

    /// The subscription's secret (`whsec_…`), that deliveries are signed with.
    pub fn set_secret(&self, secret: &str) -> anyhow::Result<()> {
        let key = signing::key(secret).context("the subscription's secret is not whsec_…")?;
        let _ = self.state.key.set(key);
        Ok(())
    }

    /// Of `ids`, those not delivered yet.
    pub fn missing<'a>(&self, ids: &'a [String]) -> Vec<&'a String> {
        let seen = self
            .state
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ids.iter().filter(|id| !seen.contains(*id)).collect()
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// Every request is a delivery: printed, and answered 204 when its signature
/// is valid. One that is not is answered 401 and not counted as delivered, so
/// a run never reports success for deliveries a real receiver would refuse.
async fn receive(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let valid = signed(state.key.get(), &req, &body);
    let signature = if valid {
        "signature valid"
    } else {
        "signature NOT valid: refused with 401"
    };
    match serde_json::from_slice::<Envelope>(&body) {
        Ok(envelope) => {
            println!(
                "hookrelay dev site: received {} event id {} ({} bytes, {signature})",
                envelope.event,
                envelope.id,
                body.len()
            );
            if valid {
                state
                    .seen
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(envelope.id);
            }
        }
        Err(_) => println!(
            "hookrelay dev site: received {} bytes that are not an event envelope ({signature})",
            body.len()
        ),
    }
    if valid {
        HttpResponse::NoContent().finish()
    } else {
        HttpResponse::Unauthorized().finish()
    }
}

/// Whether `req` carries a valid Standard Webhooks signature of `body` under
/// `key` (false without a key).
pub fn signed(key: Option<&Vec<u8>>, req: &HttpRequest, body: &[u8]) -> bool {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    match (
        key,
        header("webhook-id"),
        header("webhook-timestamp").and_then(|t| t.trim().parse::<i64>().ok()),
        header("webhook-signature"),
    ) {
        (Some(key), Some(id), Some(timestamp), Some(signature)) => {
            signing::verify(key, id, timestamp, body, signature)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_delivery_signed_wrongly_is_refused_and_not_counted() {
        let receiver = Receiver::start("127.0.0.1:0", None).unwrap();
        let secret = signing::generate_secret();
        receiver.set_secret(&secret).unwrap();
        let key = signing::key(&secret).unwrap();
        let other = signing::key(&signing::generate_secret()).unwrap();
        let body = br#"{"id":"e1","event":"jira:issue_created"}"#;
        let timestamp = chrono::Utc::now().timestamp();
        let post = |key: &[u8]| {
            reqwest::Client::new()
                .post(&receiver.url)
                .header("webhook-id", "msg_1")
                .header("webhook-timestamp", timestamp.to_string())
                .header(
                    "webhook-signature",
                    signing::sign(key, "msg_1", timestamp, body),
                )
                .body(body.to_vec())
                .send()
        };
        let ids = ["e1".to_string()];
        assert_eq!(post(&other).await.unwrap().status(), 401);
        assert_eq!(
            receiver.missing(&ids).len(),
            1,
            "a forged delivery is not one"
        );
        assert_eq!(post(&key).await.unwrap().status(), 204);
        assert!(receiver.missing(&ids).is_empty());
        receiver.stop().await;
    }
}
