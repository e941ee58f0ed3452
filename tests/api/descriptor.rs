//! The descriptors as Jira and Confluence fetch them.

use serde_json::Value;

use crate::helpers::*;

async fn get_json(app: &TestApp, path: &str) -> Value {
    let response = app.client.get(app.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

fn event_list(file: &str) -> Vec<String> {
    fixture_file(file)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

fn events_of(descriptor: &Value) -> Vec<&str> {
    descriptor["modules"]["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect()
}

fn fixture_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[tokio::test]
async fn each_product_descriptor_lists_every_event_with_its_own_url() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.app_key = "acme-relay".into()).await;
    for (product, events_file) in [
        ("jira", "descriptor/jira.events"),
        ("confluence", "descriptor/confluence.events"),
    ] {
        let d = get_json(&app, &format!("/{product}/atlassian-connect.json")).await;
        assert_eq!(d["key"], "acme-relay");
        assert_eq!(d["baseUrl"], BASE_URL);
        assert_eq!(d["authentication"]["type"], "jwt");
        assert_eq!(d["apiMigrations"]["signed-install"], true);
        for callback in ["installed", "uninstalled", "enabled", "disabled"] {
            assert_eq!(
                d["lifecycle"][callback],
                format!("/{product}/lifecycle/{callback}")
            );
        }
        let expected = event_list(events_file);
        let hooks = d["modules"]["webhooks"].as_array().unwrap();
        assert_eq!(hooks.len(), expected.len());
        for (hook, event) in hooks.iter().zip(&expected) {
            assert_eq!(hook["event"], event.as_str());
            assert_eq!(hook["url"], format!("/{product}/events/{event}"));
        }
    }
    let jira = get_json(&app, "/jira/atlassian-connect.json").await;
    assert_eq!(get_json(&app, "/atlassian-connect.json").await, jira);
    let events = events_of(&jira);
    for must in [
        "jira:issue_created",
        "comment_created",
        "worklog_updated",
        "project_created",
        "jira:version_released",
        "user_created",
        "sprint_started",
        "board_created",
    ] {
        assert!(events.contains(&must), "{must}");
    }
    let confluence = get_json(&app, "/confluence/atlassian-connect.json").await;
    let events = events_of(&confluence);
    for must in [
        "page_updated",
        "blog_created",
        "comment_created",
        "attachment_created",
        "label_added",
        "space_created",
        "content_created",
        "user_created",
        "group_created",
    ] {
        assert!(events.contains(&must), "{must}");
    }
}

#[tokio::test]
async fn configured_events_and_options_reach_the_descriptor() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.jira.events = Some(vec![
            "jira:issue_created".into(),
            "jira:issue_updated".into(),
        ]);
        c.jira.webhooks.insert(
            "jira:issue_updated".into(),
            hookrelay::config::WebhookOptions {
                filter: Some("project = OPS".into()),
                exclude_body: Some(false),
                property_keys: Some(vec!["team".into()]),
            },
        );
    })
    .await;
    let d = get_json(&app, "/jira/atlassian-connect.json").await;
    let hooks = d["modules"]["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[1]["filter"], "project = OPS");
    assert_eq!(hooks[1]["excludeBody"], false);
    assert_eq!(hooks[1]["propertyKeys"], serde_json::json!(["team"]));
    assert!(hooks[0].get("filter").is_none());
}

/// Every event Atlassian's Connect webhook document names is in the
/// descriptors, including those the cloud may no longer send.
#[tokio::test]
async fn descriptors_list_the_events_connect_documents_beside_the_current_ones() {
    let app = spawn_app(Backend::Sqlite).await;
    for (product, named) in [
        ("jira", &["jira:worklog_updated", "worklog_updated"][..]),
        (
            "confluence",
            &[
                "status_created",
                "status_cleared",
                "status_removed",
                "login",
                "login_failed",
                "logout",
                "user_deactivated",
            ][..],
        ),
    ] {
        let d = get_json(&app, &format!("/{product}/atlassian-connect.json")).await;
        let events = events_of(&d);
        for event in named {
            assert!(events.contains(event), "{product} lacks {event}");
        }
    }
}
