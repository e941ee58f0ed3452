//! A running hookrelay's admin API, as far as the bench and dev site use
//! it: making and deleting the subscriptions of their receivers.

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::site::answer_detail;

/// The admin API of a running hookrelay.
pub struct AdminApi {
    pub client: reqwest::Client,
    /// `<url>/admin/api/v1`
    pub base: String,
    pub token: String,
    /// What else the user may do when a subscription is refused, after the
    /// fix the error names (`, or run with --no-sink`), or empty.
    pub alternative: &'static str,
}

/// A subscription made through [`AdminApi::subscribe`].
pub struct Subscription {
    pub id: String,
    pub secret: String,
}

impl AdminApi {
    /// Subscribes `url` to the `events` of `client_key`; `who` names the
    /// subscriber in the subscription's description.
    pub async fn subscribe(
        &self,
        url: &str,
        events: &[&str],
        client_key: &str,
        who: &str,
        max_concurrency: Option<u32>,
    ) -> anyhow::Result<Subscription> {
        let mut body = json!({
            "url": url,
            "events": events,
            "tenants": [client_key],
            "description": format!("{who} for {client_key}; safe to delete"),
        });
        if let Some(n) = max_concurrency {
            body["max_concurrency"] = json!(n);
        }
        let url = format!("{}/subscriptions", self.base);
        let response = self
            .client
            .post(&url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("cannot reach hookrelay (POST {url})"))?;
        let status = response.status();
        if !status.is_success() {
            let detail = answer_detail(response).await;
            if status == reqwest::StatusCode::UNAUTHORIZED {
                bail!(
                    "the admin API refused the {who}'s subscription ({status}: {detail}): pass \
                     the server's HOOKRELAY_ADMIN_TOKEN with --admin-token or in the \
                     environment{}",
                    self.alternative
                );
            }
            if detail.contains("ALLOW_PRIVATE_DESTINATIONS") {
                bail!(
                    "hookrelay refuses to deliver to the {who} at {url} ({detail}): start \
                     hookrelay with HOOKRELAY_ALLOW_PRIVATE_DESTINATIONS=true{}",
                    self.alternative
                );
            }
            bail!("hookrelay refused the {who}'s subscription ({status}: {detail})");
        }
        let created: Value = response
            .json()
            .await
            .context("the answer to the subscription is not JSON")?;
        match (created["id"].as_str(), created["secret"].as_str()) {
            (Some(id), Some(secret)) => Ok(Subscription {
                id: id.to_string(),
                secret: secret.to_string(),
            }),
            _ => bail!("the answer to the subscription has no id or secret: {created}"),
        }
    }

    /// Deletes subscription `id`, with its deliveries.
    pub async fn unsubscribe(&self, id: &str) -> anyhow::Result<()> {
        let url = format!("{}/subscriptions/{id}", self.base);
        let response = self
            .client
            .delete(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach hookrelay (DELETE {url})"))?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "hookrelay did not delete the subscription ({status}: {})",
                answer_detail(response).await
            );
        }
        Ok(())
    }
}
