//! Holes hostile testing found, each kept closed: a replayed signed install,
//! unauthenticated and stalled bodies, credentials in the log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::binary::Served;
use crate::both_backends;
use crate::helpers::*;

both_backends!(
    a_signed_install_token_is_accepted_once,
    lifecycle_bodies_are_read_only_after_the_token,
    a_stalled_body_times_out,
    nul_characters_are_bad_input_not_an_outage,
    forged_kids_from_one_address_do_not_starve_real_installs,
);

fn installed_path(site: &Site) -> String {
    format!("/{}/lifecycle/installed", site.product)
}

/// A captured `installed` token posted again, with another secret and base URL,
/// takes nothing over: not on the process that accepted it, not on another
/// one; and a second token issued in the same second cannot replace the secret.
async fn a_signed_install_token_is_accepted_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let peer = app.spawn_peer().await;
    let site = Site::new("jira");
    let iat = now() - 5;
    let token = install_token(
        KID_A,
        "keys/install-a.pem",
        install_claims(&site, &installed_path(&site), iat),
    );
    let body = site.lifecycle_body("installed");
    let first = app
        .lifecycle(&site, "installed", Some(token.clone()), &body)
        .await;
    assert_eq!(first.status(), 204);

    let mut forged = body.clone();
    forged["sharedSecret"] = json!("attacker-secret-attacker-secret");
    forged["baseUrl"] = json!("https://attacker.example");
    for address in [app.address.clone(), peer.address.clone()] {
        let response = app
            .client
            .post(format!("{address}{}", installed_path(&site)))
            .header("Authorization", format!("JWT {token}"))
            .json(&forged)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "replay to {address}");
        let detail = error_body(response).await["detail"].to_string();
        assert!(detail.contains("already used"), "{detail}");
    }
    // The same body again is refused too: a token is good for one request.
    let again = app.lifecycle(&site, "installed", Some(token), &body).await;
    assert_eq!(again.status(), 401);

    // Another token with the same `iat` (a different `exp`, so another token).
    let mut claims = install_claims(&site, &installed_path(&site), iat);
    claims["exp"] = json!(iat + 170);
    let same_second = install_token(KID_A, "keys/install-a.pem", claims);
    let response = app
        .lifecycle(&site, "installed", Some(same_second), &forged)
        .await;
    assert_eq!(response.status(), 204, "acknowledged as stale");
    let tenant = app.tenant(&site).await.unwrap();
    assert_eq!(tenant.base_url, site.base_url, "not taken over");
    // The tenant's own secret still signs its webhooks.
    let response = app.webhook(&site, "jira:issue_created", "{}", &[]).await;
    assert_eq!(response.status(), 200);

    // A genuinely newer install still replaces the installation.
    let mut moved = site.clone();
    moved.secret = format!("{}-rotated", site.secret);
    moved.base_url = "https://moved.atlassian.net".into();
    assert_eq!(app.install_at(&moved, iat + 1).await.status(), 204);
    assert_eq!(app.tenant(&site).await.unwrap().base_url, moved.base_url);
    let response = app.webhook(&moved, "jira:issue_created", "{}", &[]).await;
    assert_eq!(response.status(), 200);
}

/// Sends `head` (a request without its body) and returns the answer's status
/// line and how long it took to come.
fn status_without_body(address: &str, head: &str) -> (String, Duration) {
    let address = address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // Read until the status line is complete; the connection may stay open.
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    (
        text.lines().next().unwrap_or_default().to_string(),
        started.elapsed(),
    )
}

/// An unsigned or forged lifecycle callback announcing 9 MiB is answered from
/// its headers, without waiting for (or holding) its body; a signed one larger
/// than a lifecycle body can be is refused.
async fn lifecycle_bodies_are_read_only_after_the_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let site = Site::new("jira");
    let big = 9 * 1024 * 1024;
    for (case, authorization) in [
        ("unsigned", String::new()),
        (
            "forged",
            format!(
                "Authorization: JWT {}\r\n",
                hs256("nope", json!({"iss": site.client_key}))
            ),
        ),
    ] {
        let head = format!(
            "POST /jira/lifecycle/installed HTTP/1.1\r\nHost: x\r\n{authorization}\
             Content-Type: application/json\r\nContent-Length: {big}\r\n\r\n"
        );
        let address = app.address.clone();
        let (status, took) =
            tokio::task::spawn_blocking(move || status_without_body(&address, &head))
                .await
                .unwrap();
        assert!(status.contains(" 401 "), "{case}: {status}");
        assert!(took < Duration::from_secs(10), "{case}: took {took:?}");
    }

    let token = install_token(
        KID_A,
        "keys/install-a.pem",
        install_claims(&site, &installed_path(&site), now()),
    );
    let mut body = site.lifecycle_body("installed");
    body["description"] = json!("x".repeat(70 * 1024));
    let response = app.lifecycle(&site, "installed", Some(token), &body).await;
    assert_eq!(response.status(), 413);
    assert!(app.tenant(&site).await.is_none());
}

/// A client that announces 100 bytes and sends 10 is answered 408 once the
/// body timeout passes, and nothing is stored.
async fn a_stalled_body_times_out(backend: Backend) {
    let app = spawn_app_with(backend, |raw| raw.body_timeout = "1s".into()).await;
    let site = Site::new("jira");
    app.install(&site).await;
    let path = "/jira/events/jira:issue_created";
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: JWT {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"a\": 1234",
        site.token("POST", path)
    );
    let address = app.address.clone();
    let (status, took) = tokio::task::spawn_blocking(move || status_without_body(&address, &head))
        .await
        .unwrap();
    assert!(status.contains(" 408 "), "{status}");
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(app.events(&site).await.is_empty());
}

/// A NUL character (which PostgreSQL text cannot hold) in a token's issuer, an
/// install body, an admin filter or a subscription is the caller's mistake:
/// never a 5xx, which would tell Atlassian to retry and page an operator.
async fn nul_characters_are_bad_input_not_an_outage(backend: Backend) {
    let token = "admin-token-nul-test";
    let app = spawn_app_with(backend, |raw| raw.admin_token = Some(token.into())).await;
    let site = Site::new("jira");
    app.install(&site).await;
    let path = "/jira/events/jira:issue_created";
    let forged = hs256(
        &site.secret,
        json!({"iss": "jira:\u{0}x", "exp": now() + 60, "qsh": simple_qsh("POST", path)}),
    );
    let response = app.webhook_with_token(path, Some(&forged), "{}", &[]).await;
    assert_eq!(response.status(), 401, "unknown issuer");

    let mut odd = Site::new("jira");
    odd.client_key = format!("{}\u{0}", odd.client_key);
    let response = app.install(&odd).await;
    let status = response.status().as_u16();
    match backend {
        Backend::Postgres => assert_eq!(status, 400, "{}", error_body(response).await),
        Backend::Sqlite => assert_eq!(status, 204),
    }

    let api = format!("{}/admin/api/v1", app.address);
    let response = app
        .client
        .get(format!("{api}/events?event=a%00b&tenant=%00"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert!(status == 200 || status == 400, "filter: {status}");
    let response = app
        .client
        .post(format!("{api}/subscriptions"))
        .bearer_auth(token)
        .json(
            &json!({"url": "https://example.com/hook", "events": ["*"], "description": "a\u{0}b"}),
        )
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    match backend {
        Backend::Postgres => assert_eq!(status, 400, "{}", error_body(response).await),
        Backend::Sqlite => assert_eq!(status, 201),
    }
}

/// Forged installs with a fresh, well-formed `kid` each, flooding from one
/// address, spend that address's fetch budget; real installs from another
/// address, whose kids are not cached yet, are all verified.
async fn forged_kids_from_one_address_do_not_starve_real_installs(backend: Backend) {
    let app = spawn_app(backend).await;
    let attacker = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let forger = Site::new("jira");
    let path = "/jira/lifecycle/installed";
    let body = forger.lifecycle_body("installed");
    let flood = (0..60).map(|i| {
        let token = install_token(
            &format!("forged-kid-{i}"),
            "keys/install-a.pem",
            install_claims(&forger, path, now()),
        );
        attacker
            .post(app.url(path))
            .header("Authorization", format!("JWT {token}"))
            .json(&body)
            .send()
    });
    let flooded = futures_util::future::join_all(flood).await;
    let limited = flooded
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status() == 503))
        .count();
    assert!(
        limited > 40,
        "the flood is held back: {limited} of 60 got 503"
    );
    let fetched = app.keys.hits();
    assert!(fetched <= 6, "the flood cost {fetched} key fetches");

    // Real installs, each kid fetched for the first time (kid-b, then kid-a).
    for (kid, key) in [(KID_B, "keys/install-b.pem"), (KID_A, "keys/install-a.pem")] {
        for _ in 0..3 {
            let site = Site::new("jira");
            let token = install_token(kid, key, install_claims(&site, path, now()));
            let response = app.callback(&site, "installed", Some(token)).await;
            assert_eq!(response.status(), 204, "{kid}");
        }
    }
}

/// A whole `serve` run at debug level, fed every credential the product sees:
/// the admin token (as a bearer and in `?token=`/`?access_token=`), a tenant's
/// shared secret, its webhook and install tokens (in headers and query strings,
/// replayed), a subscription secret and credentials in a subscription URL. None
/// of them appears anywhere in the log.
#[tokio::test(flavor = "multi_thread")]
async fn no_credential_reaches_the_log() {
    let keys = KeyServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("log.db").display());
    let admin_token = "admin-Tok3n-that-must-never-be-logged";
    let mut served = Served::start(&[
        ("HOOKRELAY_LISTEN", "127.0.0.1:0"),
        ("HOOKRELAY_BASE_URL", BASE_URL),
        ("HOOKRELAY_DATABASE_URL", &db),
        ("HOOKRELAY_INSTALL_KEYS_URL", &keys.url),
        ("HOOKRELAY_ADMIN_TOKEN", admin_token),
        ("HOOKRELAY_ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("HOOKRELAY_RETRY_SCHEDULE", "200ms"),
        ("HOOKRELAY_LOG_FORMAT", "json"),
        ("RUST_LOG", "debug"),
    ]);
    let line = tokio::task::block_in_place(|| {
        served.wait_for(Duration::from_secs(60), |l| {
            l.contains("hookrelay is serving")
        })
    });
    let port = serde_json::from_str::<Value>(&line).unwrap()["fields"]["port"]
        .as_u64()
        .unwrap();
    let address = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let site = Site::new("jira");

    let path = "/jira/lifecycle/installed";
    let install = install_token(
        KID_A,
        "keys/install-a.pem",
        install_claims(&site, path, now()),
    );
    let body = site.lifecycle_body("installed");
    for expected in [204, 401] {
        let response = client
            .post(format!("{address}{path}?jwt={install}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected);
    }

    let events = "/jira/events/jira:issue_created";
    let webhook = site.token("POST", events);
    let response = client
        .post(format!("{address}{events}"))
        .header("Authorization", format!("JWT {webhook}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let forged = hs256(
        &site.secret,
        json!({"iss": site.client_key, "exp": now() + 60, "qsh": "x"}),
    );
    let response = client
        .post(format!("{address}{events}?jwt={forged}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let api = format!("{address}/admin/api/v1");
    for param in ["token", "access_token", "api_key"] {
        let response = client
            .get(format!("{api}/events?{param}={admin_token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{param}");
    }
    let receiver = crate::receiver::Receiver::start().await;
    receiver.script("/hook", vec![crate::receiver::Reply::Status(500)]);
    let url_secret = "urlSecretValue123";
    let subscription_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let response = client
        .post(format!("{api}/subscriptions"))
        .bearer_auth(admin_token)
        .json(&json!({
            "url": format!("{}?api_key={url_secret}", receiver.url("/hook")),
            "events": ["*"],
            "secret": subscription_secret,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let response = client
        .post(format!("{address}{events}"))
        .header(
            "Authorization",
            format!("JWT {}", site.token("POST", events)),
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    receiver.wait_for("/hook", 2, Duration::from_secs(20)).await;

    served.signal("TERM");
    let lines = tokio::task::block_in_place(|| served.all_lines(Duration::from_secs(30)));
    assert!(lines.len() > 10, "the log was captured: {lines:?}");
    let signature = |token: &str| token.rsplit('.').next().unwrap().to_string();
    let subscription_key = subscription_secret.trim_start_matches("whsec_");
    for (what, secret) in [
        ("admin token", admin_token.to_string()),
        ("shared secret", site.secret.clone()),
        ("install token", signature(&install)),
        ("webhook token", signature(&webhook)),
        ("forged token", signature(&forged)),
        ("subscription secret", subscription_key.to_string()),
        ("URL credential", url_secret.to_string()),
    ] {
        if let Some(line) = lines.iter().find(|l| l.contains(&secret)) {
            panic!("{what} logged: {line}");
        }
    }
    assert!(
        lines.iter().any(|l| l.contains("token=[redacted]")),
        "the refused targets are logged, redacted"
    );
}

/// Admin request bodies: an unauthenticated one is answered from its headers,
/// an authenticated one over 1 MiB is 413 and one that stops arriving is 408.
#[tokio::test]
async fn admin_bodies_are_bounded_and_timed() {
    let token = "admin-token-body-test";
    let app = spawn_app_with(Backend::Sqlite, |raw| {
        raw.admin_token = Some(token.into());
        raw.body_timeout = "1s".into();
    })
    .await;
    let path = "/admin/api/v1/subscriptions";
    for (case, authorization, expected) in [
        ("unauthenticated", String::new(), " 401 "),
        (
            "stalled",
            format!("Authorization: Bearer {token}\r\n"),
            " 408 ",
        ),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{authorization}\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"url\":"
        );
        let address = app.address.clone();
        let (status, _) = tokio::task::spawn_blocking(move || status_without_body(&address, &head))
            .await
            .unwrap();
        assert!(status.contains(expected), "{case}: {status}");
    }
    let big = json!({"url": "https://example.com/x", "events": ["*"], "description": "d".repeat(1100 * 1024)});
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(token)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
}
