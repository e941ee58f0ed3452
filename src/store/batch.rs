//! Group commit: many callers' writes of one kind go to the database together.
//!
//! A caller hands its request to a [`Batcher`] and waits for its own answer.
//! Behind it one task takes whatever requests are waiting (up to a maximum)
//! and writes them with one call, at most `concurrency` such calls at a time.
//! Under light load a request is written alone and at once: a batch never
//! waits to fill. Under heavy load requests pile up while the writes in flight
//! commit, so each commit carries many of them. Every caller is answered only
//! after the write that carried its request has returned.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::StoreError;

type Waiter<Resp> = oneshot::Sender<Result<Resp, StoreError>>;

/// How much one write carries, and how many writes run at once.
pub(crate) struct Limits<Req> {
    /// Most requests in one write.
    pub count: usize,
    /// A write takes no more requests once they come to this many bytes.
    pub bytes: usize,
    /// What a request weighs, in bytes.
    pub size: fn(&Req) -> usize,
    /// Most writes in flight.
    pub concurrency: usize,
}

/// Hands requests to the writer task. Cheap to clone; the task ends when the
/// last clone is dropped.
pub(crate) struct Batcher<Req, Resp> {
    requests: mpsc::UnboundedSender<(Req, Waiter<Resp>)>,
    what: &'static str,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
            what: self.what,
        }
    }
}

impl<Req, Resp> std::fmt::Debug for Batcher<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("what", &self.what).finish()
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the writer task. `write` gets a batch within `limits` (one
    /// request at least) and returns one result per request, in order. The queue is unbounded,
    /// but each waiting caller holds its own request: what waits is bounded by
    /// whatever bounds the callers (HTTP concurrency, prefetch, slots).
    pub fn start<F, Fut>(what: &'static str, limits: Limits<Req>, write: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<Resp, StoreError>>> + Send + 'static,
    {
        let (requests, mut rx) = mpsc::unbounded_channel::<(Req, Waiter<Resp>)>();
        let write = Arc::new(write);
        let writes = Arc::new(Semaphore::new(limits.concurrency.max(1)));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = writes.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = rx.recv().await else { return };
                let mut bytes = (limits.size)(&first.0);
                let mut batch = vec![first];
                while batch.len() < limits.count && bytes < limits.bytes {
                    match rx.try_recv() {
                        Ok(request) => {
                            bytes += (limits.size)(&request.0);
                            batch.push(request);
                        }
                        Err(_) => break,
                    }
                }
                let write = write.clone();
                tokio::spawn(async move {
                    let (requests, waiters): (Vec<Req>, Vec<Waiter<Resp>>) =
                        batch.into_iter().unzip();
                    let count = requests.len();
                    metrics::histogram!(crate::telemetry::catalog::STORE_BATCH_SIZE, "write" => what)
                        .record(count as f64);
                    let mut results = write(requests).await.into_iter();
                    drop(permit);
                    for waiter in waiters {
                        let result = results.next().unwrap_or_else(|| {
                            Err(StoreError::Corrupt(format!(
                                "{what}: the batch write answered fewer than {count} requests"
                            )))
                        });
                        // A caller that gave up no longer listens; its write stands.
                        let _ = waiter.send(result);
                    }
                });
            }
        });
        Self { requests, what }
    }

    /// Writes `request` with whatever else is waiting, and returns its result
    /// once that write has returned.
    pub async fn call(&self, request: Req) -> Result<Resp, StoreError> {
        let (waiter, answer) = oneshot::channel();
        self.requests
            .send((request, waiter))
            .map_err(|_| self.stopped())?;
        answer.await.map_err(|_| self.stopped())?
    }

    /// The writer task is gone (it panicked, or the runtime is shutting down).
    fn stopped(&self) -> StoreError {
        StoreError::Unavailable(sqlx::Error::Protocol(format!(
            "the {} writer stopped",
            self.what
        )))
    }
}

/// Writes `items` with one call of `write`; if that fails for a reason other
/// than an outage (one item the database refuses, a deadlock), writes each
/// alone, so that only the culprit fails. One result per item, in order.
pub(crate) async fn whole_or_each<'a, T, R, F, Fut>(
    what: &str,
    items: &'a [T],
    write: F,
) -> Vec<Result<R, StoreError>>
where
    F: Fn(&'a [T]) -> Fut,
    Fut: Future<Output = Result<Vec<R>, StoreError>> + 'a,
{
    match write(items).await {
        Ok(done) => done.into_iter().map(Ok).collect(),
        Err(e) if e.is_unavailable() || items.len() == 1 => {
            let mut all: Vec<_> = (1..items.len()).map(|_| Err(e.replicate())).collect();
            all.insert(0, Err(e));
            all
        }
        Err(e) => {
            tracing::warn!(
                error = %crate::relay::deliver::chain(&e),
                count = items.len(),
                "a batch of {what} could not be written; writing them one by one"
            );
            let mut each = Vec::with_capacity(items.len());
            for item in items.chunks(1) {
                each.push(write(item).await.and_then(|mut done| {
                    done.pop().ok_or_else(|| {
                        StoreError::Corrupt(format!("a write of {what} answered nothing"))
                    })
                }));
            }
            each
        }
    }
}

/// For each item, the index of the first item of the batch with the same key
/// (`None`: it is the first, or has no key): a later one is a repeat of it,
/// written once.
pub(crate) fn firsts<K: Eq + std::hash::Hash>(
    keys: impl Iterator<Item = Option<K>>,
) -> Vec<Option<usize>> {
    let mut seen = std::collections::HashMap::new();
    keys.enumerate()
        .map(|(i, key)| match key {
            None => None,
            Some(key) => match seen.entry(key) {
                std::collections::hash_map::Entry::Occupied(first) => Some(*first.get()),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(i);
                    None
                }
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn later_items_with_a_key_seen_before_are_not_first() {
        let keys = [Some(1), None, Some(2), Some(1), None, Some(2), Some(3)];
        assert_eq!(
            firsts(keys.into_iter()),
            [None, None, None, Some(0), None, Some(2), None]
        );
    }

    #[tokio::test]
    async fn concurrent_calls_share_writes_and_each_gets_its_own_answer() {
        let writes = Arc::new(AtomicUsize::new(0));
        let counted = writes.clone();
        let limits = Limits {
            count: 64,
            bytes: usize::MAX,
            size: |_| 1,
            concurrency: 1,
        };
        let batcher = Batcher::start("test", limits, move |batch: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                // Slow enough that the other callers queue behind the first write.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                batch
                    .into_iter()
                    .map(|n| {
                        if n == 7 {
                            Err(StoreError::Invalid("seven".into()))
                        } else {
                            Ok(n * 2)
                        }
                    })
                    .collect()
            }
        });
        let calls = (0..100u32).map(|n| {
            let batcher = batcher.clone();
            async move { (n, batcher.call(n).await) }
        });
        for (n, result) in futures_util::future::join_all(calls).await {
            match result {
                Ok(doubled) => assert_eq!(doubled, n * 2),
                Err(e) => {
                    assert_eq!(n, 7);
                    assert!(matches!(e, StoreError::Invalid(_)));
                }
            }
        }
        let writes = writes.load(Ordering::SeqCst);
        assert!(
            writes < 10,
            "100 concurrent calls took {writes} writes: not batched"
        );
    }

    #[tokio::test]
    async fn a_write_that_answers_too_few_fails_the_rest() {
        let limits = Limits {
            count: 8,
            bytes: usize::MAX,
            size: |_| 1,
            concurrency: 1,
        };
        let batcher: Batcher<u32, u32> =
            Batcher::start("short", limits, |_batch: Vec<u32>| async { Vec::new() });
        assert!(matches!(batcher.call(1).await, Err(StoreError::Corrupt(_))));
    }
}
