//! Webhook intake: real payloads stored once, every bad input refused with its
//! status and nothing stored, and 503 while the store is down.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    fixture_payloads_are_stored_verbatim_before_the_answer,
    a_repeated_identifier_is_stored_once,
    concurrent_repeats_share_one_commit_and_the_first_id,
    bad_requests_are_refused_and_store_nothing,
    token_in_query_and_context_path,
    store_down_answers_503_then_recovers,
);

async fn fixture_payloads_are_stored_verbatim_before_the_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let jira = Site::new("jira");
    let confluence = Site::new("confluence");
    assert_eq!(app.install(&jira).await.status(), 204);
    assert_eq!(app.install(&confluence).await.status(), 204);

    let cases = [
        (
            &jira,
            "jira:issue_created",
            "payloads/jira_issue_created.json",
        ),
        (
            &jira,
            "jira:issue_updated",
            "payloads/jira_issue_updated.json",
        ),
        (
            &jira,
            "comment_created",
            "payloads/jira_comment_created.json",
        ),
        (
            &confluence,
            "page_updated",
            "payloads/confluence_page_updated.json",
        ),
    ];
    for (i, (site, event, file)) in cases.iter().enumerate() {
        let body = fixture(file);
        let webhook_id = format!("wh-{i}-{}", site.client_key);
        let response = app
            .webhook(
                site,
                event,
                body.clone(),
                &[
                    ("X-Atlassian-Webhook-Identifier", &webhook_id),
                    ("X-Atlassian-Webhook-Retry", "2"),
                    ("X-Atlassian-Webhook-Flow", "Primary"),
                ],
            )
            .await;
        assert_eq!(response.status(), 200, "{event}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["duplicate"], false);
        let id: uuid::Uuid = answer["id"].as_str().unwrap().parse().unwrap();

        // The answer came after the commit: the event is there now.
        let stored = app
            .store
            .event(hookrelay::domain::EventId(id))
            .await
            .unwrap()
            .expect("stored before the 2xx");
        assert_eq!(stored.event, *event);
        assert_eq!(stored.product.unwrap().as_str(), site.product);
        assert_eq!(stored.payload, body, "payload byte for byte");
        assert_eq!(stored.webhook_id.as_deref(), Some(webhook_id.as_str()));
        assert_eq!(stored.webhook_retry, Some(2));
        assert_eq!(stored.webhook_flow.as_deref(), Some("Primary"));
        assert_eq!(stored.client_key.as_ref().unwrap().0, site.client_key);

        let envelope: Value = serde_json::from_str(&stored.envelope_json()).unwrap();
        assert_eq!(envelope["id"], answer["id"]);
        assert_eq!(envelope["source"], "connect");
        assert_eq!(envelope["event"], *event);
        assert_eq!(envelope["tenant"]["client_key"], site.client_key.as_str());
        assert_eq!(envelope["tenant"]["base_url"], site.base_url.as_str());
        assert_eq!(envelope["webhook_id"], webhook_id.as_str());
        assert_eq!(
            envelope["payload"],
            serde_json::from_str::<Value>(&body).unwrap()
        );
        assert!(envelope["received_at"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(app.events(&jira).await.len(), 3);
    assert_eq!(app.events(&confluence).await.len(), 1);
}

async fn a_repeated_identifier_is_stored_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let site = Site::new("jira");
    let other = Site::new("jira");
    assert_eq!(app.install(&site).await.status(), 204);
    assert_eq!(app.install(&other).await.status(), 204);
    let body = fixture("payloads/jira_issue_created.json");
    let headers = [("X-Atlassian-Webhook-Identifier", "same-id-1")];

    let first: Value = app
        .webhook(&site, "jira:issue_created", body.clone(), &headers)
        .await
        .json()
        .await
        .unwrap();
    let retry = app
        .webhook(
            &site,
            "jira:issue_created",
            body.clone(),
            &[headers[0], ("X-Atlassian-Webhook-Retry", "1")],
        )
        .await;
    assert_eq!(retry.status(), 200);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["id"], first["id"]);
    assert_eq!(retry["duplicate"], true);
    assert_eq!(app.events(&site).await.len(), 1);

    // The same identifier from another tenant is another event.
    let theirs: Value = app
        .webhook(&other, "jira:issue_created", body.clone(), &headers)
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(theirs["id"], first["id"]);
    assert_eq!(app.events(&other).await.len(), 1);

    // Without an identifier nothing can be deduplicated: each is stored.
    app.webhook(&site, "comment_created", "{}", &[]).await;
    app.webhook(&site, "comment_created", "{}", &[]).await;
    assert_eq!(app.events(&site).await.len(), 3);
}

/// Intake commits concurrent requests together: repeats of one identifier
/// that arrive at once (in one commit or in two) still give one event and its
/// id, and every other request its own event.
async fn concurrent_repeats_share_one_commit_and_the_first_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let site = Site::new("jira");
    assert_eq!(app.install(&site).await.status(), 204);
    let body = fixture("payloads/jira_issue_created.json");
    let calls = (0..60).map(|i| {
        let (app, site, body) = (&app, &site, body.clone());
        async move {
            // 20 identifiers, each sent three times at once; every fourth call
            // carries none.
            let id = format!("burst-{}", i % 20);
            let headers = [("X-Atlassian-Webhook-Identifier", id.as_str())];
            let headers: &[(&str, &str)] = if i % 4 == 3 { &[] } else { &headers };
            let answer = app.webhook(site, "jira:issue_created", body, headers).await;
            assert!(answer.status().is_success(), "{}", answer.status());
            let answer: Value = answer.json().await.unwrap();
            (headers.first().map(|h| h.1.to_string()), answer)
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let mut ids: std::collections::HashMap<String, String> = Default::default();
    let mut anonymous = std::collections::HashSet::new();
    for (identifier, answer) in &answers {
        let id = answer["id"].as_str().unwrap().to_string();
        match identifier {
            Some(identifier) => {
                let first = ids.entry(identifier.clone()).or_insert(id.clone());
                assert_eq!(*first, id, "one identifier, two ids");
            }
            None => assert!(
                anonymous.insert(id),
                "two requests without an identifier, one id"
            ),
        }
    }
    let firsts = answers
        .iter()
        .filter(|(_, a)| a["duplicate"] == false)
        .count();
    assert_eq!(firsts, ids.len() + anonymous.len());
    assert_eq!(app.events(&site).await.len(), ids.len() + anonymous.len());
}

async fn bad_requests_are_refused_and_store_nothing(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.max_body_bytes = 4096).await;
    let site = Site::new("jira");
    assert_eq!(app.install(&site).await.status(), 204);
    let path = "/jira/events/jira:issue_created";
    let now = now();
    let claims = |overrides: Value| {
        let mut c = json!({"iss": site.client_key, "iat": now, "exp": now + 180, "qsh": simple_qsh("POST", path)});
        for (k, v) in overrides.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let uninstalled = Site::new("jira");
    assert_eq!(app.install_at(&uninstalled, now - 10).await.status(), 204);
    let token = install_token(
        KID_A,
        "keys/install-a.pem",
        install_claims(&uninstalled, "/jira/lifecycle/uninstalled", now),
    );
    app.callback(&uninstalled, "uninstalled", Some(token)).await;

    let mut rs256_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    rs256_header.kid = Some(KID_A.into());
    let rs256 = jsonwebtoken::encode(
        &rs256_header,
        &claims(json!({})),
        &jsonwebtoken::EncodingKey::from_rsa_pem(fixture("keys/install-a.pem").as_bytes()).unwrap(),
    )
    .unwrap();
    let valid = site.token_with(claims(json!({})));
    let mut bad_sig = valid.clone();
    bad_sig.replace_range(bad_sig.len() - 4.., "AAAA");

    let unauthorized: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("garbled", Some("not.a.jwt".into())),
        (
            "two parts",
            Some("eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJ4In0".into()),
        ),
        (
            "alg none",
            Some(format!(
                "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
                valid.split('.').nth(1).unwrap()
            )),
        ),
        ("RS256", Some(rs256)),
        ("wrong signature", Some(bad_sig)),
        (
            "other secret",
            Some(hs256("someone-elses-secret", claims(json!({})))),
        ),
        (
            "expired",
            Some(site.token_with(claims(json!({"iat": now - 3600, "exp": now - 600})))),
        ),
        (
            "no exp",
            Some(site.token_with(claims(json!({"exp": null})))),
        ),
        (
            "issued in the future",
            Some(site.token_with(claims(json!({"iat": now + 3600, "exp": now + 4000})))),
        ),
        (
            "qsh of another path",
            Some(site.token_with(claims(
                json!({"qsh": simple_qsh("POST", "/jira/events/comment_created")}),
            ))),
        ),
        (
            "qsh of another method",
            Some(site.token_with(claims(json!({"qsh": simple_qsh("GET", path)})))),
        ),
        (
            "no qsh",
            Some(site.token_with(claims(json!({"qsh": null})))),
        ),
        (
            "unknown tenant",
            Some(Site::new("jira").token("POST", path)),
        ),
        ("uninstalled tenant", Some(uninstalled.token("POST", path))),
    ];
    for (case, token) in unauthorized {
        let response = app
            .webhook_with_token(path, token.as_deref(), "{}", &[])
            .await;
        assert_eq!(response.status(), 401, "{case}");
        let body = error_body(response).await;
        assert_eq!(body["error"], "unauthorized", "{case}");
        // The reason never echoes the token or the secret.
        let text = body.to_string();
        assert!(
            !text.contains(&site.secret) && !text.contains(&valid),
            "{case}: {text}"
        );
    }

    // A Confluence tenant posting to a Jira URL is refused.
    let wiki = Site::new("confluence");
    assert_eq!(app.install(&wiki).await.status(), 204);
    let response = app
        .webhook_with_token(path, Some(&wiki.token("POST", path)), "{}", &[])
        .await;
    assert_eq!(response.status(), 401);

    for (case, body) in [
        ("not JSON", "this is not json"),
        ("truncated JSON", r#"{"a": "#),
        ("empty", ""),
        ("trailing data", "{} {}"),
        // JSON a later reader could not carry: refused here, not dead-lettered later.
        ("nested 65 deep", &nested(65)),
        ("nested 127 deep", &nested(127)),
        ("lone surrogate", r#"{"a":"\ud800"}"#),
        ("lone surrogate key", r#"{"\udc00":1}"#),
        ("number out of range", r#"{"a":1e400}"#),
        ("reserved key", r#"{"$serde_json::private::RawValue":1}"#),
    ] {
        let response = app
            .webhook(&site, "jira:issue_created", body.to_string(), &[])
            .await;
        assert_eq!(response.status(), 400, "{case}");
        let body = error_body(response).await;
        assert_eq!(body["error"], "bad_request", "{case}");
        if case.starts_with("nested") {
            let detail = body["detail"].as_str().unwrap();
            assert!(detail.contains("64 levels"), "{case}: {detail}");
        }
    }
    let response = app
        .webhook(&site, "jira:issue_created", vec![0xff, 0xfe, 0x7b], &[])
        .await;
    assert_eq!(response.status(), 400, "invalid UTF-8");

    let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(5000));
    let response = app
        .webhook(&site, "jira:issue_created", big.clone(), &[])
        .await;
    assert_eq!(response.status(), 413);
    assert_eq!(error_body(response).await["error"], "payload_too_large");
    // Chunked, with no Content-Length to refuse it by up front.
    let stream = futures_util::stream::iter(
        big.into_bytes()
            .chunks(1000)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let response = app
        .webhook(
            &site,
            "jira:issue_created",
            reqwest::Body::wrap_stream(stream),
            &[],
        )
        .await;
    assert_eq!(response.status(), 413, "chunked");

    // Unknown product or an impossible event name: 404 in the JSON shape.
    let response = app
        .webhook_with_token("/bitbucket/events/x", Some(&valid), "{}", &[])
        .await;
    assert_eq!(response.status(), 404);
    error_body(response).await;
    let response = app
        .webhook_with_token("/jira/events/bad%20name", Some(&valid), "{}", &[])
        .await;
    assert_eq!(response.status(), 404);

    assert!(app.events(&site).await.is_empty(), "nothing stored");
    assert!(app.events(&uninstalled).await.is_empty());
    assert!(app.events(&wiki).await.is_empty());

    // And the valid request still works afterwards.
    let response = app.webhook_with_token(path, Some(&valid), "{}", &[]).await;
    assert_eq!(response.status(), 200);
}

async fn token_in_query_and_context_path(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.base_url = format!("{BASE_URL}/hooks/")).await;
    let site = Site::new("jira");
    // The signed install's qsh is over the path without the context path.
    let token = install_token(
        KID_A,
        "keys/install-a.pem",
        json!({"iss": site.client_key, "aud": format!("{BASE_URL}/hooks"), "iat": now(), "exp": now() + 60,
               "qsh": simple_qsh("POST", "/jira/lifecycle/installed")}),
    );
    let response = app
        .client
        .post(app.url("/hooks/jira/lifecycle/installed"))
        .header("Authorization", format!("JWT {token}"))
        .json(&site.lifecycle_body("installed"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);

    // Behind a proxy that keeps the context path.
    let path = "/jira/events/jira:issue_created";
    let token = site.token("POST", path);
    let response = app
        .webhook_with_token(&format!("/hooks{path}"), Some(&token), "{}", &[])
        .await;
    assert_eq!(response.status(), 200);
    // Behind one that strips it.
    let response = app.webhook_with_token(path, Some(&token), "{}", &[]).await;
    assert_eq!(response.status(), 200);

    // The token in `?jwt=`, with other query parameters covered by the qsh
    // (canonical: sorted keys, RFC 3986 encoding, `jwt` left out).
    let canonical = format!("POST&{path}&a=1&user_id=x%20y");
    let qsh = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(canonical.as_bytes()));
    let token = site
        .token_with(json!({"iss": site.client_key, "iat": now(), "exp": now() + 60, "qsh": qsh}));
    let url = app.url(&format!("/hooks{path}?user_id=x+y&jwt={token}&a=1"));
    let response = app.client.post(url).body("{}").send().await.unwrap();
    assert_eq!(response.status(), 200);
    // The same token with a changed parameter does not verify.
    let url = app.url(&format!("/hooks{path}?user_id=z&jwt={token}&a=1"));
    let response = app.client.post(url).body("{}").send().await.unwrap();
    assert_eq!(response.status(), 401);

    assert_eq!(app.events(&site).await.len(), 3);
    let descriptor: Value = app
        .client
        .get(app.url("/hooks/jira/atlassian-connect.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(descriptor["baseUrl"], format!("{BASE_URL}/hooks"));
}

async fn store_down_answers_503_then_recovers(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.database_acquire_timeout = "1s".into()).await;
    let site = Site::new("confluence");
    assert_eq!(app.install(&site).await.status(), 204);
    assert_eq!(
        app.webhook(&site, "page_updated", "{}", &[]).await.status(),
        200
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    // A tenant installed but never looked up by a webhook: not in the cache.
    let uncached = Site::new("confluence");
    assert_eq!(app.install(&uncached).await.status(), 204);

    let broken = app.break_store().await;
    let response = app.webhook(&uncached, "page_updated", "{}", &[]).await;
    assert_eq!(
        response.status(),
        503,
        "tenant lookup or insert fails: retry, not 401"
    );
    let headers = [("X-Atlassian-Webhook-Identifier", "during-outage")];
    let response = app
        .webhook(&site, "page_updated", r#"{"n":1}"#, &headers)
        .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_body(response).await["error"], "unavailable");
    if backend == Backend::Postgres {
        // SQLite readers are not blocked by a writer, so only PostgreSQL goes unready.
        let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
    }
    broken.restore().await;

    // Jira retries the same delivery; now it is stored, once.
    let response = app
        .webhook(&site, "page_updated", r#"{"n":1}"#, &headers)
        .await;
    assert_eq!(response.status(), 200);
    let events = app.events(&site).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].webhook_id.as_deref(), Some("during-outage"));
}

both_backends!(garbage_never_panics_or_stores);

/// Arbitrary tokens, headers, paths and bodies: every answer is a 4xx in the JSON
/// shape, the server never falls over, and nothing is stored. Then random bodies
/// under a valid token: each is stored if and only if it was answered 200.
async fn garbage_never_panics_or_stores(backend: Backend) {
    let app = spawn_app(backend).await;
    let site = Site::new("jira");
    assert_eq!(app.install(&site).await.status(), 204);
    let valid = site.token("POST", "/jira/events/jira:issue_created");

    // A small deterministic generator, so a failure can be replayed.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"abcXYZ019-_.=+/%&?:{}[]\" \\";
    for round in 0..300 {
        let mut token = valid.clone().into_bytes();
        match next() % 4 {
            // Flip a few bytes of the valid token.
            0 => {
                for _ in 0..(1 + next() % 4) {
                    let i = (next() as usize) % token.len();
                    token[i] = alphabet[(next() as usize) % alphabet.len()];
                }
            }
            // Truncate it.
            1 => token.truncate((next() as usize) % token.len()),
            // Random characters.
            2 => {
                token = (0..(next() % 200))
                    .map(|_| alphabet[(next() as usize) % alphabet.len()])
                    .collect()
            }
            // Segments that are valid base64 of invalid JSON.
            _ => token = b"e30.W10.AAAA".to_vec(),
        }
        let token = String::from_utf8_lossy(&token).replace(['\r', '\n'], "");
        let body: Vec<u8> = (0..(next() % 64)).map(|_| (next() % 256) as u8).collect();
        let path = match next() % 3 {
            0 => "/jira/events/jira:issue_created".to_string(),
            1 => format!(
                "/jira/events/{}",
                "%FF%00".repeat(1 + (next() % 3) as usize)
            ),
            _ => "/confluence/lifecycle/installed".to_string(),
        };
        let response = app
            .client
            .post(app.url(&path))
            .header("Authorization", format!("JWT {token}"))
            .header("X-Atlassian-Webhook-Retry", "not-a-number")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: no answer: {e}"));
        let status = response.status().as_u16();
        assert!(
            matches!(status, 400 | 401 | 404),
            "round {round}: {status} for {path} {token}"
        );
        error_body(response).await;
    }
    assert!(app.events(&site).await.is_empty());

    let fragments: [&[u8]; 12] = [
        b"{", b"}", b"[", b"]", b"\"", b":", b",", b"1", b"null", b"\\u00", b"\xff", b" ",
    ];
    let mut accepted = 0;
    for round in 0..200 {
        let body: Vec<u8> = (0..(next() % 12))
            .flat_map(|_| {
                fragments[(next() as usize) % fragments.len()]
                    .iter()
                    .copied()
            })
            .collect();
        let response = app
            .webhook(&site, "jira:issue_created", body.clone(), &[])
            .await;
        match response.status().as_u16() {
            200 => accepted += 1,
            400 => {
                error_body(response).await;
            }
            other => panic!(
                "round {round}: {other} for body {:?}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
    assert_eq!(
        app.events(&site).await.len(),
        accepted,
        "stored exactly what was acknowledged"
    );
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

/// `depth` arrays nested in each other.
pub fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}
