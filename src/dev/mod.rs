//! `hookrelay dev`: tools for trying hookrelay on one machine, without an
//! Atlassian site.
//!
//! `hookrelay dev site` plays a Jira or Confluence site ([`site`]) against a
//! running hookrelay: it serves a fresh install key of its own on loopback,
//! installs a new site with a signed `installed` callback, then sends signed
//! webhooks from the bundled fixtures (real payloads, [`FIXTURES`]) or from a
//! file, and prints a line per step. The server must fetch install keys from
//! the site's key server (`HOOKRELAY_INSTALL_KEYS_URL`, by default
//! `http://127.0.0.1:8788`).
//!
//! Each run installs a site of its own (`<product>:hookrelay-dev-<run>`):
//! hookrelay applies a reinstall of a client key only when it is strictly
//! newer, so a fixed one could be silently kept on its old secret. The site
//! stays installed afterwards, so that its events can be looked at and
//! replayed.

pub mod admin;
pub mod receiver;
pub mod site;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::domain::Product;
use admin::AdminApi;
use receiver::Receiver;
use site::{answer_detail, InstallKey, KeyServer, Site, Target};

/// How long one request may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest `--file` read: hookrelay's default body limit is far below it.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A webhook payload bundled into the binary.
pub struct Fixture {
    pub product: Product,
    /// The event's name as the descriptor lists it.
    pub event: &'static str,
    pub body: &'static str,
}

/// Real payloads, as Jira Cloud and Confluence Cloud sent them.
pub const FIXTURES: &[Fixture] = &[
    Fixture {
        product: Product::Jira,
        event: "jira:issue_created",
        body: include_str!("../../tests/fixtures/payloads/jira_issue_created.json"),
    },
    Fixture {
        product: Product::Jira,
        event: "jira:issue_updated",
        body: include_str!("../../tests/fixtures/payloads/jira_issue_updated.json"),
    },
    Fixture {
        product: Product::Jira,
        event: "comment_created",
        body: include_str!("../../tests/fixtures/payloads/jira_comment_created.json"),
    },
    Fixture {
        product: Product::Confluence,
        event: "page_updated",
        body: include_str!("../../tests/fixtures/payloads/confluence_page_updated.json"),
    },
];

/// The subcommands of `hookrelay dev`.
#[derive(Debug, clap::Subcommand)]
pub enum DevCommand {
    /// Play a Jira or Confluence site against a running hookrelay: a signed
    /// install through a key server of its own, then webhooks.
    Site(Box<SiteArgs>),
}

/// The options of `hookrelay dev site`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Start the server for it, for example:
  HOOKRELAY_INSTALL_KEYS_URL=http://127.0.0.1:8788 hookrelay serve
and with --receiver also HOOKRELAY_ADMIN_TOKEN=<16 characters or more> and
HOOKRELAY_ALLOW_PRIVATE_DESTINATIONS=true.

Bundled events: jira:issue_created, jira:issue_updated, comment_created (Jira); \
page_updated (Confluence).

Exit status: 0 when the site was installed and every webhook accepted (and, with \
--receiver, delivered), 1 otherwise, 2 for bad options.")]
pub struct SiteArgs {
    /// Where hookrelay serves.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: Url,
    /// The product the site is.
    #[arg(long, default_value = "jira", value_parser = parse_product)]
    pub product: Product,
    /// An event to send (repeatable): one of the bundled ones, or with
    /// --file the name of the file's event. Default: every bundled event of
    /// the product.
    #[arg(long = "event", value_name = "NAME")]
    pub events: Vec<String>,
    /// Send this JSON payload instead of a bundled one (needs --event).
    #[arg(long, value_name = "PATH", requires = "events")]
    pub file: Option<PathBuf>,
    /// How many times to send each event.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub count: u32,
    /// The pause between two webhooks (0s, 500ms, 2s, ...).
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Where the site's install-key server listens. The server must have
    /// HOOKRELAY_INSTALL_KEYS_URL set to its URL (http:// and this address).
    #[arg(long, default_value = "127.0.0.1:8788")]
    pub keys_listen: String,
    /// The URL the server reaches the key server at, when not http:// and --keys-listen.
    #[arg(long)]
    pub keys_url: Option<Url>,
    /// Run a local endpoint that prints each delivery it gets, subscribed to
    /// the site's events through the admin API; it stays up for replays
    /// until Ctrl-C, then the subscription is deleted. The server needs
    /// HOOKRELAY_ADMIN_TOKEN and HOOKRELAY_ALLOW_PRIVATE_DESTINATIONS=true.
    #[arg(long)]
    pub receiver: bool,
    /// Where the receiver listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0", requires = "receiver")]
    pub receiver_listen: String,
    /// The URL the server reaches the receiver at, when not
    /// http:// and --receiver-listen (dev site adds /hookrelay-dev).
    #[arg(long, requires = "receiver")]
    pub receiver_url: Option<Url>,
    /// The server's admin token, to subscribe the receiver.
    #[arg(long, env = "HOOKRELAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Longest wait for the receiver's deliveries of the events sent.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

fn parse_product(s: &str) -> Result<Product, String> {
    Product::parse(s).ok_or_else(|| "expected jira or confluence".into())
}

/// What to do when the server does not trust the site's key server, after
/// the setting it needs.
const INSTALL_HINT: &str = " and run `hookrelay dev site` again (--keys-listen sets the key \
     server's address; the default, 127.0.0.1:8788, is the one the README's quick start uses)";

/// Options that cannot work together or name something that is not there:
/// the run exits 2, having started nothing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

/// One webhook to send: its event and body.
struct Webhook {
    event: String,
    body: String,
}

/// The webhooks `args` ask for, before anything is started.
fn webhooks(args: &SiteArgs) -> Result<Vec<Webhook>, UsageError> {
    if let Some(path) = &args.file {
        let unreadable =
            |e: std::io::Error| UsageError(format!("cannot read --file {}: {e}", path.display()));
        let size = std::fs::metadata(path).map_err(unreadable)?.len();
        if size > MAX_FILE_BYTES {
            return Err(UsageError(format!(
                "--file {} is larger than 16 MiB",
                path.display()
            )));
        }
        let body = std::fs::read_to_string(path).map_err(unreadable)?;
        serde_json::from_str::<Value>(&body)
            .map_err(|e| UsageError(format!("--file {} is not JSON: {e}", path.display())))?;
        return Ok(args
            .events
            .iter()
            .map(|event| Webhook {
                event: event.clone(),
                body: body.clone(),
            })
            .collect());
    }
    let bundled = FIXTURES.iter().filter(|f| f.product == args.product);
    if args.events.is_empty() {
        return Ok(bundled
            .map(|f| Webhook {
                event: f.event.into(),
                body: f.body.into(),
            })
            .collect());
    }
    args.events
        .iter()
        .map(|event| {
            let fixture = bundled.clone().find(|f| f.event == event).ok_or_else(|| {
                let known: Vec<&str> = bundled.clone().map(|f| f.event).collect();
                UsageError(format!(
                    "no bundled {} payload for `{event}` (bundled: {}); send your own with \
                     --file PATH --event {event}",
                    args.product,
                    known.join(", ")
                ))
            })?;
            Ok(Webhook {
                event: fixture.event.into(),
                body: fixture.body.into(),
            })
        })
        .collect()
}

/// Runs a `hookrelay dev` command.
pub async fn run(command: DevCommand) -> anyhow::Result<()> {
    match command {
        DevCommand::Site(args) => site(*args).await,
    }
}

/// `hookrelay dev site`: installs a new site, sends the webhooks, and says
/// how to look at what was stored. An error means a step failed (exit 1).
async fn site(args: SiteArgs) -> anyhow::Result<()> {
    let webhooks = webhooks(&args)?;
    if args.receiver && args.admin_token.is_none() {
        return Err(
            UsageError("--receiver needs --admin-token (or HOOKRELAY_ADMIN_TOKEN)".into()).into(),
        );
    }
    let client = site::client(REQUEST_TIMEOUT)?;
    // Short, so that client keys stay readable; random, so that runs never meet.
    let run_id = hex::encode(rand::random::<[u8; 4]>());
    let kid = format!("hookrelay-dev-{run_id}");
    let key = InstallKey::generate(kid).await?;
    let keys = KeyServer::start(&args.keys_listen, args.keys_url.as_ref(), &key)?;
    say(&format!(
        "serving the site's install key at {}",
        keys.url.as_str().trim_end_matches('/')
    ));
    let played = play(&args, &client, &run_id, &key, &keys, &webhooks).await;
    keys.stop().await;
    played
}

/// SIGINT cancels `stop`, so that the run cleans up after itself; a second
/// one exits at once. `who` names the command in the message.
pub async fn stop_on_ctrl_c(stop: CancellationToken, who: &str) {
    // SIGTERM (a `timeout`, a process manager) cleans up as Ctrl-C does, so a
    // run stopped either way leaves no subscription behind.
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => if interrupted.is_err() { return },
        _ = crate::startup::sigterm() => {}
    }
    eprintln!("{who}: interrupted; cleaning up (Ctrl-C again to quit at once)");
    stop.cancel();
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(130);
    }
}

fn say(what: &str) {
    println!("hookrelay dev site: {what}");
}

/// Installs the site, subscribes the receiver (with `--receiver`), and sends
/// the webhooks.
async fn play(
    args: &SiteArgs,
    client: &reqwest::Client,
    run_id: &str,
    key: &InstallKey,
    keys: &KeyServer,
    webhooks: &[Webhook],
) -> anyhow::Result<()> {
    let target = Target::discover(client, &args.url, args.product).await?;
    let site = Site::new(args.product, "hookrelay-dev", run_id);
    site.install(client, &target, key, keys, INSTALL_HINT)
        .await?;
    say(&format!(
        "installed {} site {} as clientKey {}",
        args.product, site.base_url, site.client_key
    ));
    for webhook in webhooks {
        if !target.describes(&webhook.event) {
            say(&format!(
                "warning: hookrelay's {} descriptor does not list `{}`; sending it all the same",
                args.product, webhook.event
            ));
        }
    }
    let admin = AdminApi {
        client: client.clone(),
        base: format!("{}/admin/api/v1", args.url.as_str().trim_end_matches('/')),
        token: args.admin_token.clone().unwrap_or_default(),
        alternative: ", or run without --receiver",
    };
    // Without a receiver there is nothing to clean up: Ctrl-C ends the run.
    let stop = CancellationToken::new();
    if !args.receiver {
        return send_all(args, &target, &site, webhooks, &admin, None, &stop).await;
    }
    // From here Ctrl-C ends the run through the cleanup below.
    tokio::spawn(stop_on_ctrl_c(stop.clone(), "hookrelay dev site"));
    let receiver = Receiver::start(&args.receiver_listen, args.receiver_url.as_ref())?;
    let mut events: Vec<&str> = webhooks.iter().map(|w| w.event.as_str()).collect();
    events.sort_unstable();
    events.dedup();
    let subscription = match admin
        .subscribe(
            &receiver.url,
            &events,
            &site.client_key,
            "hookrelay dev site receiver",
            None,
        )
        .await
        .and_then(|subscription| {
            receiver.set_secret(&subscription.secret)?;
            Ok(subscription)
        }) {
        Ok(subscription) => subscription,
        Err(e) => {
            receiver.stop().await;
            return Err(e);
        }
    };
    say(&format!(
        "subscribed the receiver at {} (subscription {})",
        receiver.url, subscription.id
    ));
    let sent = send_all(
        args,
        &target,
        &site,
        webhooks,
        &admin,
        Some(&receiver),
        &stop,
    )
    .await;
    if sent.is_ok() {
        say("the receiver stays up for replays; Ctrl-C to stop");
        stop.cancelled().await;
    }
    let deleted = admin.unsubscribe(&subscription.id).await;
    receiver.stop().await;
    match deleted {
        Ok(()) => say(&format!("deleted subscription {}", subscription.id)),
        Err(e) => say(&format!("warning: {e:#}")),
    }
    sent
}

/// Sends every webhook `--count` times, and with a receiver waits for their
/// deliveries; then says how to look at them and replay one. The webhooks
/// go through the admin API's client (one client for the run).
async fn send_all(
    args: &SiteArgs,
    target: &Target,
    site: &Site,
    webhooks: &[Webhook],
    admin: &AdminApi,
    receiver: Option<&Receiver>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut refused = 0u64;
    let mut ids = Vec::new();
    let mut first = true;
    'sending: for n in 0..args.count {
        for webhook in webhooks {
            if !first && !args.interval.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(args.interval) => {}
                    () = stop.cancelled() => {}
                }
            }
            if stop.is_cancelled() {
                break 'sending;
            }
            first = false;
            let webhook_id = format!("{}-{}-{n}", site.client_key, webhook.event);
            match send(&admin.client, target, site, webhook, &webhook_id).await? {
                Ok((status, id)) => {
                    say(&format!("sent {} → {status}, event id {id}", webhook.event));
                    ids.push(id);
                }
                Err(refusal) => {
                    say(&format!("sent {} → {refusal}", webhook.event));
                    refused += 1;
                }
            }
        }
    }
    let mut undelivered = 0;
    if let Some(receiver) = receiver {
        let deadline = tokio::time::Instant::now() + args.wait;
        while !receiver.missing(&ids).is_empty()
            && tokio::time::Instant::now() < deadline
            && !stop.is_cancelled()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        undelivered = receiver.missing(&ids).len();
    }
    say(&format!(
        "see them: curl -H \"Authorization: Bearer $HOOKRELAY_ADMIN_TOKEN\" \
         '{}/events?tenant={}'",
        admin.base, site.client_key
    ));
    if let Some(id) = ids.last() {
        say(&format!(
            "replay one: curl -X POST -H \"Authorization: Bearer $HOOKRELAY_ADMIN_TOKEN\" \
             {}/events/{id}/replay",
            admin.base
        ));
    }
    if stop.is_cancelled() {
        bail!("interrupted");
    }
    if refused > 0 {
        bail!("hookrelay refused {refused} of the site's webhooks");
    }
    if undelivered > 0 {
        bail!(
            "{undelivered} of the {} events sent were not delivered to the receiver within {}",
            ids.len(),
            humantime::format_duration(args.wait)
        );
    }
    Ok(())
}

/// Sends one webhook: the answer's status and the stored event's id, or
/// what the refusal said.
async fn send(
    client: &reqwest::Client,
    target: &Target,
    site: &Site,
    webhook: &Webhook,
    webhook_id: &str,
) -> anyhow::Result<Result<(u16, String), String>> {
    let url = target.webhook_url(&webhook.event);
    let request = site
        .webhook_request(
            client,
            &url,
            &target.webhook_qsh(&webhook.event),
            webhook_id,
        )
        .context("cannot sign the webhook")?;
    let response = request
        .body(webhook.body.clone())
        .send()
        .await
        .with_context(|| format!("cannot reach hookrelay (POST {url})"))?;
    let status = response.status();
    if !status.is_success() {
        return Ok(Err(format!(
            "{}, refused: {}",
            status.as_u16(),
            answer_detail(response).await
        )));
    }
    let answer: Value = response.json().await.unwrap_or_default();
    let id = answer["id"].as_str().unwrap_or("(none in the answer)");
    Ok(Ok((status.as_u16(), id.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fixture_is_json_and_named_by_the_descriptor() {
        for fixture in FIXTURES {
            let parsed: Result<Value, _> = serde_json::from_str(fixture.body);
            assert!(parsed.is_ok(), "{} is not JSON", fixture.event);
            let events = match fixture.product {
                Product::Jira => include_str!("../../descriptor/jira.events"),
                Product::Confluence => include_str!("../../descriptor/confluence.events"),
            };
            assert!(
                events.lines().any(|line| line.trim() == fixture.event),
                "{} is not a {} event",
                fixture.event,
                fixture.product
            );
        }
    }
}
