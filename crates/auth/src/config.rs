//! The `[auth]` table of the daemon's configuration file.
//!
//! ```toml
//! [auth]
//! kind = "tailscale"                       # static | rscale | headscale | tailscale
//! client_id_file = "/etc/tailnet-cni/oauth-client-id"
//! client_secret_file = "/etc/tailnet-cni/oauth-client-secret"
//! tags = ["tag:k8s-pod"]
//! ephemeral = false
//! key_ttl_secs = 600
//! ```
//!
//! Deserialization goes through a flat raw form so that a field that does not belong to the
//! chosen `kind` (or a misspelt one) is rejected instead of silently ignored.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::AuthError;

/// Where the Tailscale API lives unless configured otherwise.
pub const DEFAULT_TAILSCALE_API_URL: &str = "https://api.tailscale.com";
/// The tailnet of the OAuth client's owner.
pub const DEFAULT_TAILNET: &str = "-";
/// Minted keys are used once, right away; a short life limits the damage of a leaked one.
pub const DEFAULT_KEY_TTL_SECS: u64 = 600;
/// Tailscale caps auth-key expiry at 90 days.
const MAX_KEY_TTL_SECS: u64 = 90 * 24 * 3600;

/// Which control server mints keys, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// One pre-made (reusable) auth key read from a file on every mint.
    Static {
        /// File holding the key.
        key_file: PathBuf,
    },
    /// rscale's admin API, with its admin (break-glass) token.
    Rscale {
        /// Base URL of the admin API.
        api_url: Url,
        /// File holding the admin token.
        token_file: PathBuf,
    },
    /// Headscale's REST API, with an API key.
    Headscale {
        /// Base URL of the REST API.
        api_url: Url,
        /// File holding the API key.
        token_file: PathBuf,
        /// Headscale user ID (a user name on releases before April 2025); optional for tagged keys.
        user: Option<String>,
    },
    /// The Tailscale API, through an OAuth client (client credentials grant).
    Tailscale {
        /// Base URL of the API.
        api_url: Url,
        /// File holding the OAuth client ID.
        client_id_file: PathBuf,
        /// File holding the OAuth client secret.
        client_secret_file: PathBuf,
        /// The tailnet keys are minted in; [`DEFAULT_TAILNET`] is the OAuth client's own.
        tailnet: String,
    },
    /// The cluster's minter, which holds the control server's credentials; the node holds
    /// only its projected service account token.
    Minter {
        /// Base URL of the minter.
        api_url: Url,
        /// The projected service account token (audience-bound to the minter), re-read
        /// for every key.
        token_file: PathBuf,
    },
}

impl BackendConfig {
    /// The `kind` value naming this backend.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Static { .. } => "static",
            Self::Rscale { .. } => "rscale",
            Self::Headscale { .. } => "headscale",
            Self::Tailscale { .. } => "tailscale",
            Self::Minter { .. } => "minter",
        }
    }
}

/// The parsed and validated `[auth]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawAuthConfig", into = "RawAuthConfig")]
pub struct AuthConfig {
    /// The control server that mints keys.
    pub backend: BackendConfig,
    /// Tags for minted keys when a request names none.
    pub tags: Vec<String>,
    /// Mint ephemeral keys: the control server drops the node soon after it goes offline.
    /// Off by default: a node that vanishes while the daemon restarts could not be brought
    /// back with the same addresses; deleted pods are removed explicitly (DEL, GC) instead.
    pub ephemeral: bool,
    /// Lifetime of minted keys.
    pub key_ttl_secs: u64,
    /// Extra root CA (PEM) trusted for a self-hosted control server's HTTPS.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum BackendKind {
    Static,
    Rscale,
    Headscale,
    Tailscale,
    Minter,
}

/// The `[auth]` table as written, before per-kind validation.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthConfig {
    kind: BackendKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tailnet: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default = "default_ephemeral")]
    ephemeral: bool,
    #[serde(default = "default_key_ttl_secs")]
    key_ttl_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
}

fn default_ephemeral() -> bool {
    false
}

fn default_key_ttl_secs() -> u64 {
    DEFAULT_KEY_TTL_SECS
}

fn required<T>(value: Option<T>, field: &str, kind: &str) -> Result<T, AuthError> {
    value.ok_or_else(|| AuthError::Config(format!("kind = \"{kind}\" requires `{field}`")))
}

fn parse_api_url(raw: &str) -> Result<Url, AuthError> {
    let url = Url::parse(raw)
        .map_err(|err| AuthError::Config(format!("`api_url` is not a valid URL: {err}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(AuthError::Config(format!(
            "`api_url` must be http or https, not {}",
            url.scheme()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(AuthError::Config(
            "`api_url` must not embed credentials; use the token file".to_owned(),
        ));
    }
    Ok(url)
}

/// Checks a tag list: each entry must be `tag:<name>`.
pub(crate) fn validate_tags(tags: &[String]) -> Result<(), String> {
    for tag in tags {
        let name = tag.strip_prefix("tag:").unwrap_or_default();
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Err(format!(
                "tag {tag:?} must look like \"tag:name\" (letters, digits, '-', '_')"
            ));
        }
    }
    Ok(())
}

impl TryFrom<RawAuthConfig> for AuthConfig {
    type Error = AuthError;

    fn try_from(raw: RawAuthConfig) -> Result<Self, AuthError> {
        let RawAuthConfig {
            kind,
            key_file,
            api_url,
            token_file,
            user,
            client_id_file,
            client_secret_file,
            tailnet,
            tags,
            ephemeral,
            key_ttl_secs,
            ca_file,
        } = raw;
        let kind_name = match kind {
            BackendKind::Static => "static",
            BackendKind::Rscale => "rscale",
            BackendKind::Headscale => "headscale",
            BackendKind::Tailscale => "tailscale",
            BackendKind::Minter => "minter",
        };
        let unused = |present: bool, field: &str| -> Result<(), AuthError> {
            if present {
                Err(AuthError::Config(format!(
                    "`{field}` is not used by kind = \"{kind_name}\""
                )))
            } else {
                Ok(())
            }
        };
        let backend = match kind {
            BackendKind::Static => {
                unused(api_url.is_some(), "api_url")?;
                unused(token_file.is_some(), "token_file")?;
                unused(user.is_some(), "user")?;
                unused(client_id_file.is_some(), "client_id_file")?;
                unused(client_secret_file.is_some(), "client_secret_file")?;
                unused(tailnet.is_some(), "tailnet")?;
                BackendConfig::Static {
                    key_file: required(key_file, "key_file", kind_name)?,
                }
            }
            BackendKind::Rscale => {
                unused(key_file.is_some(), "key_file")?;
                unused(user.is_some(), "user")?;
                unused(client_id_file.is_some(), "client_id_file")?;
                unused(client_secret_file.is_some(), "client_secret_file")?;
                unused(tailnet.is_some(), "tailnet")?;
                BackendConfig::Rscale {
                    api_url: parse_api_url(&required(api_url, "api_url", kind_name)?)?,
                    token_file: required(token_file, "token_file", kind_name)?,
                }
            }
            BackendKind::Headscale => {
                unused(key_file.is_some(), "key_file")?;
                unused(client_id_file.is_some(), "client_id_file")?;
                unused(client_secret_file.is_some(), "client_secret_file")?;
                unused(tailnet.is_some(), "tailnet")?;
                BackendConfig::Headscale {
                    api_url: parse_api_url(&required(api_url, "api_url", kind_name)?)?,
                    token_file: required(token_file, "token_file", kind_name)?,
                    user: user.filter(|u| !u.is_empty()),
                }
            }
            BackendKind::Tailscale => {
                unused(key_file.is_some(), "key_file")?;
                unused(token_file.is_some(), "token_file")?;
                unused(user.is_some(), "user")?;
                let tailnet = tailnet.unwrap_or_else(|| DEFAULT_TAILNET.to_owned());
                if tailnet.is_empty() {
                    return Err(AuthError::Config("`tailnet` must not be empty".to_owned()));
                }
                BackendConfig::Tailscale {
                    api_url: parse_api_url(
                        api_url.as_deref().unwrap_or(DEFAULT_TAILSCALE_API_URL),
                    )?,
                    client_id_file: required(client_id_file, "client_id_file", kind_name)?,
                    client_secret_file: required(
                        client_secret_file,
                        "client_secret_file",
                        kind_name,
                    )?,
                    tailnet,
                }
            }
            BackendKind::Minter => {
                unused(key_file.is_some(), "key_file")?;
                unused(user.is_some(), "user")?;
                unused(client_id_file.is_some(), "client_id_file")?;
                unused(client_secret_file.is_some(), "client_secret_file")?;
                unused(tailnet.is_some(), "tailnet")?;
                BackendConfig::Minter {
                    api_url: parse_api_url(&required(api_url, "api_url", kind_name)?)?,
                    token_file: required(token_file, "token_file", kind_name)?,
                }
            }
        };
        validate_tags(&tags).map_err(AuthError::Config)?;
        if key_ttl_secs == 0 || key_ttl_secs > MAX_KEY_TTL_SECS {
            return Err(AuthError::Config(format!(
                "`key_ttl_secs` must be between 1 and {MAX_KEY_TTL_SECS}, not {key_ttl_secs}"
            )));
        }
        Ok(Self {
            backend,
            tags,
            ephemeral,
            key_ttl_secs,
            ca_file,
        })
    }
}

impl From<AuthConfig> for RawAuthConfig {
    fn from(config: AuthConfig) -> Self {
        let mut raw = RawAuthConfig {
            kind: BackendKind::Static,
            key_file: None,
            api_url: None,
            token_file: None,
            user: None,
            client_id_file: None,
            client_secret_file: None,
            tailnet: None,
            tags: config.tags,
            ephemeral: config.ephemeral,
            key_ttl_secs: config.key_ttl_secs,
            ca_file: config.ca_file,
        };
        match config.backend {
            BackendConfig::Static { key_file } => raw.key_file = Some(key_file),
            BackendConfig::Rscale {
                api_url,
                token_file,
            } => {
                raw.kind = BackendKind::Rscale;
                raw.api_url = Some(api_url.to_string());
                raw.token_file = Some(token_file);
            }
            BackendConfig::Headscale {
                api_url,
                token_file,
                user,
            } => {
                raw.kind = BackendKind::Headscale;
                raw.api_url = Some(api_url.to_string());
                raw.token_file = Some(token_file);
                raw.user = user;
            }
            BackendConfig::Tailscale {
                api_url,
                client_id_file,
                client_secret_file,
                tailnet,
            } => {
                raw.kind = BackendKind::Tailscale;
                raw.api_url = Some(api_url.to_string());
                raw.client_id_file = Some(client_id_file);
                raw.client_secret_file = Some(client_secret_file);
                raw.tailnet = Some(tailnet);
            }
            BackendConfig::Minter {
                api_url,
                token_file,
            } => {
                raw.kind = BackendKind::Minter;
                raw.api_url = Some(api_url.to_string());
                raw.token_file = Some(token_file);
            }
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AuthConfig, String> {
        toml::from_str::<AuthConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn static_kind_with_defaults() {
        let config = parse("kind = \"static\"\nkey_file = \"/etc/k\"\n").unwrap();
        assert_eq!(
            config.backend,
            BackendConfig::Static {
                key_file: PathBuf::from("/etc/k")
            }
        );
        assert!(config.tags.is_empty());
        assert!(!config.ephemeral);
        assert_eq!(config.key_ttl_secs, DEFAULT_KEY_TTL_SECS);
        assert_eq!(config.ca_file, None);
    }

    #[test]
    fn tailscale_defaults_api_url_and_tailnet() {
        let config = parse(
            r#"
            kind = "tailscale"
            client_id_file = "/s/id"
            client_secret_file = "/s/secret"
            tags = ["tag:k8s-pod"]
            ephemeral = false
            key_ttl_secs = 120
            "#,
        )
        .unwrap();
        match &config.backend {
            BackendConfig::Tailscale {
                api_url, tailnet, ..
            } => {
                assert_eq!(api_url.as_str(), "https://api.tailscale.com/");
                assert_eq!(tailnet, "-");
            }
            other => panic!("wrong backend {other:?}"),
        }
        assert_eq!(config.tags, vec!["tag:k8s-pod".to_owned()]);
        assert!(!config.ephemeral);
        assert_eq!(config.key_ttl_secs, 120);
    }

    #[test]
    fn headscale_user_is_optional_and_ca_file_parsed() {
        let config = parse(
            r#"
            kind = "headscale"
            api_url = "https://hs.internal:8443"
            token_file = "/s/hs"
            user = "7"
            ca_file = "/s/ca.pem"
            "#,
        )
        .unwrap();
        assert_eq!(config.backend.kind(), "headscale");
        assert!(matches!(
            &config.backend,
            BackendConfig::Headscale { user: Some(u), .. } if u == "7"
        ));
        assert_eq!(config.ca_file, Some(PathBuf::from("/s/ca.pem")));
    }

    #[test]
    fn minter_takes_a_url_and_the_projected_token_file() {
        let config = parse(
            r#"
            kind = "minter"
            api_url = "https://tailnet-cni-minter.tailnet-cni.svc:8443"
            token_file = "/var/run/secrets/tailnet-cni/minter/token"
            "#,
        )
        .unwrap();
        assert_eq!(
            config.backend,
            BackendConfig::Minter {
                api_url: Url::parse("https://tailnet-cni-minter.tailnet-cni.svc:8443").unwrap(),
                token_file: PathBuf::from("/var/run/secrets/tailnet-cni/minter/token"),
            }
        );
        let round_trip = toml::to_string(&config).unwrap();
        assert_eq!(parse(&round_trip).unwrap(), config);
        let err = parse("kind = \"minter\"\napi_url = \"http://127.0.0.1:1\"\n").unwrap_err();
        assert!(err.contains("token_file"), "{err}");
        let err = parse(
            "kind = \"minter\"\napi_url = \"http://127.0.0.1:1\"\ntoken_file = \"/t\"\nuser = \"x\"\n",
        )
        .unwrap_err();
        assert!(err.contains("user"), "{err}");
    }

    #[test]
    fn missing_required_field_is_named() {
        let err = parse("kind = \"rscale\"\napi_url = \"http://127.0.0.1:1\"\n").unwrap_err();
        assert!(err.contains("token_file"), "{err}");
    }

    #[test]
    fn field_of_another_kind_is_rejected() {
        let err = parse("kind = \"static\"\nkey_file = \"/k\"\ntoken_file = \"/t\"\n").unwrap_err();
        assert!(err.contains("token_file"), "{err}");
    }

    #[test]
    fn unknown_field_and_kind_are_rejected() {
        assert!(parse("kind = \"static\"\nkey_file = \"/k\"\nkeyfile = \"/x\"\n").is_err());
        assert!(parse("kind = \"vault\"\nkey_file = \"/k\"\n").is_err());
    }

    #[test]
    fn bad_tags_urls_and_ttl_are_rejected() {
        let base = "kind = \"rscale\"\ntoken_file = \"/t\"\n";
        assert!(parse(&format!("{base}api_url = \"ftp://x\"\n")).is_err());
        assert!(parse(&format!("{base}api_url = \"http://u:p@x\"\n")).is_err());
        let ok_url = format!("{base}api_url = \"http://127.0.0.1:9\"\n");
        assert!(parse(&ok_url).is_ok());
        assert!(parse(&format!("{ok_url}tags = [\"k8s\"]\n")).is_err());
        assert!(parse(&format!("{ok_url}tags = [\"tag:\"]\n")).is_err());
        assert!(parse(&format!("{ok_url}key_ttl_secs = 0\n")).is_err());
    }

    #[test]
    fn serializes_back_to_the_same_table() {
        let text = r#"
            kind = "headscale"
            api_url = "https://hs.internal/"
            token_file = "/s/hs"
            tags = ["tag:a"]
            ephemeral = false
            key_ttl_secs = 60
        "#;
        let config = parse(text).unwrap();
        let round_trip = toml::to_string(&config).unwrap();
        assert_eq!(parse(&round_trip).unwrap(), config);
    }
}
