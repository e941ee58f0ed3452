//! The one way in: every source (Connect webhooks, Forge Remote, admin
//! webhooks) proves who sent a request and builds an [`Event`]; this step
//! stores it with its outbox row and hands it to the publisher. The caller
//! answers 2xx only after it returns `Ok`, so nothing acknowledged is lost.

use crate::domain::{Event, Stored};
use crate::publisher::Publisher;
use crate::store::{Store, StoreError};
use crate::telemetry::catalog::INTAKE;

/// Stores `event` once (a repeat of its tenant and webhook identifier returns
/// the id stored first, as a duplicate), commits it with its outbox row, and
/// hands it to this process's publisher when there is room; otherwise any
/// publisher's sweeper takes it from the outbox.
pub async fn accept(
    store: &Store,
    publisher: &Publisher,
    event: Event,
) -> Result<Stored, StoreError> {
    // A fast-path slot is taken before the commit, so that the outbox row can be
    // claimed for this process in the same commit; without one, any publisher's
    // sweeper takes the row.
    let slot = publisher.reserve(event.payload.len());
    let publish_at = match slot {
        Some(_) => {
            event.received_at + chrono::Duration::from_std(publisher.lease()).unwrap_or_default()
        }
        None => event.received_at,
    };
    let (stored, event) = store.insert_event(event, publish_at).await?;
    tracing::Span::current().record("event_id", tracing::field::display(stored.id));
    if stored.duplicate {
        metrics::counter!(INTAKE, "source" => event.source.as_str(), "outcome" => "duplicate")
            .increment(1);
        tracing::info!(
            source = event.source.as_str(),
            "already stored (same tenant and webhook identifier)"
        );
    } else {
        tracing::info!(
            source = event.source.as_str(),
            event = %event.event,
            retry = event.webhook_retry,
            "event stored"
        );
        metrics::counter!(INTAKE, "source" => event.source.as_str(), "outcome" => "stored")
            .increment(1);
        publisher.feed().announce(&event);
        if let Some(slot) = slot {
            slot.send(event);
        }
    }
    Ok(stored)
}
