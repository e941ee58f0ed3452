//! What the benchmarks share: their settings from the environment, the
//! process's resident memory, and latency percentiles.

#![allow(dead_code)]

use std::time::Duration;

/// `name` from the environment as a number, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This process's resident set size, in KiB (VmRSS of /proc/self/status).
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn print_rss(label: &str) {
    match rss_kib() {
        Some(kib) => println!("rss {label}: {:.1} MiB ({kib} kB)", kib as f64 / 1024.0),
        None => println!("rss {label}: unavailable (no /proc/self/status)"),
    }
}

/// p50, p90, p99 and max of `latencies`, in milliseconds.
pub fn percentiles(latencies: &mut [Duration]) -> String {
    if latencies.is_empty() {
        return "none".into();
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(*latencies.last().unwrap()),
    )
}

/// hookrelay serving in this process on loopback: SQLite in `dir`, the
/// in-process broker, an admin token, and whatever `adjust` sets.
pub struct Embedded {
    pub address: String,
    shutdown: tokio_util::sync::CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Embedded {
    pub async fn start(
        dir: &std::path::Path,
        admin_token: &str,
        adjust: impl FnOnce(&mut hookrelay::config::RawConfig),
    ) -> Self {
        let mut raw = hookrelay::config::RawConfig {
            listen: "127.0.0.1:0".into(),
            database_url: format!("sqlite://{}", dir.join("bench.db").display()),
            admin_token: Some(admin_token.into()),
            ..hookrelay::config::RawConfig::default()
        };
        adjust(&mut raw);
        let config = raw.validate().unwrap();
        println!(
            "hookrelay in this process (sqlite, in-process broker): http_workers {} \
             (0 = one per core), script_concurrency {}, {} CPUs",
            config.http_workers,
            config.script_concurrency,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        let app = hookrelay::startup::Application::build(config)
            .await
            .unwrap();
        let address = format!("http://127.0.0.1:{}", app.port());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        // Let the server's workers and the background tasks start.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Embedded {
            address,
            shutdown,
            server,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
    }
}
