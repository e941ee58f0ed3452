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
    assert!(metrics.contains("hookrelay_webhooks_total"), "{metrics}");
    assert!(metrics.contains("hookrelay_lifecycle_total"), "{metrics}");

    let missing = app
        .client
        .get(app.url("/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    error_body(missing).await;
}
