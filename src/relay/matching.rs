//! Which subscriptions an event goes to: event-name patterns, a tenant list, and
//! an optional filter, a JSONPath query (RFC 9535, evaluated by the
//! `serde_json_path` crate) on the envelope that must select at least one node.

use std::borrow::Cow;
use std::cell::OnceCell;

use serde::Deserialize;
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
    pub fn matches(&self, envelope: &Candidate<'_>) -> bool {
        if !self
            .events
            .iter()
            .any(|p| pattern_matches(p, &envelope.head.event))
        {
            return false;
        }
        if let Some(tenants) = &self.tenants {
            let Some(key) = envelope.head.tenant.as_ref().map(|t| &t.client_key) else {
                return false;
            };
            if !tenants.iter().any(|t| t == key) {
                return false;
            }
        }
        match &self.filter {
            Some(path) => envelope
                .value()
                .is_some_and(|value| !path.query(value).is_empty()),
            None => true,
        }
    }
}

/// An envelope being matched. The event name and tenant are read without
/// reading the payload; the whole envelope is parsed only for a filter, once.
pub struct Candidate<'a> {
    text: &'a str,
    head: Head<'a>,
    value: OnceCell<Option<Value>>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(default, borrow)]
    source: Cow<'a, str>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(default, borrow)]
    tenant: Option<HeadTenant<'a>>,
}

#[derive(Deserialize)]
struct HeadTenant<'a> {
    #[serde(borrow)]
    client_key: Cow<'a, str>,
}

impl<'a> Candidate<'a> {
    /// Reads the name and tenant of an envelope; fails if it is not an envelope.
    pub fn new(text: &'a str) -> Result<Self, serde_json::Error> {
        Ok(Self {
            text,
            head: serde_json::from_str(text)?,
            value: OnceCell::new(),
        })
    }

    /// A web trigger's event: the id of the trigger it called, from the
    /// request's `path` (`/x1/<id>/…`).
    pub fn webtrigger_id(&self) -> Option<&str> {
        if self.head.source != "webtrigger" {
            return None;
        }
        let path = self.value()?.get("payload")?.get("path")?.as_str()?;
        let rest = path.strip_prefix("/x1/")?;
        Some(rest.split('/').next().unwrap_or(rest)).filter(|id| !id.is_empty())
    }

    /// The whole envelope as a value, for filters. `None` (no filter matches)
    /// only for a payload stored before intake refused what cannot be read back.
    fn value(&self) -> Option<&Value> {
        self.value
            .get_or_init(|| match serde_json::from_str(self.text) {
                Ok(value) => Some(value),
                Err(e) => {
                    tracing::warn!(error = %e, "envelope cannot be read for a filter; no filter matches it");
                    None
                }
            })
            .as_ref()
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

    fn envelope(event: &str, tenant: &str, priority: &str) -> String {
        serde_json::json!({
            "id": "x", "source": "connect", "product": "jira", "event": event,
            "tenant": {"client_key": tenant, "base_url": "https://x.atlassian.net"},
            "payload": {"issue": {"fields": {"priority": {"name": priority}}}}
        })
        .to_string()
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
        let high = Candidate::new(&high).unwrap();
        let low = envelope("jira:issue_created", "t2", "Low");
        let low = Candidate::new(&low).unwrap();
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

    /// Names and tenants match whatever the payload holds; a payload that no
    /// reader can parse (stored before intake refused it) matches no filter.
    #[test]
    fn names_and_tenants_match_without_reading_the_payload() {
        let payload = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let text = format!(
            r#"{{"event":"jira:issue_created","tenant":{{"client_key":"t1"}},"payload":{payload}}}"#
        );
        let deep = Candidate::new(&text).unwrap();
        assert!(subscription(&["jira:*"], Some(&["t1"]), None).matches(&deep));
        assert!(!subscription(&["jira:*"], Some(&["t2"]), None).matches(&deep));
        assert!(!subscription(&["*"], None, Some("$.payload")).matches(&deep));
        let text = r#"{"event":"a\u0062","payload":"\ud800"}"#;
        let odd = Candidate::new(text).unwrap();
        assert!(subscription(&["ab"], None, None).matches(&odd));
        assert!(Candidate::new("[1]").is_err());
    }
}
