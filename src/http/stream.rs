//! The live tail as Server-Sent Events: the admin API's `GET
//! /admin/api/v1/events/stream` and the inspector's tail page read it.
//!
//! Each event stored from the moment the stream opens is one SSE message
//! (`event: event`, `id:` the event id, `data:` the event as the admin API
//! shows it, payload included, on one line). A `:` comment goes out every
//! [`KEEP_ALIVE`] so proxies keep the connection open and a dead client is
//! found. A watcher that falls [`crate::feed::CAPACITY`] events behind, such
//! as a browser that stopped reading, gets `event: lagged` with the count it
//! missed and the stream ends: nothing is buffered for it beyond the feed's ring.
//! A stream opened by an inspector session gets `event: signed-out` and ends
//! when that session does.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::HttpResponse;
use serde::Deserialize;

use super::error::ApiError;
use super::AppState;
use crate::domain::{Event, Source};
use crate::feed::{Announced, Next, Watcher};
use crate::relay::matching;

const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The last message of a stream whose session ended.
const SIGNED_OUT: &[u8] = b"event: signed-out\ndata: {\"reason\":\"the session ended\"}\n\n";

/// The tail's filters, as query parameters.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TailQuery {
    /// An event name, or a pattern with `*`.
    pub event: Option<String>,
    /// A tenant's client key.
    pub tenant: Option<String>,
    /// connect, forge, jira-admin or webtrigger.
    #[param(pattern = "^(connect|forge|jira-admin|webtrigger)?$")]
    pub source: Option<String>,
}

/// Which events a tail shows.
#[derive(Default, Clone)]
pub(crate) struct Tail {
    event: Option<String>,
    tenant: Option<String>,
    source: Option<Source>,
}

impl TailQuery {
    pub(crate) fn tail(self) -> Result<Tail, ApiError> {
        let given = |v: Option<String>| v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let event = given(self.event);
        if event
            .as_deref()
            .is_some_and(|e| !matching::valid_pattern(e))
        {
            return Err(ApiError::BadRequest(
                "event must be an event name, with `*` for any run of characters".into(),
            ));
        }
        let source = given(self.source)
            .map(|s| {
                Source::parse(&s).ok_or_else(|| {
                    ApiError::BadRequest(
                        "source must be connect, forge, jira-admin or webtrigger".into(),
                    )
                })
            })
            .transpose()?;
        Ok(Tail {
            event,
            tenant: given(self.tenant),
            source,
        })
    }
}

impl Tail {
    pub(crate) fn shows(&self, event: &Event) -> bool {
        self.event
            .as_deref()
            .is_none_or(|p| matching::pattern_matches(p, &event.event))
            && self
                .tenant
                .as_deref()
                .is_none_or(|t| event.client_key.as_ref().is_some_and(|k| k.0 == t))
            && self.source.is_none_or(|s| s == event.source)
    }
}

/// The `200 text/event-stream` answer carrying `tail` from now on, until the
/// client leaves, falls behind, or `until` resolves (then a last
/// `signed-out` message says why it ended).
pub(crate) fn events(
    state: &AppState,
    tail: Tail,
    until: impl Future<Output = ()> + 'static,
) -> HttpResponse {
    // Watching starts before the answer's head goes out, so a client that has
    // the head sees every event stored after it.
    let watcher = state.publisher.feed().watch();
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(messages(watcher, tail, Box::pin(until)))
}

enum Step {
    Start,
    Watching,
    Done,
}

/// The stream's messages: what `watcher` gets that `tail` shows, keep-alives,
/// and a last message when it falls behind or `until` resolves.
fn messages(
    watcher: Watcher,
    tail: Tail,
    until: Pin<Box<dyn Future<Output = ()>>>,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    let keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    futures_util::stream::unfold(
        (Step::Start, watcher, tail, keep_alive, until),
        |(step, mut watcher, tail, mut keep_alive, mut until)| async move {
            let message = match step {
                Step::Done => return None,
                Step::Start => Bytes::from_static(b"retry: 3000\n: watching\n\n"),
                Step::Watching => loop {
                    tokio::select! {
                        next = watcher.next() => match next {
                            Next::Event(announced) if tail.shows(&announced.event) => match message(&announced) {
                                Some(m) => break m,
                                None => continue,
                            },
                            Next::Event(_) => continue,
                            Next::Lagged(missed) => {
                                tracing::info!(missed, "live tail fell behind: closing it");
                                let m = format!("event: lagged\ndata: {{\"missed\":{missed}}}\n\n");
                                return Some((Ok(Bytes::from(m)), (Step::Done, watcher, tail, keep_alive, until)));
                            }
                            Next::Closed => return None,
                        },
                        () = &mut until => {
                            tracing::info!("live tail's session ended: closing it");
                            let m = Bytes::from_static(SIGNED_OUT);
                            return Some((Ok(m), (Step::Done, watcher, tail, keep_alive, until)));
                        }
                        _ = keep_alive.tick() => break Bytes::from_static(b": keep-alive\n\n"),
                    }
                },
            };
            Some((
                Ok(message),
                (Step::Watching, watcher, tail, keep_alive, until),
            ))
        },
    )
}

/// One event's SSE message; `None` (logged) if its stored payload cannot be read.
fn message(announced: &Announced) -> Option<Bytes> {
    let event = &announced.event;
    let shown = super::admin::admin_event(event, !announced.payload_omitted).ok()?;
    // The payload is embedded as received; line breaks in JSON can only be
    // whitespace between tokens (inside strings they are escaped), so they
    // become spaces and the message keeps its one `data:` line.
    let data = if announced.payload_omitted {
        serde_json::to_value(&shown).map(|mut shown| {
            shown["payload_omitted"] = true.into();
            shown.to_string()
        })
    } else {
        serde_json::to_string(&shown)
    };
    let data = match data {
        Ok(data) if data.contains(['\n', '\r']) => data.replace(['\n', '\r'], " "),
        Ok(data) => data,
        Err(e) => {
            tracing::error!(event_id = %event.id, error = %e, "event cannot be shown in the tail");
            return None;
        }
    };
    Some(Bytes::from(format!(
        "event: event\nid: {}\ndata: {data}\n\n",
        event.id
    )))
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::domain::{ClientKey, EventId, Product};
    use crate::feed::{Feed, CAPACITY};

    fn event(name: &str) -> Event {
        Event {
            id: EventId::new(),
            source: Source::Connect,
            product: Some(Product::Jira),
            event: name.into(),
            source_event: None,
            client_key: Some(ClientKey("ck".into())),
            tenant_base_url: None,
            webhook_id: None,
            webhook_retry: None,
            webhook_flow: None,
            recovered: false,
            received_at: chrono::Utc::now(),
            payload: "{\n  \"n\": 1,\r\n  \"text\": \"two\\nlines\"\n}".into(),
        }
    }

    fn text(chunk: Option<Result<Bytes, actix_web::Error>>) -> String {
        String::from_utf8(chunk.expect("a message").expect("not an error").to_vec()).unwrap()
    }

    #[tokio::test]
    async fn shows_what_the_filters_let_through_and_drops_a_watcher_that_fell_behind() {
        let feed = Feed::new();
        let tail = TailQuery {
            event: Some("jira:issue_*".into()),
            ..TailQuery::default()
        }
        .tail()
        .unwrap();
        let mut stream = Box::pin(messages(
            feed.watch(),
            tail,
            Box::pin(std::future::pending()),
        ));
        assert!(text(stream.next().await).starts_with("retry:"));
        feed.announce(&event("jira:comment_created"));
        let shown = event("jira:issue_created");
        feed.announce(&shown);
        let message = text(stream.next().await);
        assert!(
            message.starts_with(&format!("event: event\nid: {}\ndata: {{", shown.id)),
            "{message}"
        );
        let data: serde_json::Value = serde_json::from_str(
            message
                .lines()
                .nth(2)
                .unwrap()
                .strip_prefix("data: ")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(data["event"], "jira:issue_created");
        assert_eq!(data["payload"]["n"], 1);
        assert_eq!(data["payload"]["text"], "two\nlines");
        assert!(message.ends_with("}\n\n"), "{message}");
        assert_eq!(
            message.trim_end().lines().count(),
            3,
            "one data line: {message}"
        );

        // A watcher that stops reading loses its place, is told, and is dropped.
        for _ in 0..CAPACITY + 7 {
            feed.announce(&event("jira:issue_updated"));
        }
        assert_eq!(
            text(stream.next().await),
            "event: lagged\ndata: {\"missed\":7}\n\n"
        );
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn payloads_a_slow_watcher_has_not_read_stay_within_the_budget() {
        let payload = event("jira:issue_created").payload;
        // Room for two payloads.
        let feed = Feed::with_budget(2 * payload.len() + 1);
        let mut stream = Box::pin(messages(
            feed.watch(),
            Tail::default(),
            Box::pin(std::future::pending()),
        ));
        text(stream.next().await);
        let events: Vec<Event> = (0..4).map(|_| event("jira:issue_created")).collect();
        for e in &events {
            feed.announce(e);
        }
        assert_eq!(
            feed.held_bytes(),
            2 * payload.len(),
            "two held, two left out"
        );
        let mut shown = Vec::new();
        for _ in &events {
            let message = text(stream.next().await);
            let data = message
                .lines()
                .nth(2)
                .unwrap()
                .strip_prefix("data: ")
                .unwrap();
            shown.push(serde_json::from_str::<serde_json::Value>(data).unwrap());
        }
        for (data, e) in shown.iter().zip(&events) {
            assert_eq!(data["id"], e.id.to_string());
        }
        assert_eq!(shown[0]["payload"]["n"], 1);
        assert_eq!(shown[1]["payload"]["n"], 1);
        for data in &shown[2..] {
            assert_eq!(data["payload_omitted"], true, "{data}");
            assert!(data["payload"].is_null(), "{data}");
            assert_eq!(data["event"], "jira:issue_created");
        }
        // Read, they are given back: the next one has its payload again.
        assert_eq!(feed.held_bytes(), 0);
        feed.announce(&events[0]);
        let message = text(stream.next().await);
        assert!(message.contains("\"payload\":{   \"n\": 1"), "{message}");
        assert!(!message.contains("payload_omitted"), "{message}");
    }

    #[tokio::test]
    async fn closing_the_feed_ends_every_stream() {
        let feed = Feed::new();
        let mut stream = Box::pin(messages(
            feed.watch(),
            Tail::default(),
            Box::pin(std::future::pending()),
        ));
        text(stream.next().await);
        feed.close();
        assert!(stream.next().await.is_none());
    }

    #[test]
    fn refuses_filters_it_cannot_apply() {
        for query in [
            TailQuery {
                source: Some("email".into()),
                ..TailQuery::default()
            },
            TailQuery {
                event: Some("jira issue".into()),
                ..TailQuery::default()
            },
        ] {
            assert!(query.tail().is_err());
        }
    }
}
