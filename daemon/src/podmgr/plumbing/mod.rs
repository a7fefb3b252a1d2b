//! Per-pod network plumbing: a persistent TUN and a veth pair in the host
//! netns, the pod's tailnet interface inside the pod, and per-pod policy
//! routing that ties the two together.
//!
//! ```text
//!  pod netns                 host netns
//!  ts0 (100.x/32, fd7a::x) ─ tnv<hash> ──rule iif tnv → table T: default dev tnt<hash>
//!                                     ◄─rule iif tnt → table T: 100.x/32 dev tnv<hash>
//! ```
//!
//! Rules match the input interface, so a pod's packets can only ever reach
//! its own TUN (and the engine behind it), and packets from a TUN only reach
//! its own pod. No route is shared between pods.
//!
//! [`Plumber::setup`] builds it (`setup`), [`Plumber::check`] verifies it
//! (`check`), [`Plumber::teardown`] removes one pod's (`teardown`) and
//! [`Plumber::remove_stale`] whatever no pod owns (`sweep`). Both address
//! families are driven from one table (`family`); a node or pod without
//! IPv6 gets IPv4 only (`ipv6`). Every netlink call goes through `nl`.

mod check;
mod family;
mod host_dumps;
mod ipv6;
mod local_rule;
mod pod_routes;
mod setup;
mod sweep;
mod teardown;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;

use rtnetlink::{Handle, IpVersion};
use serde::{Deserialize, Serialize};

use self::host_dumps::HostDumps;
use super::naming::{validate_container_id, validate_if_name};
use super::netns::Netns;
use super::nl::{self, LinkInfoView};
use super::sysctl::SysctlError;

pub use family::{POD_GATEWAY_V4, POD_GATEWAY_V6, TAILNET_V4, TAILNET_V6};
pub use ipv6::{Ipv6Unavailable, Place};
pub use pod_routes::{network_of, PodRouteTarget};

/// Ahead of every other rule but the kernel's `local` one, which setup moves
/// behind it (`local_rule`): a pod's packets are never delivered to the
/// node, and a node-local tailscaled (5210..5270) never captures them.
pub const DEFAULT_RULE_PRIORITY: u32 = 1;
pub const DEFAULT_MTU: u32 = 1280;
pub const DEFAULT_POD_IF_NAME: &str = "ts0";
/// Marks host links as ours and names the container, so a hash collision is
/// detected instead of deleting another pod's device.
const ALIAS_PREFIX: &str = "tailnet-cni:";

/// What the runtime asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetSpec {
    pub container_id: String,
    pub netns_path: PathBuf,
    /// CNI ifName, normally [`DEFAULT_POD_IF_NAME`].
    pub if_name: String,
    pub mtu: u32,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// What was built for one pod; persisted in the pod's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNet {
    pub container_id: String,
    /// TUN in the host netns; the engine opens it with
    /// [`open_tun`](super::tun::open_tun).
    pub tun_name: String,
    pub host_veth: String,
    pub pod_if_name: String,
    /// MAC of the pod's interface (for the CNI result), `aa:bb:..`.
    pub pod_mac: String,
    pub host_veth_mac: String,
    pub table: u32,
    pub rule_priority: u32,
    pub mtu: u32,
    /// The pod's IPv4 address, when it was plumbed.
    pub ipv4: Option<Ipv4Addr>,
    /// The pod's IPv6 address, when it was plumbed: `None` also when the
    /// spec had one that [`ipv6_omitted`](Self::ipv6_omitted) explains.
    pub ipv6: Option<Ipv6Addr>,
    /// Why the spec's IPv6 address was left out (IPv6 unavailable on the
    /// node or in the pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_omitted: Option<Ipv6Unavailable>,
}

impl PodNet {
    /// Host link names this pod owns (for [`Plumber::remove_stale`]).
    pub fn host_links(&self) -> [&str; 2] {
        [&self.tun_name, &self.host_veth]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlumbError {
    #[error("invalid pod network spec: {0}")]
    InvalidSpec(String),
    #[error("opening a netlink socket in the host netns: {0}")]
    NetlinkSocket(#[source] io::Error),
    #[error("network namespace {path}: {source}")]
    Netns { path: PathBuf, source: io::Error },
    #[error("interface {if_name} already exists in {netns}")]
    InterfaceExists { if_name: String, netns: PathBuf },
    #[error("host link {link} belongs to another container ({alias})")]
    NameCollision { link: String, alias: String },
    #[error("pod has only an IPv6 address, but {0}")]
    Ipv6OnlyWithoutIpv6(Ipv6Unavailable),
    #[error("TUN {name}: {op}: {source}")]
    Tun {
        name: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        source: rtnetlink::Error,
    },
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error("missing: {0}")]
    Missing(String),
    #[error("drift: {0}")]
    Drift(String),
}

fn netlink_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> PlumbError {
    let op = op.into();
    move |source| PlumbError::Netlink { op, source }
}

/// Every error a teardown met; it kept going after each of them.
#[derive(Debug, thiserror::Error)]
pub struct TeardownErrors(pub Vec<PlumbError>);

impl fmt::Display for TeardownErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "teardown met {} error(s)", self.0.len())?;
        for (i, e) in self.0.iter().enumerate() {
            write!(f, "; [{}] {e}", i + 1)?;
        }
        Ok(())
    }
}

/// Result of [`Plumber::remove_stale`].
#[derive(Debug, Default)]
pub struct StaleCleanup {
    /// Host links that were deleted.
    pub removed_links: Vec<String>,
    /// Rules that were deleted, as `iif -> table`.
    pub removed_rules: Vec<String>,
    pub errors: Vec<PlumbError>,
}

#[derive(Debug, Clone, Copy)]
pub struct PlumbOptions {
    pub rule_priority: u32,
}

impl Default for PlumbOptions {
    fn default() -> Self {
        Self {
            rule_priority: DEFAULT_RULE_PRIORITY,
        }
    }
}

/// Builds, checks and removes per-pod plumbing. Cheap to share: every method
/// takes `&self` and pods are handled concurrently.
#[derive(Debug, Clone)]
pub struct Plumber {
    host: Handle,
    /// Concurrent pods take turns for dumps only, never for changes, and
    /// share a dump when several wait for one.
    host_dumps: Arc<HostDumps>,
    options: PlumbOptions,
}

impl Plumber {
    /// Opens a netlink connection in the current (host) netns. Must be
    /// called inside a tokio runtime.
    pub fn new() -> Result<Self, PlumbError> {
        Self::with_options(PlumbOptions::default())
    }

    /// Like [`new`](Self::new), with non-default options.
    pub fn with_options(options: PlumbOptions) -> Result<Self, PlumbError> {
        let (connection, host, _) =
            rtnetlink::new_connection().map_err(PlumbError::NetlinkSocket)?;
        tokio::spawn(connection);
        Ok(Self {
            host,
            host_dumps: Arc::default(),
            options,
        })
    }

    async fn host_rules(&self, version: IpVersion) -> Result<Arc<Vec<nl::RuleView>>, PlumbError> {
        let dumps = &self.host_dumps;
        dumps
            .take(dumps.rules(&version), || {
                nl::rules(&self.host, version.clone())
            })
            .await
            .map_err(netlink_err("listing rules"))
    }

    async fn host_routes(&self, version: IpVersion) -> Result<Arc<Vec<nl::RouteView>>, PlumbError> {
        let dumps = &self.host_dumps;
        dumps
            .take(dumps.routes(&version), || {
                nl::routes(&self.host, version.clone())
            })
            .await
            .map_err(netlink_err("listing routes"))
    }

    async fn host_links(&self) -> Result<Arc<Vec<LinkInfoView>>, PlumbError> {
        let dumps = &self.host_dumps;
        dumps
            .take(dumps.links(), || nl::all_links(&self.host))
            .await
            .map_err(netlink_err("listing links"))
    }
}

/// Opens the pod's namespace and a netlink socket inside it.
async fn open_pod_netns(path: &std::path::Path) -> Result<(Netns, Handle), PlumbError> {
    let netns_err = |source| PlumbError::Netns {
        path: path.to_path_buf(),
        source,
    };
    let netns = Netns::open(path).map_err(netns_err)?;
    let handle = netns.netlink().await.map_err(netns_err)?;
    Ok((netns, handle))
}

/// Tables the kernel itself uses: unspec, default, main, local.
fn is_reserved_table(table: u32) -> bool {
    matches!(table, 0 | 253..=255)
}

/// Matching by table is how leftovers are found; never let a corrupt record
/// make that match the kernel's own tables.
fn is_pod_table(table: u32, pod_net: &PodNet) -> bool {
    table == pod_net.table && !is_reserved_table(table)
}

fn alias_for(container_id: &str) -> String {
    format!("{ALIAS_PREFIX}{container_id}")
}

fn validate_spec(spec: &PodNetSpec) -> Result<(), PlumbError> {
    validate_container_id(&spec.container_id)
        .map_err(|e| PlumbError::InvalidSpec(e.to_string()))?;
    validate_if_name(&spec.if_name).map_err(|e| PlumbError::InvalidSpec(e.to_string()))?;
    tailnet_cni_proto::validate::mtu(u64::from(spec.mtu))
        .map_err(|invalid| PlumbError::InvalidSpec(invalid.to_string()))?;
    if spec.ipv4.is_none() && spec.ipv6.is_none() {
        return Err(PlumbError::InvalidSpec(
            "pod has neither an IPv4 nor an IPv6 address".into(),
        ));
    }
    Ok(())
}

async fn require_link(handle: &Handle, name: &str) -> Result<LinkInfoView, PlumbError> {
    nl::link_by_name(handle, name)
        .await
        .map_err(netlink_err(format!("looking up {name}")))?
        .ok_or_else(|| PlumbError::Missing(format!("link {name}")))
}

/// Runs a TUN ioctl off the runtime's threads.
async fn tun_op(
    name: &str,
    op: &'static str,
    work: fn(&str) -> io::Result<()>,
) -> Result<(), PlumbError> {
    let owned = name.to_string();
    tokio::task::spawn_blocking(move || work(&owned))
        .await
        .map_err(io::Error::other)
        .and_then(|result| result)
        .map_err(|source| PlumbError::Tun {
            name: name.to_string(),
            op,
            source,
        })
}
