//! The envelope around any accepted payload, with any event name and client
//! key: it is JSON, carries the payload byte for byte, and the relay's matcher
//! reads its name and tenant back.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/domain.rs"]
#[allow(dead_code)]
mod domain;
#[path = "../../src/relay/matching.rs"]
#[allow(dead_code)]
mod matching;
#[path = "../../src/payload.rs"]
#[allow(dead_code)]
mod payload;

use domain::{ClientKey, Event, EventId, Product, Source};

fuzz_target!(|input: &str| {
    let mut parts = input.splitn(3, '\u{0}');
    let (name, key, body) = match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(key), Some(body)) => (name, key, body),
        _ => return,
    };
    if payload::check(body).is_err() {
        return;
    }
    let event = Event {
        id: EventId::new(),
        source: Source::Connect,
        product: Some(Product::Jira),
        event: name.to_string(),
        source_event: None,
        client_key: Some(ClientKey(key.to_string())),
        tenant_base_url: None,
        webhook_id: None,
        webhook_retry: None,
        webhook_flow: None,
        recovered: false,
        received_at: domain::now_millis(),
        payload: body.to_string(),
    };
    let json = event.envelope_json();
    assert!(json.ends_with(&format!("\"payload\":{body}}}")));
    let value: serde_json::Value = serde_json::from_str(&json).expect("the envelope is JSON");
    assert_eq!(value["event"], name);
    assert_eq!(value["source_event"], name);
    assert_eq!(value["tenant"]["client_key"], key);
    let candidate = matching::Candidate::new(&json).expect("the matcher reads it");
    let _ = candidate;
    let _ = event.routing_key();
});
