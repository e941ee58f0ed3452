//! The Forge product events hookrelay knows, and the Connect name each maps to.
//!
//! A site moving from Connect to Forge must keep its routing keys and
//! subscriptions: `avi:jira:created:issue` arrives as `jira:issue_created`.
//! Events with no Connect counterpart keep their Forge name.
//!
//! The table follows Atlassian's Forge event reference (the Jira, Jira Software
//! and Confluence pages). A Connect name is given only where the two events mean
//! the same thing; near misses stay unmapped, because a consumer subscribed to a
//! Connect name must not start receiving something else under it. Examples:
//! `avi:jira:commented:issue` fires on a new *and* an edited comment (Connect
//! splits them into `comment_created` and `comment_updated`), and
//! `avi:jira:changed:configuration` covers several settings that Connect sends
//! as separate `option_*_changed` events.
//!
//! The scopes are the classic ones the reference names for each event; they
//! agree with the event-to-scope table `forge lint` checks (in the
//! `@forge/manifest` package), and, where that table has no entry (labels,
//! whiteboards, databases, smart links, folders, live docs, search), come from
//! the reference alone. Trashing or deleting pages and blog posts, and deleting
//! spaces or changing their permissions, also need a write scope: Atlassian's
//! requirement, noted there as possibly temporary.

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

/// The app lifecycle events a hookrelay Forge app subscribes to, so that
/// hookrelay learns of installs and of major-version upgrades (which change
/// the granted scopes). Forge has no uninstalled event: an app only hears of an
/// uninstall through a `preUninstall` module, whose call carries no event.
pub const LIFECYCLE_EVENTS: &[&str] = &["avi:forge:installed:app", "avi:forge:upgraded:app"];

const JIRA_WORK: &[&str] = &["read:jira-work"];
const JIRA_USER: &[&str] = &["read:jira-user"];
const JIRA_CONFIG: &[&str] = &["manage:jira-configuration"];
const JIRA_BOARD: &[&str] = &["read:jira-user", "read:jira-work"];
const CONTENT: &[&str] = &["read:confluence-content.summary"];
const CONTENT_WRITE: &[&str] = &[
    "read:confluence-content.summary",
    "write:confluence-content",
];
const CONTENT_ALL: &[&str] = &["read:confluence-content.all"];
const SPACE: &[&str] = &["read:confluence-space.summary"];
const SPACE_WRITE: &[&str] = &["read:confluence-space.summary", "write:confluence-space"];
const CONTENT_SPACE: &[&str] = &[
    "read:confluence-content.summary",
    "read:confluence-space.summary",
];
const RELATION: &[&str] = &[
    "read:confluence-content.summary",
    "read:confluence-space.summary",
    "read:confluence-user",
];
const CONFLUENCE_USER: &[&str] = &["read:confluence-user"];
const CONFLUENCE_GROUPS: &[&str] = &["read:confluence-groups"];
const SEARCH: &[&str] = &["search:confluence"];

const fn jira(
    forge: &'static str,
    connect: Option<&'static str>,
    scopes: &'static [&'static str],
) -> ForgeEvent {
    ForgeEvent {
        forge,
        connect,
        product: Product::Jira,
        scopes,
    }
}

const fn confluence(
    forge: &'static str,
    connect: Option<&'static str>,
    scopes: &'static [&'static str],
) -> ForgeEvent {
    ForgeEvent {
        forge,
        connect,
        product: Product::Confluence,
        scopes,
    }
}

/// Every documented Jira (with Jira Software) and Confluence product event.
#[rustfmt::skip]
pub const EVENTS: &[ForgeEvent] = &[
    // --- Jira: issues ---
    jira("avi:jira:created:issue", Some("jira:issue_created"), JIRA_WORK),
    jira("avi:jira:updated:issue", Some("jira:issue_updated"), JIRA_WORK),
    jira("avi:jira:deleted:issue", Some("jira:issue_deleted"), JIRA_WORK),
    // Connect reports an assignment only as jira:issue_updated.
    jira("avi:jira:assigned:issue", None, JIRA_WORK),
    jira("avi:jira:viewed:issue", None, JIRA_WORK),
    jira("avi:jira:mentioned:issue", None, JIRA_WORK),
    // --- Jira: issue links, worklogs, issue types ---
    jira("avi:jira:created:issuelink", Some("issuelink_created"), JIRA_WORK),
    jira("avi:jira:deleted:issuelink", Some("issuelink_deleted"), JIRA_WORK),
    jira("avi:jira:created:worklog", Some("worklog_created"), JIRA_WORK),
    jira("avi:jira:updated:worklog", Some("worklog_updated"), JIRA_WORK),
    jira("avi:jira:deleted:worklog", Some("worklog_deleted"), JIRA_WORK),
    jira("avi:jira:created:issuetype", Some("issuetype_created"), JIRA_CONFIG),
    jira("avi:jira:updated:issuetype", Some("issuetype_updated"), JIRA_CONFIG),
    jira("avi:jira:deleted:issuetype", Some("issuetype_deleted"), JIRA_CONFIG),
    // --- Jira: comments (a new or edited comment is one Forge event) ---
    jira("avi:jira:commented:issue", None, JIRA_WORK),
    jira("avi:jira:mentioned:comment", None, JIRA_WORK),
    jira("avi:jira:deleted:comment", Some("comment_deleted"), JIRA_WORK),
    // --- Jira: custom fields and their contexts ---
    jira("avi:jira:created:field", None, JIRA_CONFIG),
    jira("avi:jira:updated:field", None, JIRA_CONFIG),
    jira("avi:jira:trashed:field", None, JIRA_CONFIG),
    jira("avi:jira:restored:field", None, JIRA_CONFIG),
    jira("avi:jira:deleted:field", None, JIRA_CONFIG),
    jira("avi:jira:created:field:context", None, JIRA_CONFIG),
    jira("avi:jira:updated:field:context", None, JIRA_CONFIG),
    jira("avi:jira:deleted:field:context", None, JIRA_CONFIG),
    jira("avi:jira:updated:field:context:configuration", None, JIRA_CONFIG),
    // --- Jira: workflows (sent only to the app that owns the expression) ---
    jira("avi:jira:failed:expression", Some("jira_expression_evaluation_failed"), JIRA_CONFIG),
    // --- Jira: project versions ---
    jira("avi:jira:created:version", Some("jira:version_created"), JIRA_WORK),
    jira("avi:jira:updated:version", Some("jira:version_updated"), JIRA_WORK),
    jira("avi:jira:deleted:version", Some("jira:version_deleted"), JIRA_WORK),
    jira("avi:jira:released:version", Some("jira:version_released"), JIRA_WORK),
    jira("avi:jira:unreleased:version", Some("jira:version_unreleased"), JIRA_WORK),
    jira("avi:jira:archived:version", None, JIRA_WORK),
    jira("avi:jira:unarchived:version", None, JIRA_WORK),
    jira("avi:jira:moved:version", Some("jira:version_moved"), JIRA_WORK),
    jira("avi:jira:merged:version", Some("jira:version_merged"), JIRA_WORK),
    // --- Jira: projects ---
    jira("avi:jira:created:project", Some("project_created"), JIRA_WORK),
    jira("avi:jira:updated:project", Some("project_updated"), JIRA_WORK),
    jira("avi:jira:softdeleted:project", Some("project_soft_deleted"), JIRA_WORK),
    jira("avi:jira:deleted:project", Some("project_deleted"), JIRA_WORK),
    jira("avi:jira:archived:project", Some("project_archived"), JIRA_WORK),
    jira("avi:jira:unarchived:project", Some("project_restored_archived"), JIRA_WORK),
    jira("avi:jira:restored:project", Some("project_restored_deleted"), JIRA_WORK),
    // --- Jira: components (Connect has no component webhook) ---
    jira("avi:jira:created:component", None, JIRA_WORK),
    jira("avi:jira:updated:component", None, JIRA_WORK),
    jira("avi:jira:deleted:component", None, JIRA_WORK),
    // --- Jira: attachments, users, filters ---
    jira("avi:jira:created:attachment", Some("attachment_created"), JIRA_WORK),
    jira("avi:jira:deleted:attachment", Some("attachment_deleted"), JIRA_WORK),
    jira("avi:jira:created:user", Some("user_created"), JIRA_USER),
    jira("avi:jira:updated:user", Some("user_updated"), JIRA_USER),
    jira("avi:jira:deleted:user", Some("user_deleted"), JIRA_USER),
    jira("avi:jira:created:filter", Some("filter_created"), JIRA_CONFIG),
    jira("avi:jira:updated:filter", Some("filter_updated"), JIRA_CONFIG),
    jira("avi:jira:deleted:filter", Some("filter_deleted"), JIRA_CONFIG),
    // --- Jira: system configuration ---
    jira("avi:jira:timetracking:provider:changed", Some("option_timetracking_provider_changed"), JIRA_CONFIG),
    jira("avi:jira:changed:configuration", None, JIRA_CONFIG),
    // --- Jira Software: boards and sprints ---
    jira("avi:jira-software:created:board", Some("board_created"), JIRA_BOARD),
    jira("avi:jira-software:updated:board", Some("board_updated"), JIRA_BOARD),
    jira("avi:jira-software:deleted:board", Some("board_deleted"), JIRA_BOARD),
    jira("avi:jira-software:configuration-changed:board", Some("board_configuration_changed"), JIRA_BOARD),
    jira("avi:jira-software:created:sprint", Some("sprint_created"), JIRA_WORK),
    jira("avi:jira-software:started:sprint", Some("sprint_started"), JIRA_WORK),
    jira("avi:jira-software:updated:sprint", Some("sprint_updated"), JIRA_WORK),
    jira("avi:jira-software:closed:sprint", Some("sprint_closed"), JIRA_WORK),
    jira("avi:jira-software:deleted:sprint", Some("sprint_deleted"), JIRA_WORK),
    // --- Confluence: pages (and live docs) ---
    confluence("avi:confluence:created:page", Some("page_created"), CONTENT),
    confluence("avi:confluence:updated:page", Some("page_updated"), CONTENT),
    confluence("avi:confluence:liked:page", None, CONTENT),
    confluence("avi:confluence:viewed:page", Some("page_viewed"), CONTENT),
    confluence("avi:confluence:archived:page", Some("page_archived"), CONTENT),
    confluence("avi:confluence:unarchived:page", Some("page_unarchived"), CONTENT),
    confluence("avi:confluence:moved:page", Some("page_moved"), CONTENT),
    confluence("avi:confluence:copied:page", Some("page_copied"), CONTENT),
    confluence("avi:confluence:children_reordered:page", Some("page_children_reordered"), CONTENT),
    confluence("avi:confluence:permissions_updated:page", Some("content_permissions_updated"), CONTENT),
    confluence("avi:confluence:trashed:page", Some("page_trashed"), CONTENT_WRITE),
    confluence("avi:confluence:restored:page", Some("page_restored"), CONTENT),
    confluence("avi:confluence:deleted:page", Some("page_removed"), CONTENT_WRITE),
    confluence("avi:confluence:initialized:page", Some("page_initialized"), CONTENT),
    confluence("avi:confluence:started:page", Some("page_started"), CONTENT),
    confluence("avi:confluence:snapshotted:page", Some("page_snapshotted"), CONTENT),
    confluence("avi:confluence:published:page", Some("page_published"), CONTENT),
    // --- Confluence: blog posts ---
    confluence("avi:confluence:created:blogpost", Some("blog_created"), CONTENT),
    confluence("avi:confluence:updated:blogpost", Some("blog_updated"), CONTENT),
    confluence("avi:confluence:liked:blogpost", None, CONTENT),
    confluence("avi:confluence:viewed:blogpost", Some("blog_viewed"), CONTENT),
    confluence("avi:confluence:permissions_updated:blogpost", Some("content_permissions_updated"), CONTENT),
    confluence("avi:confluence:trashed:blogpost", Some("blog_trashed"), CONTENT_WRITE),
    confluence("avi:confluence:restored:blogpost", Some("blog_restored"), CONTENT),
    confluence("avi:confluence:deleted:blogpost", Some("blog_removed"), CONTENT_WRITE),
    // --- Confluence: whiteboards, databases, smart links, folders ---
    confluence("avi:confluence:created:whiteboard", None, CONTENT),
    confluence("avi:confluence:moved:whiteboard", None, CONTENT),
    confluence("avi:confluence:copied:whiteboard", None, CONTENT),
    confluence("avi:confluence:permissions_updated:whiteboard", None, CONTENT),
    confluence("avi:confluence:created:database", None, CONTENT),
    confluence("avi:confluence:moved:database", None, CONTENT),
    confluence("avi:confluence:copied:database", None, CONTENT),
    confluence("avi:confluence:permissions_updated:database", None, CONTENT),
    confluence("avi:confluence:created:embed", None, CONTENT),
    confluence("avi:confluence:moved:embed", None, CONTENT),
    confluence("avi:confluence:copied:embed", None, CONTENT),
    confluence("avi:confluence:created:folder", None, CONTENT),
    confluence("avi:confluence:moved:folder", None, CONTENT),
    confluence("avi:confluence:copied:folder", None, CONTENT),
    confluence("avi:confluence:permissions_updated:folder", None, CONTENT),
    // --- Confluence: inline tasks ---
    confluence("avi:confluence:created:task", None, CONTENT_ALL),
    confluence("avi:confluence:updated:task", None, CONTENT_ALL),
    confluence("avi:confluence:removed:task", None, CONTENT_ALL),
    // --- Confluence: comments ---
    confluence("avi:confluence:created:comment", Some("comment_created"), CONTENT),
    confluence("avi:confluence:updated:comment", Some("comment_updated"), CONTENT),
    confluence("avi:confluence:liked:comment", None, CONTENT),
    confluence("avi:confluence:deleted:comment", Some("comment_removed"), CONTENT),
    // --- Confluence: spaces ---
    confluence("avi:confluence:created:space:V2", Some("space_created"), SPACE),
    confluence("avi:confluence:updated:space:V2", Some("space_updated"), SPACE),
    confluence("avi:confluence:permissions_updated:space:V2", Some("space_permissions_updated"), SPACE_WRITE),
    confluence("avi:confluence:deleted:space:V2", Some("space_removed"), SPACE_WRITE),
    // --- Confluence: attachments ---
    confluence("avi:confluence:created:attachment", Some("attachment_created"), CONTENT),
    confluence("avi:confluence:updated:attachment", Some("attachment_updated"), CONTENT),
    confluence("avi:confluence:viewed:attachment", Some("attachment_viewed"), CONTENT),
    confluence("avi:confluence:archived:attachment", Some("attachment_archived"), CONTENT),
    confluence("avi:confluence:unarchived:attachment", Some("attachment_unarchived"), CONTENT),
    confluence("avi:confluence:trashed:attachment", Some("attachment_trashed"), CONTENT),
    confluence("avi:confluence:restored:attachment", Some("attachment_restored"), CONTENT),
    confluence("avi:confluence:deleted:attachment", Some("attachment_removed"), CONTENT),
    // --- Confluence: custom content (Connect's content_* events) ---
    confluence("avi:confluence:created:custom_content", Some("content_created"), CONTENT),
    confluence("avi:confluence:updated:custom_content", Some("content_updated"), CONTENT),
    confluence("avi:confluence:permissions_updated:custom_content", Some("content_permissions_updated"), CONTENT),
    confluence("avi:confluence:trashed:custom_content", Some("content_trashed"), CONTENT),
    confluence("avi:confluence:restored:custom_content", Some("content_restored"), CONTENT),
    confluence("avi:confluence:deleted:custom_content", Some("content_removed"), CONTENT),
    // --- Confluence: labels ---
    confluence("avi:confluence:created:label", Some("label_created"), CONTENT_SPACE),
    confluence("avi:confluence:added:label", Some("label_added"), CONTENT_SPACE),
    confluence("avi:confluence:removed:label", Some("label_removed"), CONTENT_SPACE),
    confluence("avi:confluence:deleted:label", Some("label_deleted"), CONTENT_SPACE),
    // --- Confluence: users, groups, relations, search ---
    confluence("avi:confluence:created:user", Some("user_created"), CONFLUENCE_USER),
    confluence("avi:confluence:deleted:user", Some("user_removed"), CONFLUENCE_USER),
    confluence("avi:confluence:created:group", Some("group_created"), CONFLUENCE_GROUPS),
    confluence("avi:confluence:deleted:group", Some("group_removed"), CONFLUENCE_GROUPS),
    confluence("avi:confluence:created:relation", Some("relation_created"), RELATION),
    confluence("avi:confluence:deleted:relation", Some("relation_deleted"), RELATION),
    confluence("avi:confluence:performed:search", Some("search_performed"), SEARCH),
];

/// The documented event named `forge`, if it is one.
pub fn find(forge: &str) -> Option<&'static ForgeEvent> {
    EVENTS.iter().find(|e| e.forge == forge)
}

/// The Connect name of a Forge event, where one exists.
pub fn connect_name(forge: &str) -> Option<&'static str> {
    find(forge).and_then(|e| e.connect)
}

/// The documented events of `product`, in table order.
pub fn of_product(product: Product) -> impl Iterator<Item = &'static ForgeEvent> {
    EVENTS.iter().filter(move |e| e.product == product)
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The enabled (uncommented) names of a `descriptor/*.events` file.
    fn enabled(file: &str) -> HashSet<&str> {
        file.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    }

    #[test]
    fn documented_names_map_to_their_connect_counterparts() {
        for (forge, connect) in [
            ("avi:jira:created:issue", "jira:issue_created"),
            ("avi:jira:updated:issue", "jira:issue_updated"),
            ("avi:jira:deleted:issue", "jira:issue_deleted"),
            ("avi:jira:deleted:comment", "comment_deleted"),
            ("avi:jira:updated:worklog", "worklog_updated"),
            ("avi:jira:released:version", "jira:version_released"),
            ("avi:jira-software:started:sprint", "sprint_started"),
            ("avi:confluence:created:page", "page_created"),
            ("avi:confluence:updated:page", "page_updated"),
            ("avi:confluence:deleted:page", "page_removed"),
            ("avi:confluence:created:blogpost", "blog_created"),
            ("avi:confluence:created:comment", "comment_created"),
            ("avi:confluence:deleted:space:V2", "space_removed"),
        ] {
            assert_eq!(connect_name(forge), Some(connect), "{forge}");
        }
    }

    #[test]
    fn events_without_the_same_meaning_in_connect_stay_unmapped() {
        for forge in [
            // A new or an edited comment: Connect tells the two apart.
            "avi:jira:commented:issue",
            "avi:jira:assigned:issue",
            "avi:jira:changed:configuration",
            "avi:confluence:liked:page",
            "avi:confluence:created:whiteboard",
        ] {
            assert!(find(forge).is_some(), "{forge} is documented");
            assert_eq!(connect_name(forge), None, "{forge}");
        }
        assert_eq!(connect_name("avi:jira:created:nothing"), None);
        assert_eq!(find("jira:issue_created"), None);
    }

    #[test]
    fn product_of_reads_the_name_prefix() {
        assert_eq!(product_of("avi:jira:created:issue"), Some(Product::Jira));
        assert_eq!(
            product_of("avi:jira-software:closed:sprint"),
            Some(Product::Jira)
        );
        assert_eq!(
            product_of("avi:confluence:created:space:V2"),
            Some(Product::Confluence)
        );
        for other in [
            "avi:forge:installed:app",
            "avi:bitbucket:created:pullrequest",
            "jira:issue_created",
            "",
            "avi:",
        ] {
            assert_eq!(product_of(other), None, "{other}");
        }
    }

    #[test]
    fn every_event_sits_under_the_product_its_name_says() {
        for e in EVENTS {
            assert_eq!(product_of(e.forge), Some(e.product), "{}", e.forge);
        }
        for e in LIFECYCLE_EVENTS {
            assert_eq!(product_of(e), None, "{e}");
        }
    }

    #[test]
    fn no_forge_name_is_listed_twice() {
        let mut seen = HashSet::new();
        for e in EVENTS {
            assert!(seen.insert(e.forge), "{} is listed twice", e.forge);
        }
        assert!(EVENTS.len() > 100, "{}", EVENTS.len());
    }

    #[test]
    fn every_connect_name_is_an_enabled_event_of_the_same_products_descriptor() {
        let jira = enabled(include_str!("../../descriptor/jira.events"));
        let confluence = enabled(include_str!("../../descriptor/confluence.events"));
        for e in EVENTS {
            let Some(connect) = e.connect else { continue };
            let file = match e.product {
                Product::Jira => &jira,
                Product::Confluence => &confluence,
            };
            assert!(
                file.contains(connect),
                "{} maps to {connect}, which descriptor/{}.events does not enable",
                e.forge,
                e.product
            );
        }
    }

    #[test]
    fn every_event_names_its_scopes_sorted_and_without_blanks() {
        for e in EVENTS {
            assert!(!e.scopes.is_empty(), "{}", e.forge);
            assert!(e.scopes.windows(2).all(|w| w[0] < w[1]), "{}", e.forge);
            assert!(e.scopes.iter().all(|s| !s.trim().is_empty()), "{}", e.forge);
        }
        assert_eq!(
            find("avi:confluence:trashed:page").map(|e| e.scopes),
            Some(CONTENT_WRITE)
        );
    }

    #[test]
    fn of_product_splits_the_table() {
        let jira = of_product(Product::Jira).count();
        let confluence = of_product(Product::Confluence).count();
        assert_eq!(jira + confluence, EVENTS.len());
        assert!(jira > 50 && confluence > 50, "{jira} {confluence}");
    }
}
