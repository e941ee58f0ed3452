//! Secrets at rest: tenant shared secrets and subscription secrets are stored
//! sealed (`enc:v1:<key id>:…`), still verify, follow key rotation, are moved to
//! the newest key by `hookrelay secrets reencrypt`, and a store sealed with a key
//! that is not configured refuses to start. The raw columns are read here with
//! connections of the test's own, and key ids computed with the test's own SHA-256.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hookrelay::config::Config;
use hookrelay::domain::ClientKey;
use hookrelay::startup::Application;
use hookrelay::store::Store;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use crate::binary::hookrelay;
use crate::both_backends;
use crate::helpers::*;
use crate::publishing::accepted;
use crate::receiver::{verify, Receiver};
use crate::relay::{relaying, AdminApi, TOKEN};

fn key(byte: u8) -> String {
    STANDARD.encode([byte; 32])
}

/// The key id: the first 8 hex digits of the key's SHA-256.
fn kid(key: &str) -> String {
    hex::encode(&Sha256::digest(STANDARD.decode(key).unwrap())[..4])
}

fn keys(list: &[&str]) -> Option<SecretString> {
    Some(SecretString::from(list.join(",")))
}

/// The test configuration with other keys.
fn with_keys(config: &Config, list: &[String]) -> Config {
    let mut config = config.clone();
    config.encryption_keys = list.iter().map(|k| SecretString::from(k.clone())).collect();
    config
}

/// The (table, key column, secret column) of a secret.
fn column(table: &str) -> (&'static str, &'static str) {
    match table {
        "tenants" => ("client_key", "shared_secret"),
        "subscriptions" => ("id", "secret"),
        other => panic!("no secret in {other}"),
    }
}

/// The secret column of one row, as stored.
async fn raw_secret(db: &TestDb, table: &str, row: &str) -> String {
    let (key, column) = column(table);
    match db {
        TestDb::Postgres { .. } => {
            sqlx::query_scalar(&format!(
                "SELECT {column} FROM {table} WHERE {key}::text = $1"
            ))
            .bind(row)
            .fetch_one(&mut db.connect_pg().await)
            .await
        }
        TestDb::Sqlite { url, .. } => {
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query_scalar(&format!("SELECT {column} FROM {table} WHERE {key} = ?1"))
                .bind(row)
                .fetch_one(&mut conn)
                .await
        }
    }
    .unwrap()
}

async fn set_raw_secret(db: &TestDb, table: &str, row: &str, value: &str) {
    let (key, column) = column(table);
    let done = match db {
        TestDb::Postgres { .. } => sqlx::query(&format!(
            "UPDATE {table} SET {column} = $2 WHERE {key}::text = $1"
        ))
        .bind(row)
        .bind(value)
        .execute(&mut db.connect_pg().await)
        .await
        .unwrap()
        .rows_affected(),
        TestDb::Sqlite { url, .. } => {
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query(&format!(
                "UPDATE {table} SET {column} = ?2 WHERE {key} = ?1"
            ))
            .bind(row)
            .bind(value)
            .execute(&mut conn)
            .await
            .unwrap()
            .rows_affected()
        }
    };
    assert_eq!(done, 1);
}

/// The key id a stored value is sealed with.
fn sealed_with(stored: &str) -> &str {
    let rest = stored
        .strip_prefix("enc:v1:")
        .unwrap_or_else(|| panic!("not sealed: {stored}"));
    rest.split(':').next().unwrap()
}

/// A hookrelay of the test's own on the test's database.
struct Running {
    address: String,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start(config: Config) -> anyhow::Result<Self> {
        let app = Application::build(config).await?;
        let address = format!("http://127.0.0.1:{}", app.port());
        let shutdown = CancellationToken::new();
        let done = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Ok(Self {
            address,
            shutdown,
            done,
        })
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.done)
            .await
            .expect("stops")
            .unwrap()
            .unwrap();
    }
}

/// Installs `site` on the hookrelay at `address` with a valid signed install.
async fn install_via(app: &TestApp, address: &str, site: &Site) -> u16 {
    let path = format!("/{}/lifecycle/installed", site.product);
    let token = install_token(
        KID_A,
        "keys/install-a.pem",
        install_claims(site, &path, now()),
    );
    app.client
        .post(format!("{address}{path}"))
        .header("Authorization", format!("JWT {token}"))
        .json(&site.lifecycle_body("installed"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Runs `hookrelay secrets reencrypt` on the test's database; returns its output.
fn reencrypt(db: &TestDb, envs: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = hookrelay();
    cmd.args(["secrets", "reencrypt"])
        .env("HOOKRELAY_DATABASE_URL", db.url());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let output = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

both_backends!(
    secrets_are_sealed_at_rest_and_still_verify,
    a_new_key_in_front_reads_old_rows_and_seals_new_writes,
    a_key_id_not_configured_refuses_to_start,
    a_ciphertext_copied_to_another_row_does_not_decrypt,
);

/// The raw columns hold `enc:v1:` and not the secrets; the site's webhooks still
/// verify, and deliveries are signed with the subscription's secret.
async fn secrets_are_sealed_at_rest_and_still_verify(backend: Backend) {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(backend, |raw| {
        relaying(raw);
        raw.encryption_key = keys(&[&key(1)]);
    })
    .await;
    let site = Site::new("jira");
    assert_eq!(app.install(&site).await.status(), 204);
    let stored = raw_secret(&app.db, "tenants", &site.client_key).await;
    assert_eq!(sealed_with(&stored), kid(&key(1)));
    assert!(!stored.contains(&site.secret), "{stored}");
    assert_eq!(
        app.tenant(&site)
            .await
            .unwrap()
            .shared_secret
            .expose_secret(),
        site.secret
    );

    let admin = AdminApi::of(&app.address);
    let (id, secret) = admin
        .subscribe(json!({"url": receiver.url("/in"), "events": ["jira:issue_created"]}))
        .await;
    let stored = raw_secret(&app.db, "subscriptions", &id).await;
    assert_eq!(sealed_with(&stored), kid(&key(1)));
    assert!(!stored.contains(secret.trim_start_matches("whsec_")));

    let event = accepted(app.webhook(&site, "jira:issue_created", "{}", &[]).await).await;
    let got = receiver.wait_for("/in", 1, Duration::from_secs(15)).await;
    assert_eq!(verify(&secret, &got[0]).unwrap(), event);
    receiver.stop().await;
}

/// A second key added in front: old rows still read, new writes use it;
/// `secrets reencrypt` moves every row to it, after which the old key can go.
async fn a_new_key_in_front_reads_old_rows_and_seals_new_writes(backend: Backend) {
    let (k1, k2) = (key(1), key(2));
    let app = spawn_app_with(backend, |raw| {
        relaying(raw);
        raw.encryption_key = keys(&[&k1]);
    })
    .await;
    let old = Site::new("jira");
    assert_eq!(app.install(&old).await.status(), 204);
    let admin = AdminApi::of(&app.address);
    let (sub, _) = admin
        .subscribe(json!({"url": "http://127.0.0.1:9/none", "events": ["page_created"]}))
        .await;
    app.stop().await;

    let rotated = Running::start(with_keys(&app.config, &[k2.clone(), k1.clone()]))
        .await
        .unwrap();
    let response = app
        .webhook_to(&rotated.address, &old, "jira:issue_created")
        .await;
    assert_eq!(response.status(), 200, "old rows still read");
    let new = Site::new("jira");
    assert_eq!(install_via(&app, &rotated.address, &new).await, 204);
    let stored = raw_secret(&app.db, "tenants", &new.client_key).await;
    assert_eq!(sealed_with(&stored), kid(&k2), "new writes use the new key");
    let stored = raw_secret(&app.db, "tenants", &old.client_key).await;
    assert_eq!(sealed_with(&stored), kid(&k1));
    rotated.stop().await;

    let (ok, out) = reencrypt(
        &app.db,
        &[("HOOKRELAY_ENCRYPTION_KEY", &format!("{k2},{k1}"))],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "tenants.shared_secret: 1 re-encrypted, 0 encrypted from plaintext, 1 already current"
        ),
        "{out}"
    );
    assert!(
        out.contains("subscriptions.secret: 1 re-encrypted"),
        "{out}"
    );
    for (table, row) in [
        ("tenants", old.client_key.as_str()),
        ("tenants", new.client_key.as_str()),
        ("subscriptions", sub.as_str()),
    ] {
        let stored = raw_secret(&app.db, table, row).await;
        assert_eq!(sealed_with(&stored), kid(&k2), "{table} {row}");
    }

    // Again, with the keys in a file: nothing left to do.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, format!("{k2}\n{k1}\n")).unwrap();
    let (ok, out) = reencrypt(
        &app.db,
        &[("HOOKRELAY_ENCRYPTION_KEY_FILE", file.to_str().unwrap())],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "tenants.shared_secret: 0 re-encrypted, 0 encrypted from plaintext, 2 already current"
        ) && out.contains(
            "subscriptions.secret: 0 re-encrypted, 0 encrypted from plaintext, 1 already current"
        ),
        "{out}"
    );

    // The old key is no longer needed.
    let only_new = Running::start(with_keys(&app.config, std::slice::from_ref(&k2)))
        .await
        .expect("starts without the old key");
    for site in [&old, &new] {
        let response = app
            .webhook_to(&only_new.address, site, "jira:issue_created")
            .await;
        assert_eq!(response.status(), 200);
    }
    let read = AdminApi::of(&only_new.address)
        .get(&format!("/subscriptions/{sub}"))
        .await;
    assert_eq!(read["id"], sub.as_str());
    only_new.stop().await;
}

/// A store holding secrets sealed with a key that is not configured refuses to
/// start, naming the key id; reading such a secret is an error, never ciphertext.
async fn a_key_id_not_configured_refuses_to_start(backend: Backend) {
    let (k1, k2) = (key(1), key(2));
    let app = spawn_app_with(backend, |raw| raw.encryption_key = keys(&[&k1])).await;
    let site = Site::new("jira");
    assert_eq!(app.install(&site).await.status(), 204);
    app.stop().await;

    let wrong = with_keys(&app.config, std::slice::from_ref(&k2));
    let err = match Running::start(wrong.clone()).await {
        Ok(_) => panic!("started with the wrong key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains(&kid(&k1)) && err.contains("not configured"),
        "{err}"
    );
    assert!(!err.contains(&k1) && !err.contains(&k2), "{err}");

    let store = Store::connect(&wrong).await.unwrap();
    let err = store
        .tenant(&ClientKey(site.client_key.clone()))
        .await
        .expect_err("a secret under an unknown key is not read")
        .to_string();
    assert!(err.contains(&kid(&k1)), "{err}");
    store.close().await;
}

/// A sealed secret copied into another row does not decrypt there.
async fn a_ciphertext_copied_to_another_row_does_not_decrypt(backend: Backend) {
    let app = spawn_app_with(backend, |raw| raw.encryption_key = keys(&[&key(1)])).await;
    let (a, b) = (Site::new("jira"), Site::new("jira"));
    assert_eq!(app.install(&a).await.status(), 204);
    assert_eq!(app.install(&b).await.status(), 204);
    let stored = raw_secret(&app.db, "tenants", &a.client_key).await;
    set_raw_secret(&app.db, "tenants", &b.client_key, &stored).await;

    let err = app
        .store
        .tenant(&ClientKey(b.client_key.clone()))
        .await
        .expect_err("the copy does not decrypt")
        .to_string();
    assert!(err.contains("does not decrypt"), "{err}");
    // A fresh process (no cached tenants): a's webhooks verify, b's are not
    // taken, least of all as signed with a's secret.
    let peer = app.spawn_peer().await;
    assert_eq!(
        app.webhook_via(&peer, &a, "jira:issue_created")
            .await
            .status(),
        200
    );
    let mut forged = b.clone();
    forged.secret = a.secret.clone();
    assert_ne!(
        app.webhook_via(&peer, &forged, "jira:issue_created")
            .await
            .status(),
        200
    );
}

/// On the embedded default (SQLite, no key configured) a key is made at the
/// first start beside the database, readable by its owner only, and reused.
#[tokio::test]
async fn sqlite_default_makes_a_private_key_file_and_reuses_it() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app(Backend::Sqlite).await;
    let TestDb::Sqlite { url, .. } = &app.db else {
        unreachable!()
    };
    let path = format!("{}.key", url.trim_start_matches("sqlite://"));
    let meta = std::fs::metadata(&path).expect("key file made");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let made = std::fs::read_to_string(&path).unwrap();
    assert_eq!(STANDARD.decode(made.trim()).unwrap().len(), 32);

    let site = Site::new("jira");
    assert_eq!(app.install(&site).await.status(), 204);
    let stored = raw_secret(&app.db, "tenants", &site.client_key).await;
    assert_eq!(sealed_with(&stored), kid(made.trim()));

    app.stop().await;
    let (peer, _) = app.restart().await;
    assert_eq!(
        app.webhook_via(&peer, &site, "jira:issue_created")
            .await
            .status(),
        200
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), made, "reused");
}

/// PostgreSQL without a key stores plaintext (and says so); plaintext rows are
/// still read once a key is set, and `secrets reencrypt` seals them.
#[tokio::test]
async fn postgres_without_a_key_keeps_plaintext_until_reencrypted() {
    let k1 = key(1);
    let app = spawn_app_with(Backend::Postgres, |raw| {
        raw.admin_token = Some(TOKEN.into());
    })
    .await;
    let site = Site::new("jira");
    assert_eq!(app.install(&site).await.status(), 204);
    assert_eq!(
        raw_secret(&app.db, "tenants", &site.client_key).await,
        site.secret
    );
    app.stop().await;

    let (ok, out) = reencrypt(&app.db, &[]);
    assert!(!ok && out.contains("HOOKRELAY_ENCRYPTION_KEY"), "{out}");

    let keyed = with_keys(&app.config, std::slice::from_ref(&k1));
    let running = Running::start(keyed.clone()).await.unwrap();
    let response = app
        .webhook_to(&running.address, &site, "jira:issue_created")
        .await;
    assert_eq!(response.status(), 200, "plaintext is still read");
    running.stop().await;

    let (ok, out) = reencrypt(&app.db, &[("HOOKRELAY_ENCRYPTION_KEY", &k1)]);
    assert!(ok, "{out}");
    assert!(
        out.contains("tenants.shared_secret: 0 re-encrypted, 1 encrypted from plaintext"),
        "{out}"
    );
    let stored = raw_secret(&app.db, "tenants", &site.client_key).await;
    assert_eq!(sealed_with(&stored), kid(&k1));
    let running = Running::start(keyed).await.unwrap();
    let response = app
        .webhook_to(&running.address, &site, "jira:issue_created")
        .await;
    assert_eq!(response.status(), 200);
    running.stop().await;

    // Now without the key, it refuses to start.
    let err = match Running::start(app.config.clone()).await {
        Ok(_) => panic!("started without the key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains(&kid(&k1)), "{err}");
}

/// A bad key stops start-up with the setting's name, and never shows the key.
#[test]
fn bad_encryption_keys_stop_start_up_without_showing_them() {
    let short = STANDARD.encode([9u8; 16]);
    let good = key(1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, format!("{good}\n{short}\n")).unwrap();
    for (var, value) in [
        ("HOOKRELAY_ENCRYPTION_KEY", format!("{good},{short}")),
        ("HOOKRELAY_ENCRYPTION_KEY", "not base64 at all!".to_string()),
        (
            "HOOKRELAY_ENCRYPTION_KEY_FILE",
            file.to_str().unwrap().to_string(),
        ),
        ("HOOKRELAY_ENCRYPTION_KEY_FILE", "/nonexistent/keys".into()),
    ] {
        let output = hookrelay()
            .arg("serve")
            .env(var, &value)
            .env("HOOKRELAY_DATABASE_URL", "sqlite::memory:")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{var}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr
                .to_ascii_uppercase()
                .contains(var.trim_start_matches("HOOKRELAY_")),
            "{var}: {stderr}"
        );
        assert!(
            !stderr.contains(&short) && !stderr.contains(&good),
            "{stderr}"
        );
    }
}
