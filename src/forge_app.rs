//! The Forge app that connects a site to hookrelay through Forge Remote:
//! `hookrelay forge manifest` and `hookrelay forge init DIR`.
//!
//! The app has no code. Its manifest subscribes `trigger` modules to product
//! events and points them at an `endpoint` on a `remote` whose base URL is
//! hookrelay's, so Forge itself POSTs each event to `/forge/events` with a Forge
//! Invocation Token (see [`crate::sources::forge`]). An app without functions
//! deploys as it is: `forge deploy` bundles code only when a module names one.
//!
//! The manifest follows Atlassian's manifest reference and is checked in the
//! test suite against the schema and the lint rules of the `@forge/manifest`
//! package (`tests/forge-schema`). The YAML is written by hand: every string
//! that comes from outside this module is a double-quoted scalar with YAML's
//! escapes, so no value can break the document's structure.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::config::Config;
use crate::domain::Product;
use crate::sources::forge_events::{self, ForgeEvent, LIFECYCLE_EVENTS};

/// hookrelay's route for Forge events, relative to its base URL.
pub const EVENTS_ROUTE: &str = "/forge/events";
/// The `remotes` entry for hookrelay.
pub const REMOTE_KEY: &str = "hookrelay";
/// The `endpoint` module every trigger sends to (at most 23 characters).
pub const ENDPOINT_KEY: &str = "hookrelay-events";
/// The Forge runtime the reference recommends. The app runs no code, but the
/// manifest must name one.
pub const RUNTIME: &str = "nodejs24.x";
/// The scope that lets Forge pass an app system token to the remote; the
/// endpoint asks for one so hookrelay can call the site's REST API as the app.
pub const SYSTEM_TOKEN_SCOPE: &str = "read:app-system-token";
/// What an app id looks like; `forge register` writes one.
const APP_ID_PREFIX: &str = "ari:cloud:ecosystem::app/";

/// Which products' events the app subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Products {
    Jira,
    Confluence,
    #[default]
    Both,
}

impl Products {
    pub fn list(self) -> &'static [Product] {
        match self {
            Products::Jira => &[Product::Jira],
            Products::Confluence => &[Product::Confluence],
            Products::Both => &Product::ALL,
        }
    }

    pub fn includes(self, product: Product) -> bool {
        self.list().contains(&product)
    }
}

impl fmt::Display for Products {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Products::Jira => "Jira",
            Products::Confluence => "Confluence",
            Products::Both => "Jira and Confluence",
        })
    }
}

/// What `hookrelay forge` was asked for, checked: every event is a documented
/// event of a chosen product, and the app id looks like one. Only
/// [`ManifestOptions::new`] builds one, so [`manifest`] never meets bad input.
#[derive(Debug, Clone, Default)]
pub struct ManifestOptions {
    products: Products,
    /// Empty: every event of the chosen products.
    events: Vec<&'static ForgeEvent>,
    app_id: Option<String>,
    /// Scopes beyond what the events need, for the bridge's calls as the app
    /// (`write:jira-work` to create issues).
    extra_scopes: Vec<String>,
}

/// Why [`ManifestOptions::new`] refused its input.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// One line per refused event name.
    #[error("cannot use these events:\n{}\n(`hookrelay forge events` lists the known ones)", .0.join("\n"))]
    Events(Vec<String>),
    #[error("`{0}` is not a Forge app id (ari:cloud:ecosystem::app/<uuid>, as `forge register` writes it)")]
    AppId(String),
    #[error("`{0}` is not a Forge scope (such as write:jira-work or write:confluence-content)")]
    Scope(String),
}

impl ManifestOptions {
    /// `events` empty means every documented event of `products`; the app
    /// lifecycle events are always subscribed and may be named or not.
    pub fn new(
        products: Products,
        events: &[String],
        app_id: Option<String>,
    ) -> Result<Self, OptionsError> {
        let mut chosen: Vec<&'static ForgeEvent> = Vec::new();
        let mut problems = Vec::new();
        for name in events {
            let name = name.trim();
            if LIFECYCLE_EVENTS.contains(&name) {
                continue;
            }
            match forge_events::find(name) {
                Some(event) if !products.includes(event.product) => problems.push(format!(
                    "  `{name}` is a {} event, but the app is for {products} (--product)",
                    product_name(event.product)
                )),
                Some(event) => {
                    if !chosen.contains(&event) {
                        chosen.push(event);
                    }
                }
                None => problems.push(format!("  `{name}`: {}", unknown_reason(name))),
            }
        }
        if !problems.is_empty() {
            return Err(OptionsError::Events(problems));
        }
        // Table order, so the manifest does not depend on the order of flags.
        chosen.sort_by_key(|e| forge_events::EVENTS.iter().position(|t| t == *e));
        let app_id = app_id.map(|id| id.trim().to_string());
        if let Some(id) = &app_id {
            if !valid_app_id(id) {
                return Err(OptionsError::AppId(id.clone()));
            }
        }
        Ok(ManifestOptions {
            products,
            events: chosen,
            app_id,
            extra_scopes: Vec::new(),
        })
    }

    /// Adds scopes the app needs to call the product through the bridge,
    /// such as `write:jira-work`. A scope is `verb:noun`, in lower case.
    pub fn with_scopes(mut self, scopes: &[String]) -> Result<Self, OptionsError> {
        for scope in scopes {
            let scope = scope.trim();
            let valid = scope.len() <= 100
                && scope.split_once(':').is_some_and(|(verb, rest)| {
                    !verb.is_empty()
                        && verb.bytes().all(|b| b.is_ascii_lowercase())
                        && !rest.is_empty()
                        && rest.bytes().all(|b| {
                            b.is_ascii_lowercase()
                                || b.is_ascii_digit()
                                || matches!(b, b'-' | b'.' | b':' | b'_')
                        })
                });
            if !valid {
                return Err(OptionsError::Scope(scope.to_owned()));
            }
            if !self.extra_scopes.iter().any(|s| s == scope) {
                self.extra_scopes.push(scope.to_owned());
            }
        }
        Ok(self)
    }

    pub fn products(&self) -> Products {
        self.products
    }

    /// The product events the app subscribes to, in table order.
    pub fn events(&self) -> Vec<&'static ForgeEvent> {
        if self.events.is_empty() {
            forge_events::EVENTS
                .iter()
                .filter(|e| self.products.includes(e.product))
                .collect()
        } else {
            self.events.clone()
        }
    }

    /// The app id to write: the one asked for, else the first configured one.
    pub fn app_id<'a>(&'a self, config: &'a Config) -> Option<&'a str> {
        self.app_id
            .as_deref()
            .or_else(|| config.forge.app_ids.first().map(String::as_str))
    }
}

fn product_name(product: Product) -> &'static str {
    match product {
        Product::Jira => "Jira",
        Product::Confluence => "Confluence",
    }
}

/// Why `name` is not a known event, as specific as the name allows.
fn unknown_reason(name: &str) -> String {
    match forge_events::product_of(name) {
        Some(product) => format!(
            "not a documented Forge {} event (a typo?)",
            product_name(product)
        ),
        None if name.starts_with("avi:") => {
            "not a Jira or Confluence event: hookrelay's app subscribes to those only".into()
        }
        None => "not a Forge event name; they look like avi:jira:created:issue (Connect \
                 names such as jira:issue_created are not Forge names)"
            .into(),
    }
}

/// `ari:cloud:ecosystem::app/<uuid>`, the shape `HOOKRELAY_FORGE_APP_IDS` takes.
fn valid_app_id(id: &str) -> bool {
    id.strip_prefix(APP_ID_PREFIX).is_some_and(|uuid| {
        !uuid.is_empty() && uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
    })
}

/// Things about the configuration that will stop the app from working, for the
/// command to print beside its output.
pub fn warnings(config: &Config, options: &ManifestOptions) -> Vec<String> {
    let mut out = Vec::new();
    let url = &config.base_url;
    if url.scheme() != "https" {
        out.push(format!(
            "HOOKRELAY_BASE_URL is {url}: Forge calls remotes over HTTPS only; set it to \
             hookrelay's public https:// URL"
        ));
    }
    if let Some(host) = url.host_str() {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let local = host == "localhost"
            || host.ends_with(".localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
        if local {
            out.push(format!(
                "HOOKRELAY_BASE_URL names {host}, which Atlassian's cloud cannot reach"
            ));
        }
    }
    if options.app_id(config).is_none() {
        out.push(
            "no app id (HOOKRELAY_FORGE_APP_IDS or --app-id): run `forge register` in the app \
             folder, which writes one into manifest.yml, then add it to HOOKRELAY_FORGE_APP_IDS"
                .into(),
        );
    }
    out
}

/// A YAML double-quoted scalar: `"` and `\` escaped, and every control or
/// line-breaking character written as an escape, so the value stays one
/// scalar on one line whatever it holds.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Lines of YAML, two spaces per level.
struct Yaml(String);

impl Yaml {
    fn line(&mut self, indent: usize, text: &str) {
        for _ in 0..indent {
            self.0.push_str("  ");
        }
        self.0.push_str(text);
        self.0.push('\n');
    }
}

/// Where Forge should send events: the remote's `baseUrl` is the origin of
/// hookrelay's base URL and the route carries its path. The reference says the
/// route is appended to the base URL; with the path in the route, the result is
/// the same whether Forge appends or resolves it as a URL.
fn remote_target(config: &Config) -> (String, String) {
    let origin = config.base_url.origin().ascii_serialization();
    let route = format!("{}{EVENTS_ROUTE}", config.context_path);
    (origin, route)
}

/// The app's `manifest.yml`.
pub fn manifest(config: &Config, options: &ManifestOptions) -> String {
    let events = options.events();
    let (base_url, route) = remote_target(config);
    let mut y = Yaml(String::new());
    y.line(
        0,
        "# A Forge app that sends product events to hookrelay (Forge Remote).",
    );
    y.line(
        0,
        "# Made by `hookrelay forge manifest`; hookrelay accepts the events",
    );
    y.line(0, "# once this app's id is in HOOKRELAY_FORGE_APP_IDS.");
    y.line(0, "app:");
    match options.app_id(config) {
        Some(id) => y.line(1, &format!("id: {}", quoted(id))),
        None => {
            y.line(
                1,
                "# No app id yet: run `forge register` in this folder. It writes",
            );
            y.line(
                1,
                "# the new app's id here; then add that id to HOOKRELAY_FORGE_APP_IDS.",
            );
            y.line(1, "id: \"\"");
        }
    }
    y.line(1, "runtime:");
    y.line(2, &format!("name: {RUNTIME}"));

    y.line(0, "modules:");
    y.line(1, "trigger:");
    for &product in options.products().list() {
        let names: Vec<&str> = events
            .iter()
            .filter(|e| e.product == product)
            .map(|e| e.forge)
            .collect();
        if names.is_empty() {
            continue;
        }
        trigger(&mut y, &format!("hookrelay-{product}"), &names);
    }
    trigger(&mut y, "hookrelay-app", LIFECYCLE_EVENTS);
    y.line(1, "endpoint:");
    y.line(2, &format!("- key: {ENDPOINT_KEY}"));
    y.line(2, &format!("  remote: {REMOTE_KEY}"));
    y.line(2, "  route:");
    y.line(2, &format!("    path: {}", quoted(&route)));
    // Trigger calls take their tokens from the endpoint's `auth`, not the
    // remote's (that one is for calls from Forge functions).
    y.line(2, "  auth:");
    y.line(2, "    appSystemToken:");
    y.line(2, "      enabled: true");

    y.line(0, "remotes:");
    y.line(1, &format!("- key: {REMOTE_KEY}"));
    y.line(1, &format!("  baseUrl: {}", quoted(&base_url)));
    // hookrelay stores every event it receives (End-User Data) and processes it.
    y.line(1, "  operations:");
    y.line(1, "    - storage");
    y.line(1, "    - compute");
    y.line(1, "  storage:");
    y.line(1, "    inScopeEUD: true");

    y.line(0, "permissions:");
    y.line(1, "scopes:");
    let mut all: Vec<&str> = scopes(&events);
    all.extend(options.extra_scopes.iter().map(String::as_str));
    all.sort_unstable();
    all.dedup();
    for scope in all {
        y.line(2, &format!("- {}", quoted(scope)));
    }
    y.0
}

fn trigger(y: &mut Yaml, key: &str, events: &[&str]) {
    y.line(2, &format!("- key: {key}"));
    y.line(2, &format!("  endpoint: {ENDPOINT_KEY}"));
    y.line(2, "  events:");
    for event in events {
        y.line(2, &format!("    - {}", quoted(event)));
    }
}

/// The scopes `events` need, with the system token's, sorted and once each.
pub fn scopes(events: &[&ForgeEvent]) -> Vec<&'static str> {
    let mut all: Vec<&'static str> = events
        .iter()
        .flat_map(|e| e.scopes.iter().copied())
        .chain([SYSTEM_TOKEN_SCOPE])
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// An npm package name from the folder's name: lower case, URL-safe.
fn package_name(dir: &Path) -> String {
    let raw = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_start_matches(['.', '_', '-']);
    if name.is_empty() {
        "hookrelay-forge-app".into()
    } else {
        name.chars().take(214).collect()
    }
}

/// A minimal `package.json`, keys in npm's usual order. The app has no
/// dependencies: it runs no code.
fn package_json(dir: &Path) -> anyhow::Result<String> {
    let name = serde_json::to_string(&package_name(dir))?;
    Ok(format!(
        "{{\n  \"name\": {name},\n  \"version\": \"1.0.0\",\n  \"private\": true,\n  \
         \"description\": \"Forge app that sends Atlassian product events to hookrelay (Forge \
         Remote, no functions)\",\n  \"license\": \"UNLICENSED\"\n}}\n"
    ))
}

const GITIGNORE: &str = "node_modules/\n";

/// The steps after `hookrelay forge init`, for the folder's README.md.
fn readme(config: &Config, options: &ManifestOptions) -> String {
    let products: Vec<&str> = options
        .products()
        .list()
        .iter()
        .map(|p| p.as_str())
        .collect();
    let (base_url, route) = remote_target(config);
    let mut steps = vec![
        "Install the Forge CLI and log in: `npm install -g @forge/cli`, then `forge login`."
            .to_string(),
    ];
    match options.app_id(config) {
        Some(id) => steps.push(format!(
            "This app's id is `{id}`; hookrelay must list it in `HOOKRELAY_FORGE_APP_IDS`."
        )),
        None => steps.push(
            "Run `forge register` here. It creates the app in your Atlassian developer account \
             and writes its id (`ari:cloud:ecosystem::app/…`) into `manifest.yml`. Add that id to \
             `HOOKRELAY_FORGE_APP_IDS` (comma-separated) and restart hookrelay."
                .into(),
        ),
    }
    steps.push(
        "Run `forge deploy` (the development environment; `forge deploy -e production` for \
         production)."
            .into(),
    );
    steps.push(format!(
        "Install it on a site: {}.",
        products
            .iter()
            .map(|p| format!("`forge install --site acme.atlassian.net --product {p}`"))
            .collect::<Vec<_>>()
            .join(" and ")
    ));
    steps.push(
        "Make a change on the site (create an issue or a page). Within a few minutes (Forge \
         queues trigger events) it shows in hookrelay's `GET /admin/api/v1/events`."
            .into(),
    );
    let mut out = String::new();
    out.push_str("# hookrelay Forge app\n\n");
    out.push_str(&format!(
        "This Forge app sends {} events to hookrelay at `{base_url}{route}`, through Forge \
         Remote: Forge POSTs each event there with a Forge Invocation Token, which hookrelay \
         verifies. The app has no code of its own.\n\n",
        options.products()
    ));
    for (i, step) in steps.iter().enumerate() {
        out.push_str(&format!("{}. {step}\n", i + 1));
    }
    out.push_str(
        "\nTo change the events or hookrelay's URL, run `hookrelay forge manifest` with the \
         options you want and replace `manifest.yml` with its output (keep `app.id`), then \
         deploy again. Changing the remote, the endpoint or the scopes is a major version: \
         site admins must agree to it again (`forge install --upgrade`).\n",
    );
    out
}

/// Writes a Forge app folder at `dir` (made if missing): `manifest.yml`,
/// `package.json`, `.gitignore` and `README.md`. Refuses if any of them exists,
/// before writing anything.
pub fn init(dir: &Path, config: &Config, options: &ManifestOptions) -> anyhow::Result<()> {
    let files = [
        ("manifest.yml", manifest(config, options)),
        ("package.json", package_json(dir)?),
        (".gitignore", GITIGNORE.to_string()),
        ("README.md", readme(config, options)),
    ];
    let existing: Vec<String> = files
        .iter()
        .map(|(name, _)| dir.join(name))
        .filter(|path| path.symlink_metadata().is_ok())
        .map(|path| path.display().to_string())
        .collect();
    if !existing.is_empty() {
        anyhow::bail!(
            "{} already exist{}; `hookrelay forge init` does not overwrite files: choose a new \
             or empty folder",
            existing.join(", "),
            if existing.len() == 1 { "s" } else { "" }
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in &files {
        let path = dir.join(name);
        // create_new: a file that appeared since the check is not overwritten.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    const APP: &str = "ari:cloud:ecosystem::app/6d2b5a0e-7f3c-4a56-9b1e-2f0c8d9e4a11";

    fn config(base_url: &str, app_ids: &[&str]) -> Config {
        RawConfig {
            base_url: base_url.into(),
            forge_app_ids: app_ids.iter().map(|s| s.to_string()).collect(),
            ..RawConfig::default()
        }
        .validate()
        .unwrap()
    }

    fn options(products: Products, events: &[&str]) -> ManifestOptions {
        let events: Vec<String> = events.iter().map(|s| s.to_string()).collect();
        ManifestOptions::new(products, &events, None).unwrap()
    }

    #[test]
    fn quoting_keeps_any_value_one_double_quoted_scalar() {
        assert_eq!(quoted("plain"), "\"plain\"");
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quoted("x\ny\r\tz"), "\"x\\ny\\r\\tz\"");
        assert_eq!(quoted("\u{0}\u{85}\u{2028}"), "\"\\u0000\\u0085\\u2028\"");
        assert_eq!(quoted("# not: a comment"), "\"# not: a comment\"");
    }

    #[test]
    fn default_options_subscribe_every_event_of_both_products() {
        let o = ManifestOptions::default();
        assert_eq!(o.products(), Products::Both);
        assert_eq!(o.events().len(), forge_events::EVENTS.len());
        let jira = options(Products::Jira, &[]);
        assert!(jira.events().iter().all(|e| e.product == Product::Jira));
        assert!(!jira.events().is_empty());
    }

    #[test]
    fn unknown_or_other_product_events_are_refused_with_each_reason() {
        let names: Vec<String> = [
            "avi:confluence:created:page",
            "avi:jira:created:issu",
            "jira:issue_created",
            "avi:bitbucket:created:pullrequest",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let err = ManifestOptions::new(Products::Jira, &names, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "`avi:confluence:created:page` is a Confluence event, but the app is for Jira"
            ),
            "{err}"
        );
        assert!(
            err.contains("`avi:jira:created:issu`: not a documented Forge Jira event"),
            "{err}"
        );
        assert!(
            err.contains("`jira:issue_created`: not a Forge event name"),
            "{err}"
        );
        assert!(
            err.contains("`avi:bitbucket:created:pullrequest`: not a Jira or Confluence event"),
            "{err}"
        );
    }

    #[test]
    fn chosen_events_keep_table_order_once_each_and_lifecycle_names_are_accepted() {
        let o = options(
            Products::Both,
            &[
                "avi:jira:deleted:issue",
                "avi:jira:created:issue",
                "avi:jira:created:issue",
                "avi:forge:installed:app",
            ],
        );
        let names: Vec<&str> = o.events().iter().map(|e| e.forge).collect();
        assert_eq!(names, ["avi:jira:created:issue", "avi:jira:deleted:issue"]);
    }

    #[test]
    fn app_ids_must_look_like_forge_app_ids() {
        for bad in [
            "",
            "6d2b5a0e",
            "ari:cloud:ecosystem::app/",
            "ari:cloud:ecosystem::app/x y",
        ] {
            assert!(
                ManifestOptions::new(Products::Both, &[], Some(bad.into())).is_err(),
                "{bad}"
            );
        }
        let o = ManifestOptions::new(Products::Both, &[], Some(format!(" {APP} "))).unwrap();
        assert_eq!(o.app_id(&config("https://h.example.com", &[])), Some(APP));
    }

    #[test]
    fn the_asked_app_id_wins_over_the_configured_one() {
        let other = "ari:cloud:ecosystem::app/0000aaaa-0000-0000-0000-000000000000";
        let c = config("https://h.example.com", &[other, APP]);
        assert_eq!(ManifestOptions::default().app_id(&c), Some(other));
        let o = ManifestOptions::new(Products::Both, &[], Some(APP.into())).unwrap();
        assert!(manifest(&c, &o).contains(&format!("id: \"{APP}\"")));
    }

    #[test]
    fn manifest_points_the_endpoint_at_the_events_route_under_the_context_path() {
        let c = config("https://relay.example.com:8443/hooks/", &[APP]);
        let m = manifest(&c, &options(Products::Jira, &["avi:jira:created:issue"]));
        assert!(
            m.contains("baseUrl: \"https://relay.example.com:8443\"\n"),
            "{m}"
        );
        assert!(m.contains("path: \"/hooks/forge/events\"\n"), "{m}");
        let plain = manifest(
            &config("https://relay.example.com", &[APP]),
            &ManifestOptions::default(),
        );
        assert!(
            plain.contains("baseUrl: \"https://relay.example.com\"\n"),
            "{plain}"
        );
        assert!(plain.contains("path: \"/forge/events\"\n"), "{plain}");
    }

    #[test]
    fn extra_scopes_join_the_events_scopes_once_each() {
        let c = config("https://relay.example.com", &[APP]);
        let o = options(Products::Jira, &["avi:jira:created:issue"])
            .with_scopes(&["write:jira-work".into(), " read:jira-work ".into()])
            .unwrap();
        let m = manifest(&c, &o);
        let scopes_at = m.find("scopes:").unwrap();
        assert_eq!(
            &m[scopes_at..],
            "scopes:\n    - \"read:app-system-token\"\n    - \"read:jira-work\"\n    - \"write:jira-work\"\n"
        );
        for bad in ["WRITE", "write", ":x", "write:jira work", "write:\"x\""] {
            assert!(
                options(Products::Jira, &[])
                    .with_scopes(&[bad.into()])
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn manifest_has_one_trigger_per_product_plus_lifecycle_and_the_union_of_scopes() {
        let c = config("https://relay.example.com", &[APP]);
        let m = manifest(
            &c,
            &options(
                Products::Both,
                &[
                    "avi:jira:created:issue",
                    "avi:jira:created:filter",
                    "avi:jira:updated:issue",
                ],
            ),
        );
        assert!(m.contains("- key: hookrelay-jira\n"), "{m}");
        assert!(
            !m.contains("hookrelay-confluence"),
            "no Confluence event chosen: {m}"
        );
        assert!(m.contains("- key: hookrelay-app\n"), "{m}");
        assert!(m.contains("\"avi:forge:installed:app\""), "{m}");
        let scopes_at = m.find("scopes:").unwrap();
        assert_eq!(
            &m[scopes_at..],
            "scopes:\n    - \"manage:jira-configuration\"\n    - \"read:app-system-token\"\n    - \"read:jira-work\"\n"
        );
        assert_eq!(m.matches("endpoint: hookrelay-events").count(), 2);
        assert!(
            m.contains("appSystemToken:\n          enabled: true"),
            "{m}"
        );
    }

    #[test]
    fn without_an_app_id_the_manifest_says_to_run_forge_register() {
        let c = config("https://relay.example.com", &[]);
        let m = manifest(&c, &ManifestOptions::default());
        assert!(m.contains("run `forge register`"), "{m}");
        assert!(m.contains("  id: \"\"\n"), "{m}");
        let w = warnings(&c, &ManifestOptions::default());
        assert_eq!(w.len(), 1, "{w:?}");
    }

    #[test]
    fn warnings_name_a_base_url_forge_cannot_reach() {
        let c = config("http://localhost:8080", &[APP]);
        let w = warnings(&c, &ManifestOptions::default()).join("\n");
        assert!(w.contains("HTTPS only"), "{w}");
        assert!(w.contains("cannot reach"), "{w}");
        assert!(warnings(
            &config("https://relay.example.com", &[APP]),
            &ManifestOptions::default()
        )
        .is_empty());
    }

    #[test]
    fn package_names_are_npm_safe() {
        assert_eq!(package_name(Path::new("/x/My App!")), "my-app-");
        assert_eq!(package_name(Path::new(".hidden")), "hidden");
        assert_eq!(package_name(Path::new("/")), "hookrelay-forge-app");
    }

    #[test]
    fn init_writes_the_folder_and_then_refuses_to_overwrite_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("my-app");
        let c = config("https://relay.example.com", &[APP]);
        init(&dir, &c, &ManifestOptions::default()).unwrap();
        for name in ["manifest.yml", "package.json", ".gitignore", "README.md"] {
            assert!(dir.join(name).is_file(), "{name}");
        }
        std::fs::write(dir.join("README.md"), "mine").unwrap();
        let err = init(&dir, &c, &ManifestOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("manifest.yml"), "{err}");
        assert!(err.contains("does not overwrite"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.join("README.md")).unwrap(),
            "mine"
        );
    }
}
