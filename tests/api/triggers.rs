//! Web triggers, black-box: triggers made through the admin API, called over
//! HTTP like any external system would, their scripts run in the embedded
//! runtime; async calls relayed to a Standard Webhooks receiver and published
//! to RabbitMQ; subscription transforms.

use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::both_backends;
use crate::helpers::*;
use crate::rabbit::{amqp_url, delete_topology, test_exchange, Consumer};
use crate::receiver::{verify, Receiver, Reply};
use crate::relay::{relaying, AdminApi};

/// A script that answers with everything it was given.
const ECHO: &str = r#"
export default async function (request, context) {
  console.log("called", request.method, request.userPath);
  return {
    statusCode: 201,
    headers: {"content-type": ["application/json"], "x-multi": ["a", "b"]},
    body: JSON.stringify({request, context}),
    statusText: "Created",
  };
}
"#;

/// Triggers settings for tests: the relay's, and scripts limited to little.
fn triggering(raw: &mut hookrelay::config::RawConfig) {
    relaying(raw);
    raw.script_memory = 32 * 1024 * 1024;
}

/// Creates a trigger; returns its JSON.
pub(crate) async fn create(admin: &AdminApi, body: Value) -> Value {
    let (status, created) = admin.post("/triggers", body).await;
    assert_eq!(status, 201, "{created}");
    created
}

/// The URL path of a trigger (its `url` is under the configured base URL).
pub(crate) fn path_of(trigger: &Value) -> String {
    let url = trigger["url"].as_str().unwrap();
    assert!(url.starts_with(BASE_URL), "{url}");
    url[BASE_URL.len()..].to_string()
}

/// Calls an async trigger (answered 202) and waits until its newest
/// invocation is in `state`; returns the invocation log.
async fn call_until(
    app: &TestApp,
    admin: &AdminApi,
    trigger: &Value,
    state: &str,
    within: Duration,
) -> Value {
    let response = app
        .client
        .post(app.url(&path_of(trigger)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    admin
        .wait(
            &format!("/triggers/{}/invocations", trigger["id"].as_str().unwrap()),
            within,
            |log| log["data"][0]["state"] == state,
        )
        .await
}

async fn events_count(app: &TestApp) -> usize {
    let admin = AdminApi::of(&app.address);
    admin.get("/events?limit=100").await["data"]
        .as_array()
        .unwrap()
        .len()
}

both_backends!(
    sync_calls_get_the_forge_request_and_answer_with_the_script,
    refused_calls_store_nothing,
    bad_scripts_get_their_own_answers_and_others_keep_working,
    async_calls_are_relayed_replayed_and_run_from_the_queue,
    transforms_shape_or_skip_deliveries
);

/// The request object has the Forge shape (lower-case multi-value headers,
/// the path and userPath, split and decoded query values, the body as a
/// string); the script's status, headers and body are the answer; the call
/// is an event and an invocation with the console output.
async fn sync_calls_get_the_forge_request_and_answer_with_the_script(backend: Backend) {
    let app = spawn_app_with(backend, triggering).await;
    let admin = AdminApi::of(&app.address);
    let trigger = create(
        &admin,
        json!({"name": "deploy-hook", "methods": ["*"], "mode": "sync", "script": ECHO}),
    )
    .await;
    let id = trigger["id"].as_str().unwrap();
    assert!(id.len() >= 22, "at least 128 bits: {id}");
    assert_eq!(trigger["url"], format!("{BASE_URL}/x1/{id}"));
    assert_eq!(trigger["auth"]["type"], "none");
    assert!(trigger.get("key").is_none() && trigger.get("secret").is_none());
    let path = path_of(&trigger);

    let response = app
        .client
        .put(app.url(&format!(
            "{path}/hello/world?apples=green&apples=red&grapes=green,red&q=a%20b%2Cc"
        )))
        .header("X-Team", "a")
        .header("x-team", "b")
        .header("content-type", "application/json")
        .body(r#"{"hello": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let multi: Vec<_> = response
        .headers()
        .get_all("x-multi")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(multi, ["a", "b"]);
    let echoed: Value = response.json().await.unwrap();
    let request = &echoed["request"];
    assert_eq!(request["method"], "PUT");
    assert_eq!(request["headers"]["x-team"], json!(["a", "b"]));
    assert_eq!(
        request["headers"]["content-type"],
        json!(["application/json"])
    );
    assert_eq!(request["body"], r#"{"hello": 1}"#);
    assert_eq!(request["path"], format!("/x1/{id}/hello/world"));
    assert_eq!(request["userPath"], "/hello/world");
    assert_eq!(
        request["queryParameters"],
        json!({"apples": ["green", "red"], "grapes": ["green", "red"], "q": ["a b,c"]})
    );
    let context = &echoed["context"];
    assert_eq!(context["trigger"], json!({"id": id, "name": "deploy-hook"}));
    let event_id = context["event_id"].as_str().unwrap().to_string();

    // No path below the id, no query: userPath "" and no parameters.
    let response = app.client.get(app.url(&path)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["request"]["userPath"], "");
    assert_eq!(echoed["request"]["path"], format!("/x1/{id}"));
    assert_eq!(echoed["request"]["queryParameters"], json!({}));
    assert_eq!(echoed["request"]["body"], "");

    // The call is an event like any other.
    let event = admin.get(&format!("/events/{event_id}")).await;
    assert_eq!(event["source"], "webtrigger");
    assert_eq!(event["event"], "webtrigger:deploy-hook");
    assert_eq!(event["product"], Value::Null);
    assert_eq!(event["payload"]["userPath"], "/hello/world");

    // Both calls are in the invocation log, newest first, with what the
    // script printed and answered.
    let log = admin.get(&format!("/triggers/{id}/invocations")).await;
    let data = log["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{log:#}");
    let first = &data[1];
    assert_eq!(first["event_id"], event_id.as_str());
    assert_eq!(first["state"], "completed");
    assert_eq!(first["mode"], "sync");
    assert_eq!(first["status_code"], 201);
    assert_eq!(first["request"]["method"], "PUT");
    assert_eq!(first["response"]["statusText"], "Created");
    assert_eq!(
        first["console"],
        json!([{"level": "log", "message": "called PUT /hello/world"}])
    );
    assert!(first["duration_ms"].as_i64().unwrap() >= 0);
    // Paged with next_cursor.
    let page = admin
        .get(&format!("/triggers/{id}/invocations?limit=1"))
        .await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let next = admin
        .get(&format!(
            "/triggers/{id}/invocations?limit=1&cursor={cursor}"
        ))
        .await;
    assert_eq!(next["data"][0]["event_id"], event_id.as_str());

    // A large request is left out of the listing; its event holds it.
    let big = "b".repeat(100 * 1024);
    let response = app
        .client
        .post(app.url(&path))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let log = admin
        .get(&format!("/triggers/{id}/invocations?limit=1"))
        .await;
    assert_eq!(log["data"][0]["request_omitted"], true);
    assert!(log["data"][0].get("request").is_none());
    let event = admin
        .get(&format!(
            "/events/{}",
            log["data"][0]["event_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(event["payload"]["body"], big.as_str());
}

/// Unknown or disabled ids, other methods, oversize and non-UTF-8 bodies and
/// bad credentials each get their status and the JSON error shape, and none
/// of them is stored.
async fn refused_calls_store_nothing(backend: Backend) {
    let app = spawn_app_with(backend, |raw| {
        triggering(raw);
        raw.trigger_max_body = 1024;
    })
    .await;
    let admin = AdminApi::of(&app.address);
    let keyed = create(
        &admin,
        json!({"name": "keyed", "methods": ["POST", "put"], "auth": {"type": "key"}}),
    )
    .await;
    let path = path_of(&keyed);
    let key = keyed["key"].as_str().unwrap().to_string();
    assert_eq!(keyed["methods"], json!(["POST", "PUT"]));

    let send = |method: reqwest::Method, url: String, key: Option<&str>, body: Vec<u8>| {
        let mut request = app.client.request(method, url).body(body);
        if let Some(key) = key {
            request = request.header("X-Hookrelay-Key", key);
        }
        request.send()
    };
    let unknown = send(
        reqwest::Method::POST,
        app.url("/x1/nope"),
        Some(&key),
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    assert_eq!(error_body(unknown).await["error"], "not_found");

    let get = send(reqwest::Method::GET, app.url(&path), Some(&key), vec![])
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 405);
    assert_eq!(get.headers()["allow"], "POST, PUT");
    assert_eq!(error_body(get).await["error"], "method_not_allowed");

    let big = send(
        reqwest::Method::POST,
        app.url(&path),
        Some(&key),
        vec![b'a'; 2048],
    )
    .await
    .unwrap();
    assert_eq!(big.status().as_u16(), 413);

    for wrong in [None, Some("not-the-key")] {
        let refused = send(reqwest::Method::POST, app.url(&path), wrong, b"{}".to_vec())
            .await
            .unwrap();
        assert_eq!(refused.status().as_u16(), 401, "{wrong:?}");
        assert_eq!(error_body(refused).await["error"], "unauthorized");
    }

    let binary = send(
        reqwest::Method::POST,
        app.url(&path),
        Some(&key),
        vec![0xff, 0xfe, 0x00],
    )
    .await
    .unwrap();
    assert_eq!(binary.status().as_u16(), 400);
    assert_eq!(events_count(&app).await, 0, "nothing refused was stored");

    // The right key: accepted, and the key is not in the stored request.
    let ok = send(
        reqwest::Method::PUT,
        app.url(&format!("{path}/x")),
        Some(&key),
        b"hi".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(ok.status().as_u16(), 202);
    let id = ok.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let event = admin.get(&format!("/events/{id}")).await;
    assert!(
        event["payload"]["headers"].get("x-hookrelay-key").is_none(),
        "{event:#}"
    );
    assert!(!event.to_string().contains(&key));
    // The key is never read back.
    let read = admin
        .get(&format!("/triggers/{}", keyed["id"].as_str().unwrap()))
        .await;
    assert!(
        read.get("key").is_none() && !read.to_string().contains(&key),
        "{read}"
    );

    // Disabled: 404, nothing stored.
    let (status, _) = admin
        .call(
            reqwest::Method::PATCH,
            &format!("/triggers/{}", keyed["id"].as_str().unwrap()),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200);
    let disabled = send(reqwest::Method::POST, app.url(&path), Some(&key), vec![])
        .await
        .unwrap();
    assert_eq!(disabled.status().as_u16(), 404);
    assert_eq!(events_count(&app).await, 1);
}

/// A throw, a non-object, an endless loop, a huge allocation, deep recursion
/// and a promise that never settles each get their own answer, while a
/// healthy trigger and a Connect webhook keep being answered; every call was
/// stored before its script ran.
async fn bad_scripts_get_their_own_answers_and_others_keep_working(backend: Backend) {
    let app = spawn_app_with(backend, triggering).await;
    let admin = AdminApi::of(&app.address);
    let healthy = path_of(
        &create(
            &admin,
            json!({"name": "healthy", "mode": "sync",
                   "script": "export default () => ({statusCode: 200, body: 'fine'})"}),
        )
        .await,
    );
    let cases = [
        ("throws", "export default async () => { throw new Error('boom'); }", 500, "script_error", "boom"),
        ("rejects", "export default () => Promise.reject(new Error('nope'))", 500, "script_error", "nope"),
        ("number", "export default async () => 42", 500, "invalid handler response", "statusCode"),
        ("badstatus", "export default () => ({statusCode: 700})", 500, "invalid handler response", "100-599"),
        ("badheaders", "export default () => ({statusCode: 200, headers: {a: 'b'}})", 500, "invalid handler response", "array"),
        ("loops", "export default () => { while (true) {} }", 504, "timeout", ""),
        ("hangs", "export default () => new Promise(() => {})", 504, "timeout", ""),
        ("allocates", "export default () => { const a = []; while (true) a.push('x'.repeat(1 << 20) + a.length); }", 500, "out_of_memory", ""),
        ("recurses", "function f(n) { return f(n + 1) + 1; } export default () => f(0)", 500, "script_error", ""),
    ];
    let site = Site::new("jira");
    app.install(&site).await;
    for (name, script, status, error, detail) in cases {
        let trigger = create(
            &admin,
            json!({"name": name, "mode": "sync", "script": script, "timeout_ms": 500}),
        )
        .await;
        let started = Instant::now();
        let response = app
            .client
            .post(app.url(&path_of(&trigger)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{name}");
        let body = error_body(response).await;
        assert_eq!(body["error"], error, "{name}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(detail),
            "{name}: {body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name} took {:?}",
            started.elapsed()
        );
        let event_id = body["event_id"]
            .as_str()
            .expect("the failed call was stored");
        let event = admin.get(&format!("/events/{event_id}")).await;
        assert_eq!(event["event"], format!("webtrigger:{name}"));
        let log = admin
            .get(&format!(
                "/triggers/{}/invocations",
                trigger["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(log["data"][0]["state"], "failed", "{name}");
        assert_eq!(log["data"][0]["status_code"], status, "{name}");

        // Others are still answered.
        let fine = app.client.post(app.url(&healthy)).send().await.unwrap();
        assert_eq!(fine.status().as_u16(), 200, "after {name}");
        assert_eq!(fine.text().await.unwrap(), "fine");
        let webhook = app
            .webhook(
                &site,
                "jira:issue_created",
                fixture("payloads/jira_issue_created.json"),
                &[],
            )
            .await;
        assert_eq!(webhook.status().as_u16(), 200, "after {name}");
    }
}

/// Async: 202 with the event id after the commit; the envelope goes to a
/// subscription, signed; the script runs from the queue with its console
/// recorded; a replay delivers again and runs the script again.
async fn async_calls_are_relayed_replayed_and_run_from_the_queue(backend: Backend) {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(backend, triggering).await;
    let admin = AdminApi::of(&app.address);
    let (_, secret) = admin
        .subscribe(json!({"url": receiver.url("/hooks"), "events": ["webtrigger:*"]}))
        .await;
    let trigger = create(
        &admin,
        json!({"name": "builds", "script": "export default async function (request) {
            console.info('build', JSON.parse(request.body).n);
            return {statusCode: 200, body: 'done'};
        }"}),
    )
    .await;
    assert_eq!(trigger["mode"], "async");
    assert_eq!(trigger["methods"], json!(["POST"]));
    let id = trigger["id"].as_str().unwrap();

    let response = app
        .client
        .post(app.url(&path_of(&trigger)))
        .body(r#"{"n": 7}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let event_id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let delivered = receiver
        .wait_for("/hooks", 1, Duration::from_secs(10))
        .await;
    assert_eq!(verify(&secret, &delivered[0]).unwrap(), event_id);
    let envelope = delivered[0].json();
    assert_eq!(envelope["source"], "webtrigger");
    assert_eq!(envelope["event"], "webtrigger:builds");
    assert_eq!(envelope["payload"]["body"], r#"{"n": 7}"#);

    let path = format!("/triggers/{id}/invocations");
    let log = admin
        .wait(&path, Duration::from_secs(10), |log| {
            log["data"][0]["state"] == "completed"
        })
        .await;
    let run = &log["data"][0];
    assert_eq!(run["event_id"], event_id.as_str());
    assert_eq!(run["mode"], "async");
    assert_eq!(run["attempts"], 1);
    assert_eq!(
        run["console"],
        json!([{"level": "info", "message": "build 7"}])
    );
    assert_eq!(run["response"]["body"], "done");

    // Replay: delivered again, and the script runs again.
    let (status, replayed) = admin
        .post(&format!("/events/{event_id}/replay"), json!({}))
        .await;
    assert_eq!(status, 202, "{replayed}");
    assert_eq!(replayed["script_run"], true);
    let again = receiver
        .wait_for("/hooks", 2, Duration::from_secs(10))
        .await;
    assert_eq!(verify(&secret, &again[1]).unwrap(), event_id);
    admin
        .wait(&path, Duration::from_secs(10), |log| {
            log["data"][0]["state"] == "completed"
                && log["data"][0]["updated_at"] != run["updated_at"]
        })
        .await;

    // A script that throws is tried on the retry schedule, then failed.
    let failing = create(
        &admin,
        json!({"name": "failing", "script": "export default () => { throw new Error('down'); }"}),
    )
    .await;
    let log = call_until(&app, &admin, &failing, "failed", Duration::from_secs(15)).await;
    // Two retries in the test schedule: three runs.
    assert_eq!(log["data"][0]["attempts"], 3, "{log:#}");
    assert!(log["data"][0]["error"].as_str().unwrap().contains("down"));

    // No script: accepted, recorded, relayed.
    let plain = create(&admin, json!({"name": "plain"})).await;
    let log = call_until(&app, &admin, &plain, "accepted", Duration::from_secs(10)).await;
    assert_eq!(log["data"][0]["status_code"], 202);
}

/// A transform's return value is the body delivered, signed; `null` skips the
/// delivery, recorded as filtered.
async fn transforms_shape_or_skip_deliveries(backend: Backend) {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(backend, triggering).await;
    let admin = AdminApi::of(&app.address);
    let (sub_id, secret) = admin
        .subscribe(json!({
            "url": receiver.url("/slack"),
            "events": ["webtrigger:*"],
            "transform": "export default function (envelope) {
                const body = JSON.parse(envelope.payload.body);
                if (body.skip) return null;
                return {text: `${envelope.event}: ${body.msg}`};
            }",
        }))
        .await;
    let trigger = create(&admin, json!({"name": "notify"})).await;
    for body in [r#"{"skip": true}"#, r#"{"msg": "deployed"}"#] {
        let response = app
            .client
            .post(app.url(&path_of(&trigger)))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
    }
    let got = receiver
        .wait_for("/slack", 1, Duration::from_secs(10))
        .await;
    verify(&secret, &got[0]).expect("the transformed body is signed");
    assert_eq!(
        got[0].json(),
        json!({"text": "webtrigger:notify: deployed"})
    );
    let deliveries = admin
        .wait(
            &format!("/subscriptions/{sub_id}/deliveries"),
            Duration::from_secs(10),
            |d| {
                d["data"]
                    .as_array()
                    .is_some_and(|d| d.len() == 2 && d.iter().all(|d| d["state"] != "pending"))
            },
        )
        .await;
    let states: Vec<&str> = deliveries["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["state"].as_str().unwrap())
        .collect();
    assert!(
        states.contains(&"filtered") && states.contains(&"delivered"),
        "{deliveries:#}"
    );
    assert_eq!(receiver.received("/slack").len(), 1);

    // A transform that does not compile is refused when it is saved.
    let (status, body) = admin
        .post(
            "/subscriptions",
            json!({"url": receiver.url("/x"), "events": ["*"], "transform": "export default function ( {"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("line"), "{body}");
}

/// Each auth mode with right and wrong credentials.
#[tokio::test]
async fn each_auth_mode_checks_its_credentials() {
    let app = spawn_app_with(Backend::Sqlite, triggering).await;
    let admin = AdminApi::of(&app.address);
    let body = br#"{"ref": "main"}"#;

    // hmac-sha256: `sha256=<hex>` or bare hex, in the named header.
    let hmac = create(
        &admin,
        json!({"name": "github", "auth": {"type": "hmac-sha256", "header": "X-Hub-Signature-256"}}),
    )
    .await;
    assert_eq!(hmac["auth"]["header"], "X-Hub-Signature-256");
    let secret = hmac["secret"].as_str().unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let digest = hex::encode(mac.finalize().into_bytes());
    for (value, status) in [
        (format!("sha256={digest}"), 202),
        (digest.clone(), 202),
        (format!("sha256={}", "0".repeat(64)), 401),
        ("sha256=zz".to_string(), 401),
    ] {
        let response = app
            .client
            .post(app.url(&path_of(&hmac)))
            .header("X-Hub-Signature-256", value.as_str())
            .body(&body[..])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{value}");
    }
    let tampered = app
        .client
        .post(app.url(&path_of(&hmac)))
        .header("X-Hub-Signature-256", format!("sha256={digest}"))
        .body(r#"{"ref": "evil"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status().as_u16(), 401);

    // standard-webhooks, with a secret of the sender's own.
    let own = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let sw = create(
        &admin,
        json!({"name": "svix", "auth": {"type": "standard-webhooks", "secret": own}}),
    )
    .await;
    assert_eq!(sw["secret"], own);
    let key = base64::engine::general_purpose::STANDARD
        .decode(&own["whsec_".len()..])
        .unwrap();
    let sign = |id: &str, ts: i64, body: &[u8]| {
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    };
    let now = now();
    for (ts, signature, status) in [
        (now, sign("msg_1", now, body), 202),
        (now - 600, sign("msg_1", now - 600, body), 401),
        (now, sign("msg_2", now, body), 401),
        (now, "v1,AAAA".to_string(), 401),
    ] {
        let response = app
            .client
            .post(app.url(&path_of(&sw)))
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature.as_str())
            .body(&body[..])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{ts} {signature}");
    }
    // Secrets are never read back.
    let all = admin.get("/triggers").await;
    assert!(!all.to_string().contains(secret) && !all.to_string().contains(own));
}

/// Save-time validation names the problem; a script that does not compile
/// is refused with the engine's message and line.
#[tokio::test]
async fn triggers_are_validated_when_saved() {
    let app = spawn_app_with(Backend::Sqlite, triggering).await;
    let admin = AdminApi::of(&app.address);
    for (body, needle) in [
        (json!({}), "name"),
        (json!({"name": "Bad Name"}), "name"),
        (json!({"name": "x", "methods": []}), "methods"),
        (json!({"name": "x", "methods": ["G E T"]}), "method"),
        (json!({"name": "x", "methods": ["*", "GET"]}), "*"),
        (json!({"name": "x", "mode": "later"}), "mode"),
        (json!({"name": "x", "mode": "sync"}), "script or a forward"),
        (json!({"name": "x", "auth": {"type": "magic"}}), "auth.type"),
        (
            json!({"name": "x", "auth": {"type": "standard-webhooks", "secret": "nope"}}),
            "whsec_",
        ),
        (json!({"name": "x", "timeout_ms": 60000}), "timeout_ms"),
        (
            json!({"name": "x", "script": "x".repeat(300 * 1024)}),
            "larger",
        ),
        (json!({"name": "x", "extra": 1}), "extra"),
        (
            json!({"name": "x", "script": "export default function () {\n  return {statusCode: 200\n}\n}}"}),
            "line",
        ),
    ] {
        let (status, answer) = admin.post("/triggers", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["detail"].as_str().unwrap().contains(needle),
            "{body}: {answer}"
        );
    }
    create(&admin, json!({"name": "taken"})).await;
    let (status, _) = admin.post("/triggers", json!({"name": "taken"})).await;
    assert_eq!(status, 409);
    let (status, _) = admin
        .call(reqwest::Method::DELETE, "/triggers/unknown", None)
        .await;
    assert_eq!(status, 404);
}

/// 100 concurrent calls of a slow trigger: the ones beyond its share of the
/// runtimes are answered 503 with Retry-After at once and nothing is stored
/// for them, while another trigger and a Connect webhook are answered
/// before the slow runs end.
#[tokio::test]
async fn a_flood_of_slow_calls_is_bounded_and_others_keep_working() {
    let app = spawn_app_with(Backend::Sqlite, |raw| {
        triggering(raw);
        raw.script_concurrency = 4;
    })
    .await;
    let admin = AdminApi::of(&app.address);
    let slow = create(
        &admin,
        json!({"name": "slow", "mode": "sync", "timeout_ms": 2000,
               "script": "export default () => { while (true) {} }"}),
    )
    .await;
    let healthy = create(
        &admin,
        json!({"name": "healthy", "mode": "sync",
               "script": "export default () => ({statusCode: 200, body: 'fine'})"}),
    )
    .await;
    let site = Site::new("jira");
    app.install(&site).await;
    let url = app.url(&path_of(&slow));
    let started = Instant::now();
    let flood: Vec<_> = (0..100).map(|_| app.client.post(&url).send()).collect();
    let flood = tokio::spawn(futures_util::future::join_all(flood));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fine = app
        .client
        .post(app.url(&path_of(&healthy)))
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status().as_u16(), 200);
    let webhook = app
        .webhook(
            &site,
            "jira:issue_created",
            fixture("payloads/jira_issue_created.json"),
            &[],
        )
        .await;
    assert_eq!(webhook.status().as_u16(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "answered only after the slow runs: {:?}",
        started.elapsed()
    );
    let mut statuses: Vec<u16> = Vec::new();
    for answer in flood.await.unwrap() {
        let answer = answer.unwrap();
        let status = answer.status().as_u16();
        if status == 503 {
            assert!(answer.headers().contains_key("retry-after"));
            assert_eq!(error_body(answer).await["error"], "busy");
        }
        statuses.push(status);
    }
    let timed_out = statuses.iter().filter(|s| **s == 504).count();
    let busy = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(timed_out + busy, 100, "{statuses:?}");
    assert!(
        (1..=2).contains(&timed_out),
        "half the runtimes at most: {statuses:?}"
    );
    // The slow calls that ran, the healthy one and the webhook.
    assert_eq!(events_count(&app).await, timed_out + 2);
}

/// A burst of quick sync calls, more than one trigger's share of runtimes,
/// waits its turn instead of being turned away.
#[tokio::test]
async fn a_burst_of_quick_sync_calls_waits_its_turn() {
    let app = spawn_app_with(Backend::Sqlite, |raw| {
        triggering(raw);
        raw.script_concurrency = 4;
    })
    .await;
    let admin = AdminApi::of(&app.address);
    let quick = create(
        &admin,
        json!({"name": "quick", "mode": "sync",
               "script": "export default (req) => ({statusCode: 200, body: req.body})"}),
    )
    .await;
    let url = app.url(&path_of(&quick));
    let burst: Vec<_> = (0..12)
        .map(|n| app.client.post(&url).body(n.to_string()).send())
        .collect();
    let mut bodies = Vec::new();
    for answer in futures_util::future::join_all(burst).await {
        let answer = answer.unwrap();
        assert_eq!(answer.status().as_u16(), 200);
        bodies.push(answer.text().await.unwrap().parse::<u32>().unwrap());
    }
    bodies.sort_unstable();
    assert_eq!(bodies, (0..12).collect::<Vec<_>>());
    assert_eq!(events_count(&app).await, 12);
}

/// Forge's own sync example runs as written, apart from its export line.
#[tokio::test]
async fn a_forge_web_trigger_example_runs_unchanged() {
    let app = spawn_app_with(Backend::Sqlite, triggering).await;
    let admin = AdminApi::of(&app.address);
    // From the Forge web trigger documentation; only `exports.runSync =` became
    // `export default`.
    let script = r#"
const buildOutput = (rnd) => ({
    body: '{"hello": "world"}',
    headers: {
        'Content-Type': ['application/json'],
        'X-Request-Id': [`rnd-${rnd}`]
    },
    statusCode: 200,
    statusText: 'OK'
});

export default async function (event, context) {
    const result = buildOutput(Math.random());
    return result;
}
"#;
    let trigger = create(
        &admin,
        json!({"name": "forge-example", "mode": "sync", "script": script}),
    )
    .await;
    let response = app
        .client
        .post(app.url(&path_of(&trigger)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("rnd-"));
    assert_eq!(response.text().await.unwrap(), r#"{"hello": "world"}"#);
}

/// A sync trigger with a forward URL posts the request object there, signed,
/// and answers with the JSON response it gets back.
#[tokio::test]
async fn a_sync_forward_answers_with_the_endpoints_response() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(Backend::Sqlite, triggering).await;
    let admin = AdminApi::of(&app.address);
    receiver.script(
        "/handler",
        vec![
            Reply::WithBody(200, r#"{"statusCode": 418, "body": "teapot"}"#.into()),
            Reply::WithBody(200, "not json".into()),
        ],
    );
    let trigger = create(
        &admin,
        json!({"name": "fwd", "mode": "sync", "forward": receiver.url("/handler")}),
    )
    .await;
    let secret = trigger["forward_secret"].as_str().unwrap().to_string();
    let response = app
        .client
        .post(app.url(&format!("{}/a?b=c", path_of(&trigger))))
        .body("ping")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 418);
    assert_eq!(response.text().await.unwrap(), "teapot");
    let got = receiver.received("/handler");
    verify(&secret, &got[0]).expect("signed with the forward secret");
    let request = got[0].json();
    assert_eq!(request["body"], "ping");
    assert_eq!(request["userPath"], "/a");
    assert_eq!(request["queryParameters"], json!({"b": ["c"]}));

    let response = app
        .client
        .post(app.url(&path_of(&trigger)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 500);
    assert_eq!(
        error_body(response).await["error"],
        "invalid handler response"
    );
}

/// Over RabbitMQ, an async call is published with routing key
/// `webtrigger.<name>` and the webtrigger envelope.
#[tokio::test]
async fn async_calls_are_published_to_rabbitmq() {
    let exchange = test_exchange();
    let mut consumer = Consumer::bind(&exchange, &["webtrigger.#"]).await;
    let app = spawn_app_with(Backend::Postgres, |raw| {
        triggering(raw);
        crate::publishing::on_rabbitmq(raw, &exchange, amqp_url());
    })
    .await;
    let admin = AdminApi::of(&app.address);
    let trigger = create(&admin, json!({"name": "ci-done"})).await;
    let response = app
        .client
        .post(app.url(&path_of(&trigger)))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let got = consumer.take(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].routing_key, "webtrigger.ci-done");
    assert_eq!(got[0].body["id"], id.as_str());
    assert_eq!(got[0].body["source"], "webtrigger");
    assert_eq!(got[0].body["source_event"], "webtrigger:ci-done");
    assert_eq!(got[0].body["tenant"], Value::Null);
    consumer.close().await;
    let relay_queue = app.config.relay_queue.name.clone();
    drop(app);
    delete_topology(&exchange, &[&relay_queue]).await;
}
