//! Token reading on any input: the token extractor (header or `jwt=`), the
//! unverified peek, signature verification and the time and qsh checks never
//! panic, and nothing unsigned verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// `jwt.rs` names its errors `super::AuthError`; these are the same variants,
/// defined here so that the target needs none of the service's store code.
#[derive(Debug, thiserror::Error)]
#[allow(dead_code)]
pub enum AuthError {
    #[error("missing token")]
    MissingToken,
    #[error("malformed: {0}")]
    Malformed(&'static str),
    #[error("algorithm")]
    WrongAlgorithm,
    #[error("signature")]
    BadSignature,
    #[error("expired")]
    Expired,
    #[error("not yet valid: {0}")]
    NotYetValid(&'static str),
    #[error("missing claim: {0}")]
    MissingClaim(&'static str),
    #[error("qsh")]
    QshMismatch { canonical: String },
}

#[path = "../../src/auth/jwt.rs"]
#[allow(dead_code)]
mod jwt;
#[path = "../../src/auth/qsh.rs"]
#[allow(dead_code)]
mod qsh;

use jwt::SignedRequest;

fuzz_target!(|input: &str| {
    let (authorization, query) = input.split_once('\n').unwrap_or((input, ""));
    let request = SignedRequest {
        method: "POST",
        path: "/jira/events/x",
        query,
        authorization: Some(authorization),
        peer: None,
    };
    let Ok(token) = request.token() else { return };
    if let Ok((_, claims)) = jwt::peek(&token) {
        let _ = jwt::check_times(
            &claims,
            chrono::Utc::now(),
            std::time::Duration::from_secs(30),
        );
        let _ = jwt::check_qsh(&claims, &request, "");
        let _ = claims.audiences();
    }
    let key = jsonwebtoken::DecodingKey::from_secret(b"fuzzing-secret-fuzzing-secret");
    for algorithm in [
        jsonwebtoken::Algorithm::HS256,
        jsonwebtoken::Algorithm::RS256,
    ] {
        if let Ok(claims) = jwt::verify_signature(&token, &key, algorithm) {
            // Only a token really signed with the key can get here, which a
            // fuzzer will not forge; if it does, that is the finding.
            panic!("a fuzzed token verified: {token} ({claims:?})");
        }
    }
});
