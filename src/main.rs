//! The `hookrelay` command: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hookrelay::config::{Config, RawConfig};
use hookrelay::domain::Product;
use hookrelay::forge_app::{self, ManifestOptions, Products};
use hookrelay::sources::forge_events;
use hookrelay::startup::{Application, Worker};
use hookrelay::store::Store;
use hookrelay::{descriptor, telemetry};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "hookrelay",
    version,
    about = "Atlassian webhook receiver and event fan-out"
)]
struct Cli {
    /// TOML configuration file, read after the defaults and before HOOKRELAY_* variables.
    #[arg(long, global = true, env = "HOOKRELAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP (descriptors, lifecycle callbacks, webhook intake, admin API),
    /// publish events, and run relay workers.
    Serve,
    /// Run relay workers only: consume the relay queue and deliver to subscriptions.
    Worker,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage the secrets stored at rest.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Print the rendered app descriptor.
    Descriptor {
        #[arg(long, value_enum)]
        product: ProductArg,
    },
    /// Make the Forge app that sends a site's events to hookrelay (Forge Remote).
    Forge {
        #[command(subcommand)]
        command: ForgeCommand,
    },
    /// Measure a running hookrelay as a Jira site would: intake, delivery, memory.
    Bench(Box<hookrelay::bench::BenchArgs>),
    /// The inspector: tail, events, replay, subscriptions, triggers, sources
    /// and tenants, through a running server's admin API.
    #[command(flatten)]
    Inspect(hookrelay::cli::Command),
    /// Check the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Exit 0 when a running hookrelay (serve or worker) answers /readyz with
    /// 200, 1 otherwise with the reason on stderr: for container health checks.
    Healthcheck {
        /// The URL to check; default http://<HOOKRELAY_LISTEN>/readyz.
        #[arg(long)]
        url: Option<String>,
    },
    /// Try hookrelay without an Atlassian site (`dev site` plays one).
    Dev {
        #[command(subcommand)]
        command: hookrelay::dev::DevCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the settings and print them as TOML, secrets redacted; exit 1
    /// with the error when they are invalid.
    Check,
}

#[derive(Subcommand)]
enum ForgeCommand {
    /// Print the app's manifest.yml.
    Manifest(ForgeArgs),
    /// Write the app's folder: manifest.yml, package.json, .gitignore and
    /// README.md. Existing files are never overwritten.
    Init {
        /// The folder to write (made if missing).
        dir: PathBuf,
        #[command(flatten)]
        args: ForgeArgs,
    },
    /// List the Forge events hookrelay knows: name, Connect name, scopes.
    Events {
        #[arg(long, value_enum, default_value = "both")]
        product: ForgeProductArg,
    },
}

#[derive(Args)]
struct ForgeArgs {
    /// The products whose events the app receives.
    #[arg(long, value_enum, default_value = "both")]
    product: ForgeProductArg,
    /// A Forge event to receive, such as avi:jira:created:issue (repeatable);
    /// default: every event of the products.
    #[arg(long = "event", value_name = "NAME")]
    events: Vec<String>,
    /// The app id to write; default: the first of HOOKRELAY_FORGE_APP_IDS.
    #[arg(long, value_name = "ARI")]
    app_id: Option<String>,
    /// A scope beyond what the events need, for calls through the bridge,
    /// such as write:jira-work (repeatable).
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ForgeProductArg {
    Jira,
    Confluence,
    Both,
}

impl From<ForgeProductArg> for Products {
    fn from(arg: ForgeProductArg) -> Self {
        match arg {
            ForgeProductArg::Jira => Products::Jira,
            ForgeProductArg::Confluence => Products::Confluence,
            ForgeProductArg::Both => Products::Both,
        }
    }
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Encrypt every stored secret with the first key of HOOKRELAY_ENCRYPTION_KEY
    /// (plaintext ones included), row by row; safe while `serve` runs, and
    /// idempotent. Afterwards the older keys can be removed.
    Reencrypt,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProductArg {
    Jira,
    Confluence,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            // One line on stderr, whatever the log format: the last thing a
            // user reads.
            eprintln!("hookrelay: {}", one_line(&e));
            if e.downcast_ref::<hookrelay::dev::UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes, each said once: a driver's message often
/// repeats the cause it wraps.
fn one_line(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            print!("{}", RawConfig::check(cli.config.as_deref())?);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Healthcheck { url } => {
            let url = match url {
                Some(url) => url.clone(),
                None => hookrelay::healthcheck::default_url(
                    &Config::load(cli.config.as_deref())?.listen,
                ),
            };
            hookrelay::healthcheck::check(&url, std::time::Duration::from_secs(5)).await?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    // Clients of a server with their own options: the server's settings
    // (which may be broken, or for another machine) do not concern them.
    match cli.command {
        Command::Bench(args) => {
            hookrelay::bench::run(*args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev { command } => {
            hookrelay::dev::run(command).await?;
            Ok(ExitCode::SUCCESS)
        }
        command => run_with_config(cli.config, command).await,
    }
}

async fn run_with_config(config: Option<PathBuf>, command: Command) -> anyhow::Result<ExitCode> {
    let config = Config::load(config.as_deref())?;
    match command {
        Command::Descriptor { product } => {
            let product = match product {
                ProductArg::Jira => Product::Jira,
                ProductArg::Confluence => Product::Confluence,
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&descriptor::render(&config, product))?
            );
        }
        Command::Forge { command } => forge(&config, command)?,
        Command::Migrate => {
            let store = migrated_store(&config).await?;
            tracing::info!(store = store.backend(), "migrations applied");
            store.close().await;
        }
        Command::Secrets {
            command: SecretsCommand::Reencrypt,
        } => {
            let store = migrated_store(&config).await?;
            store.check_secret_keys().await.context(
                "cannot read the secrets in the store with the configured encryption keys",
            )?;
            let report = store
                .reencrypt_secrets()
                .await
                .context("cannot re-encrypt the stored secrets")?;
            store.close().await;
            for column in &report {
                println!(
                    "{}: {} re-encrypted, {} encrypted from plaintext, {} already current, \
                     {} changed meanwhile",
                    column.column,
                    column.reencrypted,
                    column.encrypted,
                    column.current,
                    column.changed_meanwhile
                );
            }
            if report.iter().any(|c| c.changed_meanwhile > 0) {
                println!("some secrets changed while this ran: run it again to be sure");
            }
        }
        Command::Serve => {
            telemetry::init_tracing(config.log_format);
            let app = Application::build(config).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            app.run_until_stopped(shutdown).await?;
        }
        Command::Config { .. }
        | Command::Healthcheck { .. }
        | Command::Bench(_)
        | Command::Dev { .. } => {}
        Command::Worker => {
            telemetry::init_tracing(config.log_format);
            let worker = Worker::build(config).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            worker.run_until_stopped(shutdown).await;
        }
        // Its own exit codes and messages: they say what went wrong.
        Command::Inspect(command) => return Ok(hookrelay::cli::main(&config, command).await),
    }
    Ok(ExitCode::SUCCESS)
}

/// `hookrelay forge …`: output on stdout, warnings about the configuration on
/// stderr (they do not stop the command: the manifest may be for later).
fn forge(config: &Config, command: ForgeCommand) -> anyhow::Result<()> {
    let options = |args: ForgeArgs| {
        ManifestOptions::new(args.product.into(), &args.events, args.app_id)
            .and_then(|options| options.with_scopes(&args.scopes))
            .context("invalid options for the Forge app")
    };
    let warn = |options: &ManifestOptions| {
        for warning in forge_app::warnings(config, options) {
            eprintln!("hookrelay: warning: {warning}");
        }
    };
    match command {
        ForgeCommand::Manifest(args) => {
            let options = options(args)?;
            warn(&options);
            print!("{}", forge_app::manifest(config, &options));
        }
        ForgeCommand::Init { dir, args } => {
            let options = options(args)?;
            forge_app::init(&dir, config, &options)?;
            warn(&options);
            println!(
                "wrote {0}/manifest.yml, package.json, .gitignore and README.md; \
                 the next steps are in {0}/README.md",
                dir.display()
            );
        }
        ForgeCommand::Events { product } => {
            let products = Products::from(product);
            for event in forge_events::EVENTS
                .iter()
                .filter(|e| products.includes(e.product))
            {
                println!(
                    "{}\t{}\t{}",
                    event.forge,
                    event.connect.unwrap_or("-"),
                    event.scopes.join(",")
                );
            }
        }
    }
    Ok(())
}

/// Starts logging and opens and migrates the store, for the one-off commands.
async fn migrated_store(config: &Config) -> anyhow::Result<Store> {
    telemetry::init_tracing(config.log_format);
    let store = Store::connect(config)
        .await
        .context("cannot open the store")?;
    store
        .migrate()
        .await
        .context("cannot apply database migrations")?;
    Ok(store)
}

/// SIGINT or SIGTERM starts a graceful shutdown.
async fn cancel_on_signal(shutdown: CancellationToken) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = hookrelay::startup::sigterm() => tracing::info!("SIGTERM received"),
    }
    shutdown.cancel();
}
