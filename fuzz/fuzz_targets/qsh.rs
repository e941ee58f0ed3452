//! The qsh canonicaliser on any request line: never panics, always yields a
//! SHA-256 hex hash, and its canonical query is a fixed point (canonicalising
//! it again changes nothing), so two spellings of one query hash alike. (Not
//! when a key repeats: its values are joined with `,`, which a second pass
//! reads as one value.)
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/auth/qsh.rs"]
#[allow(dead_code)]
mod qsh;

fuzz_target!(|input: &str| {
    let (path, query) = input.split_once('?').unwrap_or((input, ""));
    let canonical = qsh::canonical_request("GET", path, query, "");
    let hash = qsh::query_string_hash(&canonical);
    assert_eq!(hash.len(), 64);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
    let with_context = qsh::canonical_request("POST", path, query, "/ctx");
    assert!(with_context.starts_with("POST&"));

    let fixed = qsh::canonical_request("GET", "/", query, "");
    let canonical_query = fixed.splitn(3, '&').nth(2).unwrap_or_default();
    if !canonical_query.contains(',') {
        let again = qsh::canonical_request("GET", "/", canonical_query, "");
        assert_eq!(fixed, again, "canonical query is not a fixed point");
    }
});
