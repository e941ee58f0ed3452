//! Jira admin webhooks (Cloud and Data Center): a site admin points a webhook
//! at `/in/{id}` with a secret, and Jira signs each request with
//! `X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body>`.
//!
//! The header is checked for its form before the body is read; the digest is
//! compared in constant time against each of the source's secrets (several at
//! once, so that one can be rotated without losing events). Only `sha256=` is
//! accepted: `sha1=` and any other method are refused.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// Characters of a secret that name it in listings and in `remove_secret`.
pub const PREFIX_LEN: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no X-Hub-Signature header")]
    Missing,
    #[error("X-Hub-Signature must use sha256 (sha256=<hex>)")]
    Method,
    #[error("X-Hub-Signature digest is not 64 hex characters")]
    Digest,
    #[error("X-Hub-Signature does not match the body with any of this source's secrets")]
    Mismatch,
}

impl SignatureError {
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::Missing => "missing_signature",
            SignatureError::Method => "signature_method",
            SignatureError::Digest => "malformed_signature",
            SignatureError::Mismatch => "signature",
        }
    }
}

/// The digest an `X-Hub-Signature` header carries, checked for its form.
pub fn parse_signature(header: Option<&str>) -> Result<[u8; 32], SignatureError> {
    let header = header.map(str::trim).ok_or(SignatureError::Missing)?;
    let (method, digest) = header.split_once('=').ok_or(SignatureError::Method)?;
    if method != "sha256" {
        return Err(SignatureError::Method);
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(digest, &mut out).map_err(|_| SignatureError::Digest)?;
    Ok(out)
}

/// Whether `digest` is the HMAC-SHA256 of `body` under one of `secrets`; the
/// index of the secret that matched. Every secret is tried, each comparison in
/// constant time.
pub fn verify<'a>(
    digest: &[u8; 32],
    body: &[u8],
    secrets: impl IntoIterator<Item = &'a SecretString>,
) -> Result<usize, SignatureError> {
    let mut matched = None;
    for (i, secret) in secrets.into_iter().enumerate() {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(body);
        if mac.verify_slice(digest).is_ok() && matched.is_none() {
            matched = Some(i);
        }
    }
    matched.ok_or(SignatureError::Mismatch)
}

/// A new secret: 32 random bytes, hex (what Jira's secret field takes).
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Atlassian's documented example.
    const SECRET: &str = "It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello World!";
    const SIGNATURE: &str =
        "sha256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c9";

    #[test]
    fn atlassians_vector_verifies() {
        let digest = parse_signature(Some(SIGNATURE)).unwrap();
        let secrets = [SecretString::from("other"), SecretString::from(SECRET)];
        assert_eq!(verify(&digest, BODY, &secrets), Ok(1));
        assert_eq!(
            verify(&digest, b"Hello World?", &secrets),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&digest, BODY, &[SecretString::from("wrong")]),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn malformed_headers_are_refused_before_the_body() {
        assert_eq!(parse_signature(None), Err(SignatureError::Missing));
        for (header, err) in [
            ("a4771c39", SignatureError::Method),
            (
                "sha1=a4771c39fbe90f317c7824e83ddef3caae9cb3d9",
                SignatureError::Method,
            ),
            (
                "SHA256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c9",
                SignatureError::Method,
            ),
            ("sha512=00", SignatureError::Method),
            ("sha256=xyz", SignatureError::Digest),
            (
                "sha256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e13326",
                SignatureError::Digest,
            ),
            ("sha256=", SignatureError::Digest),
        ] {
            assert_eq!(parse_signature(Some(header)), Err(err), "{header}");
        }
    }
}
