//! The Connect app descriptor per product, rendered from the templates in
//! `descriptor/` with the base URL, the app key and the webhook list.
//!
//! Each webhook gets its own URL (`/{product}/events/{event}`), so intake learns
//! the event name from the path it was called on, never from the payload
//! (Confluence payloads do not carry one).

use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::domain::Product;

const JIRA_TEMPLATE: &str = include_str!("../descriptor/jira.json");
const CONFLUENCE_TEMPLATE: &str = include_str!("../descriptor/confluence.json");
const JIRA_EVENTS: &str = include_str!("../descriptor/jira.events");
const CONFLUENCE_EVENTS: &str = include_str!("../descriptor/confluence.events");

/// Every webhook event of `product`, from `descriptor/<product>.events`.
pub fn default_events(product: Product) -> Vec<&'static str> {
    let list = match product {
        Product::Jira => JIRA_EVENTS,
        Product::Confluence => CONFLUENCE_EVENTS,
    };
    list.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

/// The events this deployment subscribes to for `product`.
pub fn subscribed_events(config: &Config, product: Product) -> Vec<String> {
    match &config.product(product).events {
        Some(events) => events.clone(),
        None => default_events(product)
            .into_iter()
            .map(String::from)
            .collect(),
    }
}

/// Event names become path segments and routing keys: letters, digits and `_:.-`.
pub fn valid_event_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '-'))
}

/// The path (relative to the base URL) Atlassian posts `event` to.
pub fn webhook_path(product: Product, event: &str) -> String {
    format!("/{}/events/{}", product.as_str(), event)
}

/// The rendered descriptor for `product`.
pub fn render(config: &Config, product: Product) -> Value {
    let template = match product {
        Product::Jira => JIRA_TEMPLATE,
        Product::Confluence => CONFLUENCE_TEMPLATE,
    };
    // The templates are compiled in and covered by tests, so this cannot fail at run time.
    let mut descriptor: Value =
        serde_json::from_str(template).expect("descriptor template is valid JSON");
    let settings = config.product(product);
    let webhooks: Vec<Value> = subscribed_events(config, product)
        .iter()
        .map(|event| {
            let mut module = Map::new();
            module.insert("event".into(), json!(event));
            module.insert("url".into(), json!(webhook_path(product, event)));
            if let Some(options) = settings.webhooks.get(event) {
                if let Some(filter) = &options.filter {
                    module.insert("filter".into(), json!(filter));
                }
                if let Some(exclude) = options.exclude_body {
                    module.insert("excludeBody".into(), json!(exclude));
                }
                if let Some(keys) = &options.property_keys {
                    module.insert("propertyKeys".into(), json!(keys));
                }
            }
            Value::Object(module)
        })
        .collect();
    descriptor["key"] = json!(config.app_key);
    descriptor["name"] = json!(config.app_name);
    descriptor["vendor"] = json!({"name": config.vendor_name, "url": config.vendor_url});
    descriptor["baseUrl"] = json!(config.base_url.as_str().trim_end_matches('/'));
    descriptor["modules"]["webhooks"] = Value::Array(webhooks);
    if let Some(scopes) = &settings.scopes {
        descriptor["scopes"] = json!(scopes);
    }
    descriptor
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RawConfig, WebhookOptions};

    #[test]
    fn event_lists_are_valid_and_distinct() {
        for product in Product::ALL {
            let events = default_events(product);
            assert!(events.len() > 20, "{product}: {}", events.len());
            let mut seen = std::collections::HashSet::new();
            for e in &events {
                assert!(valid_event_name(e), "{product}: {e}");
                assert!(seen.insert(*e), "{product}: duplicate {e}");
            }
        }
        assert!(default_events(Product::Jira).contains(&"jira:issue_created"));
        assert!(default_events(Product::Confluence).contains(&"page_updated"));
    }

    #[test]
    fn names_and_vendor_are_settings() {
        let config = RawConfig::default().validate().unwrap();
        let d = render(&config, Product::Jira);
        assert_eq!(d["name"], "hookrelay");
        assert_eq!(d["vendor"]["name"], "hookrelay");
        assert_eq!(d["vendor"]["url"], "https://github.com/hookrelay/hookrelay");
        let config = RawConfig {
            app_name: "Acme events".into(),
            vendor_name: "Acme".into(),
            vendor_url: "https://acme.example".into(),
            ..RawConfig::default()
        }
        .validate()
        .unwrap();
        for product in Product::ALL {
            let d = render(&config, product);
            assert_eq!(d["name"], "Acme events");
            assert_eq!(
                d["vendor"],
                json!({"name": "Acme", "url": "https://acme.example"})
            );
        }
    }

    #[test]
    fn scopes_are_read_unless_configured() {
        let config = RawConfig::default().validate().unwrap();
        assert_eq!(render(&config, Product::Jira)["scopes"], json!(["READ"]));
        let mut raw = RawConfig::default();
        raw.jira.scopes = Some(vec!["READ".into(), "WRITE".into()]);
        let config = raw.validate().unwrap();
        assert_eq!(
            render(&config, Product::Jira)["scopes"],
            json!(["READ", "WRITE"])
        );
        assert_eq!(
            render(&config, Product::Confluence)["scopes"],
            json!(["READ"])
        );
        let mut raw = RawConfig::default();
        raw.confluence.scopes = Some(vec!["write".into()]);
        let error = raw.validate().unwrap_err().to_string();
        assert!(error.contains("unknown scope `write`"), "{error}");
    }

    #[test]
    fn renders_options_and_urls() {
        let mut raw = RawConfig {
            base_url: "https://relay.example.com/ctx/".into(),
            app_key: "my-app".into(),
            ..RawConfig::default()
        };
        raw.jira.events = Some(vec!["jira:issue_created".into(), "comment_created".into()]);
        raw.jira.webhooks.insert(
            "jira:issue_created".into(),
            WebhookOptions {
                filter: Some("project = OPS".into()),
                exclude_body: Some(true),
                property_keys: Some(vec!["p1".into()]),
            },
        );
        let config = raw.validate().unwrap();
        let d = render(&config, Product::Jira);
        assert_eq!(d["key"], "my-app");
        assert_eq!(d["baseUrl"], "https://relay.example.com/ctx");
        assert_eq!(d["authentication"]["type"], "jwt");
        assert_eq!(d["apiMigrations"]["signed-install"], true);
        let hooks = d["modules"]["webhooks"].as_array().unwrap();
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0]["url"], "/jira/events/jira:issue_created");
        assert_eq!(hooks[0]["filter"], "project = OPS");
        assert_eq!(hooks[0]["excludeBody"], true);
        assert_eq!(hooks[0]["propertyKeys"][0], "p1");
        assert!(hooks[1].get("filter").is_none());

        let c = render(&config, Product::Confluence);
        assert_eq!(
            c["lifecycle"]["installed"],
            "/confluence/lifecycle/installed"
        );
        assert_eq!(
            c["modules"]["webhooks"].as_array().unwrap().len(),
            default_events(Product::Confluence).len()
        );
    }
}
