//! Event sources besides Connect webhooks: each proves who sent a request and
//! builds the [`crate::domain::Event`]; [`crate::intake`] stores and publishes it.
//!
//! - [`forge`]: Forge Remote (Forge Invocation Tokens, verified against the JWKS).
//! - [`forge_events`]: the Forge event names and their Connect counterparts.
//! - [`admin_webhook`]: Jira admin webhooks (`X-Hub-Signature`), Cloud and Data Center.

pub mod admin_webhook;
pub mod forge;
pub mod forge_events;
