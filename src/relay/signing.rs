//! Standard Webhooks signatures (README, "What a receiver gets"): the secret is
//! `whsec_<base64 key>`, and `webhook-signature` is `v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`. The MAC comes from RustCrypto's `hmac`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";
/// Key length of generated secrets, as Svix generates them.
const KEY_BYTES: usize = 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("a signing secret has the form whsec_<base64>")]
    Form,
    #[error("a signing secret's key must be 24 to 64 bytes")]
    Length,
}

/// A new random secret, in `whsec_` form.
pub fn generate_secret() -> String {
    let key: [u8; KEY_BYTES] = rand::random();
    format!("{PREFIX}{}", STANDARD.encode(key))
}

/// The HMAC key a `whsec_` secret stands for.
pub fn key(secret: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = secret.strip_prefix(PREFIX).ok_or(SecretError::Form)?;
    let key = STANDARD.decode(encoded).map_err(|_| SecretError::Form)?;
    if !(KEY_BYTES..=64).contains(&key.len()) {
        return Err(SecretError::Length);
    }
    Ok(key)
}

/// The MAC of one message, `{id}.{timestamp}.{body}`, not yet finalized.
fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` header value for one message.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(key, id, timestamp, body).finalize().into_bytes();
    format!("v1,{}", STANDARD.encode(tag))
}

/// Whether `header` (a `webhook-signature` value: space-separated
/// `v1,<base64>` entries) holds a valid signature of the message. Each entry is
/// compared in constant time by the MAC itself.
pub fn verify(key: &[u8], id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let mut valid = false;
    for entry in header.split(' ') {
        let Some(encoded) = entry.strip_prefix("v1,") else {
            continue;
        };
        let Ok(given) = STANDARD.decode(encoded) else {
            continue;
        };
        valid |= mac(key, id, timestamp, body).verify_slice(&given).is_ok();
    }
    valid
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks reference vector (also Svix's).
    #[test]
    fn reference_vector() {
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let body = br#"{"test": 2432232314}"#;
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert!(verify(&key, id, 1614265330, body, good));
        assert!(verify(
            &key,
            id,
            1614265330,
            body,
            &format!("v1,AAAA {good}")
        ));
        assert!(!verify(&key, id, 1614265331, body, good));
        assert!(!verify(&key, id, 1614265330, b"{}", good));
        assert!(!verify(&key, id, 1614265330, body, "v1a,abc"));
        assert!(!verify(&key, id, 1614265330, body, ""));
    }

    #[test]
    fn secrets_round_trip_and_are_checked() {
        let secret = generate_secret();
        assert!(secret.starts_with("whsec_"));
        assert_eq!(key(&secret).unwrap().len(), KEY_BYTES);
        assert_ne!(generate_secret(), secret);
        assert_eq!(
            key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::Form)
        );
        assert_eq!(key("whsec_not base64!"), Err(SecretError::Form));
        assert_eq!(key("whsec_c2hvcnQ="), Err(SecretError::Length));
    }
}
