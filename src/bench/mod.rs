//! `hookrelay bench`: measures a running hookrelay the way a user plans
//! capacity, in the spirit of `nats bench`.
//!
//! It plays a Jira site ([`crate::dev::site`]): it serves its own install key on loopback,
//! installs a site of its own with a signed `installed` callback, and sends
//! signed `jira:issue_created` webhooks of a chosen size ([`load`]), closed-loop
//! (a fixed number in flight) or open-loop (a fixed rate). It subscribes a
//! sink of its own through the admin API ([`sink`]), which answers every
//! delivery 204 and ties it back to the request that produced it. At the end
//! it waits a bounded time for the deliveries still due, deletes its
//! subscription, uninstalls its site, and reports ([`report`]): intake's
//! throughput and latency, the end-to-end latency to the sink, losses,
//! duplicates and the server's resident memory.
//!
//! The server must trust the bench's key server (`HOOKRELAY_INSTALL_KEYS_URL`,
//! by default `http://127.0.0.1:8788`), allow deliveries to loopback
//! (`HOOKRELAY_ALLOW_PRIVATE_DESTINATIONS=true`) and have an admin token
//! (`HOOKRELAY_ADMIN_TOKEN`), unless `--no-sink`.

pub mod load;
pub mod report;
pub mod sink;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::dev::admin::{AdminApi, Subscription};
use crate::dev::site::{InstallKey, KeyServer, Site, Target};
use crate::domain::Product;
use load::{Mode, Sender};
use report::{DeliveryReport, IntakeReport, Latency, Report, RssReport};
use sink::{Sink, Tracker};

/// The event every webhook of the bench is.
pub const EVENT: &str = "jira:issue_created";
/// How long one request of the bench may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// What to do when the server does not trust the bench's key server, after
/// the setting it needs.
const INSTALL_HINT: &str = " (for the sink also HOOKRELAY_ALLOW_PRIVATE_DESTINATIONS=true and \
     HOOKRELAY_ADMIN_TOKEN) and run the bench again; --keys-listen fixes the key server's \
     address (default 127.0.0.1:8788), so that one start of the server serves every run";
/// The largest body `--size` allows.
const MAX_SIZE: usize = 64 * 1024 * 1024;

/// The options of `hookrelay bench`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Start the server for it, for example:
  HOOKRELAY_INSTALL_KEYS_URL=http://127.0.0.1:8788 HOOKRELAY_ALLOW_PRIVATE_DESTINATIONS=true \\
  HOOKRELAY_ADMIN_TOKEN=change-me-to-16-chars-or-more hookrelay serve

Exit status: 0 when the run completed (losses are reported, not an error), 1 when it \
could not run (server unreachable, install or subscription refused, nothing accepted), \
2 for bad options.")]
pub struct BenchArgs {
    /// Where the hookrelay to measure serves.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: Url,
    /// The server's admin token, to subscribe the sink (not needed with --no-sink).
    #[arg(
        long,
        env = "HOOKRELAY_ADMIN_TOKEN",
        hide_env_values = true,
        required_unless_present = "no_sink"
    )]
    pub admin_token: Option<String>,
    /// Requests in flight at once (closed loop, the default).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Requests a second, sent on schedule whatever the answers (open loop),
    /// instead of --concurrency.
    #[arg(long, conflicts_with = "concurrency", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// How long to measure, after the warm-up (10s, 1m, ...).
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub duration: Duration,
    /// Load sent before measuring, not counted in the figures.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Size of each webhook body: bytes, or with KiB/MiB (also k, M).
    #[arg(long, default_value = "2KiB", value_parser = parse_size)]
    pub size: usize,
    /// Longest wait after the load for the deliveries still due.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Measure intake only: no sink, no subscription, no admin token.
    #[arg(long)]
    pub no_sink: bool,
    /// Where the bench's install-key server listens. The server must have
    /// HOOKRELAY_INSTALL_KEYS_URL set to its URL (http://<this>).
    #[arg(long, default_value = "127.0.0.1:8788")]
    pub keys_listen: String,
    /// The URL the server reaches the key server at, when not http://<--keys-listen>.
    #[arg(long)]
    pub keys_url: Option<Url>,
    /// Where the sink listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub sink_listen: String,
    /// The URL the server reaches the sink at, when not http://<--sink-listen>
    /// (the bench adds /hookrelay-bench/<run>).
    #[arg(long)]
    pub sink_url: Option<Url>,
    /// The subscription's max_concurrency (default: the server's
    /// HOOKRELAY_SUBSCRIPTION_CONCURRENCY).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub sink_concurrency: Option<u32>,
    /// Subscribe the sink this many times: each request is owed a delivery
    /// by every one (fan-out).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(sink::MAX_FAN)))]
    pub subscriptions: u32,
    /// Hold the sink's answers until the load ends, so that deliveries pile
    /// up; the delivery rate is then that of the backlog's drain. Keep the
    /// load shorter than the server's HOOKRELAY_DELIVERY_TIMEOUT, or the
    /// held deliveries time out and wait for their retry.
    #[arg(long, conflicts_with = "no_sink")]
    pub backlog: bool,
    /// The server's process id, to read its memory from /proc when its
    /// /metrics does not report it.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Print the report as one JSON object (fields in the README).
    #[arg(long)]
    pub json: bool,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= 1e6 => Ok(rate),
        _ => Err("expected requests per second, more than 0 and at most 1000000".into()),
    }
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// `2048`, `2k`, `2KiB`, `1M`, `1MiB` (powers of 1024), at most 64 MiB.
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size: give bytes, or a number with KiB or MiB"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        other => return Err(format!("unknown unit `{other}`: use KiB or MiB")),
    };
    match number.checked_mul(factor) {
        Some(size) if size <= MAX_SIZE => Ok(size),
        _ => Err("at most 64 MiB".into()),
    }
}

/// Runs the bench and prints its report. An error means the run could not
/// be made (exit status 1).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    // SIGINT stops the load and the drain; the cleanup still runs.
    tokio::spawn(crate::dev::stop_on_ctrl_c(stop.clone(), "hookrelay bench"));
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let client = crate::dev::site::client(REQUEST_TIMEOUT)?;

    let kid = format!("hookrelay-bench-{run_id}");
    let key = InstallKey::generate(kid).await?;
    let keys = KeyServer::start(&args.keys_listen, args.keys_url.as_ref(), &key)?;
    let bench = Bench {
        args: &args,
        client,
        run_id,
        stop,
    };
    let report = bench.with_key_server(&key, &keys).await;
    keys.stop().await;
    let report = report?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot write the report")?
        );
    } else {
        print!("{}", report.text());
    }
    if report.intake.accepted == 0 && report.intake.sent > 0 {
        bail!("hookrelay accepted none of the bench's webhooks");
    }
    Ok(())
}

/// One run's settings and shared parts.
struct Bench<'a> {
    args: &'a BenchArgs,
    client: reqwest::Client,
    run_id: String,
    stop: CancellationToken,
}

/// What [`Bench::measure`] found.
struct Measured {
    intake: IntakeReport,
    rss: RssReport,
    drain: Duration,
    body_bytes: usize,
}

impl Bench<'_> {
    fn say(&self, what: &str) {
        eprintln!("hookrelay bench: {what}");
    }

    /// Installs the site, measures, uninstalls it.
    async fn with_key_server(&self, key: &InstallKey, keys: &KeyServer) -> anyhow::Result<Report> {
        let target = Target::discover(&self.client, &self.args.url, Product::Jira).await?;
        let site = Arc::new(Site::new(Product::Jira, "hookrelay-bench", &self.run_id));
        site.install(&self.client, &target, key, keys, INSTALL_HINT)
            .await?;
        self.say(&format!("installed {}", site.client_key));
        let report = self.with_site(&target, &site).await;
        let uninstalled = match site.uninstall(&self.client, &target, key).await {
            Ok(()) => true,
            Err(e) => {
                self.say(&format!("warning: {e:#}"));
                false
            }
        };
        report.map(|mut report| {
            report.site_uninstalled = uninstalled;
            report
        })
    }

    /// Subscribes the sink (unless `--no-sink`), measures, unsubscribes.
    async fn with_site(&self, target: &Target, site: &Arc<Site>) -> anyhow::Result<Report> {
        let args = self.args;
        let prefix = format!("hookrelay-bench-{}-", self.run_id);
        let token = match (&args.admin_token, args.no_sink) {
            (_, true) => None,
            (Some(token), false) => Some(token.clone()),
            (None, false) => bail!("the sink needs --admin-token (or HOOKRELAY_ADMIN_TOKEN)"),
        };
        let Some(token) = token else {
            let measured = self.measure(target, site, prefix, None).await;
            return Ok(self.report(site, measured, None));
        };
        let tracker = Arc::new(Tracker::new(prefix.clone(), args.subscriptions));
        let sink = Sink::start(
            &args.sink_listen,
            args.sink_url.as_ref(),
            &self.run_id,
            tracker.clone(),
            args.backlog,
        )?;
        let admin = AdminApi {
            client: self.client.clone(),
            base: format!("{}/admin/api/v1", target.url.as_str().trim_end_matches('/')),
            token,
            alternative: ", or run with --no-sink",
        };
        let mut subscriptions = Vec::new();
        for i in 0..args.subscriptions as usize {
            match admin
                .subscribe(
                    &sink.url_of(i),
                    &[EVENT],
                    &site.client_key,
                    "hookrelay bench sink",
                    args.sink_concurrency,
                )
                .await
            {
                Ok(subscription) => subscriptions.push(subscription),
                Err(e) => {
                    self.unsubscribe(&admin, &subscriptions).await;
                    sink.stop().await;
                    return Err(e);
                }
            }
        }
        let secrets: Vec<String> = subscriptions.iter().map(|s| s.secret.clone()).collect();
        if let Err(e) = sink.set_secrets(&secrets) {
            self.say(&format!("warning: {e:#}; signatures are not checked"));
        }
        self.say(&format!(
            "subscribed the sink at {} {} time(s){}",
            sink.url,
            subscriptions.len(),
            if args.backlog {
                "; its answers are held until the load ends"
            } else {
                ""
            }
        ));
        let measured = self
            .measure(target, site, prefix, Some((tracker.clone(), &sink)))
            .await;
        let deleted = self.unsubscribe(&admin, &subscriptions).await;
        sink.stop().await;
        let tally = tracker.tally();
        let delivery = DeliveryReport {
            subscription_ids: subscriptions.into_iter().map(|s| s.id).collect(),
            subscriptions_deleted: deleted,
            backlog: args.backlog,
            counts: tally.counts,
            per_sec: tally.per_sec,
            drain_secs: measured.drain.as_secs_f64(),
            latency_ms: Latency::of(&tally.latency),
        };
        Ok(self.report(site, measured, Some(delivery)))
    }

    /// Deletes the subscriptions; false if one could not be.
    async fn unsubscribe(&self, admin: &AdminApi, subscriptions: &[Subscription]) -> bool {
        let mut deleted = true;
        for subscription in subscriptions {
            if let Err(e) = admin.unsubscribe(&subscription.id).await {
                self.say(&format!("warning: {e:#}"));
                deleted = false;
            }
        }
        deleted
    }

    /// The load, then the drain (the sink released first, if held); the
    /// server's memory before and after.
    async fn measure(
        &self,
        target: &Target,
        site: &Arc<Site>,
        prefix: String,
        sink: Option<(Arc<Tracker>, &Sink)>,
    ) -> Measured {
        let tracker = sink.as_ref().map(|(tracker, _)| tracker.clone());
        let args = self.args;
        let mut rss = RssReport::default();
        if let Some(sample) = report::server_rss(&self.client, &target.url, args.pid).await {
            rss.source = Some(sample.source);
            rss.start_bytes = Some(sample.bytes);
        }
        let mode = match args.rate {
            Some(rate) => Mode::Open { rate },
            None => Mode::Closed {
                concurrency: args.concurrency as usize,
            },
        };
        let body = load::issue_created_body(&site.base_url, args.size);
        let body_bytes = body.len();
        let sender = Arc::new(Sender::new(
            self.client.clone(),
            target.webhook_url(EVENT),
            target.webhook_qsh(EVENT),
            site.clone(),
            body,
            prefix,
            tracker.clone(),
        ));
        self.say(&format!(
            "sending for {} after {} of warm-up",
            humantime::format_duration(args.duration),
            humantime::format_duration(args.warmup)
        ));
        let outcome = sender
            .run(mode, args.warmup, args.duration, self.stop.clone())
            .await;

        let drain_started = Instant::now();
        if let Some((_, sink)) = &sink {
            sink.release();
        }
        if let Some(tracker) = &tracker {
            let deadline = drain_started + args.drain;
            while tracker.pending() > 0 && Instant::now() < deadline && !self.stop.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let drain = drain_started.elapsed();
        if let Some(sample) = report::server_rss(&self.client, &target.url, args.pid).await {
            if rss.source.is_none_or(|s| s == sample.source) {
                rss.source = Some(sample.source);
                rss.end_bytes = Some(sample.bytes);
                rss.peak_bytes = sample.peak;
            }
        }
        let secs = outcome.elapsed.as_secs_f64();
        let per_sec = |n: u64| (secs > 0.0).then(|| n as f64 / secs);
        let intake = IntakeReport {
            sent: outcome.measured.sent,
            accepted: outcome.measured.accepted,
            failed: outcome.measured.failed_total(),
            warmup_sent: outcome.warmup.sent,
            elapsed_secs: secs,
            requests_per_sec: per_sec(outcome.measured.sent),
            accepted_per_sec: per_sec(outcome.measured.accepted),
            latency_ms: Latency::of(&outcome.latency),
            failed_by_status: outcome.measured.failed,
        };
        Measured {
            intake,
            rss,
            drain,
            body_bytes,
        }
    }

    fn report(&self, site: &Site, measured: Measured, delivery: Option<DeliveryReport>) -> Report {
        let args = self.args;
        Report {
            url: args.url.as_str().trim_end_matches('/').to_string(),
            mode: if args.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            concurrency: args.rate.is_none().then_some(args.concurrency as usize),
            rate: args.rate,
            duration_secs: args.duration.as_secs_f64(),
            warmup_secs: args.warmup.as_secs_f64(),
            body_bytes: measured.body_bytes,
            client_key: site.client_key.clone(),
            interrupted: self.stop.is_cancelled(),
            site_uninstalled: false,
            intake: measured.intake,
            delivery,
            server_rss: measured.rss,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("2048"), Ok(2048));
        assert_eq!(parse_size("2KiB"), Ok(2048));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert_eq!(parse_size("1 MiB"), Ok(1024 * 1024));
        assert!(parse_size("65MiB").is_err());
        assert!(parse_size("2 GB").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn rates_must_be_positive() {
        assert_eq!(parse_rate("250"), Ok(250.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("NaN").is_err());
    }
}
