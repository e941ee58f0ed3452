//! Which subscriptions an event goes to: event-name patterns, a tenant list, and
//! an optional filter, a JSONPath query (RFC 9535, evaluated by the
//! `serde_json_path` crate) on the envelope that must select at least one node.

use serde_json::Value;
use serde_json_path::JsonPath;

use crate::domain::{Subscription, SubscriptionId};

/// Longest event pattern accepted.
const MAX_PATTERN: usize = 200;

/// An event-name pattern: the name's own characters, with `*` for any run of them.
pub fn valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= MAX_PATTERN
        && pattern
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | ':' | '_' | '-' | '.' | '/'))
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters
/// (none included) and everything else for itself.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    // `split` always yields a first part: the literal before any `*`.
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*` at all: an exact match
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Longest filter accepted, and its deepest nesting of brackets: the parser
/// recurses, and a filter nested deep enough would exhaust its stack.
const MAX_FILTER: usize = 1024;
const MAX_NESTING: usize = 32;

/// Parses a filter, with the parser's message when it is not valid JSONPath.
pub fn parse_filter(filter: &str) -> Result<JsonPath, String> {
    if filter.len() > MAX_FILTER {
        return Err(format!("longer than {MAX_FILTER} bytes"));
    }
    let mut depth = 0usize;
    for c in filter.chars() {
        match c {
            '(' | '[' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!("nested deeper than {MAX_NESTING} levels"));
                }
            }
            ')' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    JsonPath::parse(filter).map_err(|e| e.to_string())
}

/// One subscription's matching rules, compiled.
pub struct Matcher {
    pub id: SubscriptionId,
    events: Vec<String>,
    tenants: Option<Vec<String>>,
    filter: Option<JsonPath>,
}

impl Matcher {
    /// Compiles a stored subscription; its filter was checked when it was saved.
    pub fn new(sub: &Subscription) -> Result<Self, String> {
        Ok(Self {
            id: sub.id,
            events: sub.events.clone(),
            tenants: sub.tenants.clone(),
            filter: sub.filter.as_deref().map(parse_filter).transpose()?,
        })
    }

    /// Whether the event whose envelope this is goes to the subscription.
    pub fn matches(&self, envelope: &Value) -> bool {
        let name = envelope["event"].as_str().unwrap_or_default();
        if !self.events.iter().any(|p| pattern_matches(p, name)) {
            return false;
        }
        if let Some(tenants) = &self.tenants {
            let Some(key) = envelope["tenant"]["client_key"].as_str() else {
                return false;
            };
            if !tenants.iter().any(|t| t == key) {
                return false;
            }
        }
        match &self.filter {
            Some(path) => !path.query(envelope).is_empty(),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        for (pattern, name, expected) in [
            ("*", "jira:issue_created", true),
            ("jira:issue_*", "jira:issue_created", true),
            ("jira:issue_*", "jira:issue_updated", true),
            ("jira:issue_*", "comment_created", false),
            ("page_*", "page_updated", true),
            ("page_*", "blog_created", false),
            ("jira:issue_created", "jira:issue_created", true),
            ("jira:issue_created", "jira:issue_created_x", false),
            ("*_created", "comment_created", true),
            ("*_created", "comment_updated", false),
            ("jira:*_*ed", "jira:issue_created", true),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("", "", true),
        ] {
            assert_eq!(
                pattern_matches(pattern, name),
                expected,
                "{pattern} ~ {name}"
            );
        }
        assert!(valid_pattern("jira:issue_*"));
        assert!(!valid_pattern(""));
        assert!(!valid_pattern("page updated"));
    }

    fn envelope(event: &str, tenant: &str, priority: &str) -> Value {
        serde_json::json!({
            "id": "x", "source": "connect", "product": "jira", "event": event,
            "tenant": {"client_key": tenant, "base_url": "https://x.atlassian.net"},
            "payload": {"issue": {"fields": {"priority": {"name": priority}}}}
        })
    }

    fn subscription(events: &[&str], tenants: Option<&[&str]>, filter: Option<&str>) -> Matcher {
        Matcher {
            id: SubscriptionId::new(),
            events: events.iter().map(|s| s.to_string()).collect(),
            tenants: tenants.map(|t| t.iter().map(|s| s.to_string()).collect()),
            filter: filter.map(|f| parse_filter(f).unwrap()),
        }
    }

    #[test]
    fn tenants_and_filters() {
        let high = envelope("jira:issue_created", "t1", "High");
        let low = envelope("jira:issue_created", "t2", "Low");
        let only_t1 = subscription(&["*"], Some(&["t1"]), None);
        assert!(only_t1.matches(&high));
        assert!(!only_t1.matches(&low));
        let urgent = subscription(
            &["jira:*"],
            None,
            Some("$.payload.issue[?@.priority.name == 'High']"),
        );
        assert!(urgent.matches(&high));
        assert!(!urgent.matches(&low));
        assert!(parse_filter("$.payload[").is_err());
        assert!(parse_filter("payload.issue").is_err());
        let deep = format!("$[?{}@.a{}]", "(".repeat(2000), ")".repeat(2000));
        assert!(parse_filter(&deep).unwrap_err().contains("longer"));
        let nested = format!("$[?{}@.a{}]", "(".repeat(40), ")".repeat(40));
        assert!(parse_filter(&nested).unwrap_err().contains("nested"));
    }
}
