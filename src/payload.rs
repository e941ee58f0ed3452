//! What a payload is: the one definition intake checks and every later stage
//! relies on.
//!
//! A payload is UTF-8 JSON (RFC 8259) that
//! - nests arrays and objects at most [`MAX_DEPTH`] levels deep,
//! - has no string escape that is not a Unicode scalar value (a lone surrogate
//!   such as `"\ud800"`), and
//! - has no number outside the range of a 64-bit float (such as `1e400`), and
//! - has no object key `$serde_json::private::RawValue`: serde_json (and so the
//!   relay's filters) reads an object with that key as something else, or not
//!   at all. (Found by the `body` fuzz target.)
//!
//! Anything else is refused at intake, so a stored payload can always be read
//! back by the relay, by the admin API and by any JSON library a consumer uses.
//! The payload is stored and relayed verbatim; the check never rewrites it.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of arrays and objects accepted: `[[1]]` is two levels.
pub const MAX_DEPTH: usize = 64;

/// The key serde_json's `raw_value` feature reserves for itself.
pub const RESERVED_KEY: &str = "$serde_json::private::RawValue";

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not UTF-8 JSON")]
    NotUtf8,
    #[error("body nests arrays or objects deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("body uses the object key `{RESERVED_KEY}`, which JSON readers treat specially")]
    ReservedKey,
    #[error("body is not JSON: {0}")]
    NotJson(String),
}

/// Checks that `body` is a payload, and returns it as text.
pub fn accept(body: &[u8]) -> Result<&str, PayloadError> {
    let text = std::str::from_utf8(body).map_err(|_| PayloadError::NotUtf8)?;
    check(text)?;
    Ok(text)
}

/// Checks that `text` is a payload.
pub fn check(text: &str) -> Result<(), PayloadError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let too_deep = Cell::new(false);
    let reserved = Cell::new(false);
    let result = Depth {
        left: MAX_DEPTH,
        too_deep: &too_deep,
        reserved: &reserved,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match result {
        Ok(()) => Ok(()),
        Err(_) if too_deep.get() => Err(PayloadError::TooDeep),
        Err(_) if reserved.get() => Err(PayloadError::ReservedKey),
        Err(e) => Err(PayloadError::NotJson(e.to_string())),
    }
}

/// Walks one value, allowing `left` more levels of nesting. Strings and
/// numbers go through serde_json's own validating readers: `deserialize_any`
/// refuses lone surrogates and numbers out of float range.
#[derive(Clone, Copy)]
struct Depth<'a> {
    left: usize,
    too_deep: &'a Cell<bool>,
    reserved: &'a Cell<bool>,
}

impl Depth<'_> {
    /// The walker for the values inside an array or object.
    fn enter<E: serde::de::Error>(self) -> Result<Self, E> {
        if self.left == 0 {
            self.too_deep.set(true);
            return Err(E::custom("nested too deep"));
        }
        Ok(Depth {
            left: self.left - 1,
            ..self
        })
    }
}

impl<'de> DeserializeSeed<'de> for Depth<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Depth<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.enter()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.enter()?;
        // Keys are strings, read (and validated) like any other string.
        while let Some(KeyText(reserved)) = map.next_key::<KeyText>()? {
            if reserved {
                inner.reserved.set(true);
                return Err(serde::de::Error::custom("reserved key"));
            }
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// An object key, read through the validating string reader: whether it is
/// the reserved one.
struct KeyText(bool);

impl<'de> serde::Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, key: &str) -> Result<KeyText, E> {
                Ok(KeyText(key == RESERVED_KEY))
            }
        }
        deserializer.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    fn nested_objects(depth: usize) -> String {
        format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
    }

    #[test]
    fn accepts_json_up_to_the_nesting_limit() {
        for ok in [
            "{}",
            "[]",
            "1",
            "\"x\"",
            "null",
            r#"{"a": [1, 2.5, -3e10, true, null, "\ud83d\ude00"]}"#,
            "1e308",
            "-0",
            "18446744073709551615",
            "123456789012345678901234567890",
            " {\"b\":1} \n",
        ] {
            check(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        check(&nested(MAX_DEPTH)).unwrap();
        check(&nested_objects(MAX_DEPTH)).unwrap();
    }

    #[test]
    fn refuses_what_a_later_reader_cannot_carry() {
        assert!(matches!(
            check(&nested(MAX_DEPTH + 1)),
            Err(PayloadError::TooDeep)
        ));
        assert!(matches!(
            check(&nested_objects(MAX_DEPTH + 1)),
            Err(PayloadError::TooDeep)
        ));
        assert!(matches!(check(&nested(127)), Err(PayloadError::TooDeep)));
        assert!(matches!(
            check(&nested(100_000)),
            Err(PayloadError::TooDeep)
        ));
        for bad in [
            r#""\ud800""#,
            r#"{"\udc00": 1}"#,
            r#"["\ud800\u0041"]"#,
            "1e400",
            "-1e400",
            "[1e999]",
            "",
            "{",
            "{} {}",
            "[1,]",
            "NaN",
            "{'a':1}",
        ] {
            assert!(
                matches!(check(bad), Err(PayloadError::NotJson(_))),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(accept(b"\"\xff\""), Err(PayloadError::NotUtf8)));
        // The fuzzer's find: accepted, then unreadable by serde_json as a value.
        for reserved in [
            r#"{"$serde_json::private::RawValue":1}"#,
            r#"[{"a":{"$serde_json::private::RawValue":"[1]"}}]"#,
        ] {
            assert!(
                matches!(check(reserved), Err(PayloadError::ReservedKey)),
                "{reserved}"
            );
        }
    }

    /// Whatever `check` accepts, serde_json reads back as a value, also when
    /// wrapped one level deeper in an envelope.
    #[test]
    fn accepted_payloads_read_back_inside_an_envelope() {
        for ok in [nested(MAX_DEPTH), nested_objects(MAX_DEPTH), "1e308".into()] {
            check(&ok).unwrap();
            let envelope = format!(r#"{{"payload":{ok}}}"#);
            serde_json::from_str::<serde_json::Value>(&envelope).unwrap();
        }
    }
}
