//! A Jira or Confluence site played against a running hookrelay, for
//! `hookrelay bench` and `hookrelay dev site`: its install key and the server
//! that publishes it, the hookrelay it talks to as its descriptor describes
//! it, the signed install and uninstall, and the token each webhook carries.
//!
//! Atlassian signs `installed` and `uninstalled` with RS256 under a `kid` whose
//! public key it publishes at `<install keys URL>/<kid>`; hookrelay fetches it
//! from `HOOKRELAY_INSTALL_KEYS_URL`. Each run makes a fresh RSA key, serves it
//! itself, and so needs a hookrelay started with that setting pointing at it.
//! Webhooks are then HS256 with the shared secret the install handed over,
//! with the `qsh` of the request computed by hookrelay's own [`crate::auth::qsh`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::ServerHandle;
use actix_web::{web, HttpRequest, HttpResponse, HttpServer};
use anyhow::{bail, Context};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::{json, Value};
use url::Url;

use crate::auth::qsh;
use crate::domain::Product;

/// How long a token the site signs is valid (hookrelay allows its leeway besides).
const TOKEN_LIFETIME_SECS: i64 = 180;
/// Bits of the generated install key, as Atlassian's.
const RSA_BITS: usize = 2048;

/// Seconds since the Unix epoch (0 on a clock set before it).
pub fn unix_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// The RSA key pair the site's signed installs are signed with, published
/// under a `kid` of this run only (hookrelay caches a key per kid).
pub struct InstallKey {
    pub kid: String,
    signing: EncodingKey,
    public_pem: String,
}

impl InstallKey {
    /// A fresh key, made off the async threads (it takes a moment).
    pub async fn generate(kid: String) -> anyhow::Result<Self> {
        tokio::task::spawn_blocking(move || Self::generate_now(kid))
            .await
            .context("the key generation stopped")?
    }

    fn generate_now(kid: String) -> anyhow::Result<Self> {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_BITS)
            .context("cannot generate an RSA key")?;
        let private_pem = private
            .to_pkcs1_pem(LineEnding::LF)
            .context("cannot encode the RSA private key")?;
        let public_pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .context("cannot encode the RSA public key")?;
        let signing = EncodingKey::from_rsa_pem(private_pem.as_bytes())
            .context("cannot load the RSA private key for signing")?;
        Ok(Self {
            kid,
            signing,
            public_pem,
        })
    }

    /// An RS256 token with this key's `kid` over `claims`.
    fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.signing)
            .context("cannot sign the install token")
    }
}

/// The HTTP client a site talks to hookrelay with: no proxy (hookrelay is
/// often on loopback), no redirects, `timeout` for a whole request.
pub fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .build()
        .context("cannot build the HTTP client")
}

/// The URL a server on `addr` is reached at: an unspecified address (all
/// interfaces) stands for loopback.
fn url_of(addr: SocketAddr) -> anyhow::Result<Url> {
    let addr = if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    };
    Url::parse(&format!("http://{addr}")).context("cannot make a URL of the listen address")
}

/// Binds `listen`, and gives the listener and the URL it is reached at
/// (`public`, when given).
pub fn bind(
    listen: &str,
    public: Option<&Url>,
) -> std::io::Result<(TcpListener, anyhow::Result<Url>)> {
    let listener = TcpListener::bind(listen)?;
    let url = match public {
        Some(url) => Ok(url.clone()),
        None => listener
            .local_addr()
            .map_err(anyhow::Error::from)
            .and_then(url_of),
    };
    Ok((listener, url))
}

/// Serves `handler` for every request on `listener`, on `workers` threads,
/// with `state` and bodies up to `max_body`; `what` names the server in the
/// error. The handle stops it.
pub fn serve<T, F, Args>(
    listener: TcpListener,
    state: Arc<T>,
    max_body: usize,
    workers: usize,
    handler: F,
    what: &str,
) -> anyhow::Result<ServerHandle>
where
    T: Send + Sync + 'static,
    F: actix_web::Handler<Args> + Send,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    let state = web::Data::from(state);
    let server = HttpServer::new(move || {
        actix_web::App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(max_body))
            .default_service(web::to(handler.clone()))
    })
    .workers(workers)
    .disable_signals()
    .listen(listener)
    .with_context(|| format!("cannot start the {what}"))?
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok(handle)
}

struct KeyDoc {
    kid: String,
    pem: String,
    hits: AtomicUsize,
}

/// Atlassian's install-key service, played on loopback: the public key of the
/// run's `kid` at any path ending in `/<kid>` (so whatever path the server's
/// `HOOKRELAY_INSTALL_KEYS_URL` has), 404 for anything else.
pub struct KeyServer {
    /// What `HOOKRELAY_INSTALL_KEYS_URL` must be for hookrelay to trust the site.
    pub url: Url,
    doc: Arc<KeyDoc>,
    handle: ServerHandle,
}

impl KeyServer {
    /// Serves `key` on `listen`; `public` is the URL the server reaches it at,
    /// when not the listen address.
    pub fn start(listen: &str, public: Option<&Url>, key: &InstallKey) -> anyhow::Result<Self> {
        let (listener, url) = bind(listen, public).with_context(|| {
            format!("cannot listen on {listen} for the install-key server (--keys-listen)")
        })?;
        let url = url?;
        let doc = Arc::new(KeyDoc {
            kid: key.kid.clone(),
            pem: key.public_pem.clone(),
            hits: AtomicUsize::new(0),
        });
        // Key fetches have no body.
        let handle = serve(listener, doc.clone(), 0, 1, serve_key, "install-key server")?;
        Ok(Self { url, doc, handle })
    }

    /// How many times the run's key was fetched.
    pub fn hits(&self) -> usize {
        self.doc.hits.load(Ordering::Relaxed)
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

async fn serve_key(req: HttpRequest, doc: web::Data<KeyDoc>) -> HttpResponse {
    if req.method() == actix_web::http::Method::GET
        && req.path().rsplit('/').next() == Some(doc.kid.as_str())
    {
        doc.hits.fetch_add(1, Ordering::Relaxed);
        HttpResponse::Ok()
            .content_type("text/plain")
            .body(doc.pem.clone())
    } else {
        HttpResponse::NotFound().finish()
    }
}

/// The hookrelay the site talks to, as its descriptor for the product
/// (`/<product>/atlassian-connect.json`) describes it: the base URL installs
/// must name as `aud`, and the paths of the lifecycle callbacks and webhooks.
pub struct Target {
    /// Where the site reaches it (`--url`).
    pub url: Url,
    /// The descriptor's `baseUrl`.
    pub base_url: String,
    /// The path of `base_url`, which hookrelay strips before the qsh.
    context_path: String,
    installed: String,
    uninstalled: String,
    /// The descriptor's webhook path of each event.
    webhooks: HashMap<String, String>,
    product: Product,
}

impl Target {
    /// Reads the descriptor. Fails when nothing answers at `url` or what
    /// answers is not hookrelay.
    pub async fn discover(
        client: &reqwest::Client,
        url: &Url,
        product: Product,
    ) -> anyhow::Result<Self> {
        let descriptor_url = join(url, &format!("/{product}/atlassian-connect.json"));
        let response =
            client.get(&descriptor_url).send().await.with_context(|| {
                format!("cannot reach hookrelay at {url} (GET {descriptor_url})")
            })?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET {descriptor_url} answered {status}: is hookrelay serving there?");
        }
        let descriptor: Value = response.json().await.with_context(|| {
            format!("GET {descriptor_url} did not answer a JSON descriptor: is this hookrelay?")
        })?;
        let Some(base_url) = descriptor["baseUrl"].as_str().filter(|s| !s.is_empty()) else {
            bail!("the descriptor at {descriptor_url} has no baseUrl: is this hookrelay?");
        };
        let context_path = Url::parse(base_url)
            .with_context(|| format!("the descriptor's baseUrl `{base_url}` is not a URL"))?
            .path()
            .trim_end_matches('/')
            .to_string();
        let path = |value: &Value, default: String| {
            value
                .as_str()
                .filter(|p| p.starts_with('/') && !p.contains(['?', '#']))
                .map_or(default, str::to_string)
        };
        let webhooks = descriptor["modules"]["webhooks"]
            .as_array()
            .map(|hooks| {
                hooks
                    .iter()
                    .filter_map(|hook| {
                        let event = hook["event"].as_str()?;
                        let url = path(&hook["url"], String::new());
                        (!url.is_empty()).then(|| (event.to_string(), url))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            url: url.clone(),
            base_url: base_url.to_string(),
            context_path,
            installed: path(
                &descriptor["lifecycle"]["installed"],
                format!("/{product}/lifecycle/installed"),
            ),
            uninstalled: path(
                &descriptor["lifecycle"]["uninstalled"],
                format!("/{product}/lifecycle/uninstalled"),
            ),
            webhooks,
            product,
        })
    }

    /// The path of `event`'s webhook: the descriptor's, or where hookrelay
    /// routes every event of the product for one it does not list.
    fn webhook_path(&self, event: &str) -> String {
        self.webhooks
            .get(event)
            .cloned()
            .unwrap_or_else(|| format!("/{}/events/{event}", self.product))
    }

    /// Whether the descriptor subscribes to `event`.
    pub fn describes(&self, event: &str) -> bool {
        self.webhooks.contains_key(event)
    }

    /// The full URL of `event`'s webhook.
    pub fn webhook_url(&self, event: &str) -> String {
        join(&self.url, &self.webhook_path(event))
    }

    /// The `qsh` of a `POST` to `path` (one of the descriptor's), as hookrelay
    /// computes it for the request the site sends.
    fn qsh(&self, path: &str) -> String {
        let raw = format!("{}{path}", self.url.path().trim_end_matches('/'));
        qsh::query_string_hash(&qsh::canonical_request(
            "POST",
            &raw,
            "",
            &self.context_path,
        ))
    }

    /// The `qsh` of a webhook of `event`.
    pub fn webhook_qsh(&self, event: &str) -> String {
        self.qsh(&self.webhook_path(event))
    }
}

/// `path` under `base`, keeping the path `base` has.
fn join(base: &Url, path: &str) -> String {
    format!("{}{path}", base.as_str().trim_end_matches('/'))
}

/// What a refused answer said: the `detail` of hookrelay's JSON errors, or
/// the start of the body.
pub async fn answer_detail(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<Value>(&text) {
        Ok(body) if body["detail"].is_string() => body["detail"].as_str().unwrap_or("").into(),
        _ => text.chars().take(200).collect(),
    }
}

/// A Connect installation: unique per run, so that runs never share a
/// tenant, a secret or a webhook identifier (a reinstall of a client key is
/// applied only when strictly newer, so a fresh one is never stale).
pub struct Site {
    pub client_key: String,
    pub base_url: String,
    /// Who plays it (`hookrelay-bench`, `hookrelay-dev`): the client key's
    /// and the host's prefix, and the install's `sub`.
    name: String,
    product: Product,
    secret: String,
    signing: EncodingKey,
}

impl Site {
    /// A new site of `product` played by `name`; `run` is the run's id. Its
    /// base URL is under `.invalid`, which never resolves, so nothing
    /// hookrelay might call there goes out.
    pub fn new(product: Product, name: &str, run: &str) -> Self {
        let secret = hex::encode(rand::random::<[u8; 32]>());
        Self {
            client_key: format!("{product}:{name}-{run}"),
            base_url: format!("https://{name}-{run}.atlassian.invalid"),
            name: name.to_string(),
            product,
            signing: EncodingKey::from_secret(secret.as_bytes()),
            secret,
        }
    }

    /// The body Atlassian posts to every lifecycle URL.
    fn lifecycle_body(&self, event_type: &str) -> Value {
        json!({
            "key": "hookrelay",
            "clientKey": self.client_key,
            "sharedSecret": self.secret,
            "baseUrl": self.base_url,
            "displayUrl": self.base_url,
            "productType": self.product.as_str(),
            "description": format!("{} site", self.name),
            "eventType": event_type,
        })
    }

    /// Posts a signed `installed` (or `uninstalled`) callback and gives the
    /// answer, or the error of a request that got none.
    async fn callback(
        &self,
        client: &reqwest::Client,
        target: &Target,
        key: &InstallKey,
        installed: bool,
    ) -> anyhow::Result<reqwest::Response> {
        let (path, event_type) = if installed {
            (&target.installed, "installed")
        } else {
            (&target.uninstalled, "uninstalled")
        };
        let now = unix_now();
        let token = key.sign(&json!({
            "iss": self.client_key,
            "sub": self.name,
            "aud": [target.base_url],
            "iat": now,
            "exp": now + TOKEN_LIFETIME_SECS,
            "qsh": target.qsh(path),
        }))?;
        let url = join(&target.url, path);
        client
            .post(&url)
            .header("Authorization", format!("JWT {token}"))
            .json(&self.lifecycle_body(event_type))
            .send()
            .await
            .with_context(|| format!("cannot reach hookrelay (POST {url})"))
    }

    /// The signed install. When it is refused and hookrelay never fetched the
    /// key from `keys`, it does not trust the site's key server, and the
    /// error says how to start it; `hint` is the caller's advice after that.
    pub async fn install(
        &self,
        client: &reqwest::Client,
        target: &Target,
        key: &InstallKey,
        keys: &KeyServer,
        hint: &str,
    ) -> anyhow::Result<()> {
        let response = self.callback(client, target, key, true).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let detail = answer_detail(response).await;
        let keys_url = keys.url.as_str().trim_end_matches('/');
        if keys.hits() == 0 {
            bail!(
                "hookrelay does not trust {}'s install-key server: it refused the signed \
                 install ({status}: {detail}) without fetching the key from {keys_url}. Start \
                 hookrelay with HOOKRELAY_INSTALL_KEYS_URL={keys_url}{hint}",
                self.name
            );
        }
        bail!(
            "hookrelay refused {}'s signed install ({status}: {detail}), after fetching the key \
             from {keys_url}",
            self.name
        )
    }

    /// The signed uninstall, so that the run leaves no installed tenant behind.
    pub async fn uninstall(
        &self,
        client: &reqwest::Client,
        target: &Target,
        key: &InstallKey,
    ) -> anyhow::Result<()> {
        let response = self.callback(client, target, key, false).await?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "hookrelay refused the uninstall ({status}: {})",
                answer_detail(response).await
            );
        }
        Ok(())
    }

    /// A webhook `POST` to `url` as Jira sends one, body to be added: signed
    /// for `qsh`, with its `X-Atlassian-Webhook-Identifier` (by which
    /// hookrelay stores a webhook once).
    pub fn webhook_request(
        &self,
        client: &reqwest::Client,
        url: &str,
        qsh: &str,
        webhook_id: &str,
    ) -> Result<reqwest::RequestBuilder, jsonwebtoken::errors::Error> {
        let token = self.webhook_token(qsh)?;
        Ok(client
            .post(url)
            .header("Authorization", format!("JWT {token}"))
            .header("Content-Type", "application/json")
            .header("X-Atlassian-Webhook-Identifier", webhook_id)
            .header("X-Atlassian-Webhook-Flow", "Primary"))
    }

    /// A fresh Connect JWT for a webhook whose `qsh` is `qsh`, as Jira signs
    /// one: HS256 with the shared secret.
    fn webhook_token(&self, qsh: &str) -> Result<String, jsonwebtoken::errors::Error> {
        let now = unix_now();
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({
                "iss": self.client_key,
                "iat": now,
                "exp": now + TOKEN_LIFETIME_SECS,
                "qsh": qsh,
            }),
            &self.signing,
        )
    }
}
