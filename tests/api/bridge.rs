//! The bridge, black-box: hookrelay calling a tenant's product REST API as
//! the app, from scripts (`context.app.fetch`), subscription transforms and
//! the `/proxy` route, against a fake Jira and Confluence played on loopback.
//!
//! The fake product checks every request it gets with its own verifier: the
//! Connect JWT is decoded with `jsonwebtoken` and the tenant's shared secret,
//! and its `qsh` compared with one computed by this file's own canonicaliser
//! (checked against Atlassian's vectors below), never hookrelay's. A request
//! that fails verification is answered 401 and recorded as such, and every
//! scenario ends by asserting that none did.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, HttpServer};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hookrelay::config::RawConfig;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::both_backends;
use crate::helpers::*;
use crate::receiver::{verify, Receiver};
use crate::relay::{relaying, AdminApi};
use crate::sources::{publish_jwks, SigningKey, APP_ID as FORGE_APP_ID, CLOUD_ID, INSTALLATION};
use crate::triggers::{create, path_of};

/// The app key hookrelay signs as (the default `app_key`).
pub(crate) const APP_KEY: &str = "hookrelay";

// ------------------------------------------------------------ qsh, our own

/// RFC 3986 percent-encoding of everything but the unreserved characters,
/// as Atlassian's canonical query wants (`+` and `*` encoded, `~` not).
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Atlassian's canonical request: `METHOD&path&query`, the path with the
/// context path stripped, no trailing slash and `&` encoded; the query's
/// parameters decoded (`+` is a space), `jwt` left out, sorted by name, each
/// name's values sorted and joined with `,`, all re-encoded per RFC 3986.
pub(crate) fn canonical_request(method: &str, path: &str, query: &str, context: &str) -> String {
    let context = context.trim_end_matches('/');
    let mut path = path;
    if !context.is_empty() {
        if let Some(rest) = path.strip_prefix(context) {
            if rest.is_empty() || rest.starts_with('/') {
                path = rest;
            }
        }
    }
    let mut path = path.to_string();
    while path.len() > 1 && path.ends_with('/') {
        path.pop();
    }
    if path.is_empty() {
        path.push('/');
    }
    let path = path.replace('&', "%26");

    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name == "jwt" {
            continue;
        }
        params
            .entry(name.into_owned())
            .or_default()
            .push(value.into_owned());
    }
    let query = params
        .into_iter()
        .map(|(name, mut values)| {
            values.sort();
            let values: Vec<String> = values.iter().map(|v| encode_component(v)).collect();
            format!("{}={}", encode_component(&name), values.join(","))
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{}&{path}&{query}", method.to_ascii_uppercase())
}

pub(crate) fn qsh_of(canonical: &str) -> String {
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// Checks a Connect JWT the app made for a call to the product: HS256 with
/// `secret`, issued by the app key, short-lived, and its `qsh` that of this
/// very request. Returns the claims.
pub(crate) fn verify_app_jwt(
    token: &str,
    secret: &str,
    method: &str,
    path: &str,
    query: &str,
    context: &str,
) -> Result<Value, String> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "iss"]);
    validation.set_issuer(&[APP_KEY]);
    validation.leeway = 5;
    let claims = jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| format!("JWT refused: {e}"))?
    .claims;
    let now = now();
    let iat = claims["iat"].as_i64().ok_or("no integer `iat`")?;
    let exp = claims["exp"].as_i64().ok_or("no integer `exp`")?;
    if exp <= iat || exp - iat > 300 {
        return Err(format!("exp - iat = {} s, not within 1..=300", exp - iat));
    }
    if exp > now + 305 {
        return Err(format!("exp is {} s ahead, more than 5 min", exp - now));
    }
    if iat > now + 30 {
        return Err(format!("iat is {} s in the future", iat - now));
    }
    let canonical = canonical_request(method, path, query, context);
    let expected = qsh_of(&canonical);
    if claims["qsh"] != expected.as_str() {
        return Err(format!(
            "qsh {} is not {expected}, the hash of {canonical:?}",
            claims["qsh"]
        ));
    }
    Ok(claims)
}

#[test]
fn our_canonicaliser_agrees_with_atlassians_qsh_vectors() {
    let vectors: Vec<Value> = serde_json::from_str(&fixture("qsh-vectors.json")).unwrap();
    assert!(vectors.len() >= 10);
    for v in &vectors {
        let context = url::Url::parse(v["base_url"].as_str().unwrap()).unwrap();
        let canonical = canonical_request(
            v["method"].as_str().unwrap(),
            v["path"].as_str().unwrap(),
            v["query"].as_str().unwrap(),
            context.path(),
        );
        assert_eq!(canonical, v["canonical"].as_str().unwrap(), "{v}");
        assert_eq!(qsh_of(&canonical), v["qsh"].as_str().unwrap(), "{v}");
    }
}

#[test]
fn our_verifier_agrees_with_atlassians_signed_urls() {
    let doc: Value = serde_json::from_str(&fixture("connect-jwt-interop.json")).unwrap();
    let secret = doc["secret"].as_str().unwrap();
    let tests = doc["tests"].as_array().unwrap();
    assert!(tests.len() > 50);
    for t in tests {
        let name = t["name"].as_str().unwrap();
        let url = t["signedUrl"].as_str().unwrap();
        let rest = url.strip_prefix("https://example.com").unwrap();
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let context = t["addonBaseUrl"].as_str().unwrap_or("");
        let canonical = canonical_request("GET", path, query, context);
        assert_eq!(canonical, t["canonicalUrl"].as_str().unwrap(), "{name}");
        let token = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "jwt")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("{name}: no jwt parameter"));
        // The tokens expired in 2014: signature and qsh only.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims::<&str>(&[]);
        let claims = jsonwebtoken::decode::<Value>(
            &token,
            &DecodingKey::from_secret(secret.as_bytes()),
            &validation,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .claims;
        assert_eq!(claims["qsh"], qsh_of(&canonical).as_str(), "{name}");
        // Another request does not match.
        assert_ne!(
            claims["qsh"],
            qsh_of(&canonical_request("GET", "/other", query, context)).as_str()
        );
    }
}

#[test]
fn our_verifier_refuses_what_it_should() {
    let secret = "s3cret-for-the-fake";
    let now = now();
    let good = json!({"iss": APP_KEY, "iat": now, "exp": now + 180,
                      "qsh": qsh_of("GET&/rest/api/3/myself&")});
    let sign = |claims: &Value| hs256(secret, claims.clone());
    assert!(verify_app_jwt(&sign(&good), secret, "GET", "/rest/api/3/myself", "", "").is_ok());
    // Under a context path, the qsh is without it.
    assert!(verify_app_jwt(
        &sign(&good),
        secret,
        "GET",
        "/wiki/rest/api/3/myself",
        "",
        "/wiki"
    )
    .is_ok());
    let mut cases = vec![];
    for (field, value) in [
        ("iss", json!("someone-else")),
        ("exp", json!(now - 60)),
        ("exp", json!(now + 3600)),
        ("qsh", json!(qsh_of("POST&/rest/api/3/myself&"))),
    ] {
        let mut claims = good.clone();
        claims[field] = value;
        cases.push((field, sign(&claims)));
    }
    cases.push(("secret", hs256("another", good.clone())));
    for (case, token) in cases {
        assert!(
            verify_app_jwt(&token, secret, "GET", "/rest/api/3/myself", "", "").is_err(),
            "{case}"
        );
    }
    assert!(verify_app_jwt(
        &sign(&good),
        secret,
        "GET",
        "/rest/api/3/myself",
        "expand=x",
        ""
    )
    .is_err());
}

// --------------------------------------------------------- the fake product

/// How the fake answers one request.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub(crate) fn json(status: u16, body: Value) -> Self {
        Answer {
            status,
            headers: vec![(
                "content-type".into(),
                "application/json;charset=UTF-8".into(),
            )],
            body: body.to_string(),
        }
    }

    pub(crate) fn status(status: u16) -> Self {
        Answer {
            status,
            headers: vec![],
            body: String::new(),
        }
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub at: Instant,
    pub method: String,
    /// The raw path, as on the request line.
    pub path: String,
    /// The raw query string ("" without one).
    pub query: String,
    /// Names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Who the credentials proved the caller to be (the tenant's name given
    /// to `trust_*`), or why they did not.
    pub verified: Result<String, String>,
    /// The Connect JWT's claims, when one verified.
    pub claims: Option<Value>,
}

impl Seen {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of query parameter `name`, decoded, in order.
    pub(crate) fn params(&self, name: &str) -> Vec<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .collect()
    }

    /// The first value of query parameter `name`, decoded.
    pub(crate) fn param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "body of {} {} is not JSON ({e}): {}",
                self.method, self.path, self.body
            )
        })
    }

    /// Panics unless the request's credentials were those of `tenant`.
    pub(crate) fn assert_from(&self, tenant: &str) {
        assert_eq!(
            self.verified.as_deref(),
            Ok(tenant),
            "{} {}?{}",
            self.method,
            self.path,
            self.query
        );
    }
}

struct Route {
    method: String,
    path: String,
    /// Query parameters the request must have, decoded.
    params: Vec<(String, String)>,
    answers: Vec<Answer>,
    served: usize,
}

#[derive(Default)]
struct FakeInner {
    /// (tenant, shared secret, context path)
    connect: Vec<(String, String, String)>,
    /// (tenant, bearer token)
    bearers: Vec<(String, String)>,
    /// (tenant, base64 of `email:token`)
    basics: Vec<(String, String)>,
    routes: Vec<Route>,
    log: Vec<Seen>,
}

impl FakeInner {
    fn verify(
        &self,
        method: &str,
        path: &str,
        query: &str,
        authorization: Option<&str>,
    ) -> (Result<String, String>, Option<Value>) {
        if path.starts_with("/open/") {
            return (Ok("open".into()), None);
        }
        let Some(authorization) = authorization else {
            return (Err("no Authorization header".into()), None);
        };
        if let Some(token) = authorization.strip_prefix("JWT ") {
            let mut why = Vec::new();
            for (tenant, secret, context) in &self.connect {
                if !context.is_empty()
                    && path != context
                    && !path.starts_with(&format!("{context}/"))
                {
                    why.push(format!("{tenant}: not under {context}"));
                    continue;
                }
                match verify_app_jwt(token, secret, method, path, query, context) {
                    Ok(claims) => return (Ok(tenant.clone()), Some(claims)),
                    Err(e) => why.push(format!("{tenant}: {e}")),
                }
            }
            return (Err(format!("no tenant's JWT: {}", why.join("; "))), None);
        }
        if let Some(token) = authorization.strip_prefix("Bearer ") {
            return match self.bearers.iter().find(|(_, t)| t == token) {
                Some((tenant, _)) => (Ok(tenant.clone()), None),
                None => (Err("unknown bearer token".into()), None),
            };
        }
        if let Some(basic) = authorization.strip_prefix("Basic ") {
            return match self.basics.iter().find(|(_, b)| b == basic) {
                Some((tenant, _)) => (Ok(tenant.clone()), None),
                None => (Err("unknown basic credentials".into()), None),
            };
        }
        (Err(format!("unknown scheme in {authorization:?}")), None)
    }

    fn answer(&mut self, method: &str, path: &str, query: &str, body: &str) -> Answer {
        let given: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let route = self
            .routes
            .iter_mut()
            .filter(|r| {
                r.method == method && r.path == path && r.params.iter().all(|p| given.contains(p))
            })
            .max_by_key(|r| r.params.len());
        match route {
            Some(route) => {
                let i = route.served.min(route.answers.len() - 1);
                route.served += 1;
                route.answers[i].clone()
            }
            None => Answer::json(
                200,
                json!({"method": method, "path": path, "query": query, "body": body}),
            ),
        }
    }
}

/// A Jira and a Confluence (under `/wiki`) on one loopback port.
pub(crate) struct FakeProduct {
    pub url: String,
    inner: Arc<Mutex<FakeInner>>,
    handle: actix_web::dev::ServerHandle,
}

impl Drop for FakeProduct {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

async fn fake_handle(
    req: HttpRequest,
    body: web::Bytes,
    inner: web::Data<Mutex<FakeInner>>,
) -> HttpResponse {
    let method = req.method().as_str().to_string();
    let path = req.path().to_string();
    let query = req.query_string().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = String::from_utf8_lossy(&body).into_owned();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let answer = {
        let mut inner = inner.lock().unwrap();
        let (verified, claims) = inner.verify(&method, &path, &query, authorization);
        let answer = match &verified {
            Ok(_) => inner.answer(&method, &path, &query, &body),
            Err(why) => Answer::json(401, json!({"errorMessages": [why]})),
        };
        inner.log.push(Seen {
            at: Instant::now(),
            method,
            path,
            query,
            headers,
            body,
            verified,
            claims,
        });
        answer
    };
    let mut response = HttpResponse::build(StatusCode::from_u16(answer.status).unwrap());
    for (k, v) in &answer.headers {
        response.insert_header((k.as_str(), v.as_str()));
    }
    response.body(answer.body)
}

impl FakeProduct {
    pub(crate) async fn start() -> Self {
        let inner: Arc<Mutex<FakeInner>> = Arc::default();
        let data = web::Data::from(inner.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            actix_web::App::new()
                .app_data(data.clone())
                .default_service(web::to(fake_handle))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        FakeProduct {
            url: format!("http://127.0.0.1:{port}"),
            inner,
            handle,
        }
    }

    /// A Connect site of `product` on this fake (Confluence under `/wiki`),
    /// whose JWTs the fake accepts. Not installed yet.
    pub(crate) fn connect_site(&self, product: &'static str) -> Site {
        let mut site = Site::new(product);
        site.base_url = match product {
            "confluence" => format!("{}/wiki", self.url),
            _ => self.url.clone(),
        };
        self.trust_connect(&site);
        site
    }

    pub(crate) fn trust_connect(&self, site: &Site) {
        let context = url::Url::parse(&site.base_url)
            .unwrap()
            .path()
            .trim_end_matches('/')
            .to_string();
        self.inner.lock().unwrap().connect.push((
            site.client_key.clone(),
            site.secret.clone(),
            context,
        ));
    }

    pub(crate) fn trust_bearer(&self, tenant: &str, token: &str) {
        self.inner
            .lock()
            .unwrap()
            .bearers
            .push((tenant.into(), token.into()));
    }

    pub(crate) fn trust_basic(&self, tenant: &str, email: &str, token: &str) {
        self.inner
            .lock()
            .unwrap()
            .basics
            .push((tenant.into(), STANDARD.encode(format!("{email}:{token}"))));
    }

    /// Answers `method path` with `answers` in turn, the last one for ever.
    pub(crate) fn on(&self, method: &str, path: &str, answers: Vec<Answer>) {
        self.on_query(method, path, &[], answers);
    }

    /// The same, for requests that have these query parameters (the route
    /// asking for the most parameters wins).
    pub(crate) fn on_query(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        answers: Vec<Answer>,
    ) {
        assert!(!answers.is_empty());
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut inner = self.inner.lock().unwrap();
        inner
            .routes
            .retain(|r| !(r.method == method && r.path == path && r.params == params));
        inner.routes.push(Route {
            method: method.into(),
            path: path.into(),
            params,
            answers,
            served: 0,
        });
    }

    /// Every request so far, in arrival order.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().log.clone()
    }

    pub(crate) fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }

    /// Panics, listing them, if any request failed verification.
    pub(crate) fn assert_all_verified(&self) {
        let bad: Vec<String> = self
            .seen()
            .iter()
            .filter_map(|s| {
                s.verified
                    .as_ref()
                    .err()
                    .map(|why| format!("{} {}?{}: {why}", s.method, s.path, s.query))
            })
            .collect();
        assert!(
            bad.is_empty(),
            "requests the fake refused:\n{}",
            bad.join("\n")
        );
    }
}

/// A URL where nothing listens.
pub(crate) fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

// ------------------------------------------------------------- the app side

/// Bridge settings for tests: the relay's (admin API, loopback allowed),
/// small scripts, no reconciliation timer, no rate limit in the way.
pub(crate) fn bridging(raw: &mut RawConfig) {
    relaying(raw);
    raw.script_memory = 32 * 1024 * 1024;
    raw.reconcile_interval = "0".into();
    raw.bridge_rate_limit = 1000;
}

pub(crate) async fn install(app: &TestApp, site: &Site) {
    let response = app.install(site).await;
    assert_eq!(
        response.status().as_u16(),
        204,
        "install {}",
        site.client_key
    );
}

/// Sends the signed `uninstalled` callback for `site`, issued now (install
/// the site with an earlier `iat` first).
pub(crate) async fn uninstall(app: &TestApp, site: &Site) {
    let path = format!("/{}/lifecycle/uninstalled", site.product);
    let token = install_token(
        KID_A,
        "keys/install-a.pem",
        install_claims(site, &path, now()),
    );
    let response = app
        .lifecycle(
            site,
            "uninstalled",
            Some(token),
            &site.lifecycle_body("uninstalled"),
        )
        .await;
    assert_eq!(response.status().as_u16(), 204);
}

/// Calls a sync trigger; returns status and body text.
async fn call_sync(app: &TestApp, trigger: &Value, body: &str) -> (u16, String) {
    let response = app
        .client
        .post(app.url(&path_of(trigger)))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// A sync trigger on `tenant` (or none) whose script fetches `path` with the
/// app and answers `"<status> <body>"`, or `"error: <message>"` if the
/// fetch rejected.
async fn fetching_trigger(admin: &AdminApi, name: &str, tenant: Option<&str>, path: &str) -> Value {
    let script = format!(
        r#"export default async function (request, context) {{
  try {{
    const r = await context.app.fetch({path:?});
    return {{statusCode: 200, body: `${{r.status}} ${{r.body}}`}};
  }} catch (e) {{
    return {{statusCode: 200, body: `error: ${{e.message}}`}};
  }}
}}"#
    );
    let mut body = json!({"name": name, "mode": "sync", "script": script});
    if let Some(tenant) = tenant {
        body["tenant"] = json!(tenant);
    }
    create(admin, body).await
}

/// Creates an API key; returns (id, key).
pub(crate) async fn create_key(admin: &AdminApi, body: Value) -> (String, String) {
    let (status, created) = admin.post("/api-keys", body).await;
    assert_eq!(status, 201, "{created}");
    (
        created["id"].as_str().unwrap().to_string(),
        created["key"].as_str().unwrap().to_string(),
    )
}

/// `method /proxy/{client_key}{path}` with `key` as the bearer token.
async fn proxy(
    app: &TestApp,
    key: Option<&str>,
    method: reqwest::Method,
    client_key: &str,
    path: &str,
    body: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .client
        .request(method, app.url(&format!("/proxy/{client_key}{path}")));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    request.send().await.unwrap()
}

/// A request sent as written, for paths an HTTP client would normalise.
async fn raw_status(address: &str, method: &str, target: &str, key: &str) -> u16 {
    let host = address.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"))
}

// -------------------------------------------------------------- Forge bits

/// A Forge app on a site: a JWKS with its key, and an invocation-token minter.
struct Forge {
    jwks: DocServer,
    key: SigningKey,
}

impl Forge {
    async fn start() -> Self {
        let jwks = DocServer::start().await;
        let key = SigningKey::new("forge-bridge-key");
        publish_jwks(&jwks, "/.well-known/jwks.json", &[&key]);
        Forge { jwks, key }
    }

    fn configure(&self, raw: &mut RawConfig) {
        bridging(raw);
        raw.forge_app_ids = vec![FORGE_APP_ID.into()];
        raw.forge_jwks_url = format!("{}/.well-known/jwks.json", self.jwks.url);
    }

    /// A good invocation token whose `app.apiBaseUrl` is `api_base_url`.
    fn token(&self, api_base_url: &str) -> String {
        let now = now();
        let claims = json!({
            "iss": "forge/invocation-token",
            "aud": FORGE_APP_ID,
            "iat": now, "nbf": now, "exp": now + 300,
            "jti": uuid::Uuid::new_v4().to_string(),
            "app": {
                "id": FORGE_APP_ID,
                "installationId": INSTALLATION,
                "apiBaseUrl": api_base_url,
                "appVersion": "2.0.0",
                "environment": {"type": "PRODUCTION", "id": "ari:cloud:ecosystem::environment/x"},
                "module": {"type": "core:endpoint", "key": "hookrelay-endpoint"},
            },
            "context": {"cloudId": CLOUD_ID, "siteUrl": "https://acme.atlassian.net"},
            "principal": "557058:f0000000-0000-0000-0000-000000000000",
        });
        self.key.sign(&claims)
    }

    /// Posts a Forge issue event carrying `system_token`.
    async fn event(&self, app: &TestApp, api_base_url: &str, issue: &str, system_token: &str) {
        let body = json!({"payload": {
            "eventType": "avi:jira:created:issue",
            "atlassianId": "557058:f0000000",
            "issue": {"id": "10001", "key": issue, "fields": {"summary": "From Forge"}},
            "context": {"cloudId": CLOUD_ID, "moduleKey": "hookrelay-jira-events"},
        }});
        let response = app
            .client
            .post(app.url("/forge/events"))
            .bearer_auth(self.token(api_base_url))
            .header("x-forge-oauth-system", system_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "Forge event {issue}");
    }
}

/// An app system token as Forge sends it: a JWT whose `exp` is `exp`.
fn system_token(exp: i64) -> String {
    hs256(
        "forge-signs-these-not-us",
        json!({"iss": "forge", "sub": "system", "iat": now(), "exp": exp,
               "jti": uuid::Uuid::new_v4().to_string()}),
    )
}

// ---------------------------------------------------------------- scenarios

both_backends!(
    a_sync_script_creates_a_jira_issue_as_the_app,
    a_confluence_script_is_signed_without_the_context_path,
    an_async_script_calls_the_product_from_the_queue,
    a_transform_reads_the_product_for_the_events_tenant,
    forge_installations_are_called_with_the_newest_system_token,
    admin_webhook_sources_are_called_with_their_api_token,
    script_fetches_fail_with_a_reason,
    the_proxy_forwards_signed_within_the_keys_scope,
    the_proxy_retries_idempotent_calls_after_retry_after,
    tenants_show_their_event_counts
);

const CREATE_ISSUE: &str = r#"
export default async function (request, context) {
  const input = JSON.parse(request.body);
  const created = await context.app.fetch("/rest/api/3/issue", {
    method: "POST",
    headers: {"content-type": "application/json"},
    body: JSON.stringify({fields: {project: {key: "ACME"}, summary: input.summary, issuetype: {name: "Task"}}}),
  });
  const issue = await created.json();
  const edited = await context.app.fetch(`/rest/api/3/issue/${issue.key}`, {
    method: "PUT",
    body: {fields: {labels: ["from-script"]}},
  });
  const found = await context.app.fetch(
    "/rest/api/3/search?jql=project%20%3D%20ACME%20ORDER%20BY%20created&fields=summary,status&maxResults=2");
  return {
    statusCode: created.status,
    headers: {"content-type": ["application/json"]},
    body: JSON.stringify({
      created: {status: created.status, ok: created.ok, contentType: created.headers["content-type"],
                body: created.body, text: await created.text(), key: issue.key},
      edited: {status: edited.status, ok: edited.ok, body: edited.body},
      found: {status: found.status, total: (await found.json()).total},
    }),
  };
}
"#;

/// A sync trigger on a Connect Jira tenant: a POST with a string body, a PUT
/// with an object body and a GET with a query, each signed with a JWT the
/// fake verifies; the script answers with what it got back.
async fn a_sync_script_creates_a_jira_issue_as_the_app(backend: Backend) {
    let fake = FakeProduct::start().await;
    let app = spawn_app_with(backend, bridging).await;
    let admin = AdminApi::of(&app.address);
    let site = fake.connect_site("jira");
    install(&app, &site).await;
    let created = json!({"id": "10001", "key": "ACME-1", "self": format!("{}/rest/api/3/issue/10001", fake.url)});
    fake.on(
        "POST",
        "/rest/api/3/issue",
        vec![Answer::json(201, created.clone())],
    );
    fake.on("PUT", "/rest/api/3/issue/ACME-1", vec![Answer::status(204)]);
    fake.on(
        "GET",
        "/rest/api/3/search",
        vec![Answer::json(200, json!({"total": 1, "issues": []}))],
    );
    let trigger = create(
        &admin,
        json!({"name": "create-issue", "mode": "sync", "tenant": site.client_key, "script": CREATE_ISSUE}),
    )
    .await;
    assert_eq!(trigger["tenant"], site.client_key.as_str());

    let (status, body) = call_sync(&app, &trigger, r#"{"summary": "From a script"}"#).await;
    assert_eq!(status, 201, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["created"]["status"], 201, "{answer:#}");
    assert_eq!(answer["created"]["ok"], true);
    assert_eq!(
        answer["created"]["contentType"],
        "application/json;charset=UTF-8"
    );
    assert_eq!(
        serde_json::from_str::<Value>(answer["created"]["body"].as_str().unwrap()).unwrap(),
        created
    );
    assert_eq!(answer["created"]["text"], answer["created"]["body"]);
    assert_eq!(answer["created"]["key"], "ACME-1");
    assert_eq!(
        answer["edited"],
        json!({"status": 204, "ok": true, "body": ""})
    );
    assert_eq!(answer["found"], json!({"status": 200, "total": 1}));

    fake.assert_all_verified();
    let seen = fake.seen();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    for s in &seen {
        s.assert_from(&site.client_key);
        assert!(s.header("authorization").unwrap().starts_with("JWT "));
        let claims = s.claims.as_ref().unwrap();
        assert_eq!(claims["iss"], APP_KEY);
    }
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/rest/api/3/issue")
    );
    assert!(seen[0]
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(
        seen[0].json(),
        json!({"fields": {"project": {"key": "ACME"}, "summary": "From a script", "issuetype": {"name": "Task"}}})
    );
    assert_eq!(
        (seen[1].method.as_str(), seen[1].path.as_str()),
        ("PUT", "/rest/api/3/issue/ACME-1")
    );
    assert!(
        seen[1]
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "an object body is sent as JSON: {:?}",
        seen[1].headers
    );
    assert_eq!(
        seen[1].json(),
        json!({"fields": {"labels": ["from-script"]}})
    );
    assert_eq!(
        (seen[2].method.as_str(), seen[2].path.as_str()),
        ("GET", "/rest/api/3/search")
    );
    assert_eq!(
        seen[2].param("jql").as_deref(),
        Some("project = ACME ORDER BY created")
    );
    assert_eq!(seen[2].param("fields").as_deref(), Some("summary,status"));
    assert_eq!(seen[2].param("maxResults").as_deref(), Some("2"));
    assert!(seen[2].param("jwt").is_none(), "the token is in the header");
}

/// Confluence lives under `/wiki`: a script may write the path with or
/// without it; both reach `/wiki/rest/api/content`, signed with a qsh
/// computed without the context path.
async fn a_confluence_script_is_signed_without_the_context_path(backend: Backend) {
    let fake = FakeProduct::start().await;
    let app = spawn_app_with(backend, bridging).await;
    let admin = AdminApi::of(&app.address);
    let site = fake.connect_site("confluence");
    install(&app, &site).await;
    fake.on(
        "POST",
        "/wiki/rest/api/content",
        vec![Answer::json(200, json!({"id": "98305", "type": "page"}))],
    );
    fake.on(
        "GET",
        "/wiki/rest/api/content",
        vec![Answer::json(200, json!({"results": [], "size": 0}))],
    );
    let script = r#"
export default async function (request, context) {
  const created = await context.app.fetch("/wiki/rest/api/content", {
    method: "POST",
    headers: {"content-type": "application/json"},
    body: JSON.stringify({type: "page", title: "Hello", space: {key: "DOC"}}),
  });
  const found = await context.app.fetch("/rest/api/content?spaceKey=DOC&title=Hello%20World&expand=version");
  return {statusCode: 200, body: JSON.stringify({
    created: created.status, id: (await created.json()).id,
    found: found.status, size: (await found.json()).size,
  })};
}
"#;
    let trigger = create(
        &admin,
        json!({"name": "make-page", "mode": "sync", "tenant": site.client_key, "script": script}),
    )
    .await;
    let (status, body) = call_sync(&app, &trigger, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"created": 200, "id": "98305", "found": 200, "size": 0})
    );
    fake.assert_all_verified();
    let seen = fake.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    for s in &seen {
        s.assert_from(&site.client_key);
        assert_eq!(s.path, "/wiki/rest/api/content");
    }
    assert_eq!(
        seen[0].claims.as_ref().unwrap()["qsh"],
        qsh_of("POST&/rest/api/content&").as_str()
    );
    assert_eq!(
        seen[0].json(),
        json!({"type": "page", "title": "Hello", "space": {"key": "DOC"}})
    );
    assert_eq!(seen[1].method, "GET");
    assert_eq!(seen[1].param("title").as_deref(), Some("Hello World"));
    assert_eq!(seen[1].param("spaceKey").as_deref(), Some("DOC"));

    // Through the proxy too, with or without `/wiki`.
    let (_, key) = create_key(&admin, json!({"name": "wiki"})).await;
    fake.on(
        "GET",
        "/wiki/rest/api/space",
        vec![Answer::json(200, json!({"results": [{"key": "DOC"}]}))],
    );
    for path in ["/rest/api/space?limit=1", "/wiki/rest/api/space?limit=1"] {
        let response = proxy(
            &app,
            Some(&key),
            reqwest::Method::GET,
            &site.client_key,
            path,
            None,
        )
        .await;
        assert_eq!(response.status().as_u16(), 200, "{path}");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"results": [{"key": "DOC"}]}),
            "{path}"
        );
    }
    let seen = fake.seen_at("/wiki/rest/api/space");
    assert_eq!(seen.len(), 2, "{seen:#?}");
    for s in &seen {
        s.assert_from(&site.client_key);
        assert_eq!(s.param("limit").as_deref(), Some("1"));
        assert_eq!(
            s.claims.as_ref().unwrap()["qsh"],
            qsh_of("GET&/rest/api/space&limit=1").as_str()
        );
    }
    fake.assert_all_verified();
}

/// An async trigger's script runs from the queue and still acts on its tenant.
async fn an_async_script_calls_the_product_from_the_queue(backend: Backend) {
    let fake = FakeProduct::start().await;
    let app = spawn_app_with(backend, bridging).await;
    let admin = AdminApi::of(&app.address);
    let site = fake.connect_site("jira");
    install(&app, &site).await;
    fake.on(
        "POST",
        "/rest/api/3/issue/ACME-7/comment",
        vec![Answer::json(201, json!({"id": "555"}))],
    );
    let script = r#"
export default async function (request, context) {
  const r = await context.app.fetch("/rest/api/3/issue/ACME-7/comment", {
    method: "POST",
    body: {body: JSON.parse(request.body).text},
  });
  return {statusCode: 200, body: `${r.status} ${r.body}`};
}
"#;
    let trigger = create(
        &admin,
        json!({"name": "comment", "mode": "async", "tenant": site.client_key, "script": script}),
    )
    .await;
    let response = app
        .client
        .post(app.url(&path_of(&trigger)))
        .body(r#"{"text": "Build 42 passed"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let log = admin
        .wait(
            &format!("/triggers/{}/invocations", trigger["id"].as_str().unwrap()),
            Duration::from_secs(15),
            |log| {
                matches!(
                    log["data"][0]["state"].as_str(),
                    Some("completed" | "failed")
                )
            },
        )
        .await;
    let run = &log["data"][0];
    assert_eq!(run["state"], "completed", "{run:#}");
    assert_eq!(run["response"]["body"], r#"201 {"id":"555"}"#, "{run:#}");
    fake.assert_all_verified();
    let seen = fake.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    seen[0].assert_from(&site.client_key);
    assert_eq!(seen[0].json(), json!({"body": "Build 42 passed"}));
}

/// A subscription transform gets `context.app.fetch` for the event's tenant.
async fn a_transform_reads_the_product_for_the_events_tenant(backend: Backend) {
    let fake = FakeProduct::start().await;
    let receiver = Receiver::start().await;
    let app = spawn_app_with(backend, bridging).await;
    let admin = AdminApi::of(&app.address);
    let site = fake.connect_site("jira");
    install(&app, &site).await;
    fake.on(
        "GET",
        "/rest/api/3/issue/TEST-4",
        vec![Answer::json(
            200,
            json!({"key": "TEST-4", "fields": {"summary": "Fresh from the API"}}),
        )],
    );
    let (_, secret) = admin
        .subscribe(json!({
            "url": receiver.url("/enriched"),
            "events": ["jira:issue_created"],
            "transform": "export default async function (envelope, context) {
                const r = await context.app.fetch(`/rest/api/3/issue/${envelope.payload.issue.key}?fields=summary`);
                const issue = await r.json();
                return {key: issue.key, summary: issue.fields.summary, status: r.status};
            }",
        }))
        .await;
    let response = app
        .webhook(
            &site,
            "jira:issue_created",
            fixture("payloads/jira_issue_created.json"),
            &[],
        )
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let got = receiver
        .wait_for("/enriched", 1, Duration::from_secs(15))
        .await;
    verify(&secret, &got[0]).expect("the transformed body is signed");
    assert_eq!(
        got[0].json(),
        json!({"key": "TEST-4", "summary": "Fresh from the API", "status": 200})
    );
    fake.assert_all_verified();
    let seen = fake.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    seen[0].assert_from(&site.client_key);
    assert_eq!(seen[0].param("fields").as_deref(), Some("summary"));
}

/// A Forge installation is called at its `apiBaseUrl` with the app system
/// token Forge sent with an event as a bearer token; one that has expired is
/// not sent at all; a fresher one (expiring later) replaces it.
async fn forge_installations_are_called_with_the_newest_system_token(backend: Backend) {
    let fake = FakeProduct::start().await;
    let forge = Forge::start().await;
    let app = spawn_app_with(backend, |raw| forge.configure(raw)).await;
    let admin = AdminApi::of(&app.address);
    let api_base = format!("{}/ex/jira/{CLOUD_ID}", fake.url);
    let path = format!("/ex/jira/{CLOUD_ID}/rest/api/3/myself");
    fake.on(
        "GET",
        &path,
        vec![Answer::json(200, json!({"accountId": "app"}))],
    );

    // Only an expired token so far: a clear error, and no call.
    let expired = system_token(now() - 60);
    forge.event(&app, &api_base, "ACME-1", &expired).await;
    let trigger = fetching_trigger(
        &admin,
        "forge-myself",
        Some(INSTALLATION),
        "/rest/api/3/myself",
    )
    .await;
    let (status, body) = call_sync(&app, &trigger, "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("error: ") && body.to_lowercase().contains("expired"),
        "{body}"
    );
    assert!(fake.seen().is_empty(), "{:#?}", fake.seen());

    // A newer event brings a valid token: that one is used.
    let first = system_token(now() + 1800);
    fake.trust_bearer(INSTALLATION, &first);
    forge.event(&app, &api_base, "ACME-2", &first).await;
    let (status, body) = call_sync(&app, &trigger, "").await;
    assert_eq!((status, body.as_str()), (200, r#"200 {"accountId":"app"}"#));
    let seen = fake.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].path, path);
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {first}").as_str())
    );

    // And a fresher one after it.
    let second = system_token(now() + 3600);
    fake.trust_bearer(INSTALLATION, &second);
    forge.event(&app, &api_base, "ACME-3", &second).await;
    let (_, body) = call_sync(&app, &trigger, "").await;
    assert!(body.starts_with("200 "), "{body}");
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].header("authorization"),
        Some(format!("Bearer {second}").as_str())
    );

    // The installation id is an ARI with a `/`: percent-encoded in paths.
    let encoded = INSTALLATION.replace('/', "%2F");
    let tenant = admin.get(&format!("/tenants/{encoded}")).await;
    assert_eq!(tenant["client_key"], INSTALLATION, "{tenant:#}");
    assert_eq!(tenant["kind"], "forge");
    assert_eq!(tenant["event_count"], 3, "{tenant:#}");
    let (_, key) = create_key(&admin, json!({"name": "forge"})).await;
    let response = proxy(
        &app,
        Some(&key),
        reqwest::Method::GET,
        &encoded,
        "/rest/api/3/myself",
        None,
    )
    .await;
    assert_eq!(response.status().as_u16(), 200);
    let seen = fake.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].path, path);
    assert_eq!(
        seen[2].header("authorization"),
        Some(format!("Bearer {second}").as_str())
    );
    fake.assert_all_verified();
}

/// An admin-webhook source is called with the API token an admin attached
/// (basic auth); without one, nothing is sent; the token is never read back.
async fn admin_webhook_sources_are_called_with_their_api_token(backend: Backend) {
    let fake = FakeProduct::start().await;
    let app = spawn_app_with(backend, bridging).await;
    let admin = AdminApi::of(&app.address);
    let (status, source) = admin
        .post(
            "/sources",
            json!({"type": "jira-admin", "name": "acme", "base_url": fake.url}),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    let id = source["id"].as_str().unwrap().to_string();
    let (email, token) = ("bot@acme.test", "ATATT3xFfGF0-not-a-real-token");
    fake.trust_basic(&id, email, token);
    let (_, key) = create_key(&admin, json!({"name": "ci"})).await;
    fake.on(
        "GET",
        "/rest/api/3/myself",
        vec![Answer::json(200, json!({"emailAddress": email}))],
    );
    let trigger = fetching_trigger(&admin, "admin-myself", Some(&id), "/rest/api/3/myself").await;

    // No API token yet: neither the script nor the proxy sends anything.
    let (_, body) = call_sync(&app, &trigger, "").await;
    assert!(body.starts_with("error: "), "{body}");
    let response = proxy(
        &app,
        Some(&key),
        reqwest::Method::GET,
        &id,
        "/rest/api/3/myself",
        None,
    )
    .await;
    assert!(!response.status().is_success(), "{}", response.status());
    assert!(fake.seen().is_empty(), "{:#?}", fake.seen());

    let (status, answer) = admin
        .call(
            reqwest::Method::PUT,
            &format!("/sources/{id}/api-token"),
            Some(json!({"email": email, "token": token})),
        )
        .await;
    assert_eq!(status, 204, "{answer}");
    let shown = admin.get(&format!("/sources/{id}")).await;
    assert_eq!(shown["api_token"]["email"], email, "{shown:#}");
    for path in [
        format!("/sources/{id}"),
        "/sources".into(),
        "/tenants".into(),
    ] {
        let text = admin.get(&path).await.to_string();
        assert!(!text.contains(token), "{path} shows the token");
    }

    let (_, body) = call_sync(&app, &trigger, "").await;
    assert_eq!(body, format!(r#"200 {{"emailAddress":"{email}"}}"#));
    let response = proxy(
        &app,
        Some(&key),
        reqwest::Method::GET,
        &id,
        "/rest/api/3/myself",
        None,
    )
    .await;
    assert_eq!(response.status().as_u16(), 200);
    let seen = fake.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let basic = format!("Basic {}", STANDARD.encode(format!("{email}:{token}")));
    for s in &seen {
        s.assert_from(&id);
        assert_eq!(s.header("authorization"), Some(basic.as_str()));
    }

    let (status, _) = admin
        .call(
            reqwest::Method::DELETE,
            &format!("/sources/{id}/api-token"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let shown = admin.get(&format!("/sources/{id}")).await;
    assert!(shown["api_token"].is_null(), "{shown:#}");
    let response = proxy(
        &app,
        Some(&key),
        reqwest::Method::GET,
        &id,
        "/rest/api/3/myself",
        None,
    )
    .await;
    assert!(!response.status().is_success(), "{}", response.status());
    assert_eq!(fake.seen().len(), 2, "nothing sent once the token is gone");
    fake.assert_all_verified();
}

/// `context.app.fetch` rejects with the reason: a trigger without a tenant,
/// more than 20 calls in one run, an uninstalled tenant.
async fn script_fetches_fail_with_a_reason(backend: Backend) {
    let fake = FakeProduct::start().await;
    let app = spawn_app_with(backend, bridging).await;
    let admin = AdminApi::of(&app.address);
    let leaving = fake.connect_site("jira");
    let staying = fake.connect_site("jira");
    assert_eq!(app.install_at(&leaving, now() - 30).await.status(), 204);
    install(&app, &staying).await;

    let lonely = fetching_trigger(&admin, "lonely", None, "/rest/api/3/myself").await;
    let (status, body) = call_sync(&app, &lonely, "").await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("error: ") && body.to_lowercase().contains("no tenant"),
        "{body}"
    );

    // Only paths under the tenant's base URL: not a full URL, not `..`.
    for (name, path) in [
        ("absolute", format!("{}/open/elsewhere", fake.url)),
        (
            "elsewhere",
            "https://evil.example/rest/api/3/myself".to_string(),
        ),
        ("climbing", "/rest/api/3/../../../open/x".to_string()),
        ("encoded", "/rest/api/3/issue%2F..%2F..%2Fx".to_string()),
    ] {
        let trigger = fetching_trigger(&admin, name, Some(&staying.client_key), &path).await;
        let (status, body) = call_sync(&app, &trigger, "").await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.starts_with("error: "), "{path}: {body}");
    }
    assert!(fake.seen().is_empty(), "{:#?}", fake.seen());

    let greedy = create(
        &admin,
        json!({"name": "greedy", "mode": "sync", "tenant": staying.client_key, "script": r#"
export default async function (request, context) {
  let ok = 0;
  let error = "";
  for (let i = 0; i < 25; i++) {
    try {
      await context.app.fetch(`/rest/api/3/issue/ACME-${i}`);
      ok++;
    } catch (e) {
      error = e.message;
      break;
    }
  }
  return {statusCode: 200, body: JSON.stringify({ok, error})};
}"#}),
    )
    .await;
    let (status, body) = call_sync(&app, &greedy, "").await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["ok"], 20, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("too many"),
        "{answer}"
    );
    assert_eq!(fake.seen().len(), 20);

    let gone = fetching_trigger(
        &admin,
        "gone",
        Some(&leaving.client_key),
        "/rest/api/3/myself",
    )
    .await;
    let (_, body) = call_sync(&app, &gone, "").await;
    assert!(body.starts_with("200 "), "{body}");
    uninstall(&app, &leaving).await;
    let (_, body) = call_sync(&app, &gone, "").await;
    assert!(
        body.starts_with("error: ") && body.to_lowercase().contains("uninstalled"),
        "{body}"
    );
    assert_eq!(
        fake.seen().len(),
        21,
        "nothing sent for an uninstalled tenant"
    );
    fake.assert_all_verified();
}

/// The global `fetch` goes through the delivery guard: a loopback URL is
/// refused by default, and allowed (without the tenant's credentials) when
/// private destinations are.
#[tokio::test]
async fn global_fetch_goes_through_the_destination_guard() {
    let fake = FakeProduct::start().await;
    let script = format!(
        r#"export default async function () {{
  try {{
    const r = await fetch({:?}, {{method: "POST", headers: {{"x-probe": "1", "authorization": "Bearer the-scripts-own"}}, body: "ping"}});
    return {{statusCode: 200, body: `${{r.status}}`}};
  }} catch (e) {{
    return {{statusCode: 200, body: `error: ${{e.message}}`}};
  }}
}}"#,
        format!("{}/open/ping", fake.url)
    );
    for allow in [false, true] {
        let app = spawn_app_with(Backend::Sqlite, |raw| {
            bridging(raw);
            raw.allow_private_destinations = allow;
        })
        .await;
        let admin = AdminApi::of(&app.address);
        let site = fake.connect_site("jira");
        install(&app, &site).await;
        let trigger = create(
            &admin,
            json!({"name": "outbound", "mode": "sync", "tenant": site.client_key, "script": script}),
        )
        .await;
        let (status, body) = call_sync(&app, &trigger, "").await;
        assert_eq!(status, 200, "{body}");
        if allow {
            assert_eq!(body, "200");
        } else {
            assert!(
                body.starts_with("error: ") && body.to_lowercase().contains("refused"),
                "{body}"
            );
            assert!(fake.seen().is_empty(), "{:#?}", fake.seen());
        }
    }
    let seen = fake.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].body.as_str()),
        ("POST", "ping")
    );
    assert_eq!(seen[0].header("x-probe"), Some("1"));
    // The script's own credentials go with its own fetch; the tenant's stay
    // with context.app.fetch.
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer the-scripts-own")
    );
}

/// The proxy: the product's answer as it came, for a GET with a query and a
/// POST with a body; every refusal with its status and the JSON error shape,
/// and nothing sent to the product for any of them.
async fn the_proxy_forwards_signed_within_the_keys_scope(backend: Backend) {
    let fake = FakeProduct::start().await;
    let app = spawn_app_with(backend, bridging).await;
    let admin = AdminApi::of(&app.address);
    let site = fake.connect_site("jira");
    let other = fake.connect_site("jira");
    let leaving = fake.connect_site("jira");
    let mut unreachable = Site::new("jira");
    unreachable.base_url = closed_url();
    install(&app, &site).await;
    install(&app, &other).await;
    install(&app, &unreachable).await;
    assert_eq!(app.install_at(&leaving, now() - 30).await.status(), 204);
    uninstall(&app, &leaving).await;

    let (full_id, full) = create_key(&admin, json!({"name": "ci"})).await;
    let (_, scoped) = create_key(
        &admin,
        json!({"name": "issues-only", "tenants": [site.client_key], "methods": ["GET", "POST"],
               "paths": ["/rest/api/3/issue"]}),
    )
    .await;
    fake.on(
        "GET",
        "/rest/api/3/search",
        vec![Answer::json(
            200,
            json!({"total": 2, "issues": [{"key": "ACME-1"}, {"key": "ACME-2"}]}),
        )],
    );
    fake.on(
        "POST",
        "/rest/api/3/issue",
        vec![Answer {
            status: 201,
            headers: vec![("content-type".into(), "application/vnd.acme+json".into())],
            body: r#"{"id":"10001","key":"ACME-3"}"#.into(),
        }],
    );
    fake.on(
        "GET",
        "/rest/api/3/issue/404",
        vec![Answer::json(
            404,
            json!({"errorMessages": ["Issue does not exist"]}),
        )],
    );

    // A GET with a query, answered as it came.
    let response = proxy(
        &app,
        Some(&full),
        reqwest::Method::GET,
        &site.client_key,
        "/rest/api/3/search?jql=summary%20~%20%22a%2Bb*%22%20AND%20project%20%3D%20ACME\
         &maxResults=2&fields=summary,status&expand=schema&expand=names&q=%E2%9C%93",
        None,
    )
    .await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json;charset=UTF-8"
    );
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"total": 2, "issues": [{"key": "ACME-1"}, {"key": "ACME-2"}]})
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    seen[0].assert_from(&site.client_key);
    assert_eq!(seen[0].path, "/rest/api/3/search");
    assert_eq!(
        seen[0].param("jql").as_deref(),
        Some(r#"summary ~ "a+b*" AND project = ACME"#)
    );
    assert_eq!(seen[0].param("maxResults").as_deref(), Some("2"));
    assert_eq!(seen[0].param("q").as_deref(), Some("\u{2713}"));
    let mut expand = seen[0].params("expand");
    expand.sort();
    assert_eq!(expand, ["names", "schema"]);
    assert_eq!(seen[0].param("fields").as_deref(), Some("summary,status"));
    assert!(
        seen[0].header("authorization").unwrap().starts_with("JWT "),
        "signed as the app, not with the API key"
    );
    assert!(
        !seen[0].headers.iter().any(|(_, v)| v.contains(&full)),
        "the API key is not forwarded"
    );

    // A POST with a body, its status, body and content type as they came.
    let sent = r#"{"fields":{"project":{"key":"ACME"},"summary":"Via the proxy"}}"#;
    let response = proxy(
        &app,
        Some(&full),
        reqwest::Method::POST,
        &site.client_key,
        "/rest/api/3/issue",
        Some(sent),
    )
    .await;
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.acme+json"
    );
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"id":"10001","key":"ACME-3"}"#
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    seen[1].assert_from(&site.client_key);
    assert_eq!(seen[1].method, "POST");
    assert_eq!(seen[1].body, sent);
    assert!(seen[1]
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    // The product's own error status is passed on as it came.
    let response = proxy(
        &app,
        Some(&full),
        reqwest::Method::GET,
        &site.client_key,
        "/rest/api/3/issue/404",
        None,
    )
    .await;
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"errorMessages": ["Issue does not exist"]})
    );

    // The scoped key: its tenant, its methods, its paths on segment boundaries.
    for (path, status) in [
        ("/rest/api/3/issue", 200),
        ("/rest/api/3/issue/10001", 200),
        ("/rest/api/3/issuetype", 403),
        ("/rest/api/3/myself", 403),
    ] {
        let response = proxy(
            &app,
            Some(&scoped),
            reqwest::Method::GET,
            &site.client_key,
            path,
            None,
        )
        .await;
        assert_eq!(response.status().as_u16(), status, "{path}");
        if status == 403 {
            error_body(response).await;
        }
    }
    let seen_before = fake.seen().len();
    let response = proxy(
        &app,
        Some(&scoped),
        reqwest::Method::DELETE,
        &site.client_key,
        "/rest/api/3/issue/10001",
        None,
    )
    .await;
    assert_eq!(response.status().as_u16(), 403, "method outside the scope");
    error_body(response).await;
    let response = proxy(
        &app,
        Some(&scoped),
        reqwest::Method::GET,
        &other.client_key,
        "/rest/api/3/issue/10001",
        None,
    )
    .await;
    assert_eq!(response.status().as_u16(), 403, "tenant outside the scope");
    error_body(response).await;

    // Keys: missing, wrong.
    for key in [None, Some("hr_not-a-key-at-all")] {
        let response = proxy(
            &app,
            key,
            reqwest::Method::GET,
            &site.client_key,
            "/rest/api/3/myself",
            None,
        )
        .await;
        assert_eq!(response.status().as_u16(), 401, "{key:?}");
        error_body(response).await;
    }
    // Tenants: unknown, uninstalled, unreachable.
    let response = proxy(
        &app,
        Some(&full),
        reqwest::Method::GET,
        "jira:no-such-tenant",
        "/rest/api/3/myself",
        None,
    )
    .await;
    assert_eq!(response.status().as_u16(), 404);
    error_body(response).await;
    let response = proxy(
        &app,
        Some(&full),
        reqwest::Method::GET,
        &leaving.client_key,
        "/rest/api/3/myself",
        None,
    )
    .await;
    assert_eq!(response.status().as_u16(), 404, "uninstalled");
    error_body(response).await;
    let response = proxy(
        &app,
        Some(&full),
        reqwest::Method::GET,
        &unreachable.client_key,
        "/rest/api/3/myself",
        None,
    )
    .await;
    assert_eq!(response.status().as_u16(), 502);
    error_body(response).await;
    // Paths that try to leave the API: sent as written.
    for target in [
        format!("/proxy/{}/rest/api/3/../../../admin", site.client_key),
        format!("/proxy/{}/rest/api/3/issue/..", site.client_key),
        format!("/proxy/{}/rest//api/3/myself", site.client_key),
        format!("/proxy/{}//rest/api/3/myself", site.client_key),
        format!(
            "/proxy/{}/rest/api/3/issue%2F..%2F..%2Fadmin",
            site.client_key
        ),
        format!("/proxy/{}/rest/api/3/issue%2f10001", site.client_key),
        // Path parameters, which Tomcat strips before resolving `..`.
        format!(
            "/proxy/{}/rest/api/3/issue/..;/..;/..;/rest/api/3/users/search",
            site.client_key
        ),
    ] {
        assert_eq!(
            raw_status(&app.address, "GET", &target, &full).await,
            400,
            "{target}"
        );
    }
    // Only the methods REST APIs answer: TRACE would echo the credential.
    let target = format!("/proxy/{}/rest/api/3/myself", site.client_key);
    assert_eq!(raw_status(&app.address, "TRACE", &target, &full).await, 400);
    assert_eq!(
        fake.seen().len(),
        seen_before,
        "nothing refused reached the product: {:#?}",
        &fake.seen()[seen_before..]
    );

    // A deleted key no longer works.
    let (status, _) = admin
        .call(
            reqwest::Method::DELETE,
            &format!("/api-keys/{full_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let response = proxy(
        &app,
        Some(&full),
        reqwest::Method::GET,
        &site.client_key,
        "/rest/api/3/myself",
        None,
    )
    .await;
    assert_eq!(response.status().as_u16(), 401, "deleted key");
    error_body(response).await;
    assert_eq!(fake.seen().len(), seen_before);
    fake.assert_all_verified();
}

/// 429 with `Retry-After: 1`: a GET is tried again after that long and gets
/// the 200; a POST is not retried and gets the 429 as it came.
async fn the_proxy_retries_idempotent_calls_after_retry_after(backend: Backend) {
    let fake = FakeProduct::start().await;
    let app = spawn_app_with(backend, bridging).await;
    let admin = AdminApi::of(&app.address);
    let site = fake.connect_site("jira");
    install(&app, &site).await;
    let (_, key) = create_key(&admin, json!({"name": "ci"})).await;
    let busy = || {
        Answer::json(429, json!({"errorMessages": ["Rate limit exceeded"]}))
            .header("Retry-After", "1")
    };
    fake.on(
        "GET",
        "/rest/api/3/myself",
        vec![busy(), Answer::json(200, json!({"accountId": "app"}))],
    );
    fake.on(
        "POST",
        "/rest/api/3/issue",
        vec![busy(), Answer::json(201, json!({"key": "ACME-1"}))],
    );

    let started = Instant::now();
    let response = proxy(
        &app,
        Some(&key),
        reqwest::Method::GET,
        &site.client_key,
        "/rest/api/3/myself",
        None,
    )
    .await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"accountId": "app"})
    );
    let tries = fake.seen_at("/rest/api/3/myself");
    assert_eq!(tries.len(), 2, "{tries:#?}");
    let waited = tries[1].at - tries[0].at;
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    for t in &tries {
        t.assert_from(&site.client_key);
    }

    let response = proxy(
        &app,
        Some(&key),
        reqwest::Method::POST,
        &site.client_key,
        "/rest/api/3/issue",
        Some("{}"),
    )
    .await;
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(
        response.headers()["content-type"],
        "application/json;charset=UTF-8"
    );
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"errorMessages": ["Rate limit exceeded"]})
    );
    assert_eq!(
        fake.seen_at("/rest/api/3/issue").len(),
        1,
        "a POST is not retried"
    );
    fake.assert_all_verified();
}

/// A tenant's event count and last event time, in the list and on its own.
async fn tenants_show_their_event_counts(backend: Backend) {
    let app = spawn_app_with(backend, bridging).await;
    let admin = AdminApi::of(&app.address);
    let site = Site::new("jira");
    let quiet = Site::new("confluence");
    install(&app, &site).await;
    install(&app, &quiet).await;
    let one = admin.get(&format!("/tenants/{}", site.client_key)).await;
    assert_eq!(one["client_key"], site.client_key.as_str(), "{one:#}");
    assert_eq!(one["kind"], "connect");
    assert_eq!(one["product"], "jira");
    assert_eq!(one["base_url"], site.base_url.as_str());
    assert_eq!(one["state"], "installed");
    assert!(one["installed_at"].is_string(), "{one:#}");
    assert!(
        one.get("last_event_at").is_some_and(Value::is_null),
        "{one:#}"
    );
    assert_eq!(one["event_count"], 0);

    let response = app
        .webhook(
            &site,
            "jira:issue_created",
            fixture("payloads/jira_issue_created.json"),
            &[],
        )
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let one = admin.get(&format!("/tenants/{}", site.client_key)).await;
    assert_eq!(one["event_count"], 1, "{one:#}");
    let last = one["last_event_at"].as_str().expect("a time");
    chrono::DateTime::parse_from_rfc3339(last).unwrap_or_else(|e| panic!("{last}: {e}"));
    // Percent-encoded, the same.
    let encoded = admin
        .get(&format!("/tenants/{}", site.client_key.replace(':', "%3A")))
        .await;
    assert_eq!(encoded["client_key"], site.client_key.as_str());

    let list = admin.get("/tenants").await;
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{list:#}");
    let find = |key: &str| {
        data.iter()
            .find(|t| t["client_key"] == key)
            .unwrap()
            .clone()
    };
    assert_eq!(find(&site.client_key)["event_count"], 1);
    assert_eq!(find(&site.client_key)["last_event_at"], last);
    assert_eq!(find(&quiet.client_key)["event_count"], 0);
    assert!(find(&quiet.client_key)["last_event_at"].is_null());

    let (status, body) = admin
        .call(reqwest::Method::GET, "/tenants/jira:no-such-tenant", None)
        .await;
    assert_eq!(status, 404, "{body}");
}

/// API keys: created with the key shown once, listed without it, deleted;
/// bad input refused; the admin token needed.
#[tokio::test]
async fn api_keys_are_created_listed_and_deleted() {
    let app = spawn_app_with(Backend::Sqlite, bridging).await;
    let admin = AdminApi::of(&app.address);
    let site = Site::new("jira");
    install(&app, &site).await;
    let (status, created) = admin
        .post(
            "/api-keys",
            json!({"name": "ci", "tenants": [site.client_key], "methods": ["GET", "POST"],
                   "paths": ["/rest/api/3/issue"]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.len() >= 22, "at least 128 bits: {key}");
    let (_, other_key) = create_key(&admin, json!({"name": "everything"})).await;
    assert_ne!(key, other_key);

    let list = admin.get("/api-keys").await;
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{list:#}");
    let text = list.to_string();
    assert!(
        !text.contains(&key) && !text.contains(&other_key),
        "{list:#}"
    );
    let ci = data.iter().find(|k| k["id"] == id.as_str()).unwrap();
    assert_eq!(ci["name"], "ci");
    assert!(ci.get("key").is_none(), "{ci}");
    let (status, one) = admin
        .call(reqwest::Method::GET, &format!("/api-keys/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(&one, ci);
    let (status, _) = admin
        .call(reqwest::Method::GET, "/api-keys/no-such-key", None)
        .await;
    assert_eq!(status, 404);

    let (status, _) = admin
        .call(reqwest::Method::DELETE, &format!("/api-keys/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = admin
        .call(reqwest::Method::DELETE, &format!("/api-keys/{id}"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = admin
        .call(reqwest::Method::DELETE, "/api-keys/no-such-key", None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        admin.get("/api-keys").await["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    for body in [
        json!({}),
        json!({"name": ""}),
        json!({"name": "x", "paths": ["rest/api/3/issue"]}),
        json!({"name": "x", "methods": ["FETCH"]}),
        json!({"name": "x", "methods": ["G E T"]}),
    ] {
        let (status, answer) = admin.post("/api-keys", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["error"].is_string() && answer["detail"].is_string(),
            "{answer}"
        );
    }

    let reconcile = format!("/admin/api/v1/tenants/{}/reconcile", site.client_key);
    for (method, path) in [
        (reqwest::Method::GET, "/admin/api/v1/api-keys".to_string()),
        (reqwest::Method::POST, "/admin/api/v1/api-keys".into()),
        (
            reqwest::Method::DELETE,
            format!("/admin/api/v1/api-keys/{id}"),
        ),
        (reqwest::Method::GET, "/admin/api/v1/tenants".into()),
        (reqwest::Method::POST, reconcile),
    ] {
        for token in [None, Some("admin-token-wrong-guess")] {
            let mut request = app
                .client
                .request(method.clone(), app.url(&path))
                .json(&json!({"name": "sneaky"}));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), 401, "{method} {path} {token:?}");
        }
    }
    assert_eq!(
        admin.get("/api-keys").await["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// A trigger's tenant must be a known one.
#[tokio::test]
async fn a_trigger_names_a_known_tenant() {
    let app = spawn_app_with(Backend::Sqlite, bridging).await;
    let admin = AdminApi::of(&app.address);
    let site = Site::new("jira");
    install(&app, &site).await;
    let (status, answer) = admin
        .post(
            "/triggers",
            json!({"name": "stranger", "tenant": "jira:no-such-tenant"}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    let trigger = create(&admin, json!({"name": "plain"})).await;
    assert!(trigger["tenant"].is_null(), "{trigger}");
    let path = format!("/triggers/{}", trigger["id"].as_str().unwrap());
    let (status, answer) = admin
        .call(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"tenant": "jira:no-such-tenant"})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = admin
        .call(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"tenant": site.client_key})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(admin.get(&path).await["tenant"], site.client_key.as_str());
}

/// An answer over `bridge_max_response` is refused (502) rather than carried,
/// to the proxy and to a script alike; and one tenant's calls beyond its rate
/// limit wait their turn for up to a second, then are answered 429.
#[tokio::test]
async fn oversized_answers_and_a_flood_of_calls_are_bounded() {
    let fake = FakeProduct::start().await;
    let app = spawn_app_with(Backend::Sqlite, |raw| {
        bridging(raw);
        raw.bridge_max_response = 4096;
        raw.bridge_rate_limit = 2;
    })
    .await;
    let admin = AdminApi::of(&app.address);
    let site = fake.connect_site("jira");
    install(&app, &site).await;
    let (_, key) = create_key(&admin, json!({"name": "ci"})).await;
    let big = json!({"values": "x".repeat(8192)});
    fake.on(
        "GET",
        "/rest/api/3/big",
        vec![Answer::json(200, big.clone()), Answer::json(200, big)],
    );
    let response = proxy(
        &app,
        Some(&key),
        reqwest::Method::GET,
        &site.client_key,
        "/rest/api/3/big",
        None,
    )
    .await;
    assert_eq!(response.status().as_u16(), 502);
    let body = error_body(response).await;
    assert!(
        body["detail"].as_str().unwrap().contains("over 4096 bytes"),
        "{body}"
    );

    // Two calls a second for this tenant: a burst of eight gets some 429s
    // with Retry-After, and the rest through; the product never sees more
    // than the limit lets by.
    fake.on(
        "GET",
        "/rest/api/3/myself",
        (0..8).map(|_| Answer::json(200, json!({}))).collect(),
    );
    let calls = (0..8).map(|_| {
        proxy(
            &app,
            Some(&key),
            reqwest::Method::GET,
            &site.client_key,
            "/rest/api/3/myself",
            None,
        )
    });
    let answers = futures_util::future::join_all(calls).await;
    let mut limited = 0;
    for answer in &answers {
        match answer.status().as_u16() {
            200 => {}
            429 => {
                limited += 1;
                assert!(answer.headers().contains_key("retry-after"));
            }
            other => panic!("unexpected {other}"),
        }
    }
    let through = answers.len() - limited;
    assert!(limited >= 1, "nothing was limited");
    assert_eq!(fake.seen_at("/rest/api/3/myself").len(), through);
    assert!(
        through <= 6,
        "{through} calls got through in about a second"
    );
    fake.assert_all_verified();
}

/// The README's example trigger, taken from the README as written: a failed
/// deploy posted to it becomes a Jira issue created as the app, and the
/// caller gets Jira's answer.
#[tokio::test]
async fn the_readme_trigger_creates_a_jira_issue() {
    let readme = std::fs::read_to_string(format!("{}/README.md", env!("CARGO_MANIFEST_DIR")))
        .expect("README.md is readable");
    let start = readme
        .find("<<'JSON'\n")
        .expect("the README has the trigger example")
        + "<<'JSON'\n".len();
    let end = start + readme[start..].find("\nJSON\n").expect("its JSON ends");
    let mut body: Value = serde_json::from_str(&readme[start..end]).expect("its JSON parses");

    let fake = FakeProduct::start().await;
    let app = spawn_app_with(Backend::Sqlite, bridging).await;
    let admin = AdminApi::of(&app.address);
    let site = fake.connect_site("jira");
    install(&app, &site).await;
    body["tenant"] = json!(site.client_key);
    fake.on(
        "POST",
        "/rest/api/3/issue",
        vec![Answer::json(201, json!({"id": "10001", "key": "OPS-7"}))],
    );
    let trigger = create(&admin, body).await;
    let (status, answer) = call_sync(&app, &trigger, r#"{"service": "billing"}"#).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap(),
        json!({"id": "10001", "key": "OPS-7"})
    );
    let seen = fake.seen_at("/rest/api/3/issue");
    assert_eq!(seen.len(), 1, "{seen:#?}");
    seen[0].assert_from(&site.client_key);
    let sent = seen[0].json();
    assert_eq!(sent["fields"]["summary"], "Deploy of billing failed");
    assert_eq!(sent["fields"]["project"]["key"], "OPS");
    fake.assert_all_verified();
}

/// A HEAD through the proxy says how long the product's body would be, and
/// sends none.
#[tokio::test]
async fn a_head_through_the_proxy_keeps_the_products_length() {
    let fake = FakeProduct::start().await;
    let app = spawn_app_with(Backend::Sqlite, bridging).await;
    let admin = AdminApi::of(&app.address);
    let site = fake.connect_site("jira");
    install(&app, &site).await;
    let (_, key) = create_key(&admin, json!({"name": "ci"})).await;
    let body = json!({"key": "OPS-1", "fields": {"summary": "x".repeat(100)}});
    fake.on(
        "HEAD",
        "/rest/api/3/issue/OPS-1",
        vec![Answer::json(200, body.clone())],
    );
    let response = proxy(
        &app,
        Some(&key),
        reqwest::Method::HEAD,
        &site.client_key,
        "/rest/api/3/issue/OPS-1",
        None,
    )
    .await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-length"],
        body.to_string().len().to_string().as_str()
    );
    assert!(response.bytes().await.unwrap().is_empty());
    fake.assert_all_verified();
}

/// A key may carry an expiry: it works until then and is refused (401) after;
/// its last use shows in the listing; an expiry in the past is refused.
#[tokio::test]
async fn api_keys_expire_and_show_their_last_use() {
    let fake = FakeProduct::start().await;
    let app = spawn_app_with(Backend::Sqlite, bridging).await;
    let admin = AdminApi::of(&app.address);
    let site = fake.connect_site("jira");
    install(&app, &site).await;
    let past = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
    let (status, _) = admin
        .post("/api-keys", json!({"name": "old", "expires_at": past}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = admin
        .post(
            "/api-keys",
            json!({"name": "bad", "expires_at": "tomorrow"}),
        )
        .await;
    assert_eq!(status, 400);
    // Parses, but falls in the year 10000 in UTC, which no answer could
    // write back as an RFC 3339 time.
    let (status, body) = admin
        .post(
            "/api-keys",
            json!({"name": "far", "expires_at": "9999-12-31T23:59:59-23:00"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("10000"), "{body}");

    let expiry = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let (id, key) = create_key(
        &admin,
        json!({"name": "short", "expires_at": expiry.to_rfc3339()}),
    )
    .await;
    fake.on(
        "GET",
        "/rest/api/3/myself",
        vec![Answer::json(200, json!({})), Answer::json(200, json!({}))],
    );
    let call = || {
        proxy(
            &app,
            Some(&key),
            reqwest::Method::GET,
            &site.client_key,
            "/rest/api/3/myself",
            None,
        )
    };
    assert_eq!(call().await.status().as_u16(), 200);
    let listed = admin.get("/api-keys").await;
    let shown = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .cloned()
        .unwrap();
    assert!(shown["last_used_at"].is_string(), "{shown}");
    assert!(shown["expires_at"].is_string(), "{shown}");
    assert!(shown.get("key").is_none(), "{shown}");

    let wait = (expiry - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(100)).await;
    let response = call().await;
    assert_eq!(response.status().as_u16(), 401);
    let body = error_body(response).await;
    assert!(
        body["detail"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    assert_eq!(fake.seen_at("/rest/api/3/myself").len(), 1);
    fake.assert_all_verified();
}

/// With the database gone, the proxy and a reconciliation answer 503 with
/// Retry-After and call nothing; once it is back they work again.
#[tokio::test]
async fn the_proxy_answers_503_while_the_store_is_away() {
    let fake = FakeProduct::start().await;
    let app = spawn_app_with(Backend::Postgres, bridging).await;
    let admin = AdminApi::of(&app.address);
    let site = fake.connect_site("jira");
    install(&app, &site).await;
    let (_, key) = create_key(&admin, json!({"name": "ci"})).await;
    fake.on(
        "GET",
        "/rest/api/3/myself",
        vec![Answer::json(200, json!({"accountId": "app"}))],
    );
    let call = || {
        proxy(
            &app,
            Some(&key),
            reqwest::Method::GET,
            &site.client_key,
            "/rest/api/3/myself",
            None,
        )
    };
    let broken = app.break_store().await;
    let response = call().await;
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    error_body(response).await;
    let response = app
        .client
        .post(app.url(&format!(
            "/admin/api/v1/tenants/{}/reconcile",
            site.client_key
        )))
        .bearer_auth(crate::relay::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(fake.seen().is_empty(), "{:#?}", fake.seen());
    broken.restore().await;
    assert_eq!(call().await.status().as_u16(), 200);
    fake.assert_all_verified();
}

/// A source's API token is a credential for its site: when the site changes,
/// the token is dropped in the same write, so it is never sent to the new
/// host; the same site written again keeps it.
#[tokio::test]
async fn a_sources_api_token_does_not_follow_it_to_another_site() {
    let fake = FakeProduct::start().await;
    let elsewhere = FakeProduct::start().await;
    let app = spawn_app_with(Backend::Sqlite, bridging).await;
    let admin = AdminApi::of(&app.address);
    let (status, source) = admin
        .post(
            "/sources",
            json!({"type": "jira-admin", "name": "acme", "base_url": fake.url}),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    let id = source["id"].as_str().unwrap().to_string();
    let (email, token) = ("bot@acme.test", "ATATT3xFfGF0-not-a-real-token");
    fake.trust_basic(&id, email, token);
    let (status, _) = admin
        .call(
            reqwest::Method::PUT,
            &format!("/sources/{id}/api-token"),
            Some(json!({"email": email, "token": token})),
        )
        .await;
    assert_eq!(status, 204);
    let (_, key) = create_key(&admin, json!({"name": "ci"})).await;
    let myself = || Answer::json(200, json!({"emailAddress": email}));
    fake.on("GET", "/rest/api/3/myself", vec![myself(), myself()]);
    elsewhere.on("GET", "/rest/api/3/myself", vec![myself()]);
    let call = || {
        proxy(
            &app,
            Some(&key),
            reqwest::Method::GET,
            &id,
            "/rest/api/3/myself",
            None,
        )
    };

    // The same site again: the token stays.
    let (status, _) = admin
        .call(
            reqwest::Method::PATCH,
            &format!("/sources/{id}"),
            Some(json!({"base_url": fake.url})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(call().await.status().as_u16(), 200);

    // Another site: the token is gone, and nothing reaches the new host.
    let (status, changed) = admin
        .call(
            reqwest::Method::PATCH,
            &format!("/sources/{id}"),
            Some(json!({"base_url": elsewhere.url})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert!(changed["api_token"].is_null(), "{changed:#}");
    let response = call().await;
    assert_eq!(response.status().as_u16(), 409);
    assert!(elsewhere.seen().is_empty(), "{:#?}", elsewhere.seen());
    assert_eq!(fake.seen_at("/rest/api/3/myself").len(), 1);
    fake.assert_all_verified();
}
