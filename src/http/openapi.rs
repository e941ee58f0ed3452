//! The admin API's OpenAPI document, generated from the handlers' own types
//! and `#[utoipa::path]` attributes: each module keeps a `Doc` of its routes,
//! merged here.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hookrelay admin API",
        version = "1",
        description = "Read the events hookrelay stored, manage the subscriptions it relays them to, \
inspect and replay their deliveries, manage web triggers and read their invocation logs, and \
manage the bridge: tenants, reconciliation of Jira's failed webhooks, API keys for the proxy \
(`ANY /proxy/{clientKey}/{path}`, outside this API, with `Authorization: Bearer <API key>`) and \
API tokens for admin-webhook sources.\n\nEvery operation but this document needs \
`Authorization: Bearer $HOOKRELAY_ADMIN_TOKEN`. Errors are `{\"error\": \"<code>\", \"detail\": \
\"<reason>\"}`. An event or subscription id that is not a UUID is answered like an unknown \
one, with 404."
    ),
    servers((url = "/admin/api/v1")),
    security(("bearer" = [])),
    components(schemas(ErrorBody)),
    modifiers(&Common)
)]
struct ApiDoc;

/// The bearer scheme, and the answers every operation can give: no or a wrong
/// token (401) and the store away (503).
struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                if path != "/openapi.json" {
                    responses
                        .entry("401".into())
                        .or_insert_with(|| error("no bearer token, or a wrong one"));
                    responses
                        .entry("503".into())
                        .or_insert_with(|| error("the store is away; retry later"));
                }
            }
        }
    }
}

/// A response with the error shape.
pub(crate) fn error(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

/// The whole document.
pub fn document() -> Document {
    let mut doc = ApiDoc::openapi();
    for part in parts() {
        doc.merge(part);
    }
    Common.modify(&mut doc);
    doc
}

/// Each module's own document.
fn parts() -> [Document; 5] {
    [
        super::admin::Doc::openapi(),
        super::sources::Doc::openapi(),
        super::subscriptions::Doc::openapi(),
        super::triggers::Doc::openapi(),
        super::bridge::Doc::openapi(),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `{key:.+}` (an actix pattern) as OpenAPI writes it: `{key}`.
    fn plain(path: &str) -> String {
        let mut out = String::new();
        let (mut in_param, mut skipping) = (false, false);
        for c in path.chars() {
            match c {
                '{' => in_param = true,
                '}' => (in_param, skipping) = (false, false),
                ':' if in_param => skipping = true,
                _ => {}
            }
            if !skipping {
                out.push(c);
            }
        }
        out
    }

    fn documented() -> BTreeSet<(String, String)> {
        let doc = serde_json::to_value(document()).unwrap();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    out.insert((method.clone(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn every_registered_route_is_documented_and_nothing_else() {
        let registered: BTreeSet<(String, String)> = super::super::admin::api_routes()
            .listed
            .iter()
            .map(|(method, path)| (method.to_string(), plain(path)))
            .collect();
        let documented = documented();
        let missing: Vec<_> = registered.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&registered).collect();
        assert!(
            missing.is_empty(),
            "routes missing from the document: {missing:?}"
        );
        assert!(extra.is_empty(), "documented but not served: {extra:?}");
        assert!(registered.len() > 30, "{} routes", registered.len());
    }

    /// Merging keeps one schema per name: two types of one name (each
    /// module's `Changes`, say) would silently lose one.
    #[test]
    fn no_two_types_share_a_schema_name() {
        let mut seen = std::collections::BTreeMap::new();
        for part in parts() {
            let schemas = part.components.map(|c| c.schemas).unwrap_or_default();
            for (name, schema) in schemas {
                let schema = serde_json::to_value(schema).unwrap();
                if let Some(before) = seen.insert(name.clone(), schema.clone()) {
                    assert_eq!(before, schema, "two schemas named {name}");
                }
            }
        }
        assert!(seen.contains_key("SubscriptionChanges") && seen.contains_key("TriggerChanges"));
    }

    /// The replay body's states are the delivery states but `pending`.
    #[test]
    fn replayable_states_follow_the_delivery_states() {
        let doc = serde_json::to_value(document()).unwrap();
        let values = |name: &str| -> BTreeSet<String> {
            doc["components"]["schemas"][name]["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        let mut states = values("DeliveryState");
        assert!(states.remove("pending"));
        assert_eq!(values("FinishedState"), states);
    }

    #[test]
    fn path_patterns_are_written_as_plain_parameters() {
        assert_eq!(plain("/sources/{key:.+}/token"), "/sources/{key}/token");
        assert_eq!(plain("/events/{id}"), "/events/{id}");
    }

    #[test]
    fn every_operation_declares_its_path_parameters_and_a_401() {
        let doc = serde_json::to_value(document()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let declared: BTreeSet<&str> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["in"] == "path")
                            .filter_map(|p| p["name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                let in_path: BTreeSet<&str> = path
                    .split('{')
                    .skip(1)
                    .filter_map(|s| s.split('}').next())
                    .collect();
                assert_eq!(declared, in_path, "{method} {path}");
                if path != "/openapi.json" {
                    assert!(op["responses"]["401"].is_object(), "{method} {path}");
                }
            }
        }
    }
}
