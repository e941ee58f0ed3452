//! The query string hash: Atlassian's canonical form of a request and its SHA-256.
//!
//! The canonical request is `METHOD&path&query` where
//! - `METHOD` is upper case;
//! - `path` is the raw request path with the app's context path removed (by whole
//!   segments), `/` when empty, without a trailing slash, and with `&` written `%26`;
//! - `query` is every parameter except `jwt`, decoded form-style (`+` is a space),
//!   re-encoded per RFC 3986 (only `A-Za-z0-9-._~` left bare), values of a repeated
//!   key sorted (decoded) and joined with `,`, and keys sorted by their encoded form.
//!
//! The rules and the vectors in `tests/fixtures/` come from Atlassian's
//! "Understanding JWT for Connect apps" and its signing interoperability tests.

use percent_encoding::{percent_decode, percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

/// Everything but RFC 3986's unreserved characters is encoded.
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The canonical request string for `method`, the raw `path` (as it arrived, not
/// percent-decoded) and the raw `query` (without the leading `?`).
pub fn canonical_request(method: &str, path: &str, query: &str, context_path: &str) -> String {
    format!(
        "{}&{}&{}",
        method.to_ascii_uppercase(),
        canonical_path(path, context_path),
        canonical_query(query)
    )
}

/// The hex SHA-256 of the canonical request, as carried in the `qsh` claim.
pub fn query_string_hash(canonical: &str) -> String {
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

fn canonical_path(path: &str, context_path: &str) -> String {
    let path = strip_context_path(path, context_path);
    let trimmed = path.trim_end_matches('/');
    let path = if trimmed.is_empty() { "/" } else { trimmed };
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    path.replace('&', "%26")
}

/// Removes `context_path` from the front of `path` only at a segment boundary:
/// `/relay` is stripped from `/relay/x` and `/relay`, not from `/relayx`.
pub fn strip_context_path<'a>(path: &'a str, context_path: &str) -> &'a str {
    let context = context_path.trim_end_matches('/');
    if context.is_empty() {
        return path;
    }
    match path.strip_prefix(context) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => path,
    }
}

fn canonical_query(query: &str) -> String {
    let mut params: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for (key, value) in form_pairs(query) {
        if key == b"jwt" {
            continue;
        }
        let key = encode(&key);
        match params.iter_mut().find(|(k, _)| *k == key) {
            Some((_, values)) => values.push(value),
            None => params.push((key, vec![value])),
        }
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    params
        .into_iter()
        .map(|(key, mut values)| {
            // Values sort by their decoded form (".1" before ":1", though "%3A1"
            // would sort before ".1"), as Atlassian's reference implementation does.
            values.sort();
            let values: Vec<String> = values.iter().map(|v| encode(v)).collect();
            format!("{key}={}", values.join(","))
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `application/x-www-form-urlencoded` pairs, decoded to bytes. Unlike a decoding
/// to text, invalid UTF-8 is kept as it came: `%FF` and `%FE` must not both turn
/// into U+FFFD, or a hash computed over one would accept the other.
fn form_pairs(query: &str) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) => (form_decode(key), form_decode(value)),
            None => (form_decode(pair), Vec::new()),
        })
}

fn form_decode(s: &str) -> Vec<u8> {
    let spaced: Vec<u8> = s
        .bytes()
        .map(|b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_decode(&spaced).collect()
}

fn encode(bytes: &[u8]) -> String {
    percent_encode(bytes, RFC3986).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_path_is_stripped_by_whole_segments() {
        assert_eq!(canonical_path("/relay/jira/x", "/relay"), "/jira/x");
        assert_eq!(canonical_path("/relay", "/relay"), "/");
        assert_eq!(canonical_path("/relayx/y", "/relay"), "/relayx/y");
        assert_eq!(canonical_path("/a&b/", ""), "/a%26b");
    }

    proptest::proptest! {
        /// Any input at all: no panic, and the canonical form has its three parts.
        #[test]
        fn never_panics(method in ".{0,8}", path in ".{0,64}", query in ".{0,128}", context in ".{0,16}") {
            let canonical = canonical_request(&method, &path, &query, &context);
            proptest::prop_assert!(canonical.matches('&').count() >= 2);
        }

        /// Parameter order does not matter, and `jwt` never counts.
        #[test]
        fn order_and_jwt_do_not_change_the_hash(
            mut params in proptest::collection::vec(("[a-z%+]{1,6}", "[a-zA-Z0-9 %+,.~*]{0,8}"), 0..6),
            jwt in "[A-Za-z0-9._-]{0,20}",
        ) {
            let join = |params: &[(String, String)]| {
                params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
            };
            let before = canonical_query(&join(&params));
            params.reverse();
            params.push(("jwt".into(), jwt));
            let after = canonical_query(&join(&params));
            proptest::prop_assert_eq!(before, after);
        }
    }

    #[test]
    fn invalid_utf8_is_kept_byte_for_byte() {
        assert_eq!(canonical_query("a=%FF"), "a=%FF");
        assert_ne!(canonical_query("a=%FF"), canonical_query("a=%FE"));
        assert_ne!(canonical_query("%FF=1"), canonical_query("%FE=1"));
        assert_eq!(canonical_query("a=%C3%A9+x"), "a=%C3%A9%20x");
    }

    #[test]
    fn repeated_keys_are_joined_sorted() {
        assert_eq!(canonical_query("b=2&a=z&a=y&jwt=t"), "a=y,z&b=2");
        assert_eq!(canonical_query(""), "");
    }
}
