//! Byte budgets: how much of the bodies and payloads a stage may hold at once.
//!
//! Counts (a batch of 256, 64 deliveries in flight) say nothing about memory when
//! one payload may be 10 MiB; each stage that holds payloads takes their size
//! from a budget of its own first, and gives it back when it lets go of them.
//! A budget counts in KiB, rounded up, so that it fits a semaphore.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone)]
pub struct ByteBudget {
    kib: Arc<Semaphore>,
    total: usize,
}

/// Bytes taken from a budget; they go back when this is dropped.
#[derive(Debug)]
pub struct Held(Option<OwnedSemaphorePermit>);

impl ByteBudget {
    pub fn new(bytes: usize) -> Self {
        let kib = bytes.div_ceil(1024).min(Semaphore::MAX_PERMITS);
        Self {
            kib: Arc::new(Semaphore::new(kib)),
            total: bytes,
        }
    }

    /// The whole budget, in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes free right now.
    pub fn room(&self) -> u64 {
        self.kib.available_permits() as u64 * 1024
    }

    /// `bytes` if they are free now.
    pub fn try_take(&self, bytes: usize) -> Option<Held> {
        self.kib
            .clone()
            .try_acquire_many_owned(kib(bytes))
            .ok()
            .map(|permit| Held(Some(permit)))
    }

    /// `bytes`, waiting up to `within` for them to be given back.
    pub async fn take(&self, bytes: usize, within: Duration) -> Option<Held> {
        let wanted = self.kib.clone().acquire_many_owned(kib(bytes));
        match tokio::time::timeout(within, wanted).await {
            Ok(Ok(permit)) => Some(Held(Some(permit))),
            _ => None,
        }
    }
}

impl Held {
    /// Nothing held: for a body with nothing in it yet.
    pub fn none() -> Self {
        Held(None)
    }

    /// Adds `other` to what this holds.
    pub fn add(&mut self, other: Held) {
        match (&mut self.0, other.0) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (_, None) => {}
        }
    }
}

/// Bytes in whole KiB, at least one: an empty body still costs a little.
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_come_back_when_dropped() {
        let budget = ByteBudget::new(10 * 1024);
        let a = budget.try_take(6 * 1024).unwrap();
        assert!(budget.try_take(5 * 1024).is_none(), "over the budget");
        let mut b = budget.try_take(1).unwrap(); // one KiB at least
        assert_eq!(budget.room(), 3 * 1024);
        b.add(budget.try_take(2 * 1024).unwrap());
        assert_eq!(budget.room(), 1024);
        drop(a);
        assert_eq!(budget.room(), 7 * 1024);
        assert!(budget
            .take(8 * 1024, Duration::from_millis(20))
            .await
            .is_none());
        drop(b);
        assert!(budget
            .take(10 * 1024, Duration::from_millis(20))
            .await
            .is_some());
    }
}
