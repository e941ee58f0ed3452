//! `hookrelay forge`: the Forge app's manifest for each choice of products,
//! checked the way `forge deploy` checks it (the JSON schema and lint rules of
//! the `@forge/manifest` package, run by `tests/forge-schema/validate.js`), and
//! the folder `forge init` writes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::binary::hookrelay;

const APP_ID: &str = "ari:cloud:ecosystem::app/3f9c2a71-5b8e-4d06-a1c4-7e2b9d0f6a35";
const BASE_URL: &str = "https://hookrelay.example.com";

/// `hookrelay forge ARGS…` with an app id and a public base URL configured.
fn forge(args: &[&str]) -> Output {
    hookrelay()
        .arg("forge")
        .args(args)
        .env("HOOKRELAY_FORGE_APP_IDS", APP_ID)
        .env("HOOKRELAY_BASE_URL", BASE_URL)
        .output()
        .unwrap()
}

/// The manifest `hookrelay forge manifest ARGS…` prints; it must succeed.
fn manifest(args: &[&str]) -> String {
    let mut all = vec!["manifest"];
    all.extend_from_slice(args);
    let output = forge(&all);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/forge-schema")
}

/// Makes sure `tests/forge-schema` has its packages: `npm ci` when
/// `node_modules` is missing or older than the lock file. `flock` serialises
/// this across the test threads of one process and the processes of nextest.
fn install_checker() {
    let dir = schema_dir();
    let have = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(
        have("node") && have("npm"),
        "the Forge manifest check needs Node.js and npm on PATH (scripts/test.sh installs them)"
    );
    let lock = Path::new(env!("CARGO_TARGET_TMPDIR")).join("forge-schema-npm-ci.lock");
    let output = Command::new("flock")
        .arg(&lock)
        .args([
            "bash",
            "-c",
            "[ node_modules/.package-lock.json -nt package-lock.json ] \
             || npm ci --no-audit --no-fund --loglevel=error",
        ])
        .current_dir(&dir)
        .output()
        .expect("flock (util-linux) runs `npm ci` for the Forge manifest check");
    assert!(
        output.status.success(),
        "npm ci in {} failed:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// What validate.js said about each file: `Ok(())` or `Err(problem lines)`.
fn verdicts(stdout: &str, file: &Path) -> Option<Result<(), Vec<String>>> {
    let name = file.display().to_string();
    let mut lines = stdout.lines();
    while let Some(line) = lines.next() {
        if line == format!("ok {name}") {
            return Some(Ok(()));
        }
        if line == format!("invalid {name}") {
            let problems = lines
                .by_ref()
                .take_while(|l| l.starts_with("  "))
                .map(|l| l.trim().to_string())
                .collect();
            return Some(Err(problems));
        }
    }
    None
}

#[test]
fn manifests_for_jira_confluence_and_both_pass_the_forge_schema_and_lint_which_reject_broken_ones()
{
    install_checker();
    let tmp = tempfile::tempdir().unwrap();
    let both = manifest(&[]);
    let mut files = Vec::new();
    for (name, text) in [
        ("jira.yml", manifest(&["--product", "jira"])),
        ("confluence.yml", manifest(&["--product", "confluence"])),
        ("both.yml", both.clone()),
        (
            "some-events.yml",
            manifest(&[
                "--event",
                "avi:jira:created:issue",
                "--event",
                "avi:confluence:created:page",
            ]),
        ),
        (
            // Scopes for the bridge's calls as the app.
            "bridge-scopes.yml",
            manifest(&[
                "--scope",
                "write:jira-work",
                "--scope",
                "write:confluence-content",
            ]),
        ),
    ] {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    // Deliberate errors: a runtime the schema does not allow, and triggers
    // without the scopes their events need.
    assert!(both.contains("name: nodejs24.x\n"));
    let bad_runtime = tmp.path().join("bad-runtime.yml");
    std::fs::write(
        &bad_runtime,
        both.replace("name: nodejs24.x\n", "name: nodejs8.x\n"),
    )
    .unwrap();
    let scopes_at = both.find("\npermissions:\n").unwrap();
    let bad_scopes = tmp.path().join("bad-scopes.yml");
    std::fs::write(
        &bad_scopes,
        format!(
            "{}\npermissions:\n  scopes:\n    - \"read:app-system-token\"\n",
            &both[..scopes_at]
        ),
    )
    .unwrap();

    let output = Command::new("node")
        .arg("validate.js")
        .args(&files)
        .arg(&bad_runtime)
        .arg(&bad_scopes)
        .current_dir(schema_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{report}");
    for file in &files {
        assert_eq!(verdicts(&stdout, file), Some(Ok(())), "{report}");
    }
    let problems = verdicts(&stdout, &bad_runtime).unwrap().unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("schema: /app/runtime/name")),
        "the JSON schema itself rejects the runtime: {report}"
    );
    let problems = verdicts(&stdout, &bad_scopes).unwrap().unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("permission-scope-required")
                && p.contains("avi:jira:created:issue")
                && p.contains("read:jira-work")),
        "{report}"
    );
}

#[test]
fn each_product_choice_subscribes_only_that_products_events_and_their_scopes() {
    let jira = manifest(&["--product", "jira"]);
    let confluence = manifest(&["--product", "confluence"]);
    let both = manifest(&["--product", "both"]);
    assert_eq!(both, manifest(&[]), "both products is the default");
    for m in [&jira, &confluence, &both] {
        assert!(m.contains(&format!("  id: \"{APP_ID}\"\n")), "{m}");
        assert!(
            m.contains("  baseUrl: \"https://hookrelay.example.com\"\n"),
            "{m}"
        );
        assert!(m.contains("      path: \"/forge/events\"\n"), "{m}");
        assert!(m.contains("- key: hookrelay-app\n"), "{m}");
        assert!(m.contains("- \"avi:forge:installed:app\""), "{m}");
        assert!(m.contains("- \"read:app-system-token\""), "{m}");
    }
    assert!(jira.contains("- \"avi:jira:created:issue\""));
    assert!(jira.contains("- \"avi:jira-software:started:sprint\""));
    assert!(!jira.contains("avi:confluence:"), "{jira}");
    assert!(!jira.contains("confluence-content"), "{jira}");
    assert!(confluence.contains("- \"avi:confluence:created:page\""));
    assert!(!confluence.contains("avi:jira"), "{confluence}");
    assert!(!confluence.contains("jira-work"), "{confluence}");
    for event in ["avi:jira:created:issue", "avi:confluence:created:page"] {
        assert!(both.contains(event), "{event}");
    }

    let one = manifest(&["--product", "jira", "--event", "avi:jira:created:issue"]);
    let scopes = &one[one.find("  scopes:\n").unwrap()..];
    assert_eq!(
        scopes,
        "  scopes:\n    - \"read:app-system-token\"\n    - \"read:jira-work\"\n"
    );
    assert_eq!(one.matches("avi:jira:").count(), 1, "{one}");
}

#[test]
fn events_of_another_product_or_unknown_names_are_refused_with_the_reason() {
    let output = forge(&[
        "manifest",
        "--product",
        "confluence",
        "--event",
        "avi:jira:created:issue",
        "--event",
        "jira:issue_created",
    ]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "no manifest is printed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`avi:jira:created:issue` is a Jira event, but the app is for Confluence"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`jira:issue_created`: not a Forge event name"),
        "{stderr}"
    );

    let output = forge(&["manifest", "--app-id", "my-app"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("`my-app` is not a Forge app id"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn without_an_app_id_the_manifest_says_to_run_forge_register_and_a_local_url_is_warned_about() {
    let output = hookrelay()
        .args(["forge", "manifest", "--product", "jira"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let m = String::from_utf8_lossy(&output.stdout);
    assert!(m.contains("run `forge register`"), "{m}");
    assert!(m.contains("  id: \"\"\n"), "{m}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("warning: no app id"), "{stderr}");
    assert!(
        stderr.contains("HTTPS only"),
        "the default base URL is http://localhost: {stderr}"
    );
}

#[test]
fn forge_init_writes_the_app_folder_and_refuses_to_overwrite_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("my-app");
    let dir_arg = dir.to_str().unwrap();
    let output = forge(&["init", dir_arg, "--product", "jira"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("manifest.yml")).unwrap(),
        manifest(&["--product", "jira"]),
        "the folder's manifest is the one `forge manifest` prints"
    );
    let package: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("package.json")).unwrap()).unwrap();
    assert_eq!(package["name"], "my-app");
    assert_eq!(package["private"], true);
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    for step in ["forge deploy", "forge install --site", "--product jira"] {
        assert!(readme.contains(step), "{step}: {readme}");
    }
    assert!(dir.join(".gitignore").is_file());

    std::fs::write(dir.join("manifest.yml"), "app: {}\n").unwrap();
    let output = forge(&["init", dir_arg]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("manifest.yml"), "{stderr}");
    assert!(stderr.contains("does not overwrite"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.join("manifest.yml")).unwrap(),
        "app: {}\n",
        "the existing file is left alone"
    );
}

#[test]
fn forge_events_lists_each_forge_name_with_its_connect_name() {
    let output = forge(&["events", "--product", "confluence"]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l
                == "avi:confluence:created:page\tpage_created\tread:confluence-content.summary"),
        "{stdout}"
    );
    assert!(stdout
        .lines()
        .any(|l| l.starts_with("avi:confluence:liked:page\t-\t")));
    assert!(!stdout.contains("avi:jira"), "{stdout}");
}
