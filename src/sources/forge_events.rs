//! The Forge product events hookrelay knows, and the Connect name each maps to.
//!
//! A site moving from Connect to Forge must keep its routing keys and
//! subscriptions: `avi:jira:created:issue` arrives as `jira:issue_created`.
//! Events with no Connect counterpart keep their Forge name.

use crate::domain::Product;

/// One documented Forge event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForgeEvent {
    /// The Forge name (`payload.eventType`, the manifest's `events` entry).
    pub forge: &'static str,
    /// The Connect webhook name it maps to, if there is one.
    pub connect: Option<&'static str>,
    pub product: Product,
    /// The scopes a Forge app needs to receive it.
    pub scopes: &'static [&'static str],
}

/// Every documented Jira and Confluence event (TODO: complete the table).
pub const EVENTS: &[ForgeEvent] = &[
    ForgeEvent {
        forge: "avi:jira:created:issue",
        connect: Some("jira:issue_created"),
        product: Product::Jira,
        scopes: &["read:jira-work"],
    },
    ForgeEvent {
        forge: "avi:confluence:updated:page",
        connect: Some("page_updated"),
        product: Product::Confluence,
        scopes: &["read:confluence-content.summary"],
    },
];

/// The documented event named `forge`, if it is one.
pub fn find(forge: &str) -> Option<&'static ForgeEvent> {
    EVENTS.iter().find(|e| e.forge == forge)
}

/// The Connect name of a Forge event, where one exists.
pub fn connect_name(forge: &str) -> Option<&'static str> {
    find(forge).and_then(|e| e.connect)
}

/// The product a Forge event belongs to, from its name (`avi:jira:…`,
/// `avi:confluence:…`); `None` for app lifecycle events and anything else.
pub fn product_of(forge: &str) -> Option<Product> {
    let rest = forge.strip_prefix("avi:")?;
    if rest.starts_with("jira:") || rest.starts_with("jira-software:") {
        Some(Product::Jira)
    } else if rest.starts_with("confluence:") {
        Some(Product::Confluence)
    } else {
        None
    }
}
