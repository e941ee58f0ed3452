//! Health, readiness, metrics and the error shape of unknown routes.

use crate::both_backends;
use crate::helpers::*;

both_backends!(health_readiness_and_metrics);

async fn health_readiness_and_metrics(backend: Backend) {
    let app = spawn_app(backend).await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.headers().contains_key("x-request-id"));

    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    let expected = match backend {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    assert_eq!(ready["store"]["backend"], expected);

    // Produce one counted webhook, then read it back from /metrics.
    let site = Site::new("jira");
    app.install(&site).await;
    app.webhook(&site, "jira:issue_created", "{}", &[]).await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = parse(&metrics);
    let stored = [("source", "connect"), ("outcome", "stored")];
    assert_eq!(
        total(&samples, "hookrelay_intake_requests_total", &stored),
        1.0,
        "{metrics}"
    );
    let installed = [("callback", "installed"), ("outcome", "applied")];
    assert_eq!(
        total(&samples, "hookrelay_lifecycle_total", &installed),
        1.0,
        "{metrics}"
    );

    let missing = app
        .client
        .get(app.url("/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    error_body(missing).await;
}

// ------------------------------------------------------------------ /metrics

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hookrelay::telemetry::catalog::{self, Kind, SERIES};
use serde_json::json;

use crate::receiver::Receiver;
use crate::relay::{relaying, AdminApi};

/// One sample of the text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a scrape (`# ` lines skipped). Label values are read as the
/// quoted strings they are, since route patterns hold `{`, `}` and `,`.
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let (name, mut rest) = match series.find('{') {
            Some(at) => (&series[..at], &series[at + 1..]),
            None => (series, ""),
        };
        let mut labels = BTreeMap::new();
        while let Some((key, after)) = rest.split_once("=\"") {
            let mut value = String::new();
            let mut chars = after.char_indices();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            labels.insert(key.trim_start_matches(',').to_string(), value);
            rest = &after[end..];
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

/// The sum of the samples of `name` that carry all of `labels`.
fn total(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

async fn scrape(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// Scrapes until `name{labels}` adds up to `want`; the scrape's samples.
async fn wait_for(app: &TestApp, name: &str, labels: &[(&str, &str)], want: f64) -> Vec<Sample> {
    // The store's gauges are sampled every 5 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let samples = parse(&scrape(app).await);
        let got = total(&samples, name, labels);
        if got == want {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} is {got}, never {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

both_backends!(every_series_is_described_and_present_from_start);

async fn every_series_is_described_and_present_from_start(backend: Backend) {
    let app = spawn_app(backend).await;
    let text = scrape(&app).await;
    let samples = parse(&text);
    for series in SERIES {
        let name = series.name;
        if catalog::PRESENT_WHEN_USED.contains(&name) {
            continue;
        }
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
        let kind = match series.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} is not a {kind}:\n{text}"
        );
        let present = match series.kind {
            Kind::Histogram => samples
                .iter()
                .any(|s| s.name == format!("{name}_bucket") && s.labels.contains_key("le")),
            _ => samples.iter().any(|s| s.name == name),
        };
        assert!(present, "{name} has no sample at start-up:\n{text}");
    }
    // Every series exported is one the catalog (and so the README) lists.
    for sample in samples.iter().filter(|s| s.name.starts_with("hookrelay_")) {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| sample.name.strip_suffix(suffix))
            .filter(|base| {
                SERIES
                    .iter()
                    .any(|s| s.name == *base && s.kind == Kind::Histogram)
            })
            .unwrap_or(&sample.name);
        assert!(
            SERIES.iter().any(|s| s.name == base),
            "{} is not in the catalog",
            sample.name
        );
    }
    assert!(!text.contains("quantile="), "no summaries:\n{text}");
    assert_eq!(
        total(
            &samples,
            "hookrelay_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        total(
            &samples,
            "hookrelay_intake_requests_total",
            &[("source", "forge"), ("outcome", "stored")]
        ),
        0.0
    );

    // Requests are counted by route once answered, with their latency.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let samples = wait_for(
        &app,
        "hookrelay_http_requests_total",
        &[("route", "/healthz"), ("status", "200")],
        1.0,
    )
    .await;
    assert_eq!(
        total(
            &samples,
            "hookrelay_http_request_duration_seconds_count",
            &[("route", "/healthz")]
        ),
        1.0
    );
    let text = scrape(&app).await;
    for name in [
        "hookrelay_http_requests_total",
        "hookrelay_http_request_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
    }
    assert!(samples.iter().any(
        |s| s.name == "hookrelay_http_request_duration_seconds_bucket"
            && s.labels.get("route").map(String::as_str) == Some("/healthz")
            && s.labels.get("le").map(String::as_str) == Some("+Inf")
    ));
}

both_backends!(counters_follow_intake_auth_publishing_delivery_and_scripts);

async fn counters_follow_intake_auth_publishing_delivery_and_scripts(backend: Backend) {
    let app = spawn_app_with(backend, relaying).await;
    let admin = AdminApi::of(&app.address);
    let receiver = Receiver::start().await;
    let (subscription, _) = admin
        .subscribe(json!({"url": receiver.url("/hook"), "events": ["jira:*"]}))
        .await;

    // A webhook stored, then the same one again: one stored, one duplicate.
    let site = Site::new("jira");
    app.install(&site).await;
    for _ in 0..2 {
        let answer = app
            .webhook(
                &site,
                "jira:issue_created",
                "{}",
                &[("X-Atlassian-Webhook-Identifier", "m-1")],
            )
            .await;
        assert!(answer.status().is_success(), "{}", answer.status());
    }
    // One without credentials.
    let refused = app
        .webhook_with_token("/jira/events/jira:issue_created", None, "{}", &[])
        .await;
    assert_eq!(refused.status(), 401);

    let connect = |outcome| [("source", "connect"), ("outcome", outcome)];
    let samples = parse(&scrape(&app).await);
    let intake = "hookrelay_intake_requests_total";
    assert_eq!(total(&samples, intake, &connect("stored")), 1.0);
    assert_eq!(total(&samples, intake, &connect("duplicate")), 1.0);
    assert_eq!(total(&samples, intake, &connect("unauthorized")), 1.0);
    assert_eq!(
        total(
            &samples,
            "hookrelay_auth_failures_total",
            &[("source", "connect"), ("reason", "missing_token")]
        ),
        1.0
    );
    assert_eq!(total(&samples, "hookrelay_auth_failures_total", &[]), 1.0);

    // Published with a confirm, then delivered.
    receiver.wait_for("/hook", 1, Duration::from_secs(20)).await;
    wait_for(
        &app,
        "hookrelay_publish_confirms_total",
        &[("result", "ack")],
        1.0,
    )
    .await;
    let samples = wait_for(
        &app,
        "hookrelay_delivery_attempts_total",
        &[("outcome", "delivered")],
        1.0,
    )
    .await;
    assert_eq!(total(&samples, "hookrelay_publishes_total", &[]), 1.0);
    assert_eq!(
        total(&samples, "hookrelay_delivery_duration_seconds_count", &[]),
        1.0
    );
    assert_eq!(
        total(&samples, "hookrelay_publish_delay_seconds_count", &[]),
        1.0
    );

    // A sync web trigger runs its script.
    let trigger = crate::triggers::create(
        &admin,
        json!({"name": "metered", "mode": "sync",
               "script": "export default async () => ({statusCode: 200, body: 'ok'})"}),
    )
    .await;
    let called = app
        .client
        .post(app.url(&crate::triggers::path_of(&trigger)))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(called.status(), 200);
    let samples = parse(&scrape(&app).await);
    assert_eq!(
        total(
            &samples,
            "hookrelay_script_runs_total",
            &[("kind", "trigger"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        total(
            &samples,
            "hookrelay_script_run_duration_seconds_count",
            &[("kind", "trigger")]
        ),
        1.0
    );
    assert_eq!(
        total(
            &samples,
            intake,
            &[("source", "webtrigger"), ("outcome", "stored")]
        ),
        1.0
    );

    // Routes are labelled by their pattern, never the path with its ids.
    let event = app.events(&site).await.remove(0);
    let shown = app
        .client
        .get(app.url(&format!("/admin/api/v1/events/{}", event.id)))
        .bearer_auth(crate::relay::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(shown.status(), 200);
    let samples = wait_for(
        &app,
        "hookrelay_http_requests_total",
        &[("route", "/admin/api/v1/events/{id}"), ("status", "200")],
        1.0,
    )
    .await;
    assert_eq!(
        total(
            &samples,
            "hookrelay_http_requests_total",
            &[("route", "/{product}/events/{event}")]
        ),
        3.0
    );
    let text = scrape(&app).await;
    assert!(!text.contains(&event.id.to_string()), "{text}");
    assert!(!text.contains("jira:issue_created"), "{text}");

    // The store's gauges: a subscription disabled is seen by the sampler.
    let (status, _) = admin
        .call(
            reqwest::Method::PATCH,
            &format!("/subscriptions/{subscription}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200);
    wait_for(&app, "hookrelay_subscriptions_disabled", &[], 1.0).await;

    // A delivery that fails every attempt ends up dead, and the sampler sees it.
    receiver.script("/fail", vec![crate::receiver::Reply::Status(500)]);
    admin
        .subscribe(json!({"url": receiver.url("/fail"), "events": ["jira:issue_updated"]}))
        .await;
    let answer = app.webhook(&site, "jira:issue_updated", "{}", &[]).await;
    assert!(answer.status().is_success(), "{}", answer.status());
    wait_for(&app, "hookrelay_deliveries_dead", &[], 1.0).await;
    let samples = parse(&scrape(&app).await);
    let attempts = "hookrelay_delivery_attempts_total";
    assert_eq!(total(&samples, attempts, &[("outcome", "dead")]), 1.0);
    assert_eq!(total(&samples, attempts, &[("outcome", "retry")]), 2.0);
    let samples = wait_for(&app, "hookrelay_outbox_backlog", &[], 0.0).await;
    assert_eq!(total(&samples, "hookrelay_deliveries_due", &[]), 0.0);
    assert!(total(&samples, "hookrelay_db_pool_max_connections", &[]) >= 1.0);
}

/// One access log line per request, at info, with method, route pattern,
/// status, duration and the request id the answer carries.
#[test]
fn each_request_is_logged_once() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("access.db").display());
    let mut served = crate::binary::Served::start(&[
        ("HOOKRELAY_LISTEN", "127.0.0.1:0"),
        ("HOOKRELAY_DATABASE_URL", &db),
        ("HOOKRELAY_LOG_FORMAT", "json"),
    ]);
    let line = served.wait_for(Duration::from_secs(60), |l| {
        l.contains("hookrelay is serving")
    });
    let started: serde_json::Value = serde_json::from_str(&line).unwrap();
    let port = started["fields"]["port"].as_u64().unwrap() as u16;

    let mut ids = Vec::new();
    for (path, status) in [
        ("/healthz", 200),
        (
            "/admin/api/v1/events/0192c1a4-0000-7000-8000-000000000000",
            401,
        ),
        ("/no/such", 404),
    ] {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        let id = answer
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .expect("x-request-id")
            .trim()
            .to_string();
        ids.push(id);
    }
    let last = ids.last().unwrap().clone();
    served.wait_for(Duration::from_secs(10), |l| l.contains(&last));
    served.signal("TERM");
    let lines = served.all_lines(Duration::from_secs(30));
    let access: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "hookrelay::access")
        .collect();
    assert_eq!(access.len(), 3, "{lines:#?}");
    let expected = [
        ("/healthz", 200),
        ("/admin/api/v1/events/{id}", 401),
        ("unmatched", 404),
    ];
    for ((line, id), (route, status)) in access.iter().zip(&ids).zip(expected) {
        assert_eq!(line["level"], "INFO");
        let fields = &line["fields"];
        assert_eq!(fields["method"], "GET");
        assert_eq!(fields["route"], route);
        assert_eq!(fields["status"], status);
        assert_eq!(fields["request_id"], id.as_str());
        assert!(
            fields["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
            "{line}"
        );
    }
}

/// RabbitMQ cut off and back: the link's gauge, the reconnect counter and the
/// outbox gauges follow.
#[tokio::test]
async fn broker_outage_shows_in_the_outbox_and_reconnect_metrics() {
    use crate::publishing::{on_rabbitmq, wait_for_broker};
    use crate::rabbit::{amqp_url_via, delete_topology, test_exchange, Proxy};
    let exchange = test_exchange();
    let proxy = Proxy::start().await;
    let app = spawn_app_with(Backend::Postgres, |raw| {
        on_rabbitmq(raw, &exchange, amqp_url_via(&proxy))
    })
    .await;
    wait_for_broker(&app.address, "up").await;
    let samples = wait_for(&app, "hookrelay_broker_up", &[], 1.0).await;
    assert_eq!(
        total(&samples, "hookrelay_broker_reconnects_total", &[]),
        0.0
    );

    proxy.cut();
    wait_for_broker(&app.address, "down").await;
    wait_for(&app, "hookrelay_broker_up", &[], 0.0).await;
    let site = Site::new("jira");
    app.install(&site).await;
    let answer = app.webhook(&site, "jira:issue_created", "{}", &[]).await;
    assert!(answer.status().is_success(), "{}", answer.status());
    let samples = wait_for(&app, "hookrelay_outbox_backlog", &[], 1.0).await;
    assert!(total(&samples, "hookrelay_outbox_oldest_age_seconds", &[]) > 0.0);

    proxy.restore();
    wait_for_broker(&app.address, "up").await;
    wait_for(&app, "hookrelay_outbox_backlog", &[], 0.0).await;
    let samples = wait_for(&app, "hookrelay_broker_reconnects_total", &[], 1.0).await;
    assert_eq!(total(&samples, "hookrelay_broker_up", &[]), 1.0);
    assert_eq!(
        total(&samples, "hookrelay_outbox_oldest_age_seconds", &[]),
        0.0
    );
    assert_eq!(
        total(
            &samples,
            "hookrelay_publish_confirms_total",
            &[("result", "ack")]
        ),
        1.0
    );
    delete_topology(&exchange, &[]).await;
}
