//! The sources beside Connect: Forge Remote events (a JWKS server and a Forge
//! token minter with RSA keys made here), Jira admin webhooks signed with
//! `X-Hub-Signature`, and one subscription receiving the same event name from
//! Connect, Forge and an admin webhook, through both brokers.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use hookrelay::config::RawConfig;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::both_backends;
use crate::helpers::*;
use crate::publishing::on_rabbitmq;
use crate::rabbit::{amqp_url, delete_topology, test_exchange, Consumer};
use crate::receiver::{verify, Receiver};
use crate::relay::{relaying, AdminApi, TOKEN};

pub(crate) const APP_ID: &str = "ari:cloud:ecosystem::app/6f2a8c3e-2b4d-4e0c-9a55-0c1f5d7e8a90";
const OTHER_APP: &str = "ari:cloud:ecosystem::app/00000000-0000-4000-8000-000000000000";
pub(crate) const INSTALLATION: &str =
    "ari:cloud:ecosystem::installation/1b4c8a12-7d3e-4f60-8d2a-5e9b0c1d2e3f";
pub(crate) const CLOUD_ID: &str = "5c2ed6a0-1d2e-4c3b-9a8f-7e6d5c4b3a21";

/// An RSA key made by the test, with its `kid`.
pub(crate) struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    pub(crate) fn new(kid: &str) -> Self {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let pem = private.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap();
        let public = private.to_public_key();
        SigningKey {
            kid: kid.to_string(),
            encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            jwk: json!({
                "kty": "RSA",
                "kid": kid,
                "alg": "RS256",
                "use": "sig",
                "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            }),
        }
    }

    pub(crate) fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// Serves a JWKS made of `keys` at `path` of `server`.
pub(crate) fn publish_jwks(server: &DocServer, path: &str, keys: &[&SigningKey]) {
    let doc = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    server.publish(path, "application/json", doc.to_string());
}

/// A Forge app installed on a site: a JWKS with its key, and a token minter.
struct Forge {
    jwks: DocServer,
    key: SigningKey,
}

impl Forge {
    async fn start() -> Self {
        let jwks = DocServer::start().await;
        let key = SigningKey::new("forge-key-1");
        publish_jwks(&jwks, "/.well-known/jwks.json", &[&key]);
        Forge { jwks, key }
    }

    /// Settings that trust this Forge app; also the admin API and relay.
    fn configure(&self, raw: &mut RawConfig) {
        relaying(raw);
        raw.forge_app_ids = vec![APP_ID.into()];
        raw.forge_jwks_url = format!("{}/.well-known/jwks.json", self.jwks.url);
        raw.forge_jwks_refetch_interval = "200ms".into();
    }

    /// The claims of a good invocation token, issued now.
    fn claims(&self) -> Value {
        let now = now();
        json!({
            "iss": "forge/invocation-token",
            "aud": APP_ID,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": uuid::Uuid::new_v4().to_string(),
            "app": {
                "id": APP_ID,
                "installationId": INSTALLATION,
                "apiBaseUrl": format!("https://api.atlassian.com/ex/jira/{CLOUD_ID}"),
                "appVersion": "2.0.0",
                "environment": {"type": "PRODUCTION", "id": "ari:cloud:ecosystem::environment/x"},
                "module": {"type": "core:endpoint", "key": "hookrelay-endpoint"},
            },
            "context": {"cloudId": CLOUD_ID, "siteUrl": "https://acme.atlassian.net"},
            "principal": "557058:f0000000-0000-0000-0000-000000000000",
        })
    }

    fn token(&self) -> String {
        self.key.sign(&self.claims())
    }
}

fn forge_body(event_type: &str, issue_key: &str) -> Value {
    json!({"payload": {
        "eventType": event_type,
        "atlassianId": "557058:f0000000",
        "issue": {"id": "10001", "key": issue_key, "fields": {"summary": "From Forge"}},
        "context": {"cloudId": CLOUD_ID, "moduleKey": "hookrelay-jira-events"},
    }})
}

async fn post_forge(app: &TestApp, authorization: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = app.client.post(app.url("/forge/events")).json(body);
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    request.send().await.unwrap()
}

async fn stored_events(app: &TestApp) -> Vec<Value> {
    let admin = AdminApi::of(&app.address);
    admin.get("/events?limit=100").await["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn tenants(app: &TestApp) -> Vec<Value> {
    let admin = AdminApi::of(&app.address);
    admin.get("/tenants").await["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

both_backends!(
    forge_events_are_verified_stored_once_and_named_like_connect,
    forge_tokens_that_fail_any_rule_are_refused_and_store_nothing,
    forge_lifecycle_events_move_the_installation_state,
    admin_webhooks_are_verified_by_x_hub_signature,
    a_store_outage_answers_503_and_the_retry_is_stored_once,
    one_subscription_gets_jira_issue_created_from_every_source
);

/// A verified Forge event is stored under its installation with the Connect
/// name, the Forge name in `source_event`, the payload as sent; a Forge retry
/// is answered 2xx and stored once; the app system token is kept but never
/// read back through the API.
async fn forge_events_are_verified_stored_once_and_named_like_connect(backend: Backend) {
    let forge = Forge::start().await;
    let app = spawn_app_with(backend, |raw| forge.configure(raw)).await;
    let body = forge_body("avi:jira:created:issue", "ACME-1");
    let system_token = "system-token-not-for-logs-0123456789";
    let token = forge.token();
    let response = app
        .client
        .post(app.url("/forge/events"))
        .header("Authorization", format!("Bearer {token}"))
        .header("x-forge-oauth-system", system_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first: Value = response.json().await.unwrap();
    assert_eq!(first["duplicate"], false);

    // Forge's retry: the same payload with retryContext, and a new token.
    let mut retry = body.clone();
    retry["payload"]["retryContext"] = json!({"retryCount": 1, "retryReason": "TIMEOUT"});
    let response = post_forge(&app, Some(&format!("Bearer {}", forge.token())), &retry).await;
    assert_eq!(response.status(), 200);
    let again: Value = response.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["duplicate"], true);

    // The first token again: with its own event, a duplicate; with another
    // body (the token does not cover it), refused.
    let response = app
        .client
        .post(app.url("/forge/events"))
        .header("Authorization", format!("Bearer {token}"))
        .header("x-forge-oauth-system", "planted-by-a-replay")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let replayed: Value = response.json().await.unwrap();
    assert_eq!(replayed["id"], first["id"]);
    let forged = forge_body("avi:jira:deleted:issue", "ACME-666");
    let response = post_forge(&app, Some(&format!("Bearer {token}")), &forged).await;
    assert_eq!(response.status(), 401);
    let error = error_body(response).await;
    assert!(
        error["detail"].as_str().unwrap().contains("already used"),
        "{error}"
    );

    let events = stored_events(&app).await;
    assert_eq!(events.len(), 1, "stored once: {events:#?}");
    let admin = AdminApi::of(&app.address);
    let event = admin
        .get(&format!("/events/{}", first["id"].as_str().unwrap()))
        .await;
    let envelope = event.get("envelope").unwrap_or(&event);
    assert_eq!(envelope["source"], "forge");
    assert_eq!(envelope["event"], "jira:issue_created");
    assert_eq!(envelope["source_event"], "avi:jira:created:issue");
    assert_eq!(envelope["product"], "jira");
    assert_eq!(envelope["tenant"]["client_key"], INSTALLATION);
    assert_eq!(envelope["payload"], body["payload"]);

    let listed = tenants(&app).await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["kind"], "forge");
    assert_eq!(listed[0]["client_key"], INSTALLATION);
    assert_eq!(listed[0]["cloud_id"], CLOUD_ID);
    assert_eq!(listed[0]["state"], "installed");
    assert_eq!(listed[0]["base_url"], "https://acme.atlassian.net");

    let (kept, _) = app
        .store
        .forge_token(&hookrelay::domain::ClientKey(INSTALLATION.into()))
        .await
        .unwrap()
        .expect("the app system token is kept");
    assert_eq!(secrecy::ExposeSecret::expose_secret(&kept), system_token);
    for path in ["/tenants", "/events?limit=100"] {
        let text = admin.get(path).await.to_string();
        assert!(!text.contains(system_token), "{path} shows the token");
    }

    // The installation has no shared secret: an HS256 token with an empty key
    // naming it is not a Connect tenant's token.
    let path = "/jira/events/jira:issue_created";
    let empty_key = hs256(
        "",
        json!({"iss": INSTALLATION, "iat": now(), "exp": now() + 60, "qsh": simple_qsh("POST", path)}),
    );
    let response = app
        .webhook_with_token(path, Some(&empty_key), "{}", &[])
        .await;
    assert_eq!(response.status(), 401);
    // Nor can a Connect install take over the installation's key.
    let site = Site {
        client_key: INSTALLATION.into(),
        ..Site::new("jira")
    };
    app.install(&site).await;
    let response = app.webhook(&site, "jira:issue_created", "{}", &[]).await;
    assert_eq!(response.status(), 401);
    let listed = tenants(&app).await;
    assert_eq!(
        (listed.len(), listed[0]["kind"].as_str()),
        (1, Some("forge"))
    );
    assert_eq!(stored_events(&app).await.len(), 1);
}

/// Each rule of the token, broken one at a time: 401 with the JSON error
/// shape, and nothing stored (no event, no tenant).
async fn forge_tokens_that_fail_any_rule_are_refused_and_store_nothing(backend: Backend) {
    let forge = Forge::start().await;
    let app = spawn_app_with(backend, |raw| forge.configure(raw)).await;
    let body = forge_body("avi:jira:created:issue", "ACME-2");
    let other_key = SigningKey::new(&forge.key.kid);
    let good = forge.claims();
    let with = |path: &[&str], value: Value| {
        let mut claims = good.clone();
        let mut at = &mut claims;
        for part in &path[..path.len() - 1] {
            at = &mut at[*part];
        }
        at[path[path.len() - 1]] = value;
        claims
    };
    let without = |path: &[&str]| {
        let mut claims = good.clone();
        let mut at = &mut claims;
        for part in &path[..path.len() - 1] {
            at = &mut at[*part];
        }
        at.as_object_mut().unwrap().remove(path[path.len() - 1]);
        claims
    };
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(b"guess"),
    )
    .unwrap();
    let no_kid =
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &good, &forge.key.encoding).unwrap();
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"forge-key-1"}"#),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    let unknown_kid = SigningKey::new("made-up-kid").sign(&good);
    // One character of the signature changed (still base64url).
    let mut tampered: Vec<char> = forge.token().chars().collect();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    let now = now();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("Basic scheme", Some("Basic dXNlcjpwYXNz".into())),
        ("JWT scheme", Some(format!("JWT {}", forge.token()))),
        ("not a JWT", Some("Bearer not-a-token".into())),
        ("HS256", Some(format!("Bearer {hs256}"))),
        ("alg none", Some(format!("Bearer {unsigned}"))),
        ("no kid", Some(format!("Bearer {no_kid}"))),
        ("unknown kid", Some(format!("Bearer {unknown_kid}"))),
        (
            "signed by another key",
            Some(format!("Bearer {}", other_key.sign(&good))),
        ),
        ("tampered signature", Some(format!("Bearer {tampered}"))),
        (
            "wrong iss",
            Some(bearer(&forge, with(&["iss"], json!("someone-else")))),
        ),
        (
            "aud of another app",
            Some(bearer(&forge, with(&["aud"], json!(OTHER_APP)))),
        ),
        (
            "app.id not aud",
            Some(bearer(&forge, with(&["app", "id"], json!(OTHER_APP)))),
        ),
        (
            "no installationId",
            Some(bearer(&forge, without(&["app", "installationId"]))),
        ),
        ("no iat", Some(bearer(&forge, without(&["iat"])))),
        ("no nbf", Some(bearer(&forge, without(&["nbf"])))),
        ("no exp", Some(bearer(&forge, without(&["exp"])))),
        ("no jti", Some(bearer(&forge, without(&["jti"])))),
        (
            "expired",
            Some(bearer(&forge, with(&["exp"], json!(now - 120)))),
        ),
        (
            "not yet valid",
            Some(bearer(&forge, with(&["nbf"], json!(now + 120)))),
        ),
        (
            "icLabel without a template",
            Some(bearer(&forge, with(&["icLabel"], json!("acme")))),
        ),
        (
            "bad icLabel",
            Some(bearer(&forge, with(&["icLabel"], json!("Acme.Corp")))),
        ),
    ];
    // What each refusal says: the reason, not just the status.
    let expected = HashMap::from([
        ("no Authorization header", "no Forge Invocation Token"),
        ("Basic scheme", "no Forge Invocation Token"),
        ("JWT scheme", "no Forge Invocation Token"),
        ("not a JWT", "malformed"),
        ("HS256", "RS256"),
        ("alg none", "malformed"),
        ("no kid", "no `kid`"),
        ("unknown kid", "this token's `kid`"),
        ("signed by another key", "signature"),
        ("tampered signature", "signature"),
        ("wrong iss", "`iss`"),
        ("aud of another app", "`aud`"),
        ("app.id not aud", "`app.id`"),
        ("no installationId", "`app.installationId`"),
        ("no iat", "`iat`"),
        ("no nbf", "`nbf`"),
        ("no exp", "`exp`"),
        ("no jti", "`jti`"),
        ("expired", "expired"),
        ("not yet valid", "not valid yet"),
        ("icLabel without a template", "Isolated Cloud"),
        ("bad icLabel", "`icLabel`"),
    ]);
    assert_eq!(expected.len(), cases.len());
    for (case, authorization) in cases {
        let response = post_forge(&app, authorization.as_deref(), &body).await;
        assert_eq!(response.status(), 401, "{case}");
        let error = error_body(response).await;
        assert_eq!(error["error"], "unauthorized", "{case}: {error}");
        let detail = error["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(expected[case]), "{case}: {detail}");
    }
    assert!(stored_events(&app).await.is_empty());
    assert!(tenants(&app).await.is_empty());

    // Within the leeway, and `aud` as an array: accepted.
    let lenient = with(&["exp"], json!(now - 10));
    let mut lenient = lenient;
    lenient["aud"] = json!([OTHER_APP, APP_ID]);
    let response = post_forge(&app, Some(&bearer(&forge, lenient)), &body).await;
    assert_eq!(response.status(), 200);

    // A body that is not a Forge event, under a good token: 400, nothing stored.
    for bad in [
        json!({}),
        json!({"payload": {"issue": {}}}),
        json!({"payload": [1]}),
    ] {
        let response = post_forge(&app, Some(&format!("Bearer {}", forge.token())), &bad).await;
        assert_eq!(response.status(), 400, "{bad}");
    }
    assert_eq!(stored_events(&app).await.len(), 1);
}

fn bearer(forge: &Forge, claims: Value) -> String {
    bearer_with(&forge.key, claims)
}

fn bearer_with(key: &SigningKey, claims: Value) -> String {
    format!("Bearer {}", key.sign(&claims))
}

/// `avi:forge:installed:app` and `uninstalled` move the installation's state,
/// ordered by the token's `iat`.
async fn forge_lifecycle_events_move_the_installation_state(backend: Backend) {
    let forge = Forge::start().await;
    let app = spawn_app_with(backend, |raw| forge.configure(raw)).await;
    let send = |event: &'static str, iat: i64| {
        let mut claims = forge.claims();
        claims["iat"] = json!(iat);
        claims["nbf"] = json!(iat);
        let token = bearer(&forge, claims);
        let body = json!({"payload": {"eventType": event, "id": uuid::Uuid::new_v4().to_string()}});
        let app = &app;
        async move { post_forge(app, Some(&token), &body).await.status().as_u16() }
    };
    let t = now();
    assert_eq!(send("avi:forge:installed:app", t - 20).await, 200);
    assert_eq!(tenants(&app).await[0]["state"], "installed");
    assert_eq!(send("avi:forge:uninstalled:app", t - 10).await, 200);
    assert_eq!(tenants(&app).await[0]["state"], "uninstalled");
    // An older `installed`, arriving late, changes nothing.
    assert_eq!(send("avi:forge:installed:app", t - 15).await, 200);
    assert_eq!(tenants(&app).await[0]["state"], "uninstalled");
    assert_eq!(send("avi:forge:installed:app", t).await, 200);
    assert_eq!(tenants(&app).await[0]["state"], "installed");
    let events = stored_events(&app).await;
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(|e| e["source"] == "forge"));
}

#[tokio::test]
async fn a_jwks_that_cannot_be_fetched_fails_closed_and_unknown_kids_cost_one_fetch() {
    let forge = Forge::start().await;
    let app = spawn_app_with(Backend::Sqlite, |raw| {
        forge.configure(raw);
        raw.forge_jwks_refetch_interval = "1h".into();
    })
    .await;
    let body = forge_body("avi:jira:updated:issue", "ACME-3");

    forge.jwks.go_down();
    let response = post_forge(&app, Some(&format!("Bearer {}", forge.token())), &body).await;
    assert_eq!(response.status(), 503, "no keys at all: Forge must retry");
    assert!(stored_events(&app).await.is_empty());
    // Refetches are rate-limited even while the JWKS is down.
    let response = post_forge(&app, Some(&format!("Bearer {}", forge.token())), &body).await;
    assert_eq!(response.status(), 503);
    assert_eq!(forge.jwks.hits(), 1);
    app.stop().await;

    // A new process (fresh cache) with the JWKS back.
    forge.jwks.come_back();
    let app2 = spawn_app_with(Backend::Sqlite, |raw| {
        forge.configure(raw);
        raw.forge_jwks_refetch_interval = "1h".into();
    })
    .await;
    let before = forge.jwks.hits();
    let response = post_forge(&app2, Some(&format!("Bearer {}", forge.token())), &body).await;
    assert_eq!(response.status(), 200);
    let ready: Value = app2
        .client
        .get(app2.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["forge"]["configured"], true);
    assert_eq!(ready["forge"]["jwks"][0]["keys"], 1, "{ready}");

    // A key rotated since the fetch, within the refetch interval: the token
    // is newer than the keys, so Forge is asked to retry (503), not refused.
    let rotated = SigningKey::new("rotated-meanwhile");
    let response = post_forge(&app2, Some(&bearer_with(&rotated, forge.claims())), &body).await;
    assert_eq!(response.status(), 503);

    // A flood of made-up kids in tokens older than the keys: 401, and one
    // refetch at most within the interval.
    let mut tokens = Vec::new();
    for i in 0..3 {
        let mut claims = forge.claims();
        claims["iat"] = json!(now() - 60);
        claims["nbf"] = json!(now() - 60);
        tokens.push(SigningKey::new(&format!("flood-{i}")).sign(&claims));
    }
    for token in tokens.iter().cycle().take(30) {
        let response = post_forge(&app2, Some(&format!("Bearer {token}")), &body).await;
        assert_eq!(response.status(), 401);
        let error = error_body(response).await;
        assert!(error["detail"].as_str().unwrap().contains("kid"), "{error}");
    }
    assert!(
        forge.jwks.hits() <= before + 2,
        "{} fetches for a flood of unknown kids",
        forge.jwks.hits() - before
    );
    assert_eq!(stored_events(&app2).await.len(), 1);
}

#[tokio::test]
async fn rotated_forge_keys_and_isolated_cloud_keys_are_fetched() {
    let forge = Forge::start().await;
    let app = spawn_app_with(Backend::Sqlite, |raw| {
        forge.configure(raw);
        raw.forge_ic_jwks_template = Some(format!("{}/ic/{{icLabel}}/jwks.json", forge.jwks.url));
    })
    .await;
    let body = forge_body("avi:jira:created:issue", "ACME-4");
    let response = post_forge(&app, Some(&format!("Bearer {}", forge.token())), &body).await;
    assert_eq!(response.status(), 200);

    // Atlassian rotates its key: the new kid is fetched once the interval has passed.
    let rotated = SigningKey::new("forge-key-2");
    publish_jwks(
        &forge.jwks,
        "/.well-known/jwks.json",
        &[&forge.key, &rotated],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = forge_body("avi:jira:created:issue", "ACME-5");
    let response = post_forge(
        &app,
        Some(&format!("Bearer {}", rotated.sign(&forge.claims()))),
        &body,
    )
    .await;
    assert_eq!(response.status(), 200);

    // An Isolated Cloud token: its keys come from the template's URL only.
    let ic_key = SigningKey::new("ic-key");
    publish_jwks(&forge.jwks, "/ic/acme-ic/jwks.json", &[&ic_key]);
    let mut claims = forge.claims();
    claims["icLabel"] = json!("acme-ic");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = forge_body("avi:jira:created:issue", "ACME-6");
    let response = post_forge(
        &app,
        Some(&format!("Bearer {}", ic_key.sign(&claims))),
        &body,
    )
    .await;
    assert_eq!(response.status(), 200);
    // The same key without the label is not in the commercial JWKS.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = forge_body("avi:jira:created:issue", "ACME-7");
    let response = post_forge(
        &app,
        Some(&format!("Bearer {}", ic_key.sign(&forge.claims()))),
        &body,
    )
    .await;
    assert_eq!(response.status(), 401);
    assert_eq!(stored_events(&app).await.len(), 3);
}

// ----------------------------------------------------------- admin webhooks

fn hub_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn post_admin_webhook(
    url: &str,
    signature: Option<&str>,
    body: &[u8],
    identifier: Option<&str>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("X-Hub-Signature", signature);
    }
    if let Some(identifier) = identifier {
        request = request.header("X-Atlassian-Webhook-Identifier", identifier);
    }
    request.send().await.unwrap()
}

/// The URL hookrelay gave, on the test's own address (the base URL is public).
fn local(app: &TestApp, url: &str) -> String {
    let path = url.strip_prefix(BASE_URL).expect("url under the base URL");
    app.url(path)
}

async fn create_source(app: &TestApp) -> (String, String, String) {
    let response = reqwest::Client::new()
        .post(app.url("/admin/api/v1/sources"))
        .bearer_auth(TOKEN)
        .json(&json!({"type": "jira-admin", "name": "acme", "base_url": "https://acme.atlassian.net/"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["url"], format!("{BASE_URL}/in/{id}"));
    assert_eq!(created["base_url"], "https://acme.atlassian.net");
    let secret = created["secret"].as_str().unwrap().to_string();
    (id, local(app, created["url"].as_str().unwrap()), secret)
}

async fn patch_source(app: &TestApp, id: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .patch(app.url(&format!("/admin/api/v1/sources/{id}")))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A source's URL and secret; requests verified by `X-Hub-Signature`, every
/// way of getting it wrong refused with 401 and nothing stored; rotation with
/// two secrets at once; deduplication by the identifier header.
async fn admin_webhooks_are_verified_by_x_hub_signature(backend: Backend) {
    let app = spawn_app_with(backend, relaying).await;
    let (id, url, secret) = create_source(&app).await;
    let body = fixture("payloads/jira_issue_created.json");
    let body = body.as_bytes();
    let good = hub_signature(&secret, body);

    let digest = good.strip_prefix("sha256=").unwrap();
    let mut changed = body.to_vec();
    let at = changed.len() / 2;
    changed[at] = if changed[at] == b'a' { b'b' } else { b'a' };
    let reserialised = serde_json::to_vec(&serde_json::from_slice::<Value>(body).unwrap()).unwrap();
    assert_ne!(
        reserialised, body,
        "the fixture is not in serde_json's form"
    );
    let sha1 = format!("sha1={}", &digest[..40]);
    let md5 = format!("md5={}", &digest[..32]);
    let upper = format!(
        "sha256={}",
        digest
            .to_uppercase()
            .replace(|c: char| c.is_ascii_digit(), "G")
    );
    let truncated = format!("sha256={}", &digest[..62]);
    let wrong_secret = hub_signature("not-the-secret", body);
    let cases: Vec<(&str, Option<&str>, &[u8])> = vec![
        ("no header", None, body),
        ("sha1", Some(&sha1), body),
        ("unknown method", Some(&md5), body),
        ("not hex", Some(&upper), body),
        ("truncated digest", Some(&truncated), body),
        ("bare digest", Some(digest), body),
        ("one changed byte", Some(&good), &changed),
        ("re-serialised JSON", Some(&good), &reserialised),
        ("wrong secret", Some(&wrong_secret), body),
    ];
    for (case, signature, sent) in cases {
        let response = post_admin_webhook(&url, signature, sent, Some("wh-x")).await;
        assert_eq!(response.status(), 401, "{case}");
        let error = error_body(response).await;
        assert_eq!(error["error"], "unauthorized", "{case}");
    }
    for unknown in [
        "/in/00000000-0000-4000-8000-000000000000",
        "/in/not-a-source",
    ] {
        let response = post_admin_webhook(&app.url(unknown), Some(&good), body, None).await;
        assert_eq!(response.status(), 404, "{unknown}");
    }
    assert!(stored_events(&app).await.is_empty());

    let response = post_admin_webhook(&url, Some(&good), body, Some("wh-1")).await;
    assert_eq!(response.status(), 200);
    let first: Value = response.json().await.unwrap();
    let response = post_admin_webhook(&url, Some(&good), body, Some("wh-1")).await;
    let again: Value = response.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["duplicate"], true);
    let events = stored_events(&app).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["source"], "jira-admin");
    assert_eq!(events[0]["event"], "jira:issue_created");
    assert_eq!(events[0]["source_event"], "jira:issue_created");
    assert_eq!(events[0]["tenant"]["client_key"], id.as_str());
    assert_eq!(
        events[0]["tenant"]["base_url"],
        "https://acme.atlassian.net"
    );

    // Verified but not an event: 400.
    let no_name = br#"{"issue": {}}"#;
    let response =
        post_admin_webhook(&url, Some(&hub_signature(&secret, no_name)), no_name, None).await;
    assert_eq!(response.status(), 400);

    // Rotation: a second secret works beside the first; then the first retires.
    let (status, rotated) = patch_source(&app, &id, json!({"add_secret": true})).await;
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(second, secret);
    assert_eq!(rotated["secrets"].as_array().unwrap().len(), 2);
    for (n, s) in [(2, &secret), (3, &second)] {
        let response = post_admin_webhook(
            &url,
            Some(&hub_signature(s, body)),
            body,
            Some(&format!("wh-{n}")),
        )
        .await;
        assert_eq!(response.status(), 200, "secret {n}");
    }
    let (status, _) = patch_source(&app, &id, json!({"remove_secret": &secret[..8]})).await;
    assert_eq!(status, 200);
    let response = post_admin_webhook(&url, Some(&good), body, Some("wh-4")).await;
    assert_eq!(response.status(), 401, "the retired secret");
    let response = post_admin_webhook(
        &url,
        Some(&hub_signature(&second, body)),
        body,
        Some("wh-5"),
    )
    .await;
    assert_eq!(response.status(), 200);
    let (status, _) = patch_source(&app, &id, json!({"remove_secret": &second[..8]})).await;
    assert_eq!(status, 409, "the last secret stays");
    // Two removals at once, of the two secrets there are: one is refused.
    let (_, third) = patch_source(&app, &id, json!({"add_secret": true})).await;
    let third = third["secret"].as_str().unwrap().to_string();
    let (a, b) = tokio::join!(
        patch_source(&app, &id, json!({"remove_secret": &second[..8]})),
        patch_source(&app, &id, json!({"remove_secret": &third[..8]})),
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
    let left = AdminApi::of(&app.address)
        .get(&format!("/sources/{id}"))
        .await;
    assert_eq!(left["secrets"].as_array().unwrap().len(), 1);
    let kept = if a.0 == 200 { &third } else { &second };
    let response =
        post_admin_webhook(&url, Some(&hub_signature(kept, body)), body, Some("wh-6")).await;
    assert_eq!(response.status(), 200);

    // Secrets are never read back.
    let admin = AdminApi::of(&app.address);
    for path in [
        "/sources".to_string(),
        format!("/sources/{id}"),
        "/tenants".into(),
    ] {
        let text = admin.get(&path).await.to_string();
        assert!(!text.contains(&second) && !text.contains(&secret), "{path}");
    }
    let listed = tenants(&app).await;
    assert_eq!(listed[0]["kind"], "jira-admin");
    assert_eq!(listed[0]["name"], "acme");
    assert_eq!(stored_events(&app).await.len(), 5);
}

/// The store going away mid-flight: Forge and admin webhooks get 503 (so they
/// retry) and nothing is half-stored; the retry after it comes back is stored
/// once, with the same token for Forge.
async fn a_store_outage_answers_503_and_the_retry_is_stored_once(backend: Backend) {
    let forge = Forge::start().await;
    let app = spawn_app_with(backend, |raw| forge.configure(raw)).await;
    let (_, url, secret) = create_source(&app).await;
    // Known to this process before the outage: the installation and the source.
    let warm = forge_body("avi:jira:created:issue", "ACME-20");
    let response = post_forge(&app, Some(&format!("Bearer {}", forge.token())), &warm).await;
    assert_eq!(response.status(), 200);
    let body = fixture("payloads/jira_issue_created.json");
    let signature = hub_signature(&secret, body.as_bytes());
    let response = post_admin_webhook(&url, Some(&signature), body.as_bytes(), Some("a-0")).await;
    assert_eq!(response.status(), 200);

    let broken = app.break_store().await;
    let token = forge.token();
    let during = forge_body("avi:jira:updated:issue", "ACME-21");
    let response = post_forge(&app, Some(&format!("Bearer {token}")), &during).await;
    assert_eq!(response.status(), 503);
    assert_eq!(error_body(response).await["error"], "unavailable");
    let response = post_admin_webhook(&url, Some(&signature), body.as_bytes(), Some("a-1")).await;
    assert_eq!(response.status(), 503);
    broken.restore().await;

    let response = post_forge(&app, Some(&format!("Bearer {token}")), &during).await;
    assert_eq!(response.status(), 200);
    let response = post_admin_webhook(&url, Some(&signature), body.as_bytes(), Some("a-1")).await;
    assert_eq!(response.status(), 200);
    let response = post_admin_webhook(&url, Some(&signature), body.as_bytes(), Some("a-1")).await;
    assert_eq!(response.json::<Value>().await.unwrap()["duplicate"], true);
    assert_eq!(stored_events(&app).await.len(), 4);
}

/// A subscription to `jira:issue_created` receives it from Connect, Forge and
/// an admin webhook, each signed per Standard Webhooks, each with its source.
async fn one_subscription_gets_jira_issue_created_from_every_source(backend: Backend) {
    let forge = Forge::start().await;
    let receiver = Receiver::start().await;
    let app = spawn_app_with(backend, |raw| forge.configure(raw)).await;
    every_source_is_delivered(&app, &forge, &receiver, None).await;
}

/// The same on RabbitMQ: each event is on the exchange with the Connect
/// routing key, for a downstream consumer, and is delivered to the receiver.
#[tokio::test]
async fn every_source_reaches_rabbitmq_and_a_standard_webhooks_receiver() {
    let forge = Forge::start().await;
    let receiver = Receiver::start().await;
    let exchange = test_exchange();
    let mut consumer = Consumer::bind(&exchange, &["jira.issue_created"]).await;
    let app = spawn_app_with(Backend::Postgres, |raw| {
        forge.configure(raw);
        on_rabbitmq(raw, &exchange, amqp_url());
    })
    .await;
    every_source_is_delivered(&app, &forge, &receiver, Some(&mut consumer)).await;
    consumer.close().await;
    app.stop().await;
    let relay_queue = app.config.relay_queue.name.clone();
    delete_topology(&exchange, &[relay_queue.as_str()]).await;
}

async fn every_source_is_delivered(
    app: &TestApp,
    forge: &Forge,
    receiver: &Receiver,
    consumer: Option<&mut Consumer>,
) {
    let admin = AdminApi::of(&app.address);
    let (_, sub_secret) = admin
        .subscribe(json!({"url": receiver.url("/created"), "events": ["jira:issue_created"]}))
        .await;

    let site = Site::new("jira");
    app.install(&site).await;
    let connect = app
        .webhook(
            &site,
            "jira:issue_created",
            fixture("payloads/jira_issue_created.json"),
            &[],
        )
        .await;
    assert_eq!(connect.status(), 200);

    let response = post_forge(
        app,
        Some(&format!("Bearer {}", forge.token())),
        &forge_body("avi:jira:created:issue", "ACME-9"),
    )
    .await;
    assert_eq!(response.status(), 200);

    let (_, url, secret) = create_source(app).await;
    let body = fixture("payloads/jira_issue_created.json");
    let response = post_admin_webhook(
        &url,
        Some(&hub_signature(&secret, body.as_bytes())),
        body.as_bytes(),
        Some("admin-1"),
    )
    .await;
    assert_eq!(response.status(), 200);
    // Not subscribed: an update, from the admin webhook.
    let update = body.replace("jira:issue_created", "jira:issue_updated");
    let response = post_admin_webhook(
        &url,
        Some(&hub_signature(&secret, update.as_bytes())),
        update.as_bytes(),
        Some("admin-2"),
    )
    .await;
    assert_eq!(response.status(), 200);

    let received = receiver
        .wait_for("/created", 3, Duration::from_secs(20))
        .await;
    let mut sources: Vec<(String, String)> = received
        .iter()
        .map(|r| {
            verify(&sub_secret, r).unwrap_or_else(|e| panic!("bad signature: {e:?}"));
            let envelope = r.json();
            assert_eq!(envelope["event"], "jira:issue_created");
            (
                envelope["source"].as_str().unwrap().to_string(),
                envelope["source_event"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    sources.sort();
    assert_eq!(
        sources,
        vec![
            ("connect".to_string(), "jira:issue_created".to_string()),
            ("forge".into(), "avi:jira:created:issue".into()),
            ("jira-admin".into(), "jira:issue_created".into()),
        ]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received("/created").len(),
        3,
        "the update is not delivered"
    );

    if let Some(consumer) = consumer {
        let messages = consumer.take(3, Duration::from_secs(20)).await;
        let mut seen: Vec<String> = messages
            .iter()
            .map(|m| {
                assert_eq!(m.routing_key, "jira.issue_created");
                m.body["source"].as_str().unwrap().to_string()
            })
            .collect();
        seen.sort();
        assert_eq!(seen, ["connect", "forge", "jira-admin"]);
    }
}
