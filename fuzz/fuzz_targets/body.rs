//! Body acceptance on any bytes: intake accepts exactly what serde_json reads
//! back as a value nested at most `MAX_DEPTH` deep, so nothing accepted can be
//! unreadable later, and nothing readable within the limit is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/payload.rs"]
mod payload;

fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fuzz_target!(|bytes: &[u8]| {
    let accepted = payload::accept(bytes);
    let readable = std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok());
    match (&accepted, &readable) {
        (Ok(text), Some(value)) => {
            assert!(depth(value) <= payload::MAX_DEPTH);
            // One level deeper, inside an envelope, it still reads.
            let envelope = format!(r#"{{"id":1,"payload":{text}}}"#);
            let wrapped: serde_json::Value = serde_json::from_str(&envelope).unwrap();
            assert_eq!(&wrapped["payload"], value);
        }
        (Ok(text), None) => panic!("accepted but unreadable: {text:?}"),
        (Err(payload::PayloadError::TooDeep), Some(value)) => {
            assert!(depth(value) > payload::MAX_DEPTH)
        }
        // serde_json reads such an object as something else: refused on purpose.
        (Err(payload::PayloadError::ReservedKey), _) => {
            assert!(std::str::from_utf8(bytes)
                .unwrap()
                .contains(payload::RESERVED_KEY))
        }
        (Err(e), Some(value)) => {
            panic!("refused ({e}) but readable at depth {}", depth(value))
        }
        (Err(_), None) => {}
    }
});
