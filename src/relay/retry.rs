//! What an attempt's result means, and when the next attempt is due.
//!
//! 2xx is delivered. Timeouts, connection errors, 408, 429 and 5xx are retried on
//! the configured schedule with jitter, never sooner than `Retry-After` asks.
//! 410 Gone disables the subscription. Any other answer fails the delivery for
//! good: the endpoint understood the request and refused it.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The longest `Retry-After` honoured: an endpoint cannot park a delivery for
/// longer than a day at a time.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How an answered request is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    Retry,
    /// 410: the endpoint is gone; the subscription is disabled.
    Gone,
    Fail,
}

pub fn classify(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 | 500..=599 => Verdict::Retry,
        410 => Verdict::Gone,
        _ => Verdict::Fail,
    }
}

/// A `Retry-After` value: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some(
        (at - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// The delay before the next attempt after attempt number `attempt` (from 1)
/// failed, or `None` when that was the last one. The scheduled delay is
/// spread by ±20% so that deliveries that failed together do not come back
/// together; `Retry-After` is a floor.
pub fn next_delay(
    schedule: &[Duration],
    attempt: i32,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let scheduled = *schedule.get(usize::try_from(attempt).ok()?.checked_sub(1)?)?;
    let jittered = scheduled.mul_f64(0.8 + 0.4 * rand::random::<f64>());
    Some(match retry_after {
        Some(floor) => jittered.max(floor),
        None => jittered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(classify(200), Verdict::Delivered);
        assert_eq!(classify(204), Verdict::Delivered);
        for status in [408, 429, 500, 502, 503, 599] {
            assert_eq!(classify(status), Verdict::Retry, "{status}");
        }
        assert_eq!(classify(410), Verdict::Gone);
        for status in [301, 302, 400, 401, 404, 413] {
            assert_eq!(classify(status), Verdict::Fail, "{status}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 22 Nov 2026 10:01:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 22 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn schedule_with_jitter_and_floor() {
        let schedule = [Duration::from_secs(10), Duration::from_secs(100)];
        for _ in 0..100 {
            let d = next_delay(&schedule, 1, None).unwrap();
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
            let d = next_delay(&schedule, 2, None).unwrap();
            assert!(
                d >= Duration::from_secs(80) && d <= Duration::from_secs(120),
                "{d:?}"
            );
        }
        assert_eq!(next_delay(&schedule, 3, None), None);
        assert_eq!(next_delay(&schedule, 0, None), None);
        let floored = next_delay(&schedule, 1, Some(Duration::from_secs(30))).unwrap();
        assert_eq!(floored, Duration::from_secs(30));
    }
}
