//! The minter's own TOML configuration: where it listens, how it serves, the
//! audience its callers' tokens are bound to, who may call, and the control
//! server's credentials (an `[auth]` table of any kind but `minter`).
//!
//! ```toml
//! listen_addr = "0.0.0.0:8443"
//! tls_cert_file = "/etc/tailnet-cni-minter/tls/tls.crt"
//! tls_key_file = "/etc/tailnet-cni-minter/tls/tls.key"
//! audience = "tailnet-cni-minter"
//!
//! [[callers]]
//! service_account = "tailnet-cni/tailnet-cnid"
//! tags = ["tag:k8s-pod", "tag:k8s-db"]
//! default_tags = ["tag:k8s-pod"]
//!
//! [auth]
//! kind = "tailscale"
//! client_id_file = "/etc/tailnet-cni-minter/oauth/client-id"
//! client_secret_file = "/etc/tailnet-cni-minter/oauth/client-secret"
//! ephemeral = true
//! key_ttl_secs = 300
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tailnet_auth::{AuthConfig, BackendConfig};

use crate::config::LogFormat;

/// The audience a caller's projected token must be bound to, unless configured.
pub const DEFAULT_AUDIENCE: &str = "tailnet-cni-minter";

/// Why the minter's configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MinterConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid minter configuration {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid minter configuration: {0}")]
    Invalid(String),
}

/// One service account allowed to mint, and what it may ask for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    /// `namespace/name` of the service account.
    pub service_account: String,
    /// Tags this caller may put on its keys.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Tags of a key when the caller names none; all of `tags` when unset.
    #[serde(default)]
    pub default_tags: Option<Vec<String>>,
}

/// The parsed, validated configuration of `tailnet-cnid minter`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinterConfig {
    /// Where the minting endpoint listens.
    pub listen_addr: SocketAddr,
    /// Server certificate chain (PEM) for HTTPS.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Serve plain HTTP (no certificate): only where the pod network is
    /// already encrypted (a mesh, WireGuard between nodes) or in tests.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// The audience callers' tokens must be bound to.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// Log lines as JSON or text.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Who may mint, and which tags.
    pub callers: Vec<CallerConfig>,
    /// The control server's credentials and the keys' lifetime and ephemerality.
    pub auth: AuthConfig,
}

fn default_audience() -> String {
    DEFAULT_AUDIENCE.to_owned()
}

impl MinterConfig {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, MinterConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| MinterConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|error| match error {
            ParseError::Toml(source) => MinterConfigError::Parse {
                path: path.to_path_buf(),
                source: Box::new(source),
            },
            ParseError::Invalid(reason) => MinterConfigError::Invalid(reason),
        })
    }

    fn parse(text: &str) -> Result<Self, ParseError> {
        let config: Self = toml::from_str(text).map_err(ParseError::Toml)?;
        config.validate().map_err(ParseError::Invalid)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        match self.auth.backend {
            BackendConfig::Minter { .. } => {
                return Err("[auth] of the minter cannot be kind = \"minter\"".to_owned())
            }
            BackendConfig::Static { .. } => {
                return Err(
                    "[auth] kind = \"static\" hands out one reusable key: nothing to mint"
                        .to_owned(),
                )
            }
            _ => {}
        }
        match (
            &self.tls_cert_file,
            &self.tls_key_file,
            self.allow_insecure_http,
        ) {
            (Some(_), Some(_), false) => {}
            (None, None, true) => {}
            (None, None, false) => {
                return Err(
                    "set tls_cert_file and tls_key_file, or allow_insecure_http = true".to_owned(),
                )
            }
            (_, _, true) => {
                return Err("allow_insecure_http = true with a TLS certificate".to_owned())
            }
            _ => return Err("tls_cert_file and tls_key_file go together".to_owned()),
        }
        if self.audience.trim().is_empty() {
            return Err("`audience` must not be empty".to_owned());
        }
        if self.callers.is_empty() {
            return Err("no [[callers]]: nobody could mint".to_owned());
        }
        for caller in &self.callers {
            let valid = caller
                .service_account
                .split_once('/')
                .is_some_and(|(ns, name)| {
                    !ns.is_empty() && !name.is_empty() && !name.contains('/')
                });
            if !valid {
                return Err(format!(
                    "service_account {:?} must be \"namespace/name\"",
                    caller.service_account
                ));
            }
            for tag in caller.default_tags.iter().flatten() {
                if !caller.tags.contains(tag) {
                    return Err(format!(
                        "default tag {tag:?} of {} is not among its tags",
                        caller.service_account
                    ));
                }
            }
        }
        Ok(())
    }
}

enum ParseError {
    Toml(toml::de::Error),
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTH: &str =
        "[auth]\nkind = \"rscale\"\napi_url = \"http://127.0.0.1:1\"\ntoken_file = \"/t\"\n";

    fn parse(head: &str) -> Result<MinterConfig, String> {
        MinterConfig::parse(&format!("{head}\n{AUTH}")).map_err(|e| match e {
            ParseError::Toml(e) => e.to_string(),
            ParseError::Invalid(reason) => reason,
        })
    }

    const CALLER: &str = "[[callers]]\nservice_account = \"tailnet-cni/tailnet-cnid\"\ntags = [\"tag:a\", \"tag:b\"]\ndefault_tags = [\"tag:a\"]\n";

    #[test]
    fn tls_config_with_defaults() {
        let config = parse(&format!(
            "listen_addr = \"0.0.0.0:8443\"\ntls_cert_file = \"/c\"\ntls_key_file = \"/k\"\n{CALLER}"
        ))
        .unwrap();
        assert_eq!(config.audience, DEFAULT_AUDIENCE);
        assert_eq!(config.callers[0].tags, vec!["tag:a", "tag:b"]);
        assert_eq!(config.auth.backend.kind(), "rscale");
    }

    #[test]
    fn plain_http_must_be_asked_for_and_excludes_a_certificate() {
        let listen = "listen_addr = \"127.0.0.1:8080\"\n";
        assert!(parse(&format!("{listen}{CALLER}")).is_err());
        assert!(parse(&format!("{listen}allow_insecure_http = true\n{CALLER}")).is_ok());
        assert!(parse(&format!(
            "{listen}allow_insecure_http = true\ntls_cert_file = \"/c\"\ntls_key_file = \"/k\"\n{CALLER}"
        ))
        .is_err());
        assert!(parse(&format!("{listen}tls_cert_file = \"/c\"\n{CALLER}")).is_err());
    }

    #[test]
    fn callers_are_required_and_checked() {
        let head = "listen_addr = \"127.0.0.1:8080\"\nallow_insecure_http = true\n";
        assert!(parse(head).is_err());
        let bad_account = "[[callers]]\nservice_account = \"tailnet-cnid\"\n";
        assert!(parse(&format!("{head}{bad_account}")).is_err());
        let stray_default = "[[callers]]\nservice_account = \"a/b\"\ntags = [\"tag:a\"]\ndefault_tags = [\"tag:z\"]\n";
        assert!(parse(&format!("{head}{stray_default}")).is_err());
    }

    #[test]
    fn a_minter_cannot_mint_through_another_minter_or_a_static_key() {
        let head =
            format!("listen_addr = \"127.0.0.1:8080\"\nallow_insecure_http = true\n{CALLER}");
        for auth in [
            "[auth]\nkind = \"minter\"\napi_url = \"http://127.0.0.1:1\"\ntoken_file = \"/t\"\n",
            "[auth]\nkind = \"static\"\nkey_file = \"/k\"\n",
        ] {
            let result = MinterConfig::parse(&format!("{head}{auth}"));
            assert!(matches!(result, Err(ParseError::Invalid(_))), "{auth}");
        }
    }
}
