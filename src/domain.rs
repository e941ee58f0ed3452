//! The types that flow between intake, the store, the broker and the relay.
//!
//! Nothing here does I/O. Identifiers get their own types so that a client key is
//! never passed where an event id is expected.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// An id type over a uuid. `new()` makes a time-ordered (v7) one, so ids sort
/// roughly by creation, and lists can page by id.
macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
            utoipa::ToSchema,
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// hookrelay's own id for a stored event; stable across retries and replays.
    EventId
);

impl EventId {
    /// The smallest id made at `at` or later: a bound for listing events by
    /// time along the primary key (ids are v7, which begin with the time).
    pub fn first_at(at: DateTime<Utc>) -> EventId {
        let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
        EventId(uuid::Builder::from_unix_timestamp_millis(millis, &[0; 10]).into_uuid())
    }
}

/// A Connect installation's `clientKey`: the tenant's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct ClientKey(pub String);

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The Atlassian product a Connect app is installed into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Product {
    Jira,
    Confluence,
}

impl Product {
    pub const ALL: [Product; 2] = [Product::Jira, Product::Confluence];

    pub fn as_str(self) -> &'static str {
        match self {
            Product::Jira => "jira",
            Product::Confluence => "confluence",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "jira" => Some(Product::Jira),
            "confluence" => Some(Product::Confluence),
            _ => None,
        }
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an event came from (the envelope's `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Connect,
    Forge,
    JiraAdmin,
    Webtrigger,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Connect => "connect",
            Source::Forge => "forge",
            Source::JiraAdmin => "jira-admin",
            Source::Webtrigger => "webtrigger",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "connect" => Some(Source::Connect),
            "forge" => Some(Source::Forge),
            "jira-admin" => Some(Source::JiraAdmin),
            "webtrigger" => Some(Source::Webtrigger),
            _ => None,
        }
    }
}

/// What a tenant is: a Connect installation, a Forge installation, or a Jira
/// admin webhook source an admin created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TenantKind {
    Connect,
    Forge,
    JiraAdmin,
}

impl TenantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantKind::Connect => "connect",
            TenantKind::Forge => "forge",
            TenantKind::JiraAdmin => "jira-admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "connect" => Some(TenantKind::Connect),
            "forge" => Some(TenantKind::Forge),
            "jira-admin" => Some(TenantKind::JiraAdmin),
            _ => None,
        }
    }
}

/// The lifecycle state of a tenant: Connect installations move through all
/// four, Forge installations between installed and uninstalled, admin-webhook
/// sources are enabled or disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    Installed,
    Enabled,
    Disabled,
    Uninstalled,
}

impl TenantState {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Installed => "installed",
            TenantState::Enabled => "enabled",
            TenantState::Disabled => "disabled",
            TenantState::Uninstalled => "uninstalled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "installed" => Some(TenantState::Installed),
            "enabled" => Some(TenantState::Enabled),
            "disabled" => Some(TenantState::Disabled),
            "uninstalled" => Some(TenantState::Uninstalled),
            _ => None,
        }
    }
}

/// One tenant, as stored: a Connect installation (by `clientKey`), a Forge
/// installation (by `app.installationId`) or an admin-webhook source (by its id).
#[derive(Clone)]
pub struct Tenant {
    pub client_key: ClientKey,
    pub kind: TenantKind,
    pub product: Product,
    /// The site: `https://acme.atlassian.net` (with `/wiki` for Confluence).
    pub base_url: String,
    pub display_url: Option<String>,
    /// Connect only: the HS256 key for everything the site signs after install.
    /// Empty for other kinds. Never logged.
    pub shared_secret: secrecy::SecretString,
    /// Admin-webhook sources: the name the admin gave it.
    pub name: Option<String>,
    /// Forge: the site's cloud id.
    pub cloud_id: Option<String>,
    /// Forge: where the product's REST API is called
    /// (`https://api.atlassian.com/ex/jira/<cloudId>`).
    pub api_base_url: Option<String>,
    /// Forge: the app environment (`DEVELOPMENT`, `STAGING`, `PRODUCTION`).
    pub environment: Option<String>,
    pub state: TenantState,
    /// `iat` of the newest lifecycle callback applied, so that an older callback
    /// arriving late cannot undo a newer one.
    pub lifecycle_at: DateTime<Utc>,
    pub installed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenant")
            .field("client_key", &self.client_key)
            .field("kind", &self.kind)
            .field("product", &self.product)
            .field("base_url", &self.base_url)
            .field("state", &self.state)
            .field("lifecycle_at", &self.lifecycle_at)
            .finish_non_exhaustive()
    }
}

/// A verified lifecycle callback, ready to be applied to the tenant table.
#[derive(Debug, Clone)]
pub struct LifecycleChange {
    pub client_key: ClientKey,
    pub product: Product,
    pub state: TenantState,
    /// `iat` of the callback's token.
    pub at: DateTime<Utc>,
    /// Only for `installed`: the new installation data.
    pub install: Option<InstallData>,
    /// For signed installs: the token, to be accepted once.
    pub token: Option<UsedToken>,
}

/// A token that may be accepted once: its SHA-256 and when it stops being
/// accepted anyway (its `exp` plus the leeway), after which it is forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedToken {
    pub digest: [u8; 32],
    pub expires_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct InstallData {
    pub base_url: String,
    pub display_url: Option<String>,
    pub shared_secret: secrecy::SecretString,
}

impl fmt::Debug for InstallData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallData")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// What applying a lifecycle change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleOutcome {
    Applied,
    /// A newer callback had already been applied; nothing changed.
    Stale,
    /// No such tenant (only possible for enabled/disabled/uninstalled).
    UnknownTenant,
    /// The signed-install token was accepted before; nothing changed.
    Replayed,
}

/// An event: built by intake, then stored as is (the store adds nothing to it).
#[derive(Debug, Clone)]
pub struct Event {
    pub id: EventId,
    pub source: Source,
    pub product: Option<Product>,
    pub event: String,
    /// The name the source gave the event, where it differs from `event`
    /// (Forge's `avi:jira:created:issue` for `jira:issue_created`).
    pub source_event: Option<String>,
    pub client_key: Option<ClientKey>,
    pub tenant_base_url: Option<String>,
    pub webhook_id: Option<String>,
    pub webhook_retry: Option<i32>,
    pub webhook_flow: Option<String>,
    pub received_at: DateTime<Utc>,
    /// Stored by reconciliation from Jira's list of webhooks it gave up
    /// delivering, not received as a webhook.
    pub recovered: bool,
    /// The body exactly as received (validated to be JSON).
    pub payload: String,
}

/// Result of storing an event: the id it is stored under, and whether it was
/// already there (a Jira retry of the same webhook identifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub id: EventId,
    pub duplicate: bool,
}

/// The one shape every consumer sees (README, "Broker": the envelope).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Envelope<'a> {
    pub id: EventId,
    pub source: &'static str,
    pub product: Option<Product>,
    pub event: &'a str,
    /// The source's own name for the event; `event` unless the source is Forge.
    pub source_event: &'a str,
    pub tenant: Option<EnvelopeTenant<'a>>,
    pub webhook_id: Option<&'a str>,
    pub received_at: String,
    /// `true` for an event recovered by reconciliation; absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
    /// Always present on the broker and in deliveries; left out of admin listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<&'a RawValue>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnvelopeTenant<'a> {
    pub client_key: &'a str,
    pub base_url: Option<&'a str>,
}

impl Event {
    /// The envelope without its payload, borrowing from the event.
    pub fn head(&self) -> Envelope<'_> {
        Envelope {
            id: self.id,
            source: self.source.as_str(),
            product: self.product,
            event: &self.event,
            source_event: self.source_event.as_deref().unwrap_or(&self.event),
            tenant: self.client_key.as_ref().map(|key| EnvelopeTenant {
                client_key: &key.0,
                base_url: self.tenant_base_url.as_deref(),
            }),
            webhook_id: self.webhook_id.as_deref(),
            received_at: format_timestamp(self.received_at),
            recovered: self.recovered,
            payload: None,
        }
    }

    /// The envelope with its payload, for the admin API. Fails only if the
    /// stored payload is not JSON, which intake never lets happen.
    pub fn envelope(&self) -> Result<Envelope<'_>, serde_json::Error> {
        Ok(Envelope {
            payload: Some(serde_json::from_str(&self.payload)?),
            ..self.head()
        })
    }

    /// The broker routing key (README, "Broker"): `<product>.<event>` with the
    /// product's own prefix taken off the name, so `jira:issue_created` becomes
    /// `jira.issue_created`; web triggers use `webtrigger.<name>`.
    ///
    /// A Forge event with no Connect name keeps its Forge name without the
    /// `avi:<product>:` prefix: `avi:jira:mentioned:comment` becomes
    /// `jira.mentioned:comment`.
    pub fn routing_key(&self) -> String {
        let prefix = match (self.source, self.product) {
            (Source::Webtrigger, _) | (_, None) => self.source.as_str(),
            (_, Some(product)) => product.as_str(),
        };
        let name = self
            .event
            .strip_prefix("avi:")
            .filter(|_| self.source == Source::Forge)
            .unwrap_or(&self.event);
        let name = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix(':'))
            .unwrap_or(name);
        format!("{prefix}.{name}")
    }

    /// The envelope as the JSON every consumer receives. The payload is spliced
    /// in verbatim, never parsed: intake checked it (see [`crate::payload`]), and
    /// whatever it accepted is carried byte for byte.
    pub fn envelope_json(&self) -> String {
        let head = serde_json::to_string(&self.head())
            .expect("an envelope head is strings, numbers and options");
        let mut json = String::with_capacity(head.len() + self.payload.len() + 12);
        // The head is an object with fields, so it ends in `}` after a value.
        json.push_str(&head[..head.len() - 1]);
        json.push_str(",\"payload\":");
        json.push_str(&self.payload);
        json.push('}');
        json
    }
}

uuid_id!(
    /// A subscription: one external endpoint and the events it wants.
    SubscriptionId
);
uuid_id!(
    /// One event's delivery to one subscription, kept across its attempts and replays.
    DeliveryId
);

/// An external HTTP endpoint events are relayed to, and which events it wants.
#[derive(Clone)]
pub struct Subscription {
    pub id: SubscriptionId,
    pub url: String,
    /// Event-name patterns, where `*` stands for any run of characters.
    pub events: Vec<String>,
    /// Only these tenants' events; `None` for every tenant.
    pub tenants: Option<Vec<String>>,
    /// A JSONPath (RFC 9535) query on the envelope: the event matches when the
    /// query selects at least one node.
    pub filter: Option<String>,
    /// Extra request headers sent with every delivery.
    pub headers: std::collections::BTreeMap<String, String>,
    /// `whsec_<base64>`: shown once at creation, never logged or read back.
    pub secret: secrecy::SecretString,
    /// An ES module whose default export maps the envelope to the body
    /// delivered (`null` or `undefined`: not delivered, recorded as filtered).
    pub transform: Option<String>,
    pub description: Option<String>,
    /// Deliveries per second, per process; `None` for no limit.
    pub rate_limit: Option<u32>,
    /// Attempts in flight at once, per process.
    pub max_concurrency: u32,
    pub enabled: bool,
    /// Why hookrelay disabled it (410 Gone, failing for too long), if it did.
    pub disabled_reason: Option<String>,
    /// When the current run of failed attempts began.
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Subscription {
    /// An enabled subscription of `url` to `events`, made `now`, with every
    /// other setting at its default.
    pub fn new(
        url: String,
        events: Vec<String>,
        secret: secrecy::SecretString,
        max_concurrency: u32,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id: SubscriptionId::new(),
            url,
            events,
            tenants: None,
            filter: None,
            headers: std::collections::BTreeMap::new(),
            secret,
            transform: None,
            description: None,
            rate_limit: None,
            max_concurrency,
            enabled: true,
            disabled_reason: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Due at `next_attempt_at`, or being attempted.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Refused for good (a 4xx, a refused destination): not retried.
    Failed,
    /// Every retry failed. Kept, and replayable.
    Dead,
    /// The subscription's transform returned `null`: nothing was sent.
    Filtered,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Dead => "dead",
            DeliveryState::Filtered => "filtered",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            "dead" => DeliveryState::Dead,
            "filtered" => DeliveryState::Filtered,
            _ => return None,
        })
    }
}

/// One event's delivery to one subscription.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: DeliveryId,
    pub event_id: EventId,
    pub subscription_id: SubscriptionId,
    pub state: DeliveryState,
    /// Attempts in the current round (a replay starts a new one). Named
    /// `attempt_count` in JSON, where `attempts` is the attempt log.
    #[serde(rename = "attempt_count")]
    pub attempts: i32,
    #[serde(serialize_with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub next_attempt_at: DateTime<Utc>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
}

/// What one attempt led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    Delivered,
    /// Failed; another attempt is scheduled.
    Retry,
    /// Failed; not retried.
    Failed,
    /// Failed, and it was the last attempt.
    Dead,
    /// The transform returned `null`: not sent, and not a failure.
    Filtered,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Dead => "dead",
            AttemptOutcome::Filtered => "filtered",
        }
    }

    /// Whether the attempt says nothing against the endpoint.
    pub fn is_success(self) -> bool {
        matches!(self, AttemptOutcome::Delivered | AttemptOutcome::Filtered)
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "delivered" => AttemptOutcome::Delivered,
            "retry" => AttemptOutcome::Retry,
            "failed" => AttemptOutcome::Failed,
            "dead" => AttemptOutcome::Dead,
            "filtered" => AttemptOutcome::Filtered,
            _ => return None,
        })
    }

    /// The state the delivery is left in.
    pub fn state(self) -> DeliveryState {
        match self {
            AttemptOutcome::Delivered => DeliveryState::Delivered,
            AttemptOutcome::Retry => DeliveryState::Pending,
            AttemptOutcome::Failed => DeliveryState::Failed,
            AttemptOutcome::Dead => DeliveryState::Dead,
            AttemptOutcome::Filtered => DeliveryState::Filtered,
        }
    }
}

/// One HTTP attempt of a delivery, as the attempt log keeps it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    pub id: Uuid,
    pub delivery_id: DeliveryId,
    pub event_id: EventId,
    pub subscription_id: SubscriptionId,
    #[serde(serialize_with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub attempted_at: DateTime<Utc>,
    pub duration_ms: i32,
    /// The response status, if a response came.
    pub status_code: Option<i32>,
    /// Why no usable response came (timeout, connection refused, refused destination).
    pub error: Option<String>,
    /// The first few KiB of the response body.
    pub response_body: Option<String>,
    pub outcome: AttemptOutcome,
}

/// A web trigger's id: random and unguessable (144 bits, base64url), since
/// with auth `none` the URL is the only secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct TriggerId(pub String);

impl fmt::Display for TriggerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a web trigger answers with its script's response or accepts the
/// request for later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TriggerMode {
    Sync,
    Async,
}

impl TriggerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerMode::Sync => "sync",
            TriggerMode::Async => "async",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sync" => Some(TriggerMode::Sync),
            "async" => Some(TriggerMode::Async),
            _ => None,
        }
    }
}

/// How a web trigger's caller proves itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TriggerAuthType {
    /// The unguessable URL is the secret.
    None,
    /// A generated key in a header.
    Key,
    /// Hex HMAC-SHA256 of the raw body in a header, as Jira admin webhooks sign.
    HmacSha256,
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature` with a `whsec_` secret.
    StandardWebhooks,
}

impl TriggerAuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerAuthType::None => "none",
            TriggerAuthType::Key => "key",
            TriggerAuthType::HmacSha256 => "hmac-sha256",
            TriggerAuthType::StandardWebhooks => "standard-webhooks",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(TriggerAuthType::None),
            "key" => Some(TriggerAuthType::Key),
            "hmac-sha256" => Some(TriggerAuthType::HmacSha256),
            "standard-webhooks" => Some(TriggerAuthType::StandardWebhooks),
            _ => None,
        }
    }

    /// The header the credential travels in, unless the trigger names another.
    pub fn default_header(self) -> Option<&'static str> {
        match self {
            TriggerAuthType::Key => Some("X-Hookrelay-Key"),
            TriggerAuthType::HmacSha256 => Some("X-Hub-Signature"),
            TriggerAuthType::None | TriggerAuthType::StandardWebhooks => None,
        }
    }
}

/// A web trigger: an inbound URL, who may call it, and what runs.
#[derive(Clone)]
pub struct Trigger {
    pub id: TriggerId,
    /// `[a-z0-9][a-z0-9_-]{0,63}`, unique: the event is `webtrigger:<name>`.
    pub name: String,
    /// Upper-case methods, or `["*"]` for any.
    pub methods: Vec<String>,
    pub mode: TriggerMode,
    pub auth: TriggerAuthType,
    /// For `key` and `hmac-sha256`: the header the credential is in.
    pub auth_header: Option<String>,
    /// The key or signing secret (empty for `none`). Shown once, never logged.
    pub secret: secrecy::SecretString,
    /// An ES module whose default export handles the request.
    pub script: Option<String>,
    /// Sync without a script: where the request is POSTed for its response.
    pub forward_url: Option<String>,
    /// The `whsec_` secret forwarded requests are signed with.
    pub forward_secret: secrecy::SecretString,
    pub timeout_ms: u32,
    pub enabled: bool,
    pub description: Option<String>,
    /// The tenant the script's `context.app.fetch` acts on, if any.
    pub tenant: Option<ClientKey>,
    /// Bumped on every change; the compiled script is cached by it.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Trigger {
    /// Whether `method` may call this trigger.
    pub fn allows(&self, method: &str) -> bool {
        self.methods
            .iter()
            .any(|m| m == "*" || m.eq_ignore_ascii_case(method))
    }

    /// The event name of its calls.
    pub fn event_name(&self) -> String {
        format!("webtrigger:{}", self.name)
    }
}

impl fmt::Debug for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trigger")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("auth", &self.auth)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

uuid_id!(
    /// One call of a web trigger, as its invocation log keeps it.
    InvocationId
);

/// Where an invocation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InvocationState {
    /// The script ran and gave a valid response.
    Completed,
    /// The script failed (for async: on its last attempt).
    Failed,
    /// Async without a script: stored and published; nothing runs.
    Accepted,
    /// Async: the script is due at `next_attempt_at`, or running.
    Pending,
}

impl InvocationState {
    pub fn as_str(self) -> &'static str {
        match self {
            InvocationState::Completed => "completed",
            InvocationState::Failed => "failed",
            InvocationState::Accepted => "accepted",
            InvocationState::Pending => "pending",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "completed" => InvocationState::Completed,
            "failed" => InvocationState::Failed,
            "accepted" => InvocationState::Accepted,
            "pending" => InvocationState::Pending,
            _ => return None,
        })
    }
}

/// One call of a web trigger: what came in (the event), what the script did.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub id: InvocationId,
    pub trigger_id: TriggerId,
    pub event_id: EventId,
    pub mode: TriggerMode,
    pub state: InvocationState,
    /// Script runs so far (async retries included).
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The status answered (sync), or the script's `statusCode` (async).
    pub status_code: Option<i32>,
    /// The script's response, as JSON text, cut to a few KiB.
    pub response: Option<String>,
    pub error: Option<String>,
    /// The script's console output: a JSON array of `{level, message}`.
    pub console: Option<String>,
    pub duration_ms: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn timestamp<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_timestamp(*at))
}

/// RFC 3339 with milliseconds and `Z`, as in the envelope.
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The current time truncated to milliseconds, so that what is stored and what is
/// rendered never differ in precision between backends.
pub fn now_millis() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_embeds_payload_verbatim() {
        let event = Event {
            id: EventId::new(),
            source: Source::Connect,
            product: Some(Product::Confluence),
            event: "page_updated".into(),
            source_event: None,
            client_key: Some(ClientKey("ck".into())),
            tenant_base_url: Some("https://example.atlassian.net/wiki".into()),
            webhook_id: Some("wh-1".into()),
            webhook_retry: None,
            webhook_flow: None,
            recovered: false,
            received_at: DateTime::from_timestamp_millis(1_795_000_000_123).unwrap(),
            payload: r#"{"b": 1,  "a": [2]}"#.into(),
        };
        let json = event.envelope_json();
        assert!(json.contains(r#""payload":{"b": 1,  "a": [2]}"#), "{json}");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["source"], "connect");
        assert_eq!(value["product"], "confluence");
        assert_eq!(value["tenant"]["client_key"], "ck");
        assert_eq!(value["source_event"], "page_updated");
        assert_eq!(value["received_at"], "2026-11-18T11:06:40.123Z");
        assert_eq!(event.routing_key(), "confluence.page_updated");
    }

    #[test]
    fn routing_keys_follow_the_design() {
        let mut event = Event {
            id: EventId::new(),
            source: Source::Connect,
            product: Some(Product::Jira),
            event: "jira:issue_created".into(),
            source_event: None,
            client_key: None,
            tenant_base_url: None,
            webhook_id: None,
            webhook_retry: None,
            webhook_flow: None,
            recovered: false,
            received_at: now_millis(),
            payload: "{}".into(),
        };
        assert_eq!(event.routing_key(), "jira.issue_created");
        event.event = "comment_created".into();
        assert_eq!(event.routing_key(), "jira.comment_created");
        event.event = "jira-software:sprint".into();
        assert_eq!(event.routing_key(), "jira.jira-software:sprint");
        event.source = Source::Forge;
        event.event = "avi:jira:mentioned:comment".into();
        assert_eq!(event.routing_key(), "jira.mentioned:comment");
        event.event = "avi:forge:installed:app".into();
        assert_eq!(event.routing_key(), "jira.forge:installed:app");
        event.source = Source::Webtrigger;
        event.product = None;
        event.event = "deploy-hook".into();
        assert_eq!(event.routing_key(), "webtrigger.deploy-hook");
    }
}
