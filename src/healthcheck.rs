//! `hookrelay healthcheck`: asks a running hookrelay (`serve` or `worker`)
//! whether it is ready, for container health checks, since the image has no
//! curl. It reads `/readyz` and nothing else: no store, no broker.

use std::time::Duration;

/// Why the process checked is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    #[error("invalid URL `{0}`")]
    Url(String),
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered {status}: {body}")]
    NotReady {
        url: String,
        status: u16,
        body: String,
    },
}

/// `http://<listen>/readyz`, with a wildcard address (`0.0.0.0`, `[::]`)
/// replaced by loopback: the check runs beside the server.
pub fn default_url(listen: &str) -> String {
    let address = match listen.rsplit_once(':') {
        Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => listen.to_string(),
    };
    format!("http://{address}/readyz")
}

/// GETs `url`: `Ok` on 200, otherwise the reason, with the start of the body
/// (which names what is down).
pub async fn check(url: &str, timeout: Duration) -> Result<(), HealthcheckError> {
    let parsed = reqwest::Url::parse(url).map_err(|_| HealthcheckError::Url(url.into()))?;
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| HealthcheckError::Unreachable {
            url: url.into(),
            reason: crate::relay::deliver::chain(&e),
        })?;
    let unreachable = |e: reqwest::Error| HealthcheckError::Unreachable {
        url: url.into(),
        reason: crate::relay::deliver::chain(&e.without_url()),
    };
    let response = client.get(parsed).send().await.map_err(unreachable)?;
    let status = response.status();
    if status == reqwest::StatusCode::OK {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(HealthcheckError::NotReady {
        url: url.into(),
        status: status.as_u16(),
        body: body.chars().take(500).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_checked_on_loopback() {
        assert_eq!(default_url("0.0.0.0:8080"), "http://127.0.0.1:8080/readyz");
        assert_eq!(default_url("[::]:9000"), "http://[::1]:9000/readyz");
        assert_eq!(default_url("10.0.0.5:8080"), "http://10.0.0.5:8080/readyz");
    }
}
