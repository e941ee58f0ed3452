//! Signed install, reinstall, and the lifecycle state machine.

use hookrelay::domain::TenantState;
use secrecy::ExposeSecret;
use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    valid_install_stores_the_tenant_and_its_webhooks_verify,
    bad_signed_installs_are_refused_and_change_nothing,
    reinstall_replaces_the_secret,
    callbacks_out_of_order_never_undo_newer_ones,
    install_keys_are_cached_per_kid,
    audiences_from_the_allowed_list_are_accepted,
    a_stale_callback_does_not_undo_a_newer_one_on_an_active_tenant,
    another_process_sees_installs_and_new_secrets_at_once,
);

async fn valid_install_stores_the_tenant_and_its_webhooks_verify(backend: Backend) {
    let app = spawn_app(backend).await;
    let site = Site::new("jira");
    let response = app.install(&site).await;
    assert_eq!(response.status(), 204);

    let tenant = app.tenant(&site).await.expect("tenant stored");
    assert_eq!(tenant.state, TenantState::Installed);
    assert_eq!(tenant.base_url, site.base_url);
    assert_eq!(tenant.shared_secret.expose_secret(), site.secret);

    let response = app
        .webhook(&site, "jira:issue_created", r#"{"a":1}"#, &[])
        .await;
    assert_eq!(response.status(), 200);

    // `enabled` is HS256 with the new secret.
    let path = "/jira/lifecycle/enabled";
    let response = app
        .callback(&site, "enabled", Some(site.token("POST", path)))
        .await;
    assert_eq!(response.status(), 204);
    assert_eq!(app.tenant(&site).await.unwrap().state, TenantState::Enabled);
}

async fn bad_signed_installs_are_refused_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let installed = Site::new("jira");
    assert_eq!(app.install(&installed).await.status(), 204);
    let path = "/jira/lifecycle/installed";
    let now = now();

    // An attacker tries to take over the installed tenant with a secret of its own,
    // and to create a new one.
    let mut hijack = installed.clone();
    hijack.secret = "attacker-chosen-secret".into();
    let newcomer = Site::new("jira");

    for site in [&hijack, &newcomer] {
        let good = install_claims(site, path, now);
        let mut cases: Vec<(&str, String)> = Vec::new();

        let mut claims = good.clone();
        claims["aud"] = json!(["https://someone-else.example.test"]);
        cases.push((
            "wrong aud",
            install_token(KID_A, "keys/install-a.pem", claims),
        ));

        cases.push((
            "unknown kid",
            install_token("kid-unknown", "keys/install-a.pem", good.clone()),
        ));
        cases.push((
            "wrong key for kid",
            install_token(KID_A, "keys/install-b.pem", good.clone()),
        ));

        let mut claims = good.clone();
        claims["qsh"] = json!(simple_qsh("POST", "/jira/lifecycle/uninstalled"));
        cases.push((
            "wrong qsh",
            install_token(KID_A, "keys/install-a.pem", claims),
        ));

        let mut claims = good.clone();
        claims["iat"] = json!(now - 3600);
        claims["exp"] = json!(now - 600);
        cases.push((
            "expired",
            install_token(KID_A, "keys/install-a.pem", claims),
        ));

        let mut claims = good.clone();
        claims["iss"] = json!("jira:somebody-else");
        cases.push((
            "iss is not the body's clientKey",
            install_token(KID_A, "keys/install-a.pem", claims),
        ));

        cases.push(("HS256 instead of RS256", hs256(&site.secret, good.clone())));
        cases.push(("not a JWT", "garbage".into()));

        for (case, token) in cases {
            let response = app.callback(site, "installed", Some(token)).await;
            assert_eq!(response.status(), 401, "{case}");
            error_body(response).await;
        }
        let response = app.callback(site, "installed", None).await;
        assert_eq!(response.status(), 401, "no token");

        // A valid token whose body names another clientKey (body tampered).
        let mut body = site.lifecycle_body("installed");
        body["clientKey"] = json!(Site::new("jira").client_key);
        let token = install_token(KID_A, "keys/install-a.pem", good.clone());
        let response = app.lifecycle(site, "installed", Some(token), &body).await;
        assert_eq!(response.status(), 401, "tampered clientKey");
    }

    let tenant = app.tenant(&installed).await.unwrap();
    assert_eq!(
        tenant.shared_secret.expose_secret(),
        installed.secret,
        "secret unchanged"
    );
    assert_eq!(tenant.state, TenantState::Installed);
    assert!(app.tenant(&newcomer).await.is_none(), "no tenant created");
    // The original secret still verifies webhooks; the attacker's does not.
    assert_eq!(
        app.webhook(&installed, "comment_created", "{}", &[])
            .await
            .status(),
        200
    );
    assert_eq!(
        app.webhook(&hijack, "comment_created", "{}", &[])
            .await
            .status(),
        401
    );

    // A malformed body under a valid token is a 400, and changes nothing.
    let token = install_token(
        KID_A,
        "keys/install-a.pem",
        install_claims(&newcomer, path, now),
    );
    let response = app
        .client
        .post(app.url(path))
        .header("Authorization", format!("JWT {token}"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let mut body = newcomer.lifecycle_body("installed");
    body.as_object_mut().unwrap().remove("sharedSecret");
    let response = app
        .lifecycle(&newcomer, "installed", Some(token), &body)
        .await;
    assert_eq!(response.status(), 400);
    assert!(app.tenant(&newcomer).await.is_none());
}

async fn reinstall_replaces_the_secret(backend: Backend) {
    let app = spawn_app(backend).await;
    let site = Site::new("confluence");
    assert_eq!(app.install_at(&site, now() - 60).await.status(), 204);
    assert_eq!(
        app.webhook(&site, "page_updated", "{}", &[]).await.status(),
        200
    );

    let mut reinstalled = site.clone();
    reinstalled.secret = "a-brand-new-shared-secret".into();
    assert_eq!(app.install_at(&reinstalled, now()).await.status(), 204);

    assert_eq!(
        app.tenant(&site)
            .await
            .unwrap()
            .shared_secret
            .expose_secret(),
        reinstalled.secret
    );
    assert_eq!(
        app.webhook(&site, "page_updated", "{}", &[]).await.status(),
        401,
        "old secret"
    );
    assert_eq!(
        app.webhook(&reinstalled, "page_updated", "{}", &[])
            .await
            .status(),
        200,
        "new secret"
    );
}

async fn callbacks_out_of_order_never_undo_newer_ones(backend: Backend) {
    let app = spawn_app(backend).await;
    let site = Site::new("jira");
    let t = now() - 100;
    assert_eq!(app.install_at(&site, t).await.status(), 204);

    // uninstalled at t+20 arrives first.
    let path = "/jira/lifecycle/uninstalled";
    let token = install_token(
        KID_A,
        "keys/install-a.pem",
        install_claims(&site, path, t + 20),
    );
    let response = app
        .lifecycle(
            &site,
            "uninstalled",
            Some(token),
            &site.lifecycle_body("uninstalled"),
        )
        .await;
    assert_eq!(response.status(), 204);
    assert_eq!(
        app.tenant(&site).await.unwrap().state,
        TenantState::Uninstalled
    );

    // A late `disabled` (t+10), properly signed: acknowledged, nothing changes.
    let path = "/jira/lifecycle/disabled";
    let claims = json!({"iss": site.client_key, "iat": t + 10, "exp": now() + 60, "qsh": simple_qsh("POST", path)});
    let response = app
        .callback(&site, "disabled", Some(site.token_with(claims)))
        .await;
    assert_eq!(response.status(), 204);
    // The same, unauthenticated, as Atlassian may send it after an uninstall.
    let response = app.callback(&site, "disabled", None).await;
    assert_eq!(response.status(), 204);
    // A stale `installed` (t+5) does not resurrect it either.
    assert_eq!(app.install_at(&site, t + 5).await.status(), 204);
    assert_eq!(
        app.tenant(&site).await.unwrap().state,
        TenantState::Uninstalled
    );

    // Webhooks for an uninstalled tenant are refused, even correctly signed.
    assert_eq!(
        app.webhook(&site, "jira:issue_created", "{}", &[])
            .await
            .status(),
        401
    );
    assert!(app.events(&site).await.is_empty());

    // An unauthenticated callback for a tenant never seen: 204, nothing created.
    let stranger = Site::new("jira");
    let response = app.callback(&stranger, "enabled", None).await;
    assert_eq!(response.status(), 204);
    assert!(app.tenant(&stranger).await.is_none());

    // For an installed tenant, an unauthenticated or badly signed `disabled` is 401.
    let live = Site::new("jira");
    assert_eq!(app.install(&live).await.status(), 204);
    let response = app.callback(&live, "disabled", None).await;
    assert_eq!(response.status(), 401);
    let forged = hs256(
        "not-the-secret",
        json!({"iss": live.client_key, "iat": now(), "exp": now() + 60, "qsh": simple_qsh("POST", path)}),
    );
    let response = app.callback(&live, "disabled", Some(forged)).await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        app.tenant(&live).await.unwrap().state,
        TenantState::Installed
    );

    // A reinstall after the uninstall (newer iat) brings it back.
    assert_eq!(app.install_at(&site, now()).await.status(), 204);
    assert_eq!(
        app.tenant(&site).await.unwrap().state,
        TenantState::Installed
    );
    assert_eq!(
        app.webhook(&site, "jira:issue_created", "{}", &[])
            .await
            .status(),
        200
    );
}

async fn install_keys_are_cached_per_kid(backend: Backend) {
    let app = spawn_app(backend).await;
    for _ in 0..3 {
        assert_eq!(app.install(&Site::new("jira")).await.status(), 204);
    }
    assert_eq!(app.keys.hits(), 1, "one fetch for kid-a");

    let site = Site::new("jira");
    let path = "/jira/lifecycle/installed";
    for _ in 0..3 {
        let token = install_token(
            "kid-nobody-has",
            "keys/install-a.pem",
            install_claims(&site, path, now()),
        );
        let response = app.callback(&site, "installed", Some(token)).await;
        assert_eq!(response.status(), 401);
    }
    assert_eq!(
        app.keys.hits(),
        2,
        "an unknown kid is fetched once, then remembered"
    );

    // Key server down: the install cannot be verified now, so 503 (Atlassian retries).
    app.keys.go_down();
    let token = install_token(
        KID_B,
        "keys/install-b.pem",
        install_claims(&site, path, now()),
    );
    let response = app.callback(&site, "installed", Some(token)).await;
    assert_eq!(response.status(), 503);
    assert!(app.tenant(&site).await.is_none());
}

async fn audiences_from_the_allowed_list_are_accepted(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.allowed_audiences = vec!["https://old-name.example.test".into()]
    })
    .await;
    let path = "/jira/lifecycle/installed";
    for (aud, expected) in [
        (json!("https://old-name.example.test/"), 204),
        (json!(format!("{BASE_URL}/")), 204),
        (json!(["https://elsewhere.example.test", BASE_URL]), 204),
        (json!("https://old-name.example.test/other"), 401),
        (json!(null), 401),
    ] {
        let site = Site::new("jira");
        let mut claims = install_claims(&site, path, now());
        claims["aud"] = aud.clone();
        let token = install_token(KID_A, "keys/install-a.pem", claims);
        let response = app.callback(&site, "installed", Some(token)).await;
        assert_eq!(response.status(), expected, "aud {aud}");
        assert_eq!(
            app.tenant(&site).await.is_some(),
            expected == 204,
            "aud {aud}"
        );
    }
}

async fn a_stale_callback_does_not_undo_a_newer_one_on_an_active_tenant(backend: Backend) {
    let app = spawn_app(backend).await;
    let site = Site::new("jira");
    let t = now() - 100;
    assert_eq!(app.install_at(&site, t).await.status(), 204);
    let signed = |callback: &str, iat: i64| {
        let path = format!("/jira/lifecycle/{callback}");
        site.token_with(json!({"iss": site.client_key, "iat": iat, "exp": now() + 60, "qsh": simple_qsh("POST", &path)}))
    };
    let response = app
        .callback(&site, "enabled", Some(signed("enabled", t + 10)))
        .await;
    assert_eq!(response.status(), 204);
    assert_eq!(app.tenant(&site).await.unwrap().state, TenantState::Enabled);

    // A `disabled` issued before that `enabled` arrives late: acknowledged, ignored.
    let response = app
        .callback(&site, "disabled", Some(signed("disabled", t + 5)))
        .await;
    assert_eq!(response.status(), 204);
    let tenant = app.tenant(&site).await.unwrap();
    assert_eq!(tenant.state, TenantState::Enabled);
    assert_eq!(tenant.lifecycle_at.timestamp(), t + 10);

    // One issued after it applies.
    let response = app
        .callback(&site, "disabled", Some(signed("disabled", t + 20)))
        .await;
    assert_eq!(response.status(), 204);
    assert_eq!(
        app.tenant(&site).await.unwrap().state,
        TenantState::Disabled
    );

    // A callback without `iat` cannot be ordered: refused.
    let path = "/jira/lifecycle/enabled";
    let no_iat = site.token_with(
        json!({"iss": site.client_key, "exp": now() + 60, "qsh": simple_qsh("POST", path)}),
    );
    let response = app.callback(&site, "enabled", Some(no_iat)).await;
    assert_eq!(response.status(), 401);
    let mut claims = install_claims(&site, "/jira/lifecycle/installed", now());
    claims.as_object_mut().unwrap().remove("iat");
    let token = install_token(KID_A, "keys/install-a.pem", claims);
    let response = app.callback(&site, "installed", Some(token)).await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        app.tenant(&site).await.unwrap().state,
        TenantState::Disabled
    );
}

/// Two hookrelay processes on one database: what one installs, the other honours
/// on the next request, though its cache still holds the old answer.
async fn another_process_sees_installs_and_new_secrets_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let peer = app.spawn_peer().await;
    let site = Site::new("jira");

    // The peer has seen this client key before it was installed ...
    assert_eq!(
        app.webhook_via(&peer, &site, "jira:issue_created")
            .await
            .status(),
        401
    );
    assert_eq!(app.install(&site).await.status(), 204);
    // ... and still accepts its first webhook right after the install.
    assert_eq!(
        app.webhook_via(&peer, &site, "jira:issue_created")
            .await
            .status(),
        200
    );

    // A reinstall with a new secret through the first process.
    let mut reinstalled = site.clone();
    reinstalled.secret = "rotated-secret-for-the-peer-test".into();
    assert_eq!(app.install_at(&reinstalled, now() + 1).await.status(), 204);
    assert_eq!(
        app.webhook_via(&peer, &reinstalled, "jira:issue_created")
            .await
            .status(),
        200
    );
    assert_eq!(
        app.webhook_via(&peer, &site, "jira:issue_created")
            .await
            .status(),
        401,
        "old secret"
    );
    assert_eq!(app.events(&site).await.len(), 2);
}
