//! Connect JWTs: finding the token in a request, reading its claims before the key
//! is known, checking an HS256 signature, and the time and qsh claims.
//!
//! Signatures are checked by `jsonwebtoken` (constant-time HMAC, the algorithm
//! pinned by us, never taken from the token). Time claims are checked here against
//! a clock passed in, so that tests can verify old vectors with a fixed clock.

use std::collections::HashSet;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::qsh;
use super::AuthError;

/// The parts of an HTTP request that Connect authentication looks at.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The raw path, as it arrived (not percent-decoded).
    pub path: &'a str,
    /// The raw query string, without `?`; empty when there is none.
    pub query: &'a str,
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a str>,
    /// The TCP peer the request came from, for per-source budgets.
    pub peer: Option<std::net::IpAddr>,
}

impl SignedRequest<'_> {
    /// The token from `Authorization: JWT <token>` or, failing that, `?jwt=`.
    pub fn token(&self) -> Result<String, AuthError> {
        if let Some(header) = self.authorization {
            let header = header.trim();
            if let Some((scheme, token)) = header.split_once(' ') {
                if scheme.eq_ignore_ascii_case("JWT") && !token.trim().is_empty() {
                    return Ok(token.trim().to_string());
                }
            }
        }
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == "jwt")
            .map(|(_, v)| v.into_owned())
            .filter(|v| !v.is_empty())
            .ok_or(AuthError::MissingToken)
    }

    pub fn canonical(&self, context_path: &str) -> String {
        qsh::canonical_request(self.method, self.path, self.query, context_path)
    }
}

/// The claims Connect puts in its tokens. Unknown claims are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    pub iss: String,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub qsh: Option<String>,
    #[serde(default)]
    pub exp: Option<i64>,
    #[serde(default)]
    pub iat: Option<i64>,
    #[serde(default)]
    pub nbf: Option<i64>,
    /// A string or a list of strings.
    #[serde(default)]
    pub aud: Option<serde_json::Value>,
}

impl Claims {
    pub fn issued_at(&self) -> Option<DateTime<Utc>> {
        self.iat.and_then(|iat| DateTime::from_timestamp(iat, 0))
    }

    pub fn audiences(&self) -> Vec<&str> {
        match &self.aud {
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(|v| v.as_str()).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// The token's header fields that matter before verification.
#[derive(Debug, Clone, Deserialize)]
pub struct UnverifiedHeader {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
}

/// Reads header and claims without checking anything: only to learn which key
/// verifies the token (the tenant from `iss`, or the install key from `kid`).
pub fn peek(token: &str) -> Result<(UnverifiedHeader, Claims), AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("not three dot-separated parts"));
    };
    let header: UnverifiedHeader = decode_part(header)?;
    let claims: Claims = decode_part(claims)?;
    Ok((header, claims))
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed("a part is not base64url"))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed("a part is not the JSON expected"))
}

/// Checks the signature with `key` under exactly `alg`; any other algorithm named in
/// the header (including `none`) is refused.
pub fn verify_signature(
    token: &str,
    key: &DecodingKey,
    alg: Algorithm,
) -> Result<Claims, AuthError> {
    let mut validation = Validation::new(alg);
    // Time, audience and issuer are checked by us, against an injectable clock.
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<Claims>(token, key, &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm,
            jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::BadSignature,
            _ => AuthError::Malformed("token could not be decoded"),
        })
}

/// `exp` is required; `iat` and `nbf` are checked when present. All with `leeway`.
pub fn check_times(claims: &Claims, now: DateTime<Utc>, leeway: Duration) -> Result<(), AuthError> {
    let now = now.timestamp();
    let leeway = i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX);
    let exp = claims.exp.ok_or(AuthError::MissingClaim("exp"))?;
    if now > exp.saturating_add(leeway) {
        return Err(AuthError::Expired);
    }
    if let Some(iat) = claims.iat {
        if iat > now.saturating_add(leeway) {
            return Err(AuthError::NotYetValid("iat"));
        }
    }
    if let Some(nbf) = claims.nbf {
        if nbf > now.saturating_add(leeway) {
            return Err(AuthError::NotYetValid("nbf"));
        }
    }
    Ok(())
}

/// The `qsh` claim must be the hash of this request's canonical form.
pub fn check_qsh(
    claims: &Claims,
    request: &SignedRequest<'_>,
    context_path: &str,
) -> Result<(), AuthError> {
    let claimed = claims
        .qsh
        .as_deref()
        .ok_or(AuthError::MissingClaim("qsh"))?;
    let canonical = request.canonical(context_path);
    if qsh::query_string_hash(&canonical) == claimed {
        Ok(())
    } else {
        Err(AuthError::QshMismatch { canonical })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever arrives as a token or an Authorization header: no panic.
        #[test]
        fn reading_tokens_never_panics(token in ".{0,200}", header in ".{0,64}", query in ".{0,64}") {
            let _ = peek(&token);
            let request = SignedRequest { method: "POST", path: "/x", query: &query, authorization: Some(&header), peer: None };
            let _ = request.token();
            let claims = Claims { iss: token.clone(), sub: None, qsh: Some(token.clone()), exp: Some(i64::MAX), iat: Some(i64::MIN), nbf: None, aud: None };
            let _ = check_times(&claims, Utc::now(), Duration::from_secs(u64::MAX));
            let _ = check_qsh(&claims, &request, &header);
        }

        /// Base64url segments of arbitrary JSON-ish bytes: no panic either.
        #[test]
        fn peeking_at_encoded_garbage_never_panics(a in proptest::collection::vec(proptest::num::u8::ANY, 0..64), b in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let token = format!("{}.{}.sig", URL_SAFE_NO_PAD.encode(a), URL_SAFE_NO_PAD.encode(b));
            let _ = peek(&token);
        }
    }
}
