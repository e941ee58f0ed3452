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
