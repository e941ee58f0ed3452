//! The inspector in a real browser: Debian's Chromium, headless, driven over
//! WebDriver (ChromeDriver) with fantoccini. Signs in, watches a signed
//! webhook arrive in the live tail, opens it, sees its delivery and attempt,
//! replays it and sees the new attempt, creates a subscription and a trigger
//! through the forms, test-runs the script, and checks the session and CSRF
//! guards. Each page is saved as a PNG under `target/inspector-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::receiver::Receiver;

const TOKEN: &str = "inspector-token-0123456789";

/// ChromeDriver on a port of its own, stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver() -> Driver {
    let found = Command::new("chromedriver")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "the inspector's browser test needs chromium and chromedriver on PATH \
         (scripts/test.sh installs Debian's chromium and chromium-driver)"
    );
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver { child, port };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver did not listen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    driver
}

async fn browser(driver: &Driver) -> Client {
    // ChromeDriver is plain HTTP, but the client's TLS stack wants a provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium(),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"]
        }),
    );
    ClientBuilder::rustls()
        .expect("a TLS config")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a browser session")
}

fn chromium() -> String {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("chromium")
        .to_string()
}

fn shots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/inspector-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

/// Waits until `css` matches an element whose text contains `text`,
/// reloading the page between looks when `reload` is set.
async fn wait_text(client: &Client, css: &str, text: &str, reload: bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(elements) = client.find_all(Locator::Css(css)).await {
            for e in elements {
                if let Ok(found) = e.text().await {
                    if found.contains(text) {
                        return found;
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            shot(client, "failure").await;
            let html = client.source().await.unwrap_or_default();
            std::fs::write(shots().join("failure.html"), html).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{css}` with `{text}` on {} (see target/inspector-screenshots/failure.*)",
            client
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default()
        );
        if reload {
            client.refresh().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn fill(client: &Client, css: &str, value: &str) {
    let field = client.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

#[tokio::test]
async fn the_inspector_works_in_a_browser() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.admin_token = Some(TOKEN.into());
        c.allow_private_destinations = true;
        c.relay_poll_interval = "200ms".into();
    })
    .await;
    let receiver = Receiver::start().await;
    for stale in ["failure.png", "failure.html"] {
        let _ = std::fs::remove_file(shots().join(stale));
    }
    let driver = start_driver().await;
    let client = browser(&driver).await;
    // `localhost` is a secure context, so the cookie hookrelay marks `Secure`
    // (its base URL is https) is kept over plain HTTP in the test.
    let base = app.address.replace("127.0.0.1", "localhost");
    let at = |path: &str| format!("{base}{path}");

    // No page without a session: to the sign-in form.
    client.goto(&at("/admin/events")).await.unwrap();
    assert!(client
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/admin/login"));
    fill(&client, "#token", "not-the-admin-token").await;
    click(&client, "form button").await;
    wait_text(&client, "p.error", "not the admin token", false).await;
    shot(&client, "login").await;
    fill(&client, "#token", TOKEN).await;
    click(&client, "form button").await;
    wait_text(&client, "h1", "Overview", false).await;

    // A subscription through the form.
    client.goto(&at("/admin/subscriptions/new")).await.unwrap();
    fill(&client, "input[name=url]", &receiver.url("/hooks")).await;
    fill(&client, "input[name=events]", "jira:*").await;
    click(&client, "#subscription-form button[type=submit]").await;
    wait_text(&client, "p.ok", "shown this once", false).await;

    // An edit the server refuses comes back with what was typed, not the
    // saved values.
    fill(&client, "#subscription-form input[name=filter]", "$[").await;
    fill(
        &client,
        "#subscription-form input[name=description]",
        "typed, not saved",
    )
    .await;
    click(&client, "#subscription-form button[type=submit]").await;
    wait_text(&client, "p.error", "JSONPath", false).await;
    for (field, typed) in [("filter", "$["), ("description", "typed, not saved")] {
        let value = client
            .find(Locator::Css(&format!(
                "#subscription-form input[name={field}]"
            )))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap();
        assert_eq!(value.as_deref(), Some(typed), "{field}");
    }

    // The live tail shows a signed webhook as it is stored.
    client.goto(&at("/admin/tail")).await.unwrap();
    wait_text(&client, "[data-status]", "live", false).await;
    let site = Site::new("jira");
    app.install(&site).await;
    let stored: Value = app
        .webhook(
            &site,
            "jira:issue_created",
            fixture("payloads/jira_issue_created.json"),
            &[],
        )
        .await
        .json()
        .await
        .unwrap();
    let event_id = stored["id"].as_str().unwrap().to_string();
    let row = format!("#tail tr[data-event-id='{event_id}']");
    wait_text(&client, &row, "jira:issue_created", false).await;
    shot(&client, "tail").await;

    // Its page: the delivery and its attempt.
    click(&client, &format!("{row} a")).await;
    wait_text(&client, "h1", "jira:issue_created", false).await;
    receiver
        .wait_for("/hooks", 1, Duration::from_secs(10))
        .await;
    wait_text(&client, "li.attempt", "delivered", true).await;
    assert_eq!(
        client
            .find_all(Locator::Css("li.attempt"))
            .await
            .unwrap()
            .len(),
        1
    );
    shot(&client, "event").await;

    // Replaying the delivery adds an attempt.
    click(&client, "section.delivery form button").await;
    wait_text(&client, "p.ok", "Replayed: 1", false).await;
    receiver
        .wait_for("/hooks", 2, Duration::from_secs(10))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while client
        .find_all(Locator::Css("li.attempt"))
        .await
        .unwrap()
        .len()
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replay's attempt never showed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        client.refresh().await.unwrap();
    }

    client
        .execute(
            "document.querySelector('section.delivery').scrollIntoView()",
            vec![],
        )
        .await
        .unwrap();
    shot(&client, "event-deliveries").await;

    // A trigger through the form, and a test run of its script.
    client.goto(&at("/admin/triggers/new")).await.unwrap();
    fill(&client, "input[name=name]", "hello").await;
    fill(
        &client,
        "textarea[name=script]",
        "export default async function (request) {\n\
         console.log('got', request.method, request.body);\n\
         return { statusCode: 201, body: 'hi ' + JSON.parse(request.body).hello };\n}\n",
    )
    .await;
    click(&client, "#trigger-form button[type=submit]").await;
    wait_text(&client, "p.ok", "Created", false).await;
    click(&client, "#test-form button").await;
    wait_text(&client, "#test-status", "201", false).await;
    wait_text(&client, "#test-body", "hi world", false).await;
    wait_text(&client, "#test-console", "log: got POST", false).await;
    shot(&client, "trigger").await;

    for (page, name) in [
        ("/admin/", "overview"),
        ("/admin/events", "events"),
        ("/admin/subscriptions", "subscriptions"),
        ("/admin/triggers", "triggers"),
        ("/admin/tenants", "tenants"),
    ] {
        client.goto(&at(page)).await.unwrap();
        wait_text(&client, "h1", "", false).await;
        shot(&client, name).await;
    }
    wait_text(&client, "#tenants", &site.client_key, false).await;

    // The guards, with the browser's own session cookie.
    let cookie = client
        .get_named_cookie("hookrelay_session")
        .await
        .expect("the session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    let session = format!("hookrelay_session={}", cookie.value());
    let post = |path: &str, form: &[(&str, &str)]| {
        app.client
            .post(app.url(path))
            .header("Cookie", session.clone())
            .form(form)
            .send()
    };
    let form = [("url", receiver.url("/other")), ("events", "jira:*".into())];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        post("/admin/subscriptions", &form).await.unwrap().status(),
        403
    );
    let mut forged = form.clone();
    forged.push(("csrf", "0000"));
    assert_eq!(
        post("/admin/subscriptions", &forged)
            .await
            .unwrap()
            .status(),
        403
    );
    let subs: Value = app
        .client
        .get(app.url("/admin/api/v1/subscriptions"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        subs["data"].as_array().unwrap().len(),
        1,
        "nothing made without the token"
    );
    let anonymous = app
        .client
        .get(app.url("/admin/subscriptions"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 303);

    // Every page (and so the steps above, live tail and test run included)
    // works under a policy that runs no inline script and refuses framing.
    let page = app
        .client
        .get(app.url("/admin/events"))
        .header("Cookie", session.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    for directive in ["script-src 'self'", "frame-ancestors 'none'"] {
        assert!(policy.contains(directive), "{policy}");
    }
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");

    // Signing out ends the session, for the cookie too.
    client.goto(&at("/admin/")).await.unwrap();
    click(&client, "form.logout button").await;
    wait_text(&client, "h1", "hookrelay", false).await;
    let after = app
        .client
        .get(app.url("/admin/"))
        .header("Cookie", session.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 303, "a signed-out cookie opens nothing");
    client.close().await.unwrap();
}
