//! The command line inspector: `hookrelay tail|events|replay|subscriptions|
//! triggers|sources|tenants …`, a client of a running server's admin API.
//!
//! - [`client`]: the HTTP client, the bearer token, and [`CliError`], whose
//!   exit code says what went wrong.
//! - [`sse`]: the reader of the live tail's Server-Sent Events.
//! - [`output`]: tables and `key: value` blocks for people, JSON for scripts.
//! - [`commands`]: one function per subcommand.
//!
//! It never opens the store: everything goes through the admin API, so it
//! works against a server on another machine as well as a local one.

mod client;
mod commands;
mod output;
mod sse;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use crate::config::Config;

pub use client::{AdminClient, CliError};

/// The inspector's subcommands, flattened into the binary's own.
#[derive(Subcommand)]
pub enum Command {
    /// Print events as they are stored, until interrupted.
    Tail(TailArgs),
    /// Stored events.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
        #[command(flatten)]
        server: Server,
    },
    /// Deliver a stored event again, with the same id, to every enabled
    /// subscription that matches it now (or only to one).
    Replay {
        /// The event's id.
        event_id: String,
        /// Only to this subscription (which need not match the event).
        #[arg(long, value_name = "ID")]
        subscription: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// Where events are delivered over HTTP.
    Subscriptions {
        #[command(subcommand)]
        command: SubscriptionsCommand,
        #[command(flatten)]
        server: Server,
    },
    /// Web triggers: inbound URLs that run a script or accept work for later.
    Triggers {
        #[command(subcommand)]
        command: TriggersCommand,
        #[command(flatten)]
        server: Server,
    },
    /// Jira admin-webhook sources (`/in/{id}`).
    Sources {
        #[command(subcommand)]
        command: SourcesCommand,
        #[command(flatten)]
        server: Server,
    },
    /// Installed sites and other tenants.
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
        #[command(flatten)]
        server: Server,
    },
}

/// Which server to talk to, and how to print its answers.
#[derive(Args, Clone)]
pub struct Server {
    /// The server's root URL; default: http://<HOOKRELAY_LISTEN>. The token is
    /// HOOKRELAY_ADMIN_TOKEN (or admin_token in the configuration file).
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Args)]
pub struct TailArgs {
    /// Only events with this name, or matching this pattern (`*` for any run
    /// of characters), such as jira:issue_*.
    #[arg(long, value_name = "PATTERN")]
    pub event: Option<String>,
    /// Only events of this tenant.
    #[arg(long, value_name = "CLIENTKEY")]
    pub tenant: Option<String>,
    /// Only events from this source.
    #[arg(long, value_enum)]
    pub source: Option<SourceArg>,
    #[command(flatten)]
    pub server: Server,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SourceArg {
    Connect,
    Forge,
    JiraAdmin,
    Webtrigger,
}

impl SourceArg {
    fn as_str(self) -> &'static str {
        match self {
            SourceArg::Connect => "connect",
            SourceArg::Forge => "forge",
            SourceArg::JiraAdmin => "jira-admin",
            SourceArg::Webtrigger => "webtrigger",
        }
    }
}

#[derive(Subcommand)]
pub enum EventsCommand {
    /// Stored events, newest first, without payloads. `--json` prints a JSON
    /// array; the next page starts after its last id (`--cursor`).
    List {
        /// An event name, or a pattern with `*`.
        #[arg(long, value_name = "PATTERN")]
        event: Option<String>,
        #[arg(long, value_name = "CLIENTKEY")]
        tenant: Option<String>,
        #[arg(long, value_enum)]
        source: Option<SourceArg>,
        /// Only the event Jira sent with this X-Atlassian-Webhook-Identifier.
        #[arg(long, value_name = "ID")]
        webhook_id: Option<String>,
        /// Received at or after this RFC 3339 time, such as 2026-11-22T10:00:00Z.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Received before this RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// How many, 1 to 100 (default 20).
        #[arg(long)]
        limit: Option<u32>,
        /// Events older than this event id (the last of the previous page).
        #[arg(long, value_name = "EVENT_ID")]
        cursor: Option<String>,
    },
    /// One event: its envelope, its payload, its deliveries and their attempts.
    Show { id: String },
}

#[derive(Subcommand)]
pub enum SubscriptionsCommand {
    List,
    /// Create a subscription; its signing secret is printed this once.
    Create(SubscriptionArgs),
    Show {
        id: String,
    },
    /// Change the fields given; the others stay as they are.
    Update {
        id: String,
        #[command(flatten)]
        changes: SubscriptionChanges,
    },
    Delete {
        id: String,
    },
}

#[derive(Args)]
pub struct SubscriptionArgs {
    /// Where events are POSTed (https://…).
    pub endpoint: String,
    /// An event name or pattern to deliver, such as jira:issue_* (repeatable).
    #[arg(long = "event", value_name = "PATTERN", required = true)]
    pub events: Vec<String>,
    /// Only events of this tenant (repeatable); default: every tenant.
    #[arg(long = "tenant", value_name = "CLIENTKEY")]
    pub tenants: Vec<String>,
    /// A filter expression over the envelope.
    #[arg(long, value_name = "EXPRESSION")]
    pub filter: Option<String>,
    /// A header sent with every delivery (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// The signing secret (whsec_…); generated when left out.
    #[arg(long, value_name = "SECRET")]
    pub secret: Option<String>,
    /// A file holding the transform script (an ES module).
    #[arg(long, value_name = "FILE")]
    pub transform: Option<PathBuf>,
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Args)]
pub struct SubscriptionChanges {
    /// Where events are POSTed.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// The events delivered, replacing the current ones (repeatable).
    #[arg(long = "event", value_name = "PATTERN")]
    pub events: Vec<String>,
    /// The tenants delivered, replacing the current ones (repeatable).
    #[arg(
        long = "tenant",
        value_name = "CLIENTKEY",
        conflicts_with = "all_tenants"
    )]
    pub tenants: Vec<String>,
    /// Deliver events of every tenant.
    #[arg(long)]
    pub all_tenants: bool,
    #[arg(long, value_name = "EXPRESSION", conflicts_with = "no_filter")]
    pub filter: Option<String>,
    /// Remove the filter.
    #[arg(long)]
    pub no_filter: bool,
    /// The headers sent, replacing the current ones (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// Enable it (also one that hookrelay disabled: its pending deliveries resume).
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    #[arg(long)]
    pub disable: bool,
}

#[derive(Subcommand)]
pub enum TriggersCommand {
    List,
    /// Create a web trigger; its key or secret is printed this once.
    Create(TriggerArgs),
    Show {
        id: String,
    },
    /// The trigger's invocations, newest first.
    Invocations {
        id: String,
        /// How many, 1 to 100 (default 20).
        #[arg(long)]
        limit: Option<u32>,
        /// Invocations older than this invocation id.
        #[arg(long, value_name = "INVOCATION_ID")]
        cursor: Option<String>,
    },
}

#[derive(Args)]
pub struct TriggerArgs {
    /// Unique: [a-z0-9][a-z0-9_-]{0,63}.
    #[arg(long)]
    pub name: String,
    /// An HTTP method it answers, or * (repeatable); default POST.
    #[arg(long = "method", value_name = "METHOD")]
    pub methods: Vec<String>,
    /// sync: the script's answer is the response; async: 202, the script runs later.
    #[arg(long, value_enum)]
    pub mode: Option<TriggerMode>,
    /// How callers prove themselves; default none (the URL is the secret).
    #[arg(long, value_enum)]
    pub auth: Option<TriggerAuth>,
    /// The header carrying the key or signature.
    #[arg(long, value_name = "HEADER")]
    pub auth_header: Option<String>,
    /// A file holding the script (an ES module).
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,
    /// A URL sync calls are forwarded to instead of running a script.
    #[arg(long, value_name = "URL")]
    pub forward: Option<String>,
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// The tenant `context.app.fetch` acts on.
    #[arg(long, value_name = "CLIENTKEY")]
    pub tenant: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TriggerMode {
    Sync,
    Async,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TriggerAuth {
    None,
    Key,
    HmacSha256,
    StandardWebhooks,
}

#[derive(Subcommand)]
pub enum SourcesCommand {
    List,
    /// Create a Jira admin-webhook source; its secret is printed this once.
    Create {
        #[arg(long)]
        name: String,
        /// The site that sends, such as https://acme.atlassian.net.
        #[arg(long, value_name = "URL")]
        base_url: String,
    },
    Show {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum TenantsCommand {
    List {
        /// Only tenants of this kind.
        #[arg(long, value_enum)]
        kind: Option<TenantKind>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TenantKind {
    Connect,
    Forge,
    JiraAdmin,
}

/// Runs `command` against the server `config` names (or `--url`), prints a
/// failure once on standard error, and gives the exit code.
pub async fn main(config: &Config, command: Command) -> ExitCode {
    match run(config, command).await {
        Ok(()) | Err(CliError::OutputClosed) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookrelay: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(config: &Config, command: Command) -> Result<(), CliError> {
    let server = match &command {
        Command::Tail(args) => &args.server,
        Command::Events { server, .. }
        | Command::Replay { server, .. }
        | Command::Subscriptions { server, .. }
        | Command::Triggers { server, .. }
        | Command::Sources { server, .. }
        | Command::Tenants { server, .. } => server,
    };
    let url = match &server.url {
        Some(url) => url.clone(),
        None => default_url(&config.listen),
    };
    let client = AdminClient::new(&url, config.admin_token.clone())?;
    let json = server.json;
    let context = commands::Context { client, json };
    match command {
        Command::Tail(args) => commands::tail(&context, args).await,
        Command::Events { command, .. } => commands::events(&context, command).await,
        Command::Replay {
            event_id,
            subscription,
            ..
        } => commands::replay(&context, &event_id, subscription).await,
        Command::Subscriptions { command, .. } => commands::subscriptions(&context, command).await,
        Command::Triggers { command, .. } => commands::triggers(&context, command).await,
        Command::Sources { command, .. } => commands::sources(&context, command).await,
        Command::Tenants { command, .. } => commands::tenants(&context, command).await,
    }
}

/// `http://<listen>`, with a wildcard address (`0.0.0.0`, `[::]`) replaced by
/// loopback: a server listening everywhere is reached here.
fn default_url(listen: &str) -> String {
    match listen.parse::<SocketAddr>() {
        Ok(mut addr) if addr.ip().is_unspecified() => {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
            format!("http://{addr}")
        }
        _ => format!("http://{listen}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_url_reaches_the_listen_address() {
        assert_eq!(
            super::default_url("127.0.0.1:8080"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(super::default_url("0.0.0.0:9000"), "http://127.0.0.1:9000");
        assert_eq!(super::default_url("[::]:9000"), "http://[::1]:9000");
        assert_eq!(
            super::default_url("relay.internal:80"),
            "http://relay.internal:80"
        );
    }
}
