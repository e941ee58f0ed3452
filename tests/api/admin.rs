//! The admin API's event reads, behind the bearer token.

use serde_json::Value;

use crate::both_backends;
use crate::helpers::*;

const TOKEN: &str = "admin-token-0123456789";

both_backends!(admin_lists_and_shows_stored_events);

async fn admin_lists_and_shows_stored_events(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.admin_token = Some(TOKEN.into())).await;
    let jira = Site::new("jira");
    let wiki = Site::new("confluence");
    app.install(&jira).await;
    app.install(&wiki).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let event = if i % 2 == 0 {
            "jira:issue_created"
        } else {
            "comment_created"
        };
        let body = format!(r#"{{"n": {i}}}"#);
        let response = app
            .webhook(&jira, event, body, &[("X-Atlassian-Webhook-Retry", "3")])
            .await;
        let answer: Value = response.json().await.unwrap();
        ids.push(answer["id"].as_str().unwrap().to_string());
    }
    app.webhook(
        &wiki,
        "page_updated",
        fixture("payloads/confluence_page_updated.json"),
        &[("X-Atlassian-Webhook-Identifier", "wh-wiki-1")],
    )
    .await;

    let get = |path: String, token: Option<&'static str>| {
        let mut request = app.client.get(app.url(&path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let get_json = |path: String| async move {
        let response = get(path.clone(), Some(TOKEN)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json::<Value>().await.unwrap()
    };

    // Pages of two, newest first, for one tenant.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = get_json(format!(
            "/admin/api/v1/events?tenant={}&limit=2&cursor={cursor}",
            jira.client_key
        ))
        .await;
        for e in page["data"].as_array().unwrap() {
            assert!(e.get("payload").is_none(), "listings leave payloads out");
            assert_eq!(e["tenant"]["client_key"], jira.client_key.as_str());
            seen.push(e["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    let only_comments = get_json("/admin/api/v1/events?event=comment_created".into()).await;
    let only_comments = only_comments["data"].as_array().unwrap();
    assert_eq!(only_comments.len(), 2);
    assert!(only_comments
        .iter()
        .all(|e| e["event"] == "comment_created"));

    // Patterns, sources, webhook ids and times narrow a listing too.
    let count = |page: Value| page["data"].as_array().unwrap().len();
    assert_eq!(
        count(get_json("/admin/api/v1/events?event=jira:issue_*".into()).await),
        3
    );
    assert_eq!(
        count(get_json("/admin/api/v1/events?event=*_created&source=connect".into()).await),
        5
    );
    assert_eq!(
        count(get_json("/admin/api/v1/events?source=jira-admin".into()).await),
        0
    );
    let wiki_event =
        &get_json(format!("/admin/api/v1/events?tenant={}", wiki.client_key)).await["data"][0];
    assert_eq!(wiki_event["webhook_id"], "wh-wiki-1");
    let found = get_json("/admin/api/v1/events?webhook_id=wh-wiki-1".into()).await;
    assert_eq!(found["data"].as_array().unwrap().len(), 1);
    assert_eq!(found["data"][0]["id"], wiki_event["id"]);
    let received: Vec<String> = get_json("/admin/api/v1/events?limit=100".into()).await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["received_at"].as_str().unwrap().to_string())
        .collect();
    let (newest, oldest) = (&received[0], &received[received.len() - 1]);
    assert_eq!(
        count(get_json(format!("/admin/api/v1/events?since={oldest}")).await),
        6
    );
    assert_eq!(
        count(get_json(format!("/admin/api/v1/events?until={oldest}")).await),
        0
    );
    assert_eq!(
        count(
            get_json(format!(
                "/admin/api/v1/events?since=2999-01-01T00:00:00Z&until={newest}"
            ))
            .await
        ),
        0
    );

    let one = get_json(format!("/admin/api/v1/events/{}", ids[2])).await;
    assert_eq!(one["id"], ids[2].as_str());
    assert_eq!(one["payload"], serde_json::json!({"n": 2}));
    assert_eq!(one["webhook_retry"], 3);
    assert_eq!(one["source"], "connect");

    for (path, status) in [
        (
            "/admin/api/v1/events/0192c1a4-0000-7000-8000-000000000000".to_string(),
            404,
        ),
        ("/admin/api/v1/events/not-an-id".to_string(), 404),
        ("/admin/api/v1/events?limit=0".to_string(), 400),
        ("/admin/api/v1/events?limit=1000".to_string(), 400),
        ("/admin/api/v1/events?cursor=nope".to_string(), 400),
        ("/admin/api/v1/events?since=yesterday".to_string(), 400),
        ("/admin/api/v1/events?source=email".to_string(), 400),
        ("/admin/api/v1/events?event=a%20b".to_string(), 400),
        ("/admin/api/v1/events/stream?source=email".to_string(), 400),
    ] {
        let response = get(path.clone(), Some(TOKEN)).await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        error_body(response).await;
    }
    for token in [None, Some("admin-token-wrong-guess")] {
        let response = get("/admin/api/v1/events".into(), token).await.unwrap();
        assert_eq!(response.status(), 401);
        error_body(response).await;
    }

    let spec: Value = get("/admin/api/v1/openapi.json".into(), None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["paths"]["/events"]["get"].is_object());
    assert!(spec["paths"]["/events/{id}"]["get"].is_object());
}

both_backends!(live_tail_streams_events_as_they_are_stored);

/// Reads the stream's messages until one of kind `event:`, returning its `data:`.
async fn next_message(response: &mut reqwest::Response, buffer: &mut String, kind: &str) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            if message.starts_with(&format!("event: {kind}\n")) {
                let data = message
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .expect("a data line");
                return serde_json::from_str(data).unwrap();
            }
        }
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

async fn live_tail_streams_events_as_they_are_stored(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.admin_token = Some(TOKEN.into())).await;
    let jira = Site::new("jira");
    app.install(&jira).await;

    let refused = app
        .client
        .get(app.url("/admin/api/v1/events/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let mut stream = app
        .client
        .get(app.url("/admin/api/v1/events/stream?event=jira:issue_*"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut buffer = String::new();
    // Neither an event the filter leaves out nor a duplicate shows.
    app.webhook(&jira, "comment_created", r#"{"n": 0}"#, &[])
        .await;
    let headers = [("X-Atlassian-Webhook-Identifier", "wh-tail-1")];
    let first: Value = app
        .webhook(&jira, "jira:issue_created", r#"{"n": 1}"#, &headers)
        .await
        .json()
        .await
        .unwrap();
    app.webhook(&jira, "jira:issue_created", r#"{"n": 1}"#, &headers)
        .await;
    let second: Value = app
        .webhook(&jira, "jira:issue_updated", r#"{"n": 2}"#, &[])
        .await
        .json()
        .await
        .unwrap();
    let shown = next_message(&mut stream, &mut buffer, "event").await;
    assert_eq!(shown["id"], first["id"]);
    assert_eq!(shown["event"], "jira:issue_created");
    assert_eq!(shown["payload"], serde_json::json!({"n": 1}));
    assert_eq!(shown["tenant"]["client_key"], jira.client_key.as_str());
    let shown = next_message(&mut stream, &mut buffer, "event").await;
    assert_eq!(shown["id"], second["id"]);
}

#[tokio::test]
async fn admin_api_is_closed_without_a_token() {
    let app = spawn_app(Backend::Sqlite).await;
    let response = app
        .client
        .get(app.url("/admin/api/v1/events"))
        .bearer_auth("anything-at-all-here")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body = error_body(response).await;
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("HOOKRELAY_ADMIN_TOKEN"));
}

/// After ten wrong admin tokens from one address, the inspector's sign-in
/// pauses for that address: even the right token is refused with 429 then.
#[tokio::test]
async fn sign_in_pauses_after_ten_wrong_tokens() {
    const TOKEN: &str = "sign-in-token-0123456789";
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.admin_token = Some(TOKEN.into());
    })
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let sign_in = |token: &str| {
        client
            .post(app.url("/admin/login"))
            .form(&[("token", token)])
            .send()
    };
    assert_eq!(sign_in(TOKEN).await.unwrap().status(), 303);
    for guess in 0..10 {
        let response = sign_in(&format!("guess-{guess}")).await.unwrap();
        assert_eq!(response.status(), 401, "guess {guess}");
    }
    let paused = sign_in(TOKEN).await.unwrap();
    assert_eq!(paused.status(), 429);
    assert_eq!(paused.headers()["retry-after"], "60");
    assert!(paused
        .text()
        .await
        .unwrap()
        .contains("Too many wrong tokens"));
    // The bearer API is not the sign-in form: it keeps answering.
    let listed = client
        .get(app.url("/admin/api/v1/events"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
}

/// A client that does not follow redirects, signed in to the inspector: the
/// session cookie (`name=value`) and the CSRF token of its forms.
async fn sign_in(app: &TestApp) -> (reqwest::Client, String, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = client
        .post(app.url("/admin/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = client
        .get(app.url("/admin/tail"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF field on the page")
        .to_string();
    (client, cookie, csrf)
}

/// An inspector's live tail lasts as long as its session: signing out (here
/// from another tab, with the same cookie) ends the open stream with a
/// `signed-out` message, and the stream closes.
#[tokio::test]
async fn an_inspector_tail_ends_when_its_session_does() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.admin_token = Some(TOKEN.into())).await;
    let (client, cookie, csrf) = sign_in(&app).await;
    let mut stream = client
        .get(app.url("/admin/tail/stream"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut buffer = String::new();
    let jira = Site::new("jira");
    app.install(&jira).await;
    let stored: Value = app
        .webhook(&jira, "jira:issue_created", r#"{"n": 1}"#, &[])
        .await
        .json()
        .await
        .unwrap();
    let shown = next_message(&mut stream, &mut buffer, "event").await;
    assert_eq!(shown["id"], stored["id"]);

    let signed_out = client
        .post(app.url("/admin/logout"))
        .header("Cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_out.status(), 303);
    let last = next_message(&mut stream, &mut buffer, "signed-out").await;
    assert_eq!(last["reason"], "the session ended");
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), stream.chunk())
        .await
        .expect("the stream closes after saying so")
        .unwrap();
    assert_eq!(end, None, "nothing follows the signed-out message");
}

/// Inspector pages that show why something was not done answer with a
/// status that says so: never 200 for a refusal or a failure.
#[tokio::test]
async fn inspector_refusals_are_not_answered_200() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.admin_token = Some(TOKEN.into())).await;
    let (client, cookie, csrf) = sign_in(&app).await;
    let search = client
        .get(app.url("/admin/events?since=yesterday"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(search.status(), 400);
    assert!(search
        .text()
        .await
        .unwrap()
        .contains("since must be an RFC 3339 time"));

    let (id, _) = crate::relay::AdminApi::of(&app.address)
        .subscribe(serde_json::json!({"url": "https://example.com/hook", "events": ["jira:*"]}))
        .await;
    let tried = client
        .post(app.url(&format!("/admin/subscriptions/{id}/try")))
        .header("Cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("event_id", "not-an-event")])
        .send()
        .await
        .unwrap();
    assert_eq!(tried.status(), 422);
    assert!(tried
        .text()
        .await
        .unwrap()
        .contains("no stored event with that id"));

    // The store gone: an edit is not "refused", it failed.
    let _broken = app.break_store().await;
    let edit = client
        .post(app.url(&format!("/admin/subscriptions/{id}")))
        .header("Cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("url", "https://example.com/other"),
            ("events", "jira:*"),
        ])
        .send()
        .await
        .unwrap();
    assert!(edit.status().is_server_error(), "{}", edit.status());
}
