//! The auth backends and the types callers exchange with them.

mod headscale;
mod minter;
mod rscale;
mod static_key;
mod tailscale;

use std::time::Duration;

use time::OffsetDateTime;

use crate::config::{validate_tags, AuthConfig, BackendConfig};
use crate::error::AuthError;
use crate::http::{build_http_client, ApiClient, BackendOptions};
use crate::secret::Secret;

use headscale::HeadscaleBackend;
use minter::MinterBackend;
use rscale::RscaleBackend;
use static_key::StaticBackend;
use tailscale::TailscaleBackend;

/// Tailscale rejects key descriptions longer than this.
pub const MAX_DESCRIPTION_CHARS: usize = 50;

/// What the caller wants a key for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRequest {
    /// The node's hostname; used for logs and the default description.
    pub hostname: String,
    /// Tags for the node, already allowlisted by the caller. Empty: the configured tags.
    pub tags: Vec<String>,
    /// Ephemeral node or not. `None`: the configured default.
    pub ephemeral: Option<bool>,
    /// Shown in the control server's key list; cut to 50 characters. Empty: derived from
    /// the hostname.
    pub description: String,
}

impl KeyRequest {
    /// A request with configured defaults for everything but the hostname.
    pub fn for_hostname(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            ..Self::default()
        }
    }
}

/// A freshly minted auth key.
#[derive(Debug, Clone)]
pub struct AuthKey {
    /// The key itself, to hand to the node that registers with it.
    pub key: Secret,
    /// The control server's ID for the key (for revocation or audit), when it reports one.
    pub id: Option<String>,
    /// When the key stops being accepted, when the control server reports it.
    pub expires: Option<OffsetDateTime>,
}

/// The control server's identifiers of a node to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    /// Control's numeric `Node.ID`.
    pub node_id: i64,
    /// Control's `Node.StableID`.
    pub stable_id: String,
    /// `nodekey:<hex>`; for logs, since all removal calls are by ID.
    pub node_key: String,
}

/// A key request resolved against the configuration: what is actually sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MintParams {
    pub hostname: String,
    pub tags: Vec<String>,
    pub ephemeral: bool,
    pub ttl: Duration,
    pub description: String,
}

/// Configured defaults applied to each [`KeyRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyDefaults {
    tags: Vec<String>,
    ephemeral: bool,
    ttl: Duration,
}

impl KeyDefaults {
    fn resolve(&self, request: &KeyRequest) -> Result<MintParams, String> {
        let tags = if request.tags.is_empty() {
            self.tags.clone()
        } else {
            request.tags.clone()
        };
        validate_tags(&tags)?;
        let description = if request.description.trim().is_empty() {
            format!("tailnet-cni {}", request.hostname)
        } else {
            request.description.trim().to_owned()
        };
        Ok(MintParams {
            hostname: request.hostname.clone(),
            tags,
            ephemeral: request.ephemeral.unwrap_or(self.ephemeral),
            ttl: self.ttl,
            description: truncate_chars(&description, MAX_DESCRIPTION_CHARS),
        })
    }
}

fn truncate_chars(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[derive(Debug)]
enum Backend {
    Static(StaticBackend),
    Rscale(RscaleBackend),
    Headscale(HeadscaleBackend),
    Tailscale(Box<TailscaleBackend>),
    Minter(MinterBackend),
}

/// Mints auth keys for new pod identities and removes nodes of deleted pods.
///
/// Cheap to share behind an `Arc`; calls run concurrently (bounded per backend by
/// [`BackendOptions::max_in_flight`]).
#[derive(Debug)]
pub struct AuthBackend {
    backend: Backend,
    defaults: KeyDefaults,
}

impl AuthBackend {
    /// Builds the configured backend with default HTTP options. Reads the API credentials
    /// and CA file now, so a bad configuration fails at startup.
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthError> {
        Self::with_options(config, BackendOptions::default())
    }

    /// Like [`AuthBackend::from_config`] with explicit retry, concurrency and timeout options.
    pub fn with_options(config: &AuthConfig, options: BackendOptions) -> Result<Self, AuthError> {
        let defaults = KeyDefaults {
            tags: config.tags.clone(),
            ephemeral: config.ephemeral,
            ttl: Duration::from_secs(config.key_ttl_secs),
        };
        let api = |kind: &'static str| -> Result<ApiClient, AuthError> {
            let http = build_http_client(config.ca_file.as_deref(), &options)?;
            Ok(ApiClient::new(http, kind, &options))
        };
        let kind = config.backend.kind();
        let backend = match &config.backend {
            BackendConfig::Static { key_file } => {
                Backend::Static(StaticBackend::new(key_file.clone()))
            }
            BackendConfig::Rscale {
                api_url,
                token_file,
            } => Backend::Rscale(RscaleBackend::new(
                api(kind)?,
                api_url.clone(),
                Secret::from_file(token_file)?,
            )),
            BackendConfig::Headscale {
                api_url,
                token_file,
                user,
            } => Backend::Headscale(HeadscaleBackend::new(
                api(kind)?,
                api_url.clone(),
                Secret::from_file(token_file)?,
                user.clone(),
            )),
            BackendConfig::Tailscale {
                api_url,
                client_id_file,
                client_secret_file,
                tailnet,
            } => Backend::Tailscale(Box::new(TailscaleBackend::new(
                api(kind)?,
                api_url.clone(),
                Secret::from_file(client_id_file)?,
                Secret::from_file(client_secret_file)?,
                tailnet.clone(),
            ))),
            BackendConfig::Minter {
                api_url,
                token_file,
            } => {
                // Fail at startup when the projected token is not mounted.
                Secret::from_file(token_file)?;
                Backend::Minter(MinterBackend::new(
                    api(kind)?,
                    api_url.clone(),
                    token_file.clone(),
                ))
            }
        };
        Ok(Self { backend, defaults })
    }

    /// The configured `kind`.
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Static(_) => "static",
            Backend::Rscale(_) => "rscale",
            Backend::Headscale(_) => "headscale",
            Backend::Tailscale(_) => "tailscale",
            Backend::Minter(_) => "minter",
        }
    }

    /// Mints a single-use, pre-authorized key for one new node.
    pub async fn mint_key(&self, request: &KeyRequest) -> Result<AuthKey, AuthError> {
        let params = self
            .defaults
            .resolve(request)
            .map_err(|reason| AuthError::Request {
                backend: self.kind(),
                reason,
            })?;
        let key = match &self.backend {
            Backend::Static(backend) => backend.mint_key(&params).await,
            Backend::Rscale(backend) => backend.mint_key(&params).await,
            Backend::Headscale(backend) => backend.mint_key(&params).await,
            Backend::Tailscale(backend) => backend.mint_key(&params).await,
            Backend::Minter(backend) => backend.mint_key(&params).await,
        }?;
        tracing::info!(
            backend = self.kind(),
            hostname = %params.hostname,
            key_id = key.id.as_deref().unwrap_or("-"),
            ephemeral = params.ephemeral,
            tags = ?params.tags,
            "minted auth key"
        );
        Ok(key)
    }

    /// Removes (or, for rscale, disables) a node. A node the server no longer knows counts
    /// as removed. With `minter` this does nothing: the node's own logout removed it.
    pub async fn remove_node(&self, node: &NodeRef) -> Result<(), AuthError> {
        match &self.backend {
            Backend::Static(backend) => backend.remove_node(node),
            Backend::Rscale(backend) => backend.remove_node(node).await,
            Backend::Headscale(backend) => backend.remove_node(node).await,
            Backend::Tailscale(backend) => backend.remove_node(node).await,
            Backend::Minter(backend) => backend.remove_node(node),
        }
    }
}

/// The moment `ttl` from now, for the expiry a key is minted with.
pub(crate) fn expiry_from_now(ttl: Duration) -> OffsetDateTime {
    OffsetDateTime::now_utc() + ttl
}

/// `POST`s `body` as JSON with `token` as the bearer and decodes the 2xx answer; any other
/// status is an [`AuthError::Api`] with the token scrubbed from the excerpt.
pub(crate) async fn post_json<T: serde::de::DeserializeOwned>(
    api: &ApiClient,
    url: &url::Url,
    token: &Secret,
    body: &impl serde::Serialize,
) -> Result<T, AuthError> {
    let secrets = [token.expose()];
    let request = crate::http::ApiRequest::json(reqwest::Method::POST, url, Some(token), body)?;
    let response = api.send(&request, &secrets).await?;
    if !response.status.is_success() {
        return Err(api.api_error(
            &crate::error::display_url(url),
            response.status,
            &response.body,
            &secrets,
        ));
    }
    crate::http::decode_json(api, url, &response.body)
}

/// Logs and maps a removal answer: 2xx and 404 succeed.
pub(crate) fn removal_outcome(
    api: &ApiClient,
    url: &url::Url,
    node: &NodeRef,
    response: crate::http::ApiResponse,
    secrets: &[&str],
) -> Result<(), AuthError> {
    if response.status.is_success() {
        tracing::info!(backend = api.backend(), node_id = node.node_id, node_key = %node.node_key, "removed node");
        Ok(())
    } else if response.status == reqwest::StatusCode::NOT_FOUND {
        tracing::info!(backend = api.backend(), node_id = node.node_id, node_key = %node.node_key, "node already gone");
        Ok(())
    } else {
        Err(api.api_error(
            &crate::error::display_url(url),
            response.status,
            &response.body,
            secrets,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> KeyDefaults {
        KeyDefaults {
            tags: vec!["tag:k8s-pod".to_owned()],
            ephemeral: true,
            ttl: Duration::from_secs(600),
        }
    }

    #[test]
    fn empty_request_takes_configured_defaults() {
        let params = defaults()
            .resolve(&KeyRequest::for_hostname("web-0"))
            .unwrap();
        assert_eq!(params.tags, vec!["tag:k8s-pod".to_owned()]);
        assert!(params.ephemeral);
        assert_eq!(params.ttl, Duration::from_secs(600));
        assert_eq!(params.description, "tailnet-cni web-0");
    }

    #[test]
    fn request_values_override_defaults() {
        let request = KeyRequest {
            hostname: "db-1".to_owned(),
            tags: vec!["tag:db".to_owned()],
            ephemeral: Some(false),
            description: "  pod default/db-1  ".to_owned(),
        };
        let params = defaults().resolve(&request).unwrap();
        assert_eq!(params.tags, vec!["tag:db".to_owned()]);
        assert!(!params.ephemeral);
        assert_eq!(params.description, "pod default/db-1");
    }

    #[test]
    fn description_is_cut_to_fifty_characters_on_char_boundaries() {
        let request = KeyRequest {
            hostname: "x".to_owned(),
            description: "é".repeat(80),
            ..KeyRequest::default()
        };
        let params = defaults().resolve(&request).unwrap();
        assert_eq!(params.description.chars().count(), MAX_DESCRIPTION_CHARS);
    }

    #[test]
    fn malformed_request_tags_are_refused() {
        let request = KeyRequest {
            hostname: "x".to_owned(),
            tags: vec!["k8s".to_owned()],
            ..KeyRequest::default()
        };
        assert!(defaults().resolve(&request).is_err());
    }
}
