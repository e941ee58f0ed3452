//! Configuration: built-in defaults, then an optional TOML file, then `HOOKRELAY_*`
//! environment variables; validated once at start into [`Config`], which the rest of
//! the program receives as `Arc<Config>` and never re-reads.
//!
//! Every setting is a field of [`RawConfig`], so every setting has an environment
//! variable: `HOOKRELAY_` followed by the field name in upper case. Nested tables
//! (`[jira]`, `[confluence]`) use `__` in the variable name.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};
use url::Url;

use crate::domain::Product;

/// A setting that failed validation, named the way a user sets it.
///
/// No variant carries a `#[source]`: each message is already whole, and a
/// chain printed with `{:#}` would say it twice.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid setting `{setting}` (env HOOKRELAY_{env}): {reason}")]
    Invalid {
        setting: &'static str,
        env: String,
        reason: String,
    },
    /// A key no setting has: a typo, or a setting of another version.
    #[error("unknown {where_}{}", suggestion.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    Unknown {
        /// `environment variable HOOKRELAY_LISTN` or ``key `listn` in FILE``.
        where_: String,
        suggestion: Option<String>,
    },
    /// A value of the wrong type, or a file that is not TOML.
    #[error("{0}")]
    Load(String),
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        env: setting.to_ascii_uppercase(),
        reason: reason.into(),
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Per-event options written into the descriptor's webhook module.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookOptions {
    /// JQL (Jira) that narrows which issues fire this webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(
        default,
        alias = "excludeBody",
        skip_serializing_if = "Option::is_none"
    )]
    pub exclude_body: Option<bool>,
    #[serde(
        default,
        alias = "propertyKeys",
        skip_serializing_if = "Option::is_none"
    )]
    pub property_keys: Option<Vec<String>>,
}

/// The `[jira]` / `[confluence]` tables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductSettings {
    /// Events to subscribe to; unset means every event of the product.
    #[serde(
        default,
        deserialize_with = "opt_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub events: Option<Vec<String>>,
    /// Options per event name.
    #[serde(default)]
    pub webhooks: BTreeMap<String, WebhookOptions>,
    /// The descriptor's `scopes`: what the app may do when it calls the
    /// product (scripts, the proxy). Unset means `["READ"]`; scripts that
    /// create or edit need `WRITE`. A change is approved by the site's admin.
    #[serde(
        default,
        deserialize_with = "opt_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub scopes: Option<Vec<String>>,
}

/// The scopes a Connect descriptor may ask for.
pub const CONNECT_SCOPES: [&str; 8] = [
    "READ",
    "WRITE",
    "DELETE",
    "PROJECT_ADMIN",
    "SPACE_ADMIN",
    "ADMIN",
    "ACT_AS_USER",
    "ACCESS_EMAIL_ADDRESSES",
];

/// When a SQLite commit reaches the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    /// Every commit is synced before it returns (and so before the answer):
    /// nothing acknowledged is lost, even to a power cut. One disk sync per
    /// commit bounds the commits a second.
    #[default]
    Full,
    /// Commits are synced at checkpoints: a killed process loses nothing,
    /// but the last commits before a power cut or an OS crash may be.
    Normal,
}

/// How a queue is stored by RabbitMQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// Replicated, the production choice.
    Quorum,
    Classic,
}

impl QueueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Quorum => "quorum",
            QueueKind::Classic => "classic",
        }
    }
}

/// A `[[queues]]` entry (or `[relay_queue]`) as written in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    #[serde(deserialize_with = "text")]
    pub name: String,
    /// Topic patterns bound to the exchange (`jira.*`, `confluence.page_#`).
    #[serde(deserialize_with = "list")]
    pub bindings: Vec<String>,
    #[serde(rename = "type")]
    pub kind: QueueKind,
    /// Most messages kept; beyond it the oldest are dead-lettered.
    pub max_length: Option<u64>,
    /// How long a message may wait before it is dead-lettered, like `1h`.
    pub message_ttl: Option<String>,
    /// Delete the queue after it has had no consumer for this long, like `7d`.
    pub expires: Option<String>,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            name: String::new(),
            bindings: Vec::new(),
            kind: QueueKind::Quorum,
            max_length: None,
            message_ttl: None,
            expires: None,
        }
    }
}

/// A validated queue declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    pub name: String,
    pub bindings: Vec<String>,
    pub kind: QueueKind,
    pub max_length: Option<u64>,
    pub message_ttl: Option<Duration>,
    pub expires: Option<Duration>,
}

/// The settings as the layers give them, before validation. An unknown key
/// is an error: a misspelt setting would otherwise be silently ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    pub listen: String,
    pub base_url: String,
    pub database_url: String,
    pub amqp_url: Option<String>,
    #[serde(deserialize_with = "text")]
    pub exchange: String,
    #[serde(deserialize_with = "opt_text")]
    pub admin_token: Option<String>,
    #[serde(deserialize_with = "text")]
    pub app_key: String,
    /// The descriptor's `name`: what a site's admin sees in the app list.
    #[serde(deserialize_with = "text")]
    pub app_name: String,
    /// The descriptor's `vendor.name` and `vendor.url`.
    #[serde(deserialize_with = "text")]
    pub vendor_name: String,
    pub vendor_url: String,
    pub install_keys_url: String,
    pub jwt_leeway_secs: u64,
    pub allow_private_destinations: bool,
    #[serde(deserialize_with = "list")]
    pub retry_schedule: Vec<String>,
    pub log_format: LogFormat,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request body may take to arrive, from its first byte to its last.
    pub body_timeout: String,
    /// Bytes of request bodies held at once, over all requests being read.
    pub intake_memory: usize,
    /// Bytes of events the publisher holds at once: those handed over by intake
    /// and waiting, and (separately) one batch claimed from the outbox.
    pub publish_memory: usize,
    /// Bytes of payloads of the deliveries a relay worker has in flight.
    pub relay_memory: usize,
    /// Extra `aud` values accepted on signed installs, besides `base_url`.
    #[serde(deserialize_with = "list")]
    pub allowed_audiences: Vec<String>,
    pub database_max_connections: u32,
    pub database_acquire_timeout: String,
    /// SQLite only: when a commit reaches the disk.
    pub sqlite_synchronous: SqliteSync,
    pub install_keys_timeout: String,
    pub tenant_cache_ttl: String,
    pub shutdown_timeout: String,
    /// HTTP worker threads; 0 means one per CPU core.
    pub http_workers: usize,
    /// An outbox row claimed but not confirmed for this long is published again,
    /// by whichever process claims it next.
    pub republish_after: String,
    /// How long one publish may wait for the broker's confirm.
    pub publish_timeout: String,
    /// Most events a publisher claims and publishes at once.
    pub publish_batch_size: u32,
    pub amqp_connect_timeout: String,
    /// The AMQP heartbeat asked for (whole seconds; a `heartbeat` in the URL wins).
    pub amqp_heartbeat: String,
    /// Queues declared on the broker for downstream services (`[[queues]]`).
    pub queues: Vec<QueueSettings>,
    /// The relay workers' own queue; its name defaults to `<exchange>.relay`.
    pub relay_queue: QueueSettings,
    /// Whether `serve` also runs relay workers (`worker` always does).
    pub relay_enabled: bool,
    /// Deliveries in flight at once in one process, over all subscriptions.
    pub relay_concurrency: u32,
    /// Messages the relay holds from its queue before acknowledging them.
    pub relay_prefetch: u16,
    /// A subscription's concurrency when it sets none.
    pub subscription_concurrency: u32,
    /// Whole request, from connecting to the end of the response body.
    pub delivery_timeout: String,
    pub delivery_connect_timeout: String,
    /// A subscription whose attempts have all failed for this long is disabled.
    pub disable_failing_after: String,
    /// How often a worker looks for deliveries due, besides its own wake-ups.
    pub relay_poll_interval: String,
    /// Keys that encrypt secrets at rest: base64 of 32 bytes each, comma-separated;
    /// the first encrypts new writes, all decrypt. Never serialized.
    #[serde(skip_serializing, deserialize_with = "opt_secret_list")]
    pub encryption_key: Option<SecretString>,
    /// A file holding the same list (one key per line, or comma-separated).
    #[serde(deserialize_with = "opt_text")]
    pub encryption_key_file: Option<String>,
    /// Forge app ids (`ari:cloud:ecosystem::app/<uuid>`) whose invocation
    /// tokens `/forge/events` accepts; none: Forge Remote is off.
    #[serde(deserialize_with = "list")]
    pub forge_app_ids: Vec<String>,
    /// Where the keys that sign Forge Invocation Tokens are published.
    pub forge_jwks_url: String,
    /// The JWKS URL of an Isolated Cloud, with `{icLabel}` standing for the
    /// token's label; unset: Isolated Cloud tokens are refused.
    #[serde(deserialize_with = "opt_text")]
    pub forge_ic_jwks_template: Option<String>,
    /// How long a fetched JWKS is used before it is fetched again.
    pub forge_jwks_ttl: String,
    /// Least time between two fetches of one JWKS for a `kid` it lacked: a
    /// flood of tokens with unknown `kid`s costs at most one fetch per interval.
    pub forge_jwks_refetch_interval: String,
    /// Largest body a web trigger accepts, in bytes.
    pub trigger_max_body: usize,
    /// Memory one script run may take, in bytes.
    pub script_memory: usize,
    /// Script runs at once in one process (each on its own thread); 0 means
    /// two per CPU core.
    pub script_concurrency: usize,
    /// How often Jira's list of webhooks it failed to deliver is read for
    /// every Connect Jira tenant; `0` turns reconciliation off.
    #[serde(deserialize_with = "text")]
    pub reconcile_interval: String,
    /// Calls to one tenant's product API per second (scripts and the proxy
    /// together), in this process.
    pub bridge_rate_limit: u32,
    /// Longest a call to a product API may take, retries included.
    #[serde(deserialize_with = "text")]
    pub bridge_timeout: String,
    /// Largest product API response carried back, in bytes.
    pub bridge_max_response: usize,
    pub jira: ProductSettings,
    pub confluence: ProductSettings,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            base_url: "http://localhost:8080".into(),
            database_url: "sqlite://hookrelay.db".into(),
            amqp_url: None,
            exchange: "hookrelay.events".into(),
            admin_token: None,
            app_key: "hookrelay".into(),
            app_name: "hookrelay".into(),
            vendor_name: "hookrelay".into(),
            vendor_url: "https://github.com/hookrelay/hookrelay".into(),
            install_keys_url: "https://connect-install-keys.atlassian.com".into(),
            jwt_leeway_secs: 30,
            allow_private_destinations: false,
            retry_schedule: default_retry_schedule(),
            log_format: LogFormat::Human,
            max_body_bytes: 10 * 1024 * 1024,
            body_timeout: "30s".into(),
            intake_memory: 64 * 1024 * 1024,
            publish_memory: 32 * 1024 * 1024,
            relay_memory: 64 * 1024 * 1024,
            allowed_audiences: Vec::new(),
            database_max_connections: 10,
            database_acquire_timeout: "5s".into(),
            sqlite_synchronous: SqliteSync::Full,
            install_keys_timeout: "5s".into(),
            tenant_cache_ttl: "60s".into(),
            shutdown_timeout: "30s".into(),
            http_workers: 0,
            republish_after: "30s".into(),
            publish_timeout: "10s".into(),
            publish_batch_size: 256,
            amqp_connect_timeout: "10s".into(),
            amqp_heartbeat: "5s".into(),
            queues: Vec::new(),
            relay_queue: QueueSettings::default(),
            relay_enabled: true,
            relay_concurrency: 64,
            relay_prefetch: 128,
            subscription_concurrency: 8,
            delivery_timeout: "15s".into(),
            delivery_connect_timeout: "5s".into(),
            disable_failing_after: "5days".into(),
            relay_poll_interval: "1s".into(),
            encryption_key: None,
            encryption_key_file: None,
            forge_app_ids: Vec::new(),
            forge_jwks_url: "https://forge.cdn.prod.atlassian-dev.net/.well-known/jwks.json".into(),
            forge_ic_jwks_template: None,
            forge_jwks_ttl: "1h".into(),
            forge_jwks_refetch_interval: "10s".into(),
            trigger_max_body: 5 * 1024 * 1024,
            script_memory: 64 * 1024 * 1024,
            script_concurrency: 0,
            reconcile_interval: "10m".into(),
            bridge_rate_limit: 20,
            bridge_timeout: "30s".into(),
            bridge_max_response: 10 * 1024 * 1024,
            jira: ProductSettings::default(),
            confluence: ProductSettings::default(),
        }
    }
}

/// 5s, 30s, 2m, 10m, 30m, 1h, then every 2h: about 24 hours in all.
fn default_retry_schedule() -> Vec<String> {
    let mut schedule: Vec<String> = ["5s", "30s", "2m", "10m", "30m", "1h"]
        .into_iter()
        .map(String::from)
        .collect();
    schedule.extend(std::iter::repeat_n("2h".to_string(), 11));
    schedule
}

/// Forge Remote: which apps' invocation tokens are accepted, and where their
/// signing keys come from.
#[derive(Debug, Clone)]
pub struct ForgeSettings {
    /// App ids (`ari:cloud:ecosystem::app/<uuid>`); empty: Forge Remote is off.
    pub app_ids: Vec<String>,
    pub jwks_url: Url,
    /// `{icLabel}` is replaced by the token's label.
    pub ic_jwks_template: Option<String>,
    pub jwks_ttl: Duration,
    pub jwks_refetch_interval: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub base_url: Url,
    /// The path of `base_url` without its trailing slash ("" for none): stripped
    /// from request paths before the qsh is computed.
    pub context_path: String,
    pub database_url: SecretString,
    pub amqp_url: Option<SecretString>,
    pub exchange: String,
    pub admin_token: Option<SecretString>,
    pub app_key: String,
    pub app_name: String,
    pub vendor_name: String,
    /// Kept as written: a parsed URL would gain a trailing slash.
    pub vendor_url: String,
    pub install_keys_url: Url,
    pub jwt_leeway: Duration,
    pub allow_private_destinations: bool,
    pub retry_schedule: Vec<Duration>,
    pub log_format: LogFormat,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    pub intake_memory: usize,
    pub publish_memory: usize,
    pub relay_memory: usize,
    /// Normalised (no trailing slash) audiences a signed install may name.
    pub audiences: Vec<String>,
    pub database_max_connections: u32,
    pub database_acquire_timeout: Duration,
    pub sqlite_synchronous: SqliteSync,
    pub install_keys_timeout: Duration,
    pub tenant_cache_ttl: Duration,
    pub shutdown_timeout: Duration,
    pub http_workers: usize,
    pub republish_after: Duration,
    pub publish_timeout: Duration,
    pub publish_batch_size: u32,
    pub amqp_connect_timeout: Duration,
    pub amqp_heartbeat: Duration,
    /// `[[queues]]`: declared on RabbitMQ for downstream services.
    pub queues: Vec<QueueSpec>,
    /// Bound to every routing key (`#`).
    pub relay_queue: QueueSpec,
    pub relay_enabled: bool,
    pub relay_concurrency: u32,
    pub relay_prefetch: u16,
    pub subscription_concurrency: u32,
    pub delivery_timeout: Duration,
    pub delivery_connect_timeout: Duration,
    pub disable_failing_after: Duration,
    pub relay_poll_interval: Duration,
    /// Keys for secrets at rest (each the base64 of 32 bytes), the one that
    /// encrypts first; empty when none is configured.
    pub encryption_keys: Vec<SecretString>,
    pub forge: ForgeSettings,
    /// Largest web trigger body.
    pub trigger_max_body: usize,
    /// Memory limit of one script run.
    pub script_memory: usize,
    /// Script runs at once (threads).
    pub script_concurrency: usize,
    /// How often failed webhooks are reconciled; `None`: never on a timer.
    pub reconcile_interval: Option<Duration>,
    /// Calls per second to one tenant's product API.
    pub bridge_rate_limit: u32,
    /// Longest a product API call may take.
    pub bridge_timeout: Duration,
    /// Largest product API response carried.
    pub bridge_max_response: usize,
    pub jira: ProductSettings,
    pub confluence: ProductSettings,
}

impl Config {
    /// Loads defaults, then `file` (if given), then the environment, and validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        RawConfig::load(file)?.validate()
    }

    pub fn product(&self, product: Product) -> &ProductSettings {
        match product {
            Product::Jira => &self.jira,
            Product::Confluence => &self.confluence,
        }
    }

    pub fn is_postgres(&self) -> bool {
        use secrecy::ExposeSecret;
        self.database_url.expose_secret().starts_with("postgres")
    }
}

/// `HOOKRELAY_*` variables that are not settings but are read by hookrelay,
/// its tests or its scripts, so the unknown-variable check lets them be.
const NOT_SETTINGS: [&str; 4] = [
    // The file to read, a command-line option's variable.
    "config",
    // The log filter (telemetry).
    "log",
    // The memory test's body count (tests/api/memory.rs).
    "bench_bodies",
    // Where scripts/supply-chain.sh points cargo-deny's advisory databases.
    "advisory_dbs",
];

/// Variables of the test suite (`HOOKRELAY_TEST_POSTGRES_URL`, ...).
const NOT_SETTINGS_PREFIX: &str = "test_";

fn is_setting_variable(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    !NOT_SETTINGS.contains(&key.as_str()) && !key.starts_with(NOT_SETTINGS_PREFIX)
}

fn environment() -> Env {
    Env::prefixed("HOOKRELAY_")
        .filter(|key| is_setting_variable(key.as_str()))
        .split("__")
}

/// Where a layer's values came from, to name a bad one as the user wrote it.
enum Layer<'a> {
    File(&'a Path),
    Environment,
}

impl Layer<'_> {
    /// The name of the setting at `path` in this layer.
    fn name(&self, path: &[String]) -> String {
        match self {
            Layer::File(_) => format!("`{}`", path.join(".")),
            Layer::Environment => format!("HOOKRELAY_{}", path.join("__").to_ascii_uppercase()),
        }
    }

    fn place(&self, path: &[String]) -> String {
        match self {
            Layer::File(file) => format!("key {} in {}", self.name(path), file.display()),
            Layer::Environment => format!("environment variable {}", self.name(path)),
        }
    }

    /// Translates figment's error (which names a variable as `LISTEN` and adds
    /// the provider's name) into one line naming the setting as written.
    fn error(&self, error: figment::Error) -> ConfigError {
        let profile = error.profile.clone();
        let mut path = error.path.clone();
        // Figment puts its profile in front of the key.
        if let (Some(profile), Some(first)) = (&profile, path.first()) {
            if profile.as_str().as_str().eq_ignore_ascii_case(first) {
                path.remove(0);
            }
        }
        match &error.kind {
            // The path ends with the unknown key itself.
            figment::error::Kind::UnknownField(field, expected) => {
                let suggestion = closest(field, expected).map(|known| {
                    let mut path = path.clone();
                    path.pop();
                    path.push(known.to_string());
                    self.name(&path)
                });
                ConfigError::Unknown {
                    where_: self.place(&path),
                    suggestion,
                }
            }
            kind if !path.is_empty() => {
                ConfigError::Load(format!("invalid {}: {kind}", self.place(&path)))
            }
            kind => match self {
                Layer::File(file) => ConfigError::Load(format!(
                    "cannot read {}: {}",
                    file.display(),
                    without_snippet(&kind.to_string())
                )),
                Layer::Environment => {
                    ConfigError::Load(format!("invalid HOOKRELAY_* environment variable: {kind}"))
                }
            },
        }
    }
}

/// A TOML parse error on one line: its message without the quoted source
/// lines (those holding `|`), which make no sense run together.
fn without_snippet(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.contains('|'))
        .collect::<Vec<_>>()
        .join(": ")
}

/// The known name closest to `unknown`, when it is close enough to be the
/// one meant: a few edits, fewer than a third of the name.
fn closest<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    let unknown = unknown.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (strsim::levenshtein(&unknown, k), *k))
        .filter(|(distance, k)| *distance <= 3.max(k.len() / 3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k)
}

impl RawConfig {
    /// The settings of defaults, then `file` (if given), then the environment,
    /// not yet validated. Each layer is read on its own first, so that a key
    /// no setting has, or a value of the wrong type, is named as it is
    /// written there: a file's key, or an environment variable.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let defaults = || Figment::from(Serialized::defaults(RawConfig::default()));
        let mut figment = defaults();
        if let Some(path) = file {
            if !path.exists() {
                return Err(invalid(
                    "config",
                    format!("file {} does not exist", path.display()),
                ));
            }
            defaults()
                .merge(Toml::file(path))
                .extract::<RawConfig>()
                .map_err(|e| Layer::File(path).error(e))?;
            figment = figment.merge(Toml::file(path));
        }
        defaults()
            .merge(environment())
            .extract::<RawConfig>()
            .map_err(|e| Layer::Environment.error(e))?;
        figment
            .merge(environment())
            .extract()
            .map_err(|e| ConfigError::Load(e.to_string()))
    }

    /// `hookrelay config check`: loads and validates the settings, and gives
    /// them back as [`RawConfig::redacted_toml`] prints them.
    pub fn check(file: Option<&Path>) -> Result<String, ConfigError> {
        let mut raw = Self::load(file)?;
        raw.clone().validate()?;
        // Shown as in effect: the relay queue's name when left to default,
        // and the one binding it always has.
        if raw.relay_queue.name.trim().is_empty() {
            raw.relay_queue.name = format!("{}.relay", raw.exchange.trim());
        }
        raw.relay_queue.bindings = vec!["#".into()];
        raw.redacted_toml()
    }

    /// The settings as TOML, for `hookrelay config check`: every secret
    /// replaced by `[redacted]`, and the password of each URL.
    pub fn redacted_toml(&self) -> Result<String, ConfigError> {
        const REDACTED: &str = "[redacted]";
        let mut value = toml::Value::try_from(self)
            .map_err(|e| ConfigError::Load(format!("cannot print the settings: {e}")))?;
        if let Some(table) = value.as_table_mut() {
            if self.admin_token.is_some() {
                table.insert("admin_token".into(), REDACTED.into());
            }
            // Never serialized; said to be set, no more.
            if self.encryption_key.is_some() {
                table.insert("encryption_key".into(), REDACTED.into());
            }
            for key in ["database_url", "amqp_url"] {
                if let Some(toml::Value::String(url)) = table.get_mut(key) {
                    *url = redact_url(url);
                }
            }
        }
        toml::to_string_pretty(&value)
            .map_err(|e| ConfigError::Load(format!("cannot print the settings: {e}")))
    }
}

/// A URL with its password replaced, in the user part or in a query
/// parameter (`?password=…`, which sqlx also reads); one that does not parse
/// is hidden whole, since its password cannot be found.
fn redact_url(url: &str) -> String {
    const MARK: &str = "REDACTED-BY-HOOKRELAY";
    let Ok(mut parsed) = Url::parse(url) else {
        return "[redacted]".into();
    };
    if parsed.password().is_some() && parsed.set_password(Some(MARK)).is_err() {
        return "[redacted]".into();
    }
    let secret = |name: &str| {
        let name = name.to_ascii_lowercase();
        ["pass", "secret", "token", "key"]
            .iter()
            .any(|s| name.contains(s))
    };
    if parsed.query_pairs().any(|(k, _)| secret(&k)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    MARK.into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    // The URL would percent-encode the brackets of `[redacted]`.
    parsed.to_string().replace(MARK, "[redacted]")
}

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let listen = self.listen.trim().to_string();
        match listen.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => {
                return Err(invalid(
                    "listen",
                    format!("expected host:port, got `{listen}`"),
                ))
            }
        }

        let base_url = http_url("base_url", &self.base_url)?;
        if base_url.query().is_some() || base_url.fragment().is_some() {
            return Err(invalid(
                "base_url",
                "must not have a query string or fragment",
            ));
        }
        let context_path = base_url.path().trim_end_matches('/').to_string();

        let database_url = self.database_url.trim().to_string();
        if !(database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
            || database_url.starts_with("sqlite:"))
        {
            return Err(invalid(
                "database_url",
                "must start with postgres://, postgresql:// or sqlite:",
            ));
        }

        let amqp_url = match self.amqp_url.map(|u| u.trim().to_string()) {
            None => None,
            Some(u) if u.is_empty() => None,
            Some(u) if u.starts_with("amqp://") || u.starts_with("amqps://") => {
                Some(SecretString::from(u))
            }
            Some(_) => return Err(invalid("amqp_url", "must start with amqp:// or amqps://")),
        };

        if self.exchange.trim().is_empty() {
            return Err(invalid("exchange", "must not be empty"));
        }
        let admin_token = match self.admin_token {
            None => None,
            Some(t) if t.is_empty() => None,
            Some(t) if t.len() < 16 => {
                return Err(invalid("admin_token", "must be at least 16 characters"))
            }
            Some(t) => Some(SecretString::from(t)),
        };
        if self.app_key.is_empty()
            || self.app_key.len() > 64
            || !self
                .app_key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                "app_key",
                "must be 1-64 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        for (setting, value) in [
            ("app_name", &self.app_name),
            ("vendor_name", &self.vendor_name),
        ] {
            // Atlassian shows these in its app list and refuses long ones.
            if value.trim().is_empty() || value.chars().count() > 80 {
                return Err(invalid(setting, "must be 1-80 characters"));
            }
        }
        http_url("vendor_url", &self.vendor_url)?;
        let install_keys_url = http_url("install_keys_url", &self.install_keys_url)?;
        if self.jwt_leeway_secs > 600 {
            return Err(invalid("jwt_leeway_secs", "must be at most 600"));
        }

        if self.retry_schedule.is_empty() {
            return Err(invalid("retry_schedule", "must name at least one delay"));
        }
        let retry_schedule = self
            .retry_schedule
            .iter()
            .map(|d| {
                bounded(
                    "retry_schedule",
                    d,
                    Duration::from_millis(1),
                    Duration::from_secs(7 * 24 * 3600),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;

        if self.max_body_bytes == 0 {
            return Err(invalid("max_body_bytes", "must be greater than 0"));
        }
        // Each budget must admit the largest body, or that body could never pass.
        for (setting, budget) in [
            ("intake_memory", self.intake_memory),
            ("publish_memory", self.publish_memory),
            ("relay_memory", self.relay_memory),
        ] {
            if budget < self.max_body_bytes {
                return Err(invalid(
                    setting,
                    format!("must be at least max_body_bytes ({})", self.max_body_bytes),
                ));
            }
        }
        if self.database_max_connections == 0 {
            return Err(invalid("database_max_connections", "must be at least 1"));
        }

        let mut audiences = vec![normalise_audience(base_url.as_str())];
        for aud in &self.allowed_audiences {
            let aud = aud.trim();
            if !aud.is_empty() {
                audiences.push(normalise_audience(aud));
            }
        }

        for (setting, product) in [("jira", &self.jira), ("confluence", &self.confluence)] {
            for name in product.events.iter().flatten() {
                if !crate::descriptor::valid_event_name(name) {
                    return Err(invalid(setting, format!("invalid event name `{name}`")));
                }
            }
            for scope in product.scopes.iter().flatten() {
                if !CONNECT_SCOPES.contains(&scope.as_str()) {
                    return Err(invalid(
                        setting,
                        format!(
                            "unknown scope `{scope}`: scopes are {}",
                            CONNECT_SCOPES.join(", ")
                        ),
                    ));
                }
            }
        }

        let exchange = self.exchange.trim().to_string();
        if exchange.len() > 200 || exchange.starts_with("amq.") {
            return Err(invalid(
                "exchange",
                "must be at most 200 bytes and must not start with `amq.`",
            ));
        }
        let republish_after = bounded(
            "republish_after",
            &self.republish_after,
            Duration::from_millis(500),
            Duration::from_secs(3600),
        )?;
        let publish_timeout = bounded(
            "publish_timeout",
            &self.publish_timeout,
            Duration::from_millis(100),
            Duration::from_secs(600),
        )?;
        if publish_timeout >= republish_after {
            return Err(invalid(
                "publish_timeout",
                "must be shorter than republish_after, or a slow confirm would be published twice",
            ));
        }
        if !(1..=10_000).contains(&self.publish_batch_size) {
            return Err(invalid(
                "publish_batch_size",
                "must lie between 1 and 10000",
            ));
        }
        let mut relay_queue = self.relay_queue;
        if relay_queue.name.trim().is_empty() {
            relay_queue.name = format!("{exchange}.relay");
        }
        relay_queue.bindings = vec!["#".into()];
        let relay_queue = queue_spec("relay_queue", relay_queue)?;
        let queues = self
            .queues
            .into_iter()
            .map(|q| queue_spec("queues", q))
            .collect::<Result<Vec<_>, _>>()?;
        let mut names: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
        names.push(&relay_queue.name);
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(invalid(
                "queues",
                format!("queue `{}` is declared twice", pair[0]),
            ));
        }

        let delivery_timeout = bounded(
            "delivery_timeout",
            &self.delivery_timeout,
            Duration::from_millis(100),
            Duration::from_secs(600),
        )?;
        let delivery_connect_timeout = bounded(
            "delivery_connect_timeout",
            &self.delivery_connect_timeout,
            Duration::from_millis(100),
            Duration::from_secs(600),
        )?;
        if delivery_connect_timeout > delivery_timeout {
            return Err(invalid(
                "delivery_connect_timeout",
                "must not be longer than HOOKRELAY_DELIVERY_TIMEOUT",
            ));
        }

        let encryption_keys = encryption_keys(self.encryption_key, self.encryption_key_file)?;

        let forge_app_ids = self
            .forge_app_ids
            .iter()
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty())
            .map(|id| {
                let uuid = id
                    .strip_prefix("ari:cloud:ecosystem::app/")
                    .ok_or_else(|| {
                        invalid(
                            "forge_app_ids",
                            format!("`{id}` is not an app id (ari:cloud:ecosystem::app/<uuid>)"),
                        )
                    })?;
                if uuid.is_empty() || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                    return Err(invalid(
                        "forge_app_ids",
                        format!("`{id}` is not an app id (ari:cloud:ecosystem::app/<uuid>)"),
                    ));
                }
                Ok(id)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ic_jwks_template = match self.forge_ic_jwks_template.map(|t| t.trim().to_string()) {
            Some(t) if t.is_empty() => None,
            Some(t) => {
                if !t.contains("{icLabel}") {
                    return Err(invalid(
                        "forge_ic_jwks_template",
                        "must contain {icLabel}, where the token's label goes",
                    ));
                }
                http_url("forge_ic_jwks_template", &t.replace("{icLabel}", "label"))?;
                Some(t)
            }
            None => None,
        };
        Ok(Config {
            listen,
            base_url,
            context_path,
            database_url: SecretString::from(database_url),
            amqp_url,
            exchange,
            admin_token,
            app_key: self.app_key,
            app_name: self.app_name.trim().to_string(),
            vendor_name: self.vendor_name.trim().to_string(),
            vendor_url: self.vendor_url.trim().to_string(),
            install_keys_url,
            jwt_leeway: Duration::from_secs(self.jwt_leeway_secs),
            allow_private_destinations: self.allow_private_destinations,
            retry_schedule,
            log_format: self.log_format,
            max_body_bytes: self.max_body_bytes,
            intake_memory: self.intake_memory,
            publish_memory: self.publish_memory,
            relay_memory: self.relay_memory,
            body_timeout: bounded(
                "body_timeout",
                &self.body_timeout,
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?,
            audiences,
            database_max_connections: self.database_max_connections,
            sqlite_synchronous: self.sqlite_synchronous,
            database_acquire_timeout: bounded(
                "database_acquire_timeout",
                &self.database_acquire_timeout,
                Duration::from_millis(100),
                Duration::from_secs(300),
            )?,
            install_keys_timeout: bounded(
                "install_keys_timeout",
                &self.install_keys_timeout,
                Duration::from_millis(100),
                Duration::from_secs(120),
            )?,
            tenant_cache_ttl: bounded(
                "tenant_cache_ttl",
                &self.tenant_cache_ttl,
                Duration::from_secs(1),
                Duration::from_secs(24 * 3600),
            )?,
            shutdown_timeout: bounded(
                "shutdown_timeout",
                &self.shutdown_timeout,
                Duration::ZERO,
                Duration::from_secs(3600),
            )?,
            http_workers: self.http_workers,
            republish_after,
            publish_timeout,
            publish_batch_size: self.publish_batch_size,
            amqp_connect_timeout: bounded(
                "amqp_connect_timeout",
                &self.amqp_connect_timeout,
                Duration::from_millis(100),
                Duration::from_secs(300),
            )?,
            amqp_heartbeat: bounded(
                "amqp_heartbeat",
                &self.amqp_heartbeat,
                Duration::from_secs(1),
                Duration::from_secs(600),
            )?,
            queues,
            relay_queue,
            relay_enabled: self.relay_enabled,
            relay_concurrency: at_least_one("relay_concurrency", self.relay_concurrency)?,
            relay_prefetch: at_least_one("relay_prefetch", self.relay_prefetch)?,
            subscription_concurrency: at_least_one(
                "subscription_concurrency",
                self.subscription_concurrency,
            )?,
            delivery_timeout,
            delivery_connect_timeout,
            disable_failing_after: bounded(
                "disable_failing_after",
                &self.disable_failing_after,
                Duration::from_secs(1),
                Duration::from_secs(365 * 24 * 3600),
            )?,
            relay_poll_interval: bounded(
                "relay_poll_interval",
                &self.relay_poll_interval,
                Duration::from_millis(50),
                Duration::from_secs(60),
            )?,
            encryption_keys,
            forge: ForgeSettings {
                app_ids: forge_app_ids,
                jwks_url: http_url("forge_jwks_url", &self.forge_jwks_url)?,
                ic_jwks_template,
                jwks_ttl: bounded(
                    "forge_jwks_ttl",
                    &self.forge_jwks_ttl,
                    Duration::from_secs(1),
                    Duration::from_secs(7 * 24 * 3600),
                )?,
                jwks_refetch_interval: bounded(
                    "forge_jwks_refetch_interval",
                    &self.forge_jwks_refetch_interval,
                    Duration::from_millis(10),
                    Duration::from_secs(3600),
                )?,
            },
            // Never more than intake may hold or a later stage may carry.
            trigger_max_body: match self.trigger_max_body {
                0 => return Err(invalid("trigger_max_body", "must be greater than 0")),
                n => n.min(self.max_body_bytes).min(self.intake_memory),
            },
            script_memory: match self.script_memory {
                n if n < 1024 * 1024 => {
                    return Err(invalid("script_memory", "must be at least 1 MiB (1048576)"))
                }
                n => n,
            },
            script_concurrency: match self.script_concurrency {
                0 => std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
                n if n > 256 => return Err(invalid("script_concurrency", "must be at most 256")),
                n => n,
            },
            reconcile_interval: match self.reconcile_interval.trim() {
                "0" | "" => None,
                other => Some(bounded(
                    "reconcile_interval",
                    other,
                    Duration::from_secs(1),
                    Duration::from_secs(72 * 3600),
                )?),
            },
            bridge_rate_limit: match self.bridge_rate_limit {
                0 => return Err(invalid("bridge_rate_limit", "must be greater than 0")),
                n => n,
            },
            bridge_timeout: bounded(
                "bridge_timeout",
                &self.bridge_timeout,
                Duration::from_millis(100),
                Duration::from_secs(600),
            )?,
            bridge_max_response: match self.bridge_max_response {
                0 => return Err(invalid("bridge_max_response", "must be greater than 0")),
                n => n,
            },
            jira: self.jira,
            confluence: self.confluence,
        })
    }
}

/// The keys of `HOOKRELAY_ENCRYPTION_KEY` or of the file
/// `HOOKRELAY_ENCRYPTION_KEY_FILE`, each checked to be the base64 of 32 bytes.
/// Errors name the setting and the key's position, never the key.
fn encryption_keys(
    key: Option<SecretString>,
    file: Option<String>,
) -> Result<Vec<SecretString>, ConfigError> {
    use secrecy::ExposeSecret;
    let file = file.map(|f| f.trim().to_string()).filter(|f| !f.is_empty());
    let key = key.filter(|k| !k.expose_secret().trim().is_empty());
    let (setting, text) =
        match (key, file) {
            (None, None) => return Ok(Vec::new()),
            (Some(_), Some(_)) => return Err(invalid(
                "encryption_key",
                "set either HOOKRELAY_ENCRYPTION_KEY or HOOKRELAY_ENCRYPTION_KEY_FILE, not both",
            )),
            (Some(key), None) => ("encryption_key", key),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    invalid("encryption_key_file", format!("cannot read `{path}`: {e}"))
                })?;
                ("encryption_key_file", SecretString::from(text))
            }
        };
    let mut keys = Vec::new();
    for (n, key) in crate::store::crypt::split_keys(text.expose_secret()).enumerate() {
        crate::store::crypt::parse_key(key)
            .map_err(|reason| invalid(setting, format!("key {} of the list {reason}", n + 1)))?;
        keys.push(SecretString::from(key.to_string()));
    }
    if keys.is_empty() {
        return Err(invalid(setting, "holds no key"));
    }
    Ok(keys)
}

/// Checks a queue declaration: a usable name, topic patterns RabbitMQ accepts.
fn queue_spec(setting: &'static str, q: QueueSettings) -> Result<QueueSpec, ConfigError> {
    let name = q.name.trim().to_string();
    // Room is left for the `.dead` queue beside it (names are at most 255 bytes).
    if name.is_empty() || name.len() > 200 || name.starts_with("amq.") {
        return Err(invalid(
            setting,
            format!("queue name `{name}` must be 1-200 bytes and must not start with `amq.`"),
        ));
    }
    if q.bindings.is_empty() {
        return Err(invalid(
            setting,
            format!("queue `{name}` needs at least one binding pattern"),
        ));
    }
    for pattern in &q.bindings {
        if !crate::broker::valid_pattern(pattern) {
            return Err(invalid(
                setting,
                format!(
                    "queue `{name}`: `{pattern}` is not a topic pattern \
                     (dot-separated words, `*` or `#`)"
                ),
            ));
        }
    }
    let duration = |value: &Option<String>, min: Duration| {
        value
            .as_deref()
            .map(|v| bounded(setting, v, min, Duration::from_secs(365 * 24 * 3600)))
            .transpose()
    };
    Ok(QueueSpec {
        message_ttl: duration(&q.message_ttl, Duration::ZERO)?,
        // RabbitMQ refuses an expiry of zero.
        expires: duration(&q.expires, Duration::from_millis(1))?,
        name,
        bindings: q.bindings,
        kind: q.kind,
        max_length: q.max_length,
    })
}

/// `aud` comparison ignores trailing slashes: Atlassian sends the baseUrl as the
/// descriptor gave it, and admins write it either way.
pub fn normalise_audience(aud: &str) -> String {
    aud.trim().trim_end_matches('/').to_string()
}

fn http_url(setting: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value.trim())
        .map_err(|e| invalid(setting, format!("`{value}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(
            setting,
            format!("`{value}` must be an absolute http(s) URL"),
        ));
    }
    Ok(url)
}

/// A duration like `5s` or `2m` within `min..=max`.
fn at_least_one<T: PartialOrd + From<u8>>(setting: &'static str, n: T) -> Result<T, ConfigError> {
    if n < T::from(1) {
        return Err(invalid(setting, "must be at least 1"));
    }
    Ok(n)
}

fn bounded(
    setting: &'static str,
    value: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(value.trim()).map_err(|e| {
        invalid(
            setting,
            format!("`{value}` is not a duration like 5s or 2m: {e}"),
        )
    })?;
    if d < min || d > max {
        return Err(invalid(
            setting,
            format!(
                "`{value}` must lie between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

/// A string setting that also takes what the environment layer reads as a number
/// or a boolean (`HOOKRELAY_APP_KEY=123` is the string "123").
#[derive(Deserialize)]
#[serde(untagged)]
enum Text {
    Str(String),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        match t {
            Text::Str(s) => s,
            Text::Int(i) => i.to_string(),
            Text::UInt(u) => u.to_string(),
            Text::Float(f) => f.to_string(),
            Text::Bool(b) => b.to_string(),
        }
    }
}

fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Text::deserialize(d).map(String::from)
}

fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<Text>::deserialize(d).map(|t| t.map(String::from))
}

/// A list given either as a TOML array or as one comma-separated string (the form
/// an environment variable takes).
fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

/// A secret list given as one string or as a TOML array, kept as one
/// comma-separated [`SecretString`].
fn opt_secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Option::<OneOrMany>::deserialize(d)?.map(|keys| match keys {
        OneOrMany::One(s) => SecretString::from(s),
        OneOrMany::Many(v) => {
            let v = secrecy::zeroize::Zeroizing::new(v);
            SecretString::from(v.join(","))
        }
    }))
}

fn opt_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    list(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let config = RawConfig::default().validate().unwrap();
        assert_eq!(config.context_path, "");
        assert_eq!(config.retry_schedule.len(), 17);
        let total: Duration = config.retry_schedule.iter().sum();
        assert!(total > Duration::from_secs(23 * 3600) && total <= Duration::from_secs(24 * 3600));
        assert_eq!(config.audiences, vec!["http://localhost:8080".to_string()]);
    }

    #[test]
    fn bad_settings_are_named() {
        let raw = RawConfig {
            base_url: "not a url".into(),
            ..RawConfig::default()
        };
        let err = raw.validate().unwrap_err().to_string();
        assert!(
            err.contains("base_url") && err.contains("HOOKRELAY_BASE_URL"),
            "{err}"
        );

        let raw = RawConfig {
            retry_schedule: vec!["5s".into(), "soon".into()],
            ..RawConfig::default()
        };
        let err = raw.validate().unwrap_err().to_string();
        assert!(err.contains("HOOKRELAY_RETRY_SCHEDULE"), "{err}");

        let raw = RawConfig {
            database_acquire_timeout: "0s".into(),
            ..RawConfig::default()
        };
        let err = raw.validate().unwrap_err().to_string();
        assert!(err.contains("HOOKRELAY_DATABASE_ACQUIRE_TIMEOUT"), "{err}");

        let raw = RawConfig {
            tenant_cache_ttl: "2000years".into(),
            ..RawConfig::default()
        };
        let err = raw.validate().unwrap_err().to_string();
        assert!(err.contains("HOOKRELAY_TENANT_CACHE_TTL"), "{err}");
    }

    #[test]
    fn queues_are_checked() {
        let config = RawConfig::default().validate().unwrap();
        assert_eq!(config.relay_queue.name, "hookrelay.events.relay");
        assert_eq!(config.relay_queue.bindings, vec!["#".to_string()]);
        assert_eq!(config.relay_queue.kind, QueueKind::Quorum);

        let queue = |name: &str, binding: &str| QueueSettings {
            name: name.into(),
            bindings: vec![binding.into()],
            message_ttl: Some("1h".into()),
            ..QueueSettings::default()
        };
        let raw = RawConfig {
            queues: vec![queue("billing", "jira.*")],
            ..RawConfig::default()
        };
        let config = raw.validate().unwrap();
        assert_eq!(
            config.queues[0].message_ttl,
            Some(Duration::from_secs(3600))
        );

        for (queues, needle) in [
            (
                vec![queue("billing", "jira.issue_*")],
                "not a topic pattern",
            ),
            (vec![queue("", "#")], "queue name"),
            (vec![queue("amq.x", "#")], "queue name"),
            (vec![queue("a", "#"), queue("a", "#")], "declared twice"),
            (vec![queue("hookrelay.events.relay", "#")], "declared twice"),
        ] {
            let err = RawConfig {
                queues,
                ..RawConfig::default()
            }
            .validate()
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("HOOKRELAY_QUEUES") && err.contains(needle),
                "{err}"
            );
        }

        let err = RawConfig {
            publish_timeout: "30s".into(),
            republish_after: "10s".into(),
            ..RawConfig::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("HOOKRELAY_PUBLISH_TIMEOUT"), "{err}");
    }

    #[test]
    fn encryption_keys_are_checked_and_never_shown() {
        use base64::Engine;
        use secrecy::ExposeSecret;
        let good = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        let short = base64::engine::general_purpose::STANDARD.encode([2u8; 31]);
        let other = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
        let config = RawConfig {
            encryption_key: Some(SecretString::from(format!(" {good} , {other}"))),
            ..RawConfig::default()
        }
        .validate()
        .unwrap();
        assert_eq!(config.encryption_keys.len(), 2);
        assert_eq!(config.encryption_keys[0].expose_secret(), good);
        assert_eq!(config.encryption_keys[1].expose_secret(), other);
        assert!(!format!("{config:?}").contains(&good));

        let err = RawConfig {
            encryption_key: Some(SecretString::from(format!("{good},{short}"))),
            ..RawConfig::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("HOOKRELAY_ENCRYPTION_KEY")
                && err.contains("key 2")
                && err.contains("31 bytes"),
            "{err}"
        );
        assert!(!err.contains(&good) && !err.contains(&short), "{err}");

        let err = RawConfig {
            encryption_key: Some(SecretString::from(good.clone())),
            encryption_key_file: Some("/some/file".into()),
            ..RawConfig::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("not both"), "{err}");

        let err = RawConfig {
            encryption_key_file: Some("/nonexistent/hookrelay.keys".into()),
            ..RawConfig::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("HOOKRELAY_ENCRYPTION_KEY_FILE"), "{err}");
    }

    /// `Config::load` in a jail: its own environment and working directory.
    // The closure's error type is figment's, which Jail fixes.
    #[allow(clippy::result_large_err)]
    fn load_in_jail(vars: &[(&str, &str)], file: Option<&str>) -> Result<RawConfig, ConfigError> {
        let mut result = None;
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            for (k, v) in vars {
                jail.set_env(k, v);
            }
            let path = match file {
                Some(text) => {
                    jail.create_file("hookrelay.toml", text)?;
                    Some(jail.directory().join("hookrelay.toml"))
                }
                None => None,
            };
            result = Some(RawConfig::load(path.as_deref()));
            Ok(())
        });
        result.expect("the jail ran")
    }

    #[test]
    fn unknown_variables_stop_loading_with_the_closest_name() {
        let err = load_in_jail(&[("HOOKRELAY_LISTN", "127.0.0.1:1")], None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "unknown environment variable HOOKRELAY_LISTN (did you mean HOOKRELAY_LISTEN?)"
        );

        let err = load_in_jail(&[("HOOKRELAY_JIRA__EVNTS", "jira:issue_created")], None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("HOOKRELAY_JIRA__EVNTS") && err.ends_with("HOOKRELAY_JIRA__EVENTS?)"),
            "{err}"
        );

        // Nothing close: no guess.
        let err = load_in_jail(&[("HOOKRELAY_COLOUR_SCHEME", "dark")], None)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "unknown environment variable HOOKRELAY_COLOUR_SCHEME");

        // Variables that are read but are not settings.
        let raw = load_in_jail(
            &[
                ("HOOKRELAY_CONFIG", "/nonexistent.toml"),
                ("HOOKRELAY_LOG", "debug"),
                ("HOOKRELAY_TEST_POSTGRES_URL", "postgres://x"),
                ("HOOKRELAY_BENCH_BODIES", "40"),
                ("HOOKRELAY_ADVISORY_DBS", "/tmp"),
                ("HOOKRELAY_LISTEN", "0.0.0.0:9"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(raw.listen, "0.0.0.0:9");
    }

    #[test]
    fn unknown_file_keys_stop_loading_with_the_closest_name() {
        let err = load_in_jail(&[], Some("listn = \"127.0.0.1:1\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("unknown key `listn` in ")
                && err.ends_with("hookrelay.toml (did you mean `listen`?)"),
            "{err}"
        );

        let err = load_in_jail(&[], Some("[confluence]\nscope = [\"READ\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`confluence.scope`") && err.contains("did you mean `confluence.scopes`?"),
            "{err}"
        );

        let err = load_in_jail(
            &[],
            Some("[jira.webhooks.\"jira:issue_updated\"]\nfilters = \"project = X\"\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("did you mean"), "{err}");
    }

    #[test]
    fn type_errors_name_the_variable_once() {
        let err = load_in_jail(&[("HOOKRELAY_JWT_LEEWAY_SECS", "soon")], None)
            .unwrap_err()
            .to_string();
        assert_eq!(err.matches("HOOKRELAY_JWT_LEEWAY_SECS").count(), 1, "{err}");
        assert_eq!(err.matches("soon").count(), 1, "{err}");
        assert!(!err.contains("default."), "figment's key leaks: {err}");

        let err = load_in_jail(&[], Some("jwt_leeway_secs = \n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hookrelay.toml: TOML parse error at line 1") && !err.contains('\n'),
            "{err}"
        );

        let err = load_in_jail(&[], Some("jwt_leeway_secs = \"soon\"\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(err.matches("jwt_leeway_secs").count(), 1, "{err}");
        assert!(err.contains("hookrelay.toml"), "{err}");
    }

    #[test]
    fn redacted_settings_hide_every_secret() {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let raw = RawConfig {
            admin_token: Some("an-admin-token-of-some-length".into()),
            encryption_key: Some(SecretString::from(key.clone())),
            database_url: "postgres://hookrelay:db-password@db:5432/hookrelay".into(),
            amqp_url: Some("amqp://guest:amqp-password@mq:5672/%2f".into()),
            ..RawConfig::default()
        };
        let text = raw.redacted_toml().unwrap();
        for secret in ["an-admin-token", &key, "db-password", "amqp-password"] {
            assert!(!text.contains(secret), "{secret} shown:\n{text}");
        }
        let printed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(printed["admin_token"].as_str(), Some("[redacted]"));
        assert_eq!(printed["encryption_key"].as_str(), Some("[redacted]"));
        assert_eq!(
            printed["database_url"].as_str(),
            Some("postgres://hookrelay:[redacted]@db:5432/hookrelay")
        );
        // sqlx also takes the password as a query parameter.
        let raw = RawConfig {
            database_url: "postgres://hookrelay@db/hookrelay?sslmode=require&password=q-secret"
                .into(),
            ..RawConfig::default()
        };
        let text = raw.redacted_toml().unwrap();
        assert!(!text.contains("q-secret"), "{text}");
        let printed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(
            printed["database_url"].as_str(),
            Some("postgres://hookrelay@db/hookrelay?sslmode=require&password=[redacted]")
        );
        // What is not secret is shown as set.
        assert_eq!(printed["listen"].as_str(), Some("127.0.0.1:8080"));
        assert_eq!(printed["vendor_name"].as_str(), Some("hookrelay"));
    }

    #[test]
    fn descriptor_names_are_checked() {
        let err = RawConfig {
            vendor_url: "example.com".into(),
            ..RawConfig::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("HOOKRELAY_VENDOR_URL"), "{err}");
        let err = RawConfig {
            app_name: " ".into(),
            ..RawConfig::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("HOOKRELAY_APP_NAME"), "{err}");
    }

    #[test]
    fn context_path_and_audiences() {
        let raw = RawConfig {
            base_url: "https://hooks.example.com/relay/".into(),
            allowed_audiences: vec!["https://old.example.com/".into()],
            ..RawConfig::default()
        };
        let config = raw.validate().unwrap();
        assert_eq!(config.context_path, "/relay");
        assert_eq!(
            config.audiences,
            vec![
                "https://hooks.example.com/relay".to_string(),
                "https://old.example.com".to_string()
            ]
        );
    }
}
