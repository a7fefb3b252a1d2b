//! Daemon configuration: `tailnet-cnid --config FILE` (TOML).
//!
//! ```toml
//! socket = "/run/tailnet-cni/daemon.sock"
//! state_dir = "/var/lib/tailnet-cni"
//! cluster_name = "homelab"
//! control_url = "https://controlplane.tailscale.com"
//!
//! [auth]
//! kind = "tailscale"
//! client_id_file = "/etc/tailnet-cni/secrets/client_id"
//! client_secret_file = "/etc/tailnet-cni/secrets/client_secret"
//! tags = ["tag:k8s-pod"]
//! ```
//!
//! The `[auth]` table is the auth crate's `AuthConfig`; see README.md for
//! every key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tailnet_cni_proto::selection::SelectionMode;

pub const DEFAULT_SOCKET: &str = "/run/tailnet-cni/daemon.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tailnet-cni";
/// Tailscale's own choice for a userspace TUN: safe on any path.
pub const DEFAULT_MTU: u32 = 1280;

/// Which pods join the tailnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// Every pod the shim is called for.
    All,
    /// Only pods annotated `tailnet-cni.io/enabled: "true"`: the shim
    /// answers every other pod without the daemon.
    #[default]
    Annotated,
    /// As `annotated`, and every pod of a namespace labelled
    /// `tailnet-cni.io/enabled: "true"` unless it opts out.
    Namespace,
}

impl From<Selection> for SelectionMode {
    /// The `selection` the installer writes into the plugin entry.
    fn from(selection: Selection) -> Self {
        match selection {
            Selection::All => Self::All,
            Selection::Annotated => Self::Annotated,
            Selection::Namespace => Self::Namespace,
        }
    }
}

/// Tenant guardrails, owned by the cluster admin (`[tenancy]`): which
/// namespaces may put pods on the tailnet, whose pods may choose their
/// hostname, and which tags each namespace may ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenancy {
    /// Namespaces whose pods may join. Without this and without
    /// `namespace_label`, every namespace may.
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    /// A namespace label; a namespace carrying it with the value `"true"`
    /// may join too (read from the Kubernetes API).
    #[serde(default)]
    pub namespace_label: Option<String>,
    /// Namespaces whose pods may take any hostname. Elsewhere a requested
    /// hostname is placed under `{cluster}-{namespace}-`.
    #[serde(default)]
    pub hostname_namespaces: Vec<String>,
    /// Per-namespace tag allowlists; a namespace listed here may request
    /// only its own tags, instead of `allowed_tags`.
    #[serde(default)]
    pub tags: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    pub cluster_name: String,
    pub control_url: String,
    /// Extra root CA (PEM) for a self-hosted control server over https.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept an `http://` control_url. Without TLS anyone on the path can
    /// read the `/key` answer and swap the server's key, so this must be
    /// asked for explicitly (test beds, a server on loopback).
    #[serde(default)]
    pub allow_insecure_http: bool,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    #[serde(default)]
    pub selection: Selection,
    /// Tags a pod may request through its annotation; others are refused.
    #[serde(default)]
    pub allowed_tags: Vec<String>,
    /// Tenant guardrails; the default lets every namespace opt in and puts
    /// requested hostnames under `{cluster}-{namespace}-`.
    #[serde(default)]
    pub tenancy: Tenancy,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[serde(default)]
    pub health_addr: Option<SocketAddr>,
    /// A second address serving the same endpoints, for Prometheus in the
    /// cluster (e.g. `0.0.0.0:9465`), while `health_addr` stays on loopback.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
    #[serde(default)]
    pub log_format: LogFormat,
    /// Uids allowed to call the daemon socket (checked with SO_PEERCRED).
    #[serde(default = "default_allowed_uids")]
    pub allowed_uids: Vec<u32>,
    /// How many pod registrations run at once; more wait their turn.
    #[serde(default = "default_max_parallel_adds")]
    pub max_parallel_adds: usize,
    /// Identities kept registered ahead of demand for each tag set pods
    /// join with, so that ADD binds one instead of registering; 0 turns
    /// the pool off. A tag set is filled after its first ADD, or from the
    /// start when listed in `pool_tags`.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Tag sets the pool fills from the start (`[]`: the auth backend's
    /// configured tags).
    #[serde(default)]
    pub pool_tags: Vec<Vec<String>>,
    /// Seconds between reconcile passes, which release pods whose network
    /// namespace is gone and sweep plumbing no pod owns. 0 turns them off.
    #[serde(default = "default_reconcile_interval_secs")]
    pub reconcile_interval_secs: u64,
    /// Node keys are renewed once less than this fraction of their lifetime
    /// is left (0 renews only when the server expires them; at most 0.5).
    #[serde(default = "default_key_renew_fraction")]
    pub key_renew_fraction: f64,
    /// Install peers' subnet routes for pods that do not say otherwise
    /// (annotation `tailnet-cni.io/accept-routes`). Off by default.
    #[serde(default)]
    pub accept_routes: bool,
    /// Exit node for pods that do not say otherwise (annotation
    /// `tailnet-cni.io/exit-node`): a tailnet address, stable node id or
    /// name. None by default.
    #[serde(default)]
    pub exit_node: Option<String>,
    /// Events, pod annotations and the watch for pods missing the plugin.
    #[serde(default)]
    pub kubernetes: crate::k8s::KubeConfig,
    /// Where pods' MagicDNS resolvers send names that are not the
    /// tailnet's: the cluster DNS ("10.43.0.10:53"). Unset: the first
    /// nameserver of the daemon's /etc/resolv.conf.
    #[serde(default)]
    pub dns_upstream: Option<SocketAddr>,
    /// Milliseconds one upstream has to answer a forwarded query.
    #[serde(default = "default_dns_timeout_ms")]
    pub dns_timeout_ms: u64,
    /// Forwarded DNS queries one pod may have outstanding.
    #[serde(default = "default_dns_max_in_flight")]
    pub dns_max_in_flight: usize,
    pub auth: tailnet_auth::AuthConfig,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_mtu() -> u32 {
    DEFAULT_MTU
}
fn default_allowed_uids() -> Vec<u32> {
    vec![0]
}
fn default_max_parallel_adds() -> usize {
    64
}
/// Off unless asked: pooled nodes are devices the admin sees before any
/// pod uses them, and some control servers keep a pooled node's first DNS
/// name after the pod renames it.
fn default_pool_size() -> usize {
    0
}
fn default_reconcile_interval_secs() -> u64 {
    60
}
fn default_key_renew_fraction() -> f64 {
    0.1
}
fn default_dns_timeout_ms() -> u64 {
    2000
}
fn default_dns_max_in_flight() -> usize {
    32
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid config file {path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ParseError::Toml(source) => ConfigError::Parse {
                path: path.to_path_buf(),
                source: Box::new(source),
            },
            ParseError::Invalid(msg) => ConfigError::Invalid {
                path: path.to_path_buf(),
                msg,
            },
        })
    }

    /// Whether the control connection runs without TLS (allowed only with
    /// `allow_insecure_http`; the daemon warns about it at start).
    pub fn insecure_control(&self) -> bool {
        self.control_url.starts_with("http://")
    }

    fn parse(text: &str) -> Result<Self, ParseError> {
        let config: Config = toml::from_str(text).map_err(ParseError::Toml)?;
        config.validate().map_err(ParseError::Invalid)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.cluster_name.trim().is_empty() {
            return Err("cluster_name must not be empty".into());
        }
        let url = self.control_url.as_str();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "control_url must start with http:// or https://, got {url:?}"
            ));
        }
        if self.insecure_control() && !self.allow_insecure_http {
            return Err(format!(
                "control_url {url:?} is plain http: use https, or set \
                 allow_insecure_http = true to accept an unencrypted control connection"
            ));
        }
        tailnet_cni_proto::validate::mtu(u64::from(self.mtu))
            .map_err(|invalid| format!("mtu: {invalid}"))?;
        if self.max_parallel_adds == 0 {
            return Err("max_parallel_adds must be at least 1".into());
        }
        if !(0.0..=0.5).contains(&self.key_renew_fraction) {
            return Err(format!(
                "key_renew_fraction {} is outside 0..=0.5",
                self.key_renew_fraction
            ));
        }
        if self.kubernetes.queue_capacity == 0 {
            return Err("kubernetes.queue_capacity must be at least 1".into());
        }
        if !(100..=30_000).contains(&self.dns_timeout_ms) {
            return Err(format!(
                "dns_timeout_ms {} is outside 100..=30000",
                self.dns_timeout_ms
            ));
        }
        if self.dns_max_in_flight == 0 {
            return Err("dns_max_in_flight must be at least 1".into());
        }
        if let Some(bad) = self.allowed_tags.iter().find(|t| !t.starts_with("tag:")) {
            return Err(format!(
                "allowed_tags entry {bad:?} must start with \"tag:\""
            ));
        }
        self.tenancy.validate()
    }
}

impl Tenancy {
    fn validate(&self) -> Result<(), String> {
        let listed = self.namespaces.iter().flatten();
        if let Some(bad) = listed
            .chain(&self.hostname_namespaces)
            .chain(self.tags.keys())
            .find(|ns| ns.trim().is_empty())
        {
            return Err(format!("tenancy: namespace {bad:?} must not be empty"));
        }
        if self
            .namespace_label
            .as_ref()
            .is_some_and(|label| label.trim().is_empty())
        {
            return Err("tenancy.namespace_label must not be empty".into());
        }
        for (namespace, tags) in &self.tags {
            if let Some(bad) = tags.iter().find(|t| !t.starts_with("tag:")) {
                return Err(format!(
                    "tenancy.tags.{namespace} entry {bad:?} must start with \"tag:\""
                ));
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

    const MINIMAL: &str = r#"
        cluster_name = "homelab"
        control_url = "http://127.0.0.1:18080"
        allow_insecure_http = true
        [auth]
        kind = "static"
        key_file = "/etc/tailnet-cni/authkey"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let Ok(config) = Config::parse(MINIMAL) else {
            panic!("minimal config must parse");
        };
        assert_eq!(config.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(config.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(config.mtu, DEFAULT_MTU);
        assert_eq!(config.selection, Selection::Annotated);
        assert_eq!(config.allowed_uids, vec![0]);
        assert_eq!(config.reconcile_interval_secs, 60);
        assert_eq!(config.tenancy, Tenancy::default());
        assert!(config.kubernetes.events && config.kubernetes.annotate);
        assert!(!config.kubernetes.evict_missing_plugin);
        assert_eq!(config.kubernetes.missing_plugin_interval_secs, 60);
        assert_eq!(config.metrics_addr, None);
        assert_eq!(config.dns_upstream, None);
        assert_eq!(config.dns_timeout_ms, 2000);
        assert_eq!(config.dns_max_in_flight, 32);
    }

    #[test]
    fn tenancy_table_is_read() {
        let text = format!(
            "selection = \"namespace\"\n{MINIMAL}\n[tenancy]\nnamespaces = [\"web\"]\n\
             namespace_label = \"example.com/tailnet\"\nhostname_namespaces = [\"infra\"]\n\
             [tenancy.tags]\nweb = [\"tag:web\"]\n"
        );
        let Ok(config) = Config::parse(&text) else {
            panic!("tenancy config must parse");
        };
        assert_eq!(config.selection, Selection::Namespace);
        assert_eq!(config.tenancy.namespaces, Some(vec!["web".to_string()]));
        assert_eq!(
            config.tenancy.namespace_label.as_deref(),
            Some("example.com/tailnet")
        );
        assert_eq!(
            config.tenancy.hostname_namespaces,
            vec!["infra".to_string()]
        );
        assert_eq!(config.tenancy.tags["web"], vec!["tag:web".to_string()]);
    }

    #[test]
    fn every_mode_maps_to_the_entry_mode_of_the_same_name() {
        for (selection, text) in [
            (Selection::All, "all"),
            (Selection::Annotated, "annotated"),
            (Selection::Namespace, "namespace"),
        ] {
            let config = Config::parse(&format!("selection = \"{text}\"\n{MINIMAL}"));
            assert!(
                matches!(config, Ok(ref c) if c.selection == selection),
                "{text}"
            );
            assert_eq!(SelectionMode::from(selection).as_str(), text);
        }
    }

    #[test]
    fn accepts_the_largest_mtu() {
        let Ok(config) = Config::parse(&format!("mtu = 9000\n{MINIMAL}")) else {
            panic!("mtu 9000 must parse");
        };
        assert_eq!(config.mtu, 9000);
    }

    #[test]
    fn dns_settings_parse() {
        let text = format!(
            "dns_upstream = \"10.43.0.10:53\"\ndns_timeout_ms = 500\ndns_max_in_flight = 8\n{MINIMAL}"
        );
        let Ok(config) = Config::parse(&text) else {
            panic!("DNS settings must parse");
        };
        assert_eq!(config.dns_upstream, Some("10.43.0.10:53".parse().unwrap()));
        assert_eq!(config.dns_timeout_ms, 500);
        assert_eq!(config.dns_max_in_flight, 8);
        let no_port = format!("dns_upstream = \"10.43.0.10\"\n{MINIMAL}");
        assert!(matches!(Config::parse(&no_port), Err(ParseError::Toml(_))));
    }

    #[test]
    fn rejects_bad_values_with_a_reason() {
        let cases = [
            (MINIMAL.replace("http://127", "ftp://127"), "control_url"),
            (format!("mtu = 100\n{MINIMAL}"), "mtu"),
            // Below IPv6's minimum every ADD would fail; above the engine's
            // buffers packets would be lost.
            (format!("mtu = 1000\n{MINIMAL}"), "mtu"),
            (format!("mtu = 9001\n{MINIMAL}"), "mtu"),
            (MINIMAL.replace("\"homelab\"", "\"  \""), "cluster_name"),
            (
                format!("allowed_tags = [\"k8s\"]\n{MINIMAL}"),
                "allowed_tags",
            ),
            (
                format!("key_renew_fraction = 0.9\n{MINIMAL}"),
                "key_renew_fraction",
            ),
            (
                format!("{MINIMAL}\n[tenancy.tags]\nweb = [\"web\"]\n"),
                "tenancy.tags.web",
            ),
            (
                format!("{MINIMAL}\n[tenancy]\nnamespaces = [\" \"]\n"),
                "tenancy: namespace",
            ),
            (
                format!("{MINIMAL}\n[tenancy]\nnamespace_label = \"\"\n"),
                "tenancy.namespace_label",
            ),
            (
                MINIMAL.replace("[auth]", "[kubernetes]\nqueue_capacity = 0\n[auth]"),
                "queue_capacity",
            ),
            (format!("dns_timeout_ms = 0\n{MINIMAL}"), "dns_timeout_ms"),
            (
                format!("dns_max_in_flight = 0\n{MINIMAL}"),
                "dns_max_in_flight",
            ),
        ];
        for (text, needle) in cases {
            match Config::parse(&text) {
                Err(ParseError::Invalid(msg)) => assert!(msg.contains(needle), "{msg}"),
                Err(ParseError::Toml(e)) => panic!("expected a validation error, got {e}"),
                Ok(_) => panic!("config with bad {needle} was accepted"),
            }
        }
    }

    #[test]
    fn plain_http_control_needs_the_explicit_switch() {
        let without = MINIMAL.replace("allow_insecure_http = true\n", "");
        match Config::parse(&without) {
            Err(ParseError::Invalid(msg)) => {
                assert!(msg.contains("allow_insecure_http = true"), "{msg}");
                assert!(msg.contains("http://127.0.0.1:18080"), "{msg}");
            }
            Err(ParseError::Toml(e)) => panic!("expected a validation error, got {e}"),
            Ok(_) => panic!("a plain http control_url was accepted without the switch"),
        }
        let https = without.replace("http://127", "https://127");
        let Ok(config) = Config::parse(&https) else {
            panic!("https needs no switch");
        };
        assert!(!config.allow_insecure_http && !config.insecure_control());
        let Ok(config) = Config::parse(MINIMAL) else {
            panic!("the switch allows plain http");
        };
        assert!(config.allow_insecure_http && config.insecure_control());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = format!("sokcet = \"/tmp/x\"\n{MINIMAL}");
        assert!(matches!(Config::parse(&text), Err(ParseError::Toml(_))));
    }

    /// The config shipped in the ConfigMap must be one the daemon accepts.
    #[test]
    fn deploy_configmap_config_parses() {
        let manifest = include_str!("../../deploy/configmap.yaml");
        let (_, after) = manifest
            .split_once("config.toml: |\n")
            .expect("configmap has a config.toml entry");
        let toml: String = after
            .lines()
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
            .collect();
        match Config::parse(&toml) {
            Ok(config) => {
                assert_eq!(config.cluster_name, "homelab");
                assert_eq!(config.selection, Selection::Annotated);
                assert_eq!(config.auth.backend.kind(), "tailscale");
            }
            Err(ParseError::Toml(e)) => panic!("deploy config does not parse: {e}"),
            Err(ParseError::Invalid(e)) => panic!("deploy config is invalid: {e}"),
        }
    }

    #[test]
    fn load_names_the_file() {
        let err = Config::load(Path::new("/nonexistent/tailnet-cnid.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tailnet-cnid.toml"));
    }
}
