//! One function per subcommand: build the request, send it, print the answer
//! as a table (or `key: value` lines) or, with `--json`, as JSON.
//!
//! Answers are read as plain JSON values: the admin API may add fields, and
//! the CLI shows what it knows of and passes the rest through with `--json`.

use std::collections::BTreeMap;
use std::path::Path;

use reqwest::Method;
use serde_json::{json, Map, Value};

use super::client::{AdminClient, CliError};
use super::output::{self, cell, fields, print, Table};
use super::sse;
use super::{
    EventsCommand, SourcesCommand, SubscriptionArgs, SubscriptionChanges, SubscriptionsCommand,
    TailArgs, TenantsCommand, TriggerArgs, TriggerAuth, TriggerMode, TriggersCommand,
};

/// What every command works with.
pub struct Context {
    pub client: AdminClient,
    /// `--json`: machine-readable output.
    pub json: bool,
}

/// The `data` array of a listing.
fn data(page: &Value) -> Result<&Vec<Value>, CliError> {
    page.get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| CliError::Other("the server's listing has no `data` array".into()))
}

/// Prints a listing: its `data` as a JSON array, or a table of `columns`
/// (header, field).
fn listing(ctx: &Context, page: &Value, columns: &[(&str, &str)]) -> Result<(), CliError> {
    let items = data(page)?;
    if ctx.json {
        return output::json(&Value::Array(items.clone()));
    }
    let header: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let mut table = Table::new(&header);
    for item in items {
        table.row(columns.iter().map(|(_, key)| cell(item, key)).collect());
    }
    print(&table.render())?;
    if let Some(next) = page.get("next_cursor").and_then(Value::as_str) {
        print(&format!("more: --cursor {next}\n"))?;
    }
    Ok(())
}

/// Prints one resource: JSON, or the `keys` as `key: value` lines, then the
/// secrets it carries only this once.
fn one(ctx: &Context, value: &Value, keys: &[&str]) -> Result<(), CliError> {
    if ctx.json {
        return output::json(value);
    }
    print(&fields(value, keys))?;
    for secret in ["secret", "key", "forward_secret"] {
        if let Some(s) = value.get(secret).and_then(Value::as_str) {
            print(&format!("{secret}: {s}  (shown this once: keep it now)\n"))?;
        }
    }
    Ok(())
}

/// A file's text, for a script or transform.
fn read_file(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))
}

/// `NAME=VALUE` arguments as a JSON object.
fn headers(given: &[String]) -> Result<Value, CliError> {
    let mut map = BTreeMap::new();
    for h in given {
        let (name, value) = h
            .split_once('=')
            .filter(|(name, _)| !name.trim().is_empty())
            .ok_or_else(|| CliError::Usage(format!("--header must be NAME=VALUE, not `{h}`")))?;
        map.insert(name.trim().to_string(), Value::String(value.to_string()));
    }
    Ok(Value::Object(map.into_iter().collect()))
}

// ---------------------------------------------------------------------------
// tail

pub async fn tail(ctx: &Context, args: TailArgs) -> Result<(), CliError> {
    let query = [
        ("event", args.event.as_deref()),
        ("tenant", args.tenant.as_deref()),
        ("source", args.source.map(|s| s.as_str())),
    ];
    let mut response = ctx.client.stream("/events/stream", &query).await?;
    // On standard error in both modes: it says the stream is open, so every
    // event stored from now on will be shown (scripts can wait for it).
    eprintln!("hookrelay: watching for events (Ctrl-C to stop)");
    let mut reader = sse::Reader::default();
    loop {
        let chunk = response.chunk().await.map_err(|e| ctx.client.lost(&e))?;
        let Some(chunk) = chunk else {
            return Err(CliError::Unreachable {
                url: response.url().to_string(),
                reason: "the server closed the live tail".into(),
            });
        };
        let messages = reader
            .feed(&chunk)
            .map_err(|e| CliError::Other(e.to_string()))?;
        for message in messages {
            match message.event.as_str() {
                "event" => print(&tail_line(ctx.json, &message.data)?)?,
                "lagged" => {
                    let missed = serde_json::from_str::<Value>(&message.data)
                        .ok()
                        .and_then(|v| v.get("missed").and_then(Value::as_u64))
                        .unwrap_or(0);
                    return Err(CliError::Lagged(missed));
                }
                // Other kinds may come later; they are not events.
                _ => {}
            }
        }
    }
}

/// One event of the tail: its JSON on one line, or a line for people.
fn tail_line(json: bool, data: &str) -> Result<String, CliError> {
    let event: Value = serde_json::from_str(data).map_err(|e| {
        CliError::Other(format!("the live tail sent an event that is not JSON: {e}"))
    })?;
    if json {
        // Written again rather than passed through, so it is one line whatever came.
        return Ok(format!("{event}\n"));
    }
    let tenant = event
        .get("tenant")
        .map_or_else(|| "-".to_string(), |t| cell(t, "client_key"));
    let payload = if event["payload_omitted"] == true {
        "(payload left out of the live feed: see `events show`)".to_string()
    } else {
        event
            .get("payload")
            .map_or_else(String::new, |p| output::preview(&p.to_string(), 100))
    };
    Ok(format!(
        "{}  {}  {}  {}  {}  {}\n",
        output::plain(&cell(&event, "received_at")),
        output::plain(&cell(&event, "source")),
        output::plain(&cell(&event, "event")),
        output::plain(&tenant),
        output::plain(&cell(&event, "id")),
        payload
    ))
}

// ---------------------------------------------------------------------------
// events and replay

pub async fn events(ctx: &Context, command: EventsCommand) -> Result<(), CliError> {
    match command {
        EventsCommand::List {
            event,
            tenant,
            source,
            webhook_id,
            since,
            until,
            limit,
            cursor,
        } => {
            let limit = limit.map(|l| l.to_string());
            let page = ctx
                .client
                .json(
                    Method::GET,
                    "/events",
                    &[
                        ("event", event.as_deref()),
                        ("tenant", tenant.as_deref()),
                        ("source", source.map(|s| s.as_str())),
                        ("webhook_id", webhook_id.as_deref()),
                        ("since", since.as_deref()),
                        ("until", until.as_deref()),
                        ("limit", limit.as_deref()),
                        ("cursor", cursor.as_deref()),
                    ],
                    None,
                )
                .await?;
            // The tenant is an object; the table shows its client key.
            let mut flat = page.clone();
            if let Some(items) = flat.get_mut("data").and_then(Value::as_array_mut) {
                for item in items {
                    let key = item.get("tenant").map(|t| cell(t, "client_key"));
                    if let (Some(key), Some(obj)) = (key, item.as_object_mut()) {
                        obj.insert("tenant".into(), Value::String(key));
                    }
                }
            }
            listing(
                ctx,
                if ctx.json { &page } else { &flat },
                &[
                    ("ID", "id"),
                    ("RECEIVED", "received_at"),
                    ("SOURCE", "source"),
                    ("EVENT", "event"),
                    ("TENANT", "tenant"),
                ],
            )
        }
        EventsCommand::Show { id } => {
            let event = ctx.client.get(&at("events", &id)).await?;
            if ctx.json {
                return output::json(&event);
            }
            print(&event_detail(&event))?;
            Ok(())
        }
    }
}

/// An event for people: its envelope, its payload, its deliveries and attempts.
fn event_detail(event: &Value) -> String {
    let mut head = event.clone();
    if let (Some(tenant), Some(obj)) = (event.get("tenant"), head.as_object_mut()) {
        obj.insert("tenant".into(), Value::String(cell(tenant, "client_key")));
        obj.insert("base_url".into(), Value::String(cell(tenant, "base_url")));
    }
    let mut out = fields(
        &head,
        &[
            "id",
            "source",
            "product",
            "event",
            "source_event",
            "tenant",
            "base_url",
            "webhook_id",
            "received_at",
        ],
    );
    let payload = event.get("payload").unwrap_or(&Value::Null);
    out.push_str("\npayload:\n");
    out.push_str(&serde_json::to_string_pretty(payload).unwrap_or_else(|_| payload.to_string()));
    out.push('\n');
    let deliveries = event
        .get("deliveries")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if deliveries.is_empty() {
        out.push_str("\nno deliveries\n");
        return out;
    }
    let mut table = Table::new(&[
        "DELIVERY",
        "SUBSCRIPTION",
        "STATE",
        "ATTEMPTS",
        "LAST_STATUS",
        "NEXT_ATTEMPT",
    ]);
    let mut attempts = Table::new(&["DELIVERY", "AT", "OUTCOME", "STATUS", "MS", "ERROR"]);
    for d in &deliveries {
        table.row(vec![
            cell(d, "id"),
            cell(d, "subscription_id"),
            cell(d, "state"),
            cell(d, "attempt_count"),
            cell(d, "last_status"),
            cell(d, "next_attempt_at"),
        ]);
        for a in d
            .get("attempts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            attempts.row(vec![
                cell(d, "id"),
                cell(a, "attempted_at"),
                cell(a, "outcome"),
                cell(a, "status_code"),
                cell(a, "duration_ms"),
                output::preview(&cell(a, "error"), 60),
            ]);
        }
    }
    out.push_str("\ndeliveries:\n");
    out.push_str(&table.render());
    out.push_str("\nattempts:\n");
    out.push_str(&attempts.render());
    out
}

pub async fn replay(
    ctx: &Context,
    event_id: &str,
    subscription: Option<String>,
) -> Result<(), CliError> {
    let body = match &subscription {
        Some(id) => json!({ "subscription_id": id }),
        None => json!({}),
    };
    let answer = ctx
        .client
        .json(
            Method::POST,
            &format!("{}/replay", at("events", event_id)),
            &[],
            Some(&body),
        )
        .await?;
    if ctx.json {
        return output::json(&answer);
    }
    let deliveries = answer
        .get("deliveries")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = format!("replay accepted: {} deliveries\n", deliveries.len());
    if answer.get("script_run").and_then(Value::as_bool) == Some(true) {
        out.push_str("the trigger's script runs again\n");
    }
    if !deliveries.is_empty() {
        let mut table = Table::new(&["DELIVERY", "SUBSCRIPTION", "STATE", "NEXT_ATTEMPT"]);
        for d in &deliveries {
            table.row(vec![
                cell(d, "id"),
                cell(d, "subscription_id"),
                cell(d, "state"),
                cell(d, "next_attempt_at"),
            ]);
        }
        out.push_str(&table.render());
    }
    Ok(print(&out)?)
}

/// The path of one item of a collection, its id escaped so that it stays one
/// path segment whatever it holds.
fn at(collection: &str, id: &str) -> String {
    let id = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
    format!("/{collection}/{id}")
}

// ---------------------------------------------------------------------------
// subscriptions

const SUBSCRIPTION_FIELDS: &[&str] = &[
    "id",
    "url",
    "events",
    "tenants",
    "filter",
    "headers",
    "transform",
    "description",
    "enabled",
    "disabled_reason",
    "failing_since",
    "created_at",
    "updated_at",
];

pub async fn subscriptions(ctx: &Context, command: SubscriptionsCommand) -> Result<(), CliError> {
    let client = &ctx.client;
    match command {
        SubscriptionsCommand::List => {
            let page = client.get("/subscriptions").await?;
            listing(
                ctx,
                &page,
                &[
                    ("ID", "id"),
                    ("ENABLED", "enabled"),
                    ("EVENTS", "events"),
                    ("TENANTS", "tenants"),
                    ("URL", "url"),
                ],
            )
        }
        SubscriptionsCommand::Create(args) => {
            let body = new_subscription(args)?;
            let sub = client
                .json(Method::POST, "/subscriptions", &[], Some(&body))
                .await?;
            one(ctx, &sub, SUBSCRIPTION_FIELDS)
        }
        SubscriptionsCommand::Show { id } => {
            let sub = client.get(&at("subscriptions", &id)).await?;
            one(ctx, &sub, SUBSCRIPTION_FIELDS)
        }
        SubscriptionsCommand::Update { id, changes } => {
            let body = subscription_changes(changes)?;
            let sub = client
                .json(Method::PATCH, &at("subscriptions", &id), &[], Some(&body))
                .await?;
            one(ctx, &sub, SUBSCRIPTION_FIELDS)
        }
        SubscriptionsCommand::Delete { id } => {
            client
                .call(Method::DELETE, &at("subscriptions", &id), &[], None)
                .await?;
            deleted(ctx, "subscription", &id)
        }
    }
}

/// Says what was deleted: `{"deleted": id}` with `--json`.
fn deleted(ctx: &Context, what: &str, id: &str) -> Result<(), CliError> {
    if ctx.json {
        return output::json(&json!({ "deleted": id }));
    }
    Ok(print(&format!("deleted {what} {id}\n"))?)
}

fn new_subscription(args: SubscriptionArgs) -> Result<Value, CliError> {
    let mut body = Map::new();
    body.insert("url".into(), json!(args.endpoint));
    body.insert("events".into(), json!(args.events));
    if !args.tenants.is_empty() {
        body.insert("tenants".into(), json!(args.tenants));
    }
    if let Some(filter) = args.filter {
        body.insert("filter".into(), json!(filter));
    }
    if !args.headers.is_empty() {
        body.insert("headers".into(), headers(&args.headers)?);
    }
    if let Some(secret) = args.secret {
        body.insert("secret".into(), json!(secret));
    }
    if let Some(path) = args.transform {
        body.insert("transform".into(), json!(read_file(&path)?));
    }
    if let Some(description) = args.description {
        body.insert("description".into(), json!(description));
    }
    Ok(Value::Object(body))
}

fn subscription_changes(c: SubscriptionChanges) -> Result<Value, CliError> {
    let mut body = Map::new();
    if let Some(url) = c.endpoint {
        body.insert("url".into(), json!(url));
    }
    if !c.events.is_empty() {
        body.insert("events".into(), json!(c.events));
    }
    if c.all_tenants {
        body.insert("tenants".into(), Value::Null);
    } else if !c.tenants.is_empty() {
        body.insert("tenants".into(), json!(c.tenants));
    }
    if c.no_filter {
        body.insert("filter".into(), Value::Null);
    } else if let Some(filter) = c.filter {
        body.insert("filter".into(), json!(filter));
    }
    if !c.headers.is_empty() {
        body.insert("headers".into(), headers(&c.headers)?);
    }
    if let Some(description) = c.description {
        body.insert("description".into(), json!(description));
    }
    if c.enable || c.disable {
        body.insert("enabled".into(), json!(c.enable));
    }
    if body.is_empty() {
        return Err(CliError::Usage(
            "nothing to change: give at least one of --endpoint, --event, --tenant, \
             --all-tenants, --filter, --no-filter, --header, --description, --enable, --disable"
                .into(),
        ));
    }
    Ok(Value::Object(body))
}

// ---------------------------------------------------------------------------
// triggers

const TRIGGER_FIELDS: &[&str] = &[
    "id",
    "name",
    "url",
    "methods",
    "mode",
    "auth",
    "forward",
    "timeout_ms",
    "enabled",
    "tenant",
    "description",
    "version",
    "created_at",
    "updated_at",
];

pub async fn triggers(ctx: &Context, command: TriggersCommand) -> Result<(), CliError> {
    let client = &ctx.client;
    match command {
        TriggersCommand::List => {
            let mut page = client.get("/triggers").await?;
            if !ctx.json {
                flatten_auth(&mut page);
            }
            listing(
                ctx,
                &page,
                &[
                    ("ID", "id"),
                    ("NAME", "name"),
                    ("MODE", "mode"),
                    ("AUTH", "auth"),
                    ("ENABLED", "enabled"),
                    ("URL", "url"),
                ],
            )
        }
        TriggersCommand::Create(args) => {
            let body = new_trigger(args)?;
            let trigger = client
                .json(Method::POST, "/triggers", &[], Some(&body))
                .await?;
            show_trigger(ctx, trigger)
        }
        TriggersCommand::Show { id } => {
            let trigger = client.get(&at("triggers", &id)).await?;
            show_trigger(ctx, trigger)
        }
        TriggersCommand::Invocations { id, limit, cursor } => {
            let limit = limit.map(|l| l.to_string());
            let page = client
                .json(
                    Method::GET,
                    &format!("{}/invocations", at("triggers", &id)),
                    &[("limit", limit.as_deref()), ("cursor", cursor.as_deref())],
                    None,
                )
                .await?;
            listing(
                ctx,
                &page,
                &[
                    ("ID", "id"),
                    ("CREATED", "created_at"),
                    ("STATE", "state"),
                    ("STATUS", "status_code"),
                    ("MS", "duration_ms"),
                    ("ATTEMPTS", "attempts"),
                    ("EVENT", "event_id"),
                ],
            )
        }
    }
}

fn show_trigger(ctx: &Context, mut trigger: Value) -> Result<(), CliError> {
    if ctx.json {
        return output::json(&trigger);
    }
    let script = trigger
        .get("script")
        .and_then(Value::as_str)
        .map(str::to_string);
    flatten_auth_of(&mut trigger);
    one(ctx, &trigger, TRIGGER_FIELDS)?;
    if let Some(script) = script {
        print(&format!("script:\n{script}\n"))?;
    }
    Ok(())
}

/// `auth` as `type` or `type (header)`, for a table cell.
fn flatten_auth_of(trigger: &mut Value) {
    let auth = trigger.get("auth").map(|a| {
        let kind = cell(a, "type");
        match a.get("header").and_then(Value::as_str) {
            Some(header) => format!("{kind} ({header})"),
            None => kind,
        }
    });
    if let (Some(auth), Some(obj)) = (auth, trigger.as_object_mut()) {
        obj.insert("auth".into(), Value::String(auth));
    }
}

fn flatten_auth(page: &mut Value) {
    if let Some(items) = page.get_mut("data").and_then(Value::as_array_mut) {
        items.iter_mut().for_each(flatten_auth_of);
    }
}

fn new_trigger(args: TriggerArgs) -> Result<Value, CliError> {
    let mut body = Map::new();
    body.insert("name".into(), json!(args.name));
    if !args.methods.is_empty() {
        body.insert("methods".into(), json!(args.methods));
    }
    if let Some(mode) = args.mode {
        let mode = match mode {
            TriggerMode::Sync => "sync",
            TriggerMode::Async => "async",
        };
        body.insert("mode".into(), json!(mode));
    }
    if args.auth.is_some() || args.auth_header.is_some() {
        let kind = match args.auth.unwrap_or(TriggerAuth::None) {
            TriggerAuth::None => "none",
            TriggerAuth::Key => "key",
            TriggerAuth::HmacSha256 => "hmac-sha256",
            TriggerAuth::StandardWebhooks => "standard-webhooks",
        };
        let mut auth = json!({ "type": kind });
        if let Some(header) = args.auth_header {
            auth["header"] = json!(header);
        }
        body.insert("auth".into(), auth);
    }
    if let Some(path) = args.script {
        body.insert("script".into(), json!(read_file(&path)?));
    }
    if let Some(forward) = args.forward {
        body.insert("forward".into(), json!(forward));
    }
    if let Some(timeout) = args.timeout_ms {
        body.insert("timeout_ms".into(), json!(timeout));
    }
    if let Some(tenant) = args.tenant {
        body.insert("tenant".into(), json!(tenant));
    }
    if let Some(description) = args.description {
        body.insert("description".into(), json!(description));
    }
    Ok(Value::Object(body))
}

// ---------------------------------------------------------------------------
// sources and tenants

const SOURCE_FIELDS: &[&str] = &[
    "id",
    "type",
    "name",
    "base_url",
    "url",
    "product",
    "created_at",
    "updated_at",
];

pub async fn sources(ctx: &Context, command: SourcesCommand) -> Result<(), CliError> {
    let client = &ctx.client;
    match command {
        SourcesCommand::List => {
            let page = client.get("/sources").await?;
            listing(
                ctx,
                &page,
                &[
                    ("ID", "id"),
                    ("TYPE", "type"),
                    ("NAME", "name"),
                    ("BASE_URL", "base_url"),
                    ("URL", "url"),
                ],
            )
        }
        SourcesCommand::Create { name, base_url } => {
            let body = json!({ "type": "jira-admin", "name": name, "base_url": base_url });
            let source = client
                .json(Method::POST, "/sources", &[], Some(&body))
                .await?;
            one(ctx, &source, SOURCE_FIELDS)
        }
        SourcesCommand::Show { id } => {
            let source = client.get(&at("sources", &id)).await?;
            one(ctx, &source, SOURCE_FIELDS)
        }
        SourcesCommand::Delete { id } => {
            client
                .call(Method::DELETE, &at("sources", &id), &[], None)
                .await?;
            deleted(ctx, "source", &id)
        }
    }
}

pub async fn tenants(ctx: &Context, command: TenantsCommand) -> Result<(), CliError> {
    match command {
        TenantsCommand::List { kind } => {
            let kind = kind.map(|k| match k {
                super::TenantKind::Connect => "connect",
                super::TenantKind::Forge => "forge",
                super::TenantKind::JiraAdmin => "jira-admin",
            });
            let page = ctx
                .client
                .json(Method::GET, "/tenants", &[("kind", kind)], None)
                .await?;
            listing(
                ctx,
                &page,
                &[
                    ("CLIENT_KEY", "client_key"),
                    ("KIND", "kind"),
                    ("PRODUCT", "product"),
                    ("STATE", "state"),
                    ("EVENTS", "event_count"),
                    ("LAST_EVENT", "last_event_at"),
                    ("BASE_URL", "base_url"),
                ],
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_lines_for_people_and_scripts() {
        let data = r#"{"id":"e1","source":"connect","event":"jira:issue_created",
            "tenant":{"client_key":"ck","base_url":"https://x"},
            "received_at":"2026-11-22T10:00:00.123Z","payload":{"n":1}}"#;
        let line = tail_line(false, data).unwrap();
        assert_eq!(
            line,
            "2026-11-22T10:00:00.123Z  connect  jira:issue_created  ck  e1  {\"n\":1}\n"
        );
        let json = tail_line(true, data).unwrap();
        assert_eq!(json.lines().count(), 1);
        let back: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["tenant"]["client_key"], "ck");
        assert!(tail_line(true, "not json").is_err());
    }

    #[test]
    fn headers_must_be_name_equals_value() {
        assert_eq!(
            headers(&["X-Team=ops".into(), "X-Empty=".into()]).unwrap(),
            json!({"X-Team": "ops", "X-Empty": ""})
        );
        assert!(matches!(
            headers(&["X-Team".into()]),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(headers(&["=v".into()]), Err(CliError::Usage(_))));
    }

    #[test]
    fn an_update_with_nothing_to_change_is_a_usage_error() {
        let none = SubscriptionChanges {
            endpoint: None,
            events: vec![],
            tenants: vec![],
            all_tenants: false,
            filter: None,
            no_filter: false,
            headers: vec![],
            description: None,
            enable: false,
            disable: false,
        };
        assert!(matches!(
            subscription_changes(none),
            Err(CliError::Usage(_))
        ));
    }
}
