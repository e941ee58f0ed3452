//! Atlassian's qsh and JWT interoperability vectors (tests/fixtures/, copied from
//! Atlassian's published test vectors), checked against hookrelay's canonicaliser and verifier with a
//! clock fixed at each token's `iat`.

use std::time::Duration;

use chrono::DateTime;
use hookrelay::auth::jwt::{self, SignedRequest};
use hookrelay::auth::qsh::{canonical_request, query_string_hash};
use hookrelay::auth::AuthError;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use crate::helpers::fixture;

#[test]
fn qsh_vectors() {
    let vectors: Vec<Value> = serde_json::from_str(&fixture("qsh-vectors.json")).unwrap();
    assert!(vectors.len() >= 10);
    for v in &vectors {
        let context = url::Url::parse(v["base_url"].as_str().unwrap()).unwrap();
        let context = context.path().trim_end_matches('/');
        let canonical = canonical_request(
            v["method"].as_str().unwrap(),
            v["path"].as_str().unwrap(),
            v["query"].as_str().unwrap(),
            context,
        );
        assert_eq!(canonical, v["canonical"].as_str().unwrap(), "vector {v}");
        assert_eq!(
            query_string_hash(&canonical),
            v["qsh"].as_str().unwrap(),
            "vector {v}"
        );
    }
}

#[test]
fn connect_interop_vectors() {
    let doc: Value = serde_json::from_str(&fixture("connect-jwt-interop.json")).unwrap();
    let secret = doc["secret"].as_str().unwrap();
    let key = DecodingKey::from_secret(secret.as_bytes());
    let tests = doc["tests"].as_array().unwrap();
    assert!(tests.len() > 50);
    for t in tests {
        let name = t["name"].as_str().unwrap();
        let url = t["signedUrl"].as_str().unwrap();
        let rest = url.strip_prefix("https://example.com").unwrap();
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let context = t["addonBaseUrl"].as_str().unwrap_or("");
        let request = SignedRequest {
            method: "GET",
            path,
            query,
            authorization: None,
            peer: None,
        };

        assert_eq!(
            request.canonical(context),
            t["canonicalUrl"].as_str().unwrap(),
            "{name}"
        );
        let token = request.token().unwrap();
        let claims = jwt::verify_signature(&token, &key, Algorithm::HS256)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let issued = DateTime::from_timestamp(claims.iat.unwrap(), 0).unwrap();
        jwt::check_times(&claims, issued, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        jwt::check_qsh(&claims, &request, context).unwrap_or_else(|e| panic!("{name}: {e}"));

        // The same token is refused with the real clock (it expired in 2014), with
        // another secret, and for another request.
        let now = chrono::Utc::now();
        assert!(matches!(
            jwt::check_times(&claims, now, Duration::from_secs(30)),
            Err(AuthError::Expired)
        ));
        let wrong = DecodingKey::from_secret(b"another secret");
        assert!(matches!(
            jwt::verify_signature(&token, &wrong, Algorithm::HS256),
            Err(AuthError::BadSignature)
        ));
        let other = SignedRequest {
            path: "/other",
            ..request
        };
        assert!(
            matches!(
                jwt::check_qsh(&claims, &other, context),
                Err(AuthError::QshMismatch { .. })
            ),
            "{name}"
        );
    }
}

#[test]
fn algorithms_other_than_hs256_are_refused() {
    let key = DecodingKey::from_secret(b"s0m3-sh@r3d-s3cr37");
    // alg "none", unsigned.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJpc3MiOiJ4IiwiZXhwIjo0MTAyNDQ0ODAwfQ.";
    assert!(jwt::verify_signature(none, &key, Algorithm::HS256).is_err());
    // HS512 with the right secret is still refused.
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS512),
        &serde_json::json!({"iss": "x", "exp": 4102444800u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"s0m3-sh@r3d-s3cr37"),
    )
    .unwrap();
    assert!(matches!(
        jwt::verify_signature(&hs512, &key, Algorithm::HS256),
        Err(AuthError::WrongAlgorithm)
    ));
}
