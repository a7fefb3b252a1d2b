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

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth};
use netlink_packet_route::route::RouteScope;
use netlink_packet_route::rule::RuleAction;
use rtnetlink::{Handle, IpVersion, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::naming::{
    host_veth_name, is_owned_link_name, tun_name, validate_container_id, validate_if_name,
};
use super::netns::Netns;
use super::nl::{self, format_mac, is_exists, is_not_found, LinkInfoView};
use super::sysctl::{self, SysctlError};
use super::tun;

/// Ahead of tailscaled's rules (5210..5270) so a node-local tailscaled never
/// captures a pod's tailnet traffic.
pub const DEFAULT_RULE_PRIORITY: u32 = 5100;
pub const DEFAULT_MTU: u32 = 1280;
pub const DEFAULT_POD_IF_NAME: &str = "ts0";
/// Link-local next hops inside the pod; answered by a permanent neighbour
/// entry, so no ARP/NDP or proxy_arp is involved.
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 100, 1);
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
pub const TAILNET_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);
pub const TAILNET_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0), 48);
const OPERATIONAL_WAIT: Duration = Duration::from_secs(3);
const MIN_MTU: u32 = 1280;
const MAX_MTU: u32 = 65535;
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
    /// TUN in the host netns; the engine opens it with [`tun::open_tun`].
    pub tun_name: String,
    pub host_veth: String,
    pub pod_if_name: String,
    /// MAC of the pod's interface (for the CNI result), `aa:bb:..`.
    pub pod_mac: String,
    pub host_veth_mac: String,
    pub table: u32,
    pub rule_priority: u32,
    pub mtu: u32,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
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
    /// The kernel runs one dump per netlink socket at a time (a second gets
    /// EBUSY); concurrent pods take turns for dumps only, never for changes.
    host_dumps: Arc<tokio::sync::Mutex<()>>,
    options: PlumbOptions,
}

impl Plumber {
    /// Opens a netlink connection in the current (host) netns. Must be
    /// called inside a tokio runtime.
    pub fn new() -> Result<Self, PlumbError> {
        Self::with_options(PlumbOptions::default())
    }

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

    /// Creates everything for one pod in `table`. On failure, whatever was
    /// created is removed again before the error is returned.
    pub async fn setup(&self, spec: &PodNetSpec, table: u32) -> Result<PodNet, PlumbError> {
        validate_spec(spec)?;
        if is_reserved_table(table) {
            return Err(PlumbError::InvalidSpec(format!(
                "routing table {table} is reserved by the kernel"
            )));
        }
        let netns = Netns::open(&spec.netns_path).map_err(|source| PlumbError::Netns {
            path: spec.netns_path.clone(),
            source,
        })?;
        let pod = netns.netlink().await.map_err(|source| PlumbError::Netns {
            path: spec.netns_path.clone(),
            source,
        })?;
        if nl::link_by_name(&pod, &spec.if_name)
            .await
            .map_err(netlink_err(format!("looking up {} in pod", spec.if_name)))?
            .is_some()
        {
            return Err(PlumbError::InterfaceExists {
                if_name: spec.if_name.clone(),
                netns: spec.netns_path.clone(),
            });
        }

        let mut pod_net = PodNet {
            container_id: spec.container_id.clone(),
            tun_name: tun_name(&spec.container_id),
            host_veth: host_veth_name(&spec.container_id),
            pod_if_name: spec.if_name.clone(),
            pod_mac: String::new(),
            host_veth_mac: String::new(),
            table,
            rule_priority: self.options.rule_priority,
            mtu: spec.mtu,
            ipv4: spec.ipv4,
            ipv6: spec.ipv6,
        };
        // Leftovers of an earlier, interrupted attempt for this container
        // would make the creates below fail; clear them first.
        self.clear_leftovers(&pod_net).await?;

        match self.build(spec, &netns, &pod, &mut pod_net).await {
            Ok(()) => {
                info!(
                    container_id = %spec.container_id,
                    tun = %pod_net.tun_name,
                    host_veth = %pod_net.host_veth,
                    table = pod_net.table,
                    "pod network set up"
                );
                Ok(pod_net)
            }
            Err(error) => {
                warn!(container_id = %spec.container_id, %error, "pod network setup failed, rolling back");
                if let Err(rollback) = self.teardown_inner(&pod_net, Some(&pod)).await {
                    warn!(container_id = %spec.container_id, error = %rollback, "rollback incomplete");
                }
                Err(error)
            }
        }
    }

    async fn clear_leftovers(&self, pod_net: &PodNet) -> Result<(), PlumbError> {
        for name in pod_net.host_links() {
            let Some(link) = nl::link_by_name(&self.host, name)
                .await
                .map_err(netlink_err(format!("looking up {name}")))?
            else {
                continue;
            };
            let ours = alias_for(&pod_net.container_id);
            match &link.alias {
                Some(alias) if *alias != ours => {
                    return Err(PlumbError::NameCollision {
                        link: name.to_string(),
                        alias: alias.clone(),
                    })
                }
                _ => {
                    warn!(link = name, container_id = %pod_net.container_id, "removing leftover host link");
                    self.delete_link(&link).await?;
                }
            }
        }
        let names: HashSet<&str> = pod_net.host_links().into_iter().collect();
        for version in [IpVersion::V4, IpVersion::V6] {
            for rule in self
                .host_rules(version)
                .await
                .map_err(netlink_err("listing rules"))?
            {
                if rule.iif.as_deref().is_some_and(|iif| names.contains(iif))
                    || is_pod_table(rule.table, pod_net)
                {
                    delete_rule(&self.host, rule).await?;
                }
            }
        }
        Ok(())
    }

    async fn build(
        &self,
        spec: &PodNetSpec,
        netns: &Netns,
        pod: &Handle,
        pod_net: &mut PodNet,
    ) -> Result<(), PlumbError> {
        let host = &self.host;
        let alias = alias_for(&spec.container_id);
        let ipv6_present = Path::new("/proc/sys/net/ipv6").exists();

        // TUN, persistent so it outlives a daemon restart.
        let tun_name = pod_net.tun_name.clone();
        tokio::task::spawn_blocking(move || tun::create_persistent_tun(&tun_name))
            .await
            .map_err(|e| PlumbError::Tun {
                name: pod_net.tun_name.clone(),
                op: "create",
                source: io::Error::other(e),
            })?
            .map_err(|source| PlumbError::Tun {
                name: pod_net.tun_name.clone(),
                op: "create",
                source,
            })?;
        let tun = require_link(host, &pod_net.tun_name).await?;
        host.link()
            .set(
                LinkUnspec::new_with_index(tun.index)
                    .alias(alias.clone())
                    .mtu(spec.mtu)
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink_err(format!("configuring {}", pod_net.tun_name)))?;
        configure_host_link_sysctls(&pod_net.tun_name, true, ipv6_present)?;
        set_up(host, tun.index, &pod_net.tun_name).await?;

        // veth pair; the peer is born inside the pod with its final name.
        let peer = LinkUnspec::new_with_name(&spec.if_name)
            .mtu(spec.mtu)
            .setns_by_fd(netns.file().as_raw_fd())
            .build();
        let veth = LinkVeth::new(&pod_net.host_veth, &spec.if_name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .mtu(spec.mtu)
            .build();
        if let Err(e) = host.link().add(veth).execute().await {
            if is_exists(&e)
                && nl::link_by_name(pod, &spec.if_name)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
            {
                return Err(PlumbError::InterfaceExists {
                    if_name: spec.if_name.clone(),
                    netns: spec.netns_path.clone(),
                });
            }
            return Err(netlink_err(format!("creating veth {}", pod_net.host_veth))(
                e,
            ));
        }
        let host_veth = require_link(host, &pod_net.host_veth).await?;
        let host_mac = host_veth
            .mac
            .ok_or_else(|| PlumbError::Missing(format!("MAC of {}", pod_net.host_veth)))?;
        pod_net.host_veth_mac = format_mac(&host_mac);
        host.link()
            .set(
                LinkUnspec::new_with_index(host_veth.index)
                    .alias(alias)
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink_err(format!("configuring {}", pod_net.host_veth)))?;
        configure_host_link_sysctls(&pod_net.host_veth, false, ipv6_present)?;
        set_up(host, host_veth.index, &pod_net.host_veth).await?;

        // Inside the pod.
        let pod_link = nl::link_by_name(pod, &spec.if_name)
            .await
            .map_err(netlink_err(format!("looking up {} in pod", spec.if_name)))?
            .ok_or_else(|| {
                PlumbError::Missing(format!("{} in pod after creation", spec.if_name))
            })?;
        let pod_mac = pod_link
            .mac
            .ok_or_else(|| PlumbError::Missing(format!("MAC of {} in pod", spec.if_name)))?;
        pod_net.pod_mac = format_mac(&pod_mac);
        if let Some(v4) = spec.ipv4 {
            pod.address()
                .add(pod_link.index, IpAddr::V4(v4), 32)
                .execute()
                .await
                .map_err(netlink_err(format!(
                    "adding {v4}/32 to pod {}",
                    spec.if_name
                )))?;
        }
        if let Some(v6) = spec.ipv6 {
            let mut request = pod.address().add(pod_link.index, IpAddr::V6(v6), 128);
            // No duplicate detection: the address is ours by control's
            // assignment, and a tentative address could not be a source yet.
            request.message_mut().header.flags = AddressHeaderFlags::Nodad;
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            request.execute().await.map_err(netlink_err(format!(
                "adding {v6}/128 to pod {}",
                spec.if_name
            )))?;
        }
        set_up(pod, pod_link.index, &spec.if_name).await?;
        if let Some(v4) = spec.ipv4 {
            add_neighbour(
                pod,
                pod_link.index,
                IpAddr::V4(POD_GATEWAY_V4),
                &host_mac,
                "pod gateway",
            )
            .await?;
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(TAILNET_V4.0, TAILNET_V4.1)
                .gateway(POD_GATEWAY_V4)
                .output_interface(pod_link.index)
                .pref_source(v4)
                .onlink()
                .build();
            pod.route()
                .add(route)
                .execute()
                .await
                .map_err(netlink_err("adding the tailnet IPv4 route in the pod"))?;
        }
        if let Some(v6) = spec.ipv6 {
            add_neighbour(
                pod,
                pod_link.index,
                IpAddr::V6(POD_GATEWAY_V6),
                &host_mac,
                "pod gateway",
            )
            .await?;
            let route = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(TAILNET_V6.0, TAILNET_V6.1)
                .gateway(POD_GATEWAY_V6)
                .output_interface(pod_link.index)
                .pref_source(v6)
                .build();
            pod.route()
                .add(route)
                .execute()
                .await
                .map_err(netlink_err("adding the tailnet IPv6 route in the pod"))?;
        }

        // Host side: the pod's table and the rules selecting it.
        if let Some(v4) = spec.ipv4 {
            add_neighbour(
                host,
                host_veth.index,
                IpAddr::V4(v4),
                &pod_mac,
                "pod address",
            )
            .await?;
            let to_tun = RouteMessageBuilder::<Ipv4Addr>::new()
                .output_interface(tun.index)
                .scope(RouteScope::Link)
                .table_id(pod_net.table)
                .build();
            let to_pod = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(v4, 32)
                .output_interface(host_veth.index)
                .scope(RouteScope::Link)
                .table_id(pod_net.table)
                .build();
            for (route, what) in [(to_tun, "default via TUN"), (to_pod, "pod address")] {
                host.route()
                    .add(route)
                    .execute()
                    .await
                    .map_err(netlink_err(format!(
                        "adding IPv4 {what} route to table {}",
                        pod_net.table
                    )))?;
            }
        }
        if let Some(v6) = spec.ipv6 {
            add_neighbour(
                host,
                host_veth.index,
                IpAddr::V6(v6),
                &pod_mac,
                "pod address",
            )
            .await?;
            let to_tun = RouteMessageBuilder::<Ipv6Addr>::new()
                .output_interface(tun.index)
                .table_id(pod_net.table)
                .build();
            let to_pod = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(v6, 128)
                .output_interface(host_veth.index)
                .table_id(pod_net.table)
                .build();
            for (route, what) in [(to_tun, "default via TUN"), (to_pod, "pod address")] {
                host.route()
                    .add(route)
                    .execute()
                    .await
                    .map_err(netlink_err(format!(
                        "adding IPv6 {what} route to table {}",
                        pod_net.table
                    )))?;
            }
        }
        for (version, enabled) in [
            (IpVersion::V4, spec.ipv4.is_some()),
            (IpVersion::V6, spec.ipv6.is_some()),
        ] {
            if !enabled {
                continue;
            }
            for iif in pod_net.host_links() {
                add_rule(
                    host,
                    version.clone(),
                    iif,
                    pod_net.table,
                    pod_net.rule_priority,
                )
                .await?;
            }
        }
        ensure_forwarding(spec.ipv4.is_some(), spec.ipv6.is_some())?;
        wait_until_operational(pod, &spec.if_name).await;
        debug!(container_id = %spec.container_id, "pod plumbing complete");
        Ok(())
    }

    /// Verifies that a pod's plumbing is still as [`setup`](Self::setup)
    /// left it.
    pub async fn check(&self, pod_net: &PodNet, spec: &PodNetSpec) -> Result<(), PlumbError> {
        let host = &self.host;
        if pod_net.ipv4 != spec.ipv4
            || pod_net.ipv6 != spec.ipv6
            || pod_net.pod_if_name != spec.if_name
        {
            return Err(PlumbError::Drift(
                "recorded addresses or interface name differ from the requested ones".into(),
            ));
        }
        let tun = require_link(host, &pod_net.tun_name).await?;
        let host_veth = require_link(host, &pod_net.host_veth).await?;
        for link in [&tun, &host_veth] {
            if !link.up {
                return Err(PlumbError::Drift(format!("{} is down", link.name)));
            }
        }

        let netns = Netns::open(&spec.netns_path).map_err(|source| PlumbError::Netns {
            path: spec.netns_path.clone(),
            source,
        })?;
        let pod = netns.netlink().await.map_err(|source| PlumbError::Netns {
            path: spec.netns_path.clone(),
            source,
        })?;
        let pod_link = nl::link_by_name(&pod, &spec.if_name)
            .await
            .map_err(netlink_err(format!("looking up {} in pod", spec.if_name)))?
            .ok_or_else(|| {
                PlumbError::Missing(format!(
                    "{} in pod {}",
                    spec.if_name,
                    spec.netns_path.display()
                ))
            })?;
        if !pod_link.up {
            return Err(PlumbError::Drift(format!(
                "{} in pod is down",
                spec.if_name
            )));
        }
        let mut found: Vec<(IpAddr, u8)> = nl::addresses(&pod, pod_link.index)
            .await
            .map_err(netlink_err("listing pod addresses"))?
            .into_iter()
            .filter(|(ip, _)| !is_ipv6_link_local(ip))
            .collect();
        found.sort();
        let mut expected: Vec<(IpAddr, u8)> = spec
            .ipv4
            .map(|v4| (IpAddr::V4(v4), 32))
            .into_iter()
            .chain(spec.ipv6.map(|v6| (IpAddr::V6(v6), 128)))
            .collect();
        expected.sort();
        if found != expected {
            return Err(PlumbError::Drift(format!(
                "{} has addresses {found:?}, expected {expected:?}",
                spec.if_name
            )));
        }

        let families = [
            (
                IpVersion::V4,
                spec.ipv4.map(IpAddr::V4),
                IpAddr::V4(TAILNET_V4.0),
                TAILNET_V4.1,
            ),
            (
                IpVersion::V6,
                spec.ipv6.map(IpAddr::V6),
                IpAddr::V6(TAILNET_V6.0),
                TAILNET_V6.1,
            ),
        ];
        for (version, address, tailnet, tailnet_len) in families {
            let Some(address) = address else { continue };
            let pod_routes = nl::routes(&pod, version.clone())
                .await
                .map_err(netlink_err("listing pod routes"))?;
            if !pod_routes.iter().any(|r| {
                r.destination == Some(tailnet)
                    && r.prefix_len == tailnet_len
                    && r.oif == Some(pod_link.index)
            }) {
                return Err(PlumbError::Drift(format!(
                    "pod route to {tailnet}/{tailnet_len} missing"
                )));
            }

            let host_routes = self
                .host_routes(version.clone())
                .await
                .map_err(netlink_err("listing host routes"))?;
            let full_len = if address.is_ipv4() { 32 } else { 128 };
            let has_default = host_routes
                .iter()
                .any(|r| r.table == pod_net.table && r.prefix_len == 0 && r.oif == Some(tun.index));
            let has_pod_route = host_routes.iter().any(|r| {
                r.table == pod_net.table
                    && r.destination == Some(address)
                    && r.prefix_len == full_len
                    && r.oif == Some(host_veth.index)
            });
            if !has_default || !has_pod_route {
                return Err(PlumbError::Drift(format!(
                    "table {} lacks its {} routes",
                    pod_net.table,
                    if address.is_ipv4() { "IPv4" } else { "IPv6" }
                )));
            }

            let rules = self
                .host_rules(version)
                .await
                .map_err(netlink_err("listing rules"))?;
            for iif in pod_net.host_links() {
                if !rules.iter().any(|r| {
                    r.table == pod_net.table
                        && r.priority == Some(pod_net.rule_priority)
                        && r.iif.as_deref() == Some(iif)
                }) {
                    return Err(PlumbError::Drift(format!(
                        "rule iif {iif} lookup {} missing",
                        pod_net.table
                    )));
                }
            }
        }
        Ok(())
    }

    /// Removes a pod's plumbing. Keeps going after errors, treats missing
    /// pieces (and a missing netns) as already removed, and returns every
    /// error it met.
    pub async fn teardown(
        &self,
        pod_net: &PodNet,
        netns_path: Option<&Path>,
    ) -> Result<(), TeardownErrors> {
        let pod = match netns_path {
            Some(path) => match Netns::open(path) {
                Ok(netns) => netns.netlink().await.ok(),
                Err(e) => {
                    debug!(netns = %path.display(), error = %e, "pod netns gone; tearing down the host side only");
                    None
                }
            },
            None => None,
        };
        let result = self.teardown_inner(pod_net, pod.as_ref()).await;
        match &result {
            Ok(()) => info!(container_id = %pod_net.container_id, "pod network torn down"),
            Err(errors) => {
                warn!(container_id = %pod_net.container_id, %errors, "pod network teardown incomplete")
            }
        }
        result
    }

    async fn teardown_inner(
        &self,
        pod_net: &PodNet,
        pod: Option<&Handle>,
    ) -> Result<(), TeardownErrors> {
        let host = &self.host;
        let mut errors = Vec::new();
        let names: HashSet<&str> = pod_net.host_links().into_iter().collect();

        for version in [IpVersion::V4, IpVersion::V6] {
            match self.host_rules(version).await {
                Ok(rules) => {
                    for rule in rules {
                        let ours = is_pod_table(rule.table, pod_net)
                            || rule.iif.as_deref().is_some_and(|iif| names.contains(iif));
                        if ours {
                            if let Err(e) = delete_rule(host, rule).await {
                                errors.push(e);
                            }
                        }
                    }
                }
                Err(e) => errors.push(netlink_err("listing rules")(e)),
            }
        }

        // Deleting the host veth takes its pod end with it.
        let ours = alias_for(&pod_net.container_id);
        for name in pod_net.host_links() {
            match nl::link_by_name(host, name).await {
                Ok(Some(link)) => {
                    if link.alias.as_ref().is_some_and(|alias| *alias != ours) {
                        errors.push(PlumbError::NameCollision {
                            link: name.to_string(),
                            alias: link.alias.clone().unwrap_or_default(),
                        });
                        continue;
                    }
                    if let Err(e) = self.delete_link(&link).await {
                        errors.push(e);
                    }
                }
                Ok(None) => {}
                Err(e) => errors.push(netlink_err(format!("looking up {name}"))(e)),
            }
        }

        // A pod end that lost its host peer some other way. Only the very
        // device we created (same MAC) is ours: an interface that already
        // existed when a setup failed belongs to someone else.
        if let Some(pod) = pod.filter(|_| !pod_net.pod_mac.is_empty()) {
            match nl::link_by_name(pod, &pod_net.pod_if_name).await {
                Ok(Some(link))
                    if link.kind == Some(InfoKind::Veth)
                        && link.mac.map(|m| format_mac(&m)).as_deref()
                            == Some(pod_net.pod_mac.as_str()) =>
                {
                    if let Err(e) = pod.link().del(link.index).execute().await {
                        if !is_not_found(&e) {
                            errors.push(netlink_err(format!(
                                "deleting {} in pod",
                                pod_net.pod_if_name
                            ))(e));
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => errors.push(netlink_err(format!(
                    "looking up {} in pod",
                    pod_net.pod_if_name
                ))(e)),
            }
        }

        // Routes normally vanish with their devices; sweep what is left.
        for version in [IpVersion::V4, IpVersion::V6] {
            match self.host_routes(version).await {
                Ok(routes) => {
                    for route in routes
                        .into_iter()
                        .filter(|r| is_pod_table(r.table, pod_net))
                    {
                        if let Err(e) = host.route().del(route.message).execute().await {
                            if !is_not_found(&e) {
                                errors.push(netlink_err(format!(
                                    "deleting a route in table {}",
                                    pod_net.table
                                ))(e));
                            }
                        }
                    }
                }
                Err(e) => errors.push(netlink_err("listing routes")(e)),
            }
        }

        if errors.is_empty() {
            Ok(())
        } else {
            Err(TeardownErrors(errors))
        }
    }

    async fn host_rules(&self, version: IpVersion) -> Result<Vec<nl::RuleView>, rtnetlink::Error> {
        let _turn = self.host_dumps.lock().await;
        nl::rules(&self.host, version).await
    }

    async fn host_routes(
        &self,
        version: IpVersion,
    ) -> Result<Vec<nl::RouteView>, rtnetlink::Error> {
        let _turn = self.host_dumps.lock().await;
        nl::routes(&self.host, version).await
    }

    async fn host_links(&self) -> Result<Vec<LinkInfoView>, rtnetlink::Error> {
        let _turn = self.host_dumps.lock().await;
        nl::all_links(&self.host).await
    }

    async fn delete_link(&self, link: &LinkInfoView) -> Result<(), PlumbError> {
        match self.host.link().del(link.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) if link.kind == Some(InfoKind::Tun) => {
                // Some kernels refuse RTM_DELLINK for TUNs; dropping
                // persistence removes it once no descriptor holds it.
                let name = link.name.clone();
                debug!(tun = %name, error = %e, "netlink delete refused; clearing persistence");
                tokio::task::spawn_blocking(move || tun::release_persistent_tun(&name))
                    .await
                    .map_err(io::Error::other)
                    .and_then(|r| r)
                    .map_err(|source| PlumbError::Tun {
                        name: link.name.clone(),
                        op: "release",
                        source,
                    })
            }
            Err(e) => Err(netlink_err(format!("deleting {}", link.name))(e)),
        }
    }

    /// Every `tnt*`/`tnv*` link in the host netns.
    pub async fn list_owned_links(&self) -> Result<Vec<String>, PlumbError> {
        let mut names: Vec<String> = self
            .host_links()
            .await
            .map_err(netlink_err("listing links"))?
            .into_iter()
            .map(|link| link.name)
            .filter(|name| is_owned_link_name(name))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes every owned link not in `keep`, and every rule whose input
    /// interface is an owned name not in `keep` (rules outlive their
    /// devices). For crash recovery and CNI GC.
    pub async fn remove_stale(&self, keep: &HashSet<String>) -> StaleCleanup {
        let mut cleanup = StaleCleanup::default();
        for version in [IpVersion::V4, IpVersion::V6] {
            match self.host_rules(version).await {
                Ok(rules) => {
                    for rule in rules {
                        let Some(iif) = rule.iif.clone() else {
                            continue;
                        };
                        if !is_owned_link_name(&iif) || keep.contains(&iif) {
                            continue;
                        }
                        let table = rule.table;
                        match delete_rule(&self.host, rule).await {
                            Ok(()) => cleanup.removed_rules.push(format!("{iif} -> {table}")),
                            Err(e) => cleanup.errors.push(e),
                        }
                    }
                }
                Err(e) => cleanup.errors.push(netlink_err("listing rules")(e)),
            }
        }
        match self.host_links().await {
            Ok(links) => {
                for link in links {
                    if !is_owned_link_name(&link.name) || keep.contains(&link.name) {
                        continue;
                    }
                    match self.delete_link(&link).await {
                        Ok(()) => cleanup.removed_links.push(link.name),
                        Err(e) => cleanup.errors.push(e),
                    }
                }
            }
            Err(e) => cleanup.errors.push(netlink_err("listing links")(e)),
        }
        if !cleanup.removed_links.is_empty() || !cleanup.removed_rules.is_empty() {
            info!(links = ?cleanup.removed_links, rules = ?cleanup.removed_rules, "removed stale pod plumbing");
        }
        cleanup
    }
}

/// The kernel drops what a veth sends until the link watcher has marked it
/// operational (up to about a second after it came up); waiting here means
/// the pod's first packets are not lost. Not fatal: the link comes up on its
/// own, so a slow one is only logged.
async fn wait_until_operational(pod: &Handle, if_name: &str) {
    let deadline = tokio::time::Instant::now() + OPERATIONAL_WAIT;
    loop {
        match nl::link_by_name(pod, if_name).await {
            Ok(Some(link)) if link.oper_up => return,
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Ok(_) => {
                warn!(if_name, "pod interface not operational yet; continuing");
                return;
            }
            Err(error) => {
                warn!(if_name, %error, "could not read pod interface state");
                return;
            }
        }
    }
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

fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

fn validate_spec(spec: &PodNetSpec) -> Result<(), PlumbError> {
    validate_container_id(&spec.container_id)
        .map_err(|e| PlumbError::InvalidSpec(e.to_string()))?;
    validate_if_name(&spec.if_name).map_err(|e| PlumbError::InvalidSpec(e.to_string()))?;
    if !(MIN_MTU..=MAX_MTU).contains(&spec.mtu) {
        return Err(PlumbError::InvalidSpec(format!(
            "MTU {} outside {MIN_MTU}..={MAX_MTU}",
            spec.mtu
        )));
    }
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

async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<(), PlumbError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink_err(format!("setting {name} up")))
}

async fn add_neighbour(
    handle: &Handle,
    index: u32,
    ip: IpAddr,
    mac: &[u8; 6],
    what: &str,
) -> Result<(), PlumbError> {
    // Permanent by default in the request; replace makes a retry idempotent.
    handle
        .neighbours()
        .add(index, ip)
        .link_layer_address(mac)
        .replace()
        .execute()
        .await
        .map_err(netlink_err(format!("adding neighbour for {what} {ip}")))
}

async fn add_rule(
    handle: &Handle,
    version: IpVersion,
    iif: &str,
    table: u32,
    priority: u32,
) -> Result<(), PlumbError> {
    let request = handle
        .rule()
        .add()
        .input_interface(iif)
        .table_id(table)
        .priority(priority)
        .action(RuleAction::ToTable);
    let result = match version {
        IpVersion::V4 => request.v4().execute().await,
        IpVersion::V6 => request.v6().execute().await,
    };
    result.map_err(netlink_err(format!(
        "adding rule iif {iif} lookup {table} ({version:?})"
    )))
}

async fn delete_rule(handle: &Handle, rule: nl::RuleView) -> Result<(), PlumbError> {
    let description = format!("deleting rule iif {:?} lookup {}", rule.iif, rule.table);
    match handle.rule().del(rule.message).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(netlink_err(description)(e)),
    }
}

/// rp_filter would drop packets whose source is reachable only through the
/// pod's own table (the reverse lookup does not see `iif` rules); a TUN
/// carries packets from the node's own tailnet address, hence accept_local.
/// No IPv6 autoconfiguration: these links carry only routed traffic.
fn configure_host_link_sysctls(
    name: &str,
    is_tun: bool,
    ipv6_present: bool,
) -> Result<(), SysctlError> {
    sysctl::ensure(&format!("net.ipv4.conf.{name}.rp_filter"), "0")?;
    if is_tun {
        sysctl::ensure(&format!("net.ipv4.conf.{name}.accept_local"), "1")?;
    }
    if ipv6_present {
        sysctl::ensure(&format!("net.ipv6.conf.{name}.accept_ra"), "0")?;
        sysctl::ensure(&format!("net.ipv6.conf.{name}.autoconf"), "0")?;
        // No link-local address: nothing (RS, MLD) is sent into the engine.
        sysctl::ensure(&format!("net.ipv6.conf.{name}.addr_gen_mode"), "1")?;
    }
    Ok(())
}

fn ensure_forwarding(ipv4: bool, ipv6: bool) -> Result<(), SysctlError> {
    if ipv4 && sysctl::ensure("net.ipv4.ip_forward", "1")? {
        info!("enabled net.ipv4.ip_forward");
    }
    if ipv4 {
        match sysctl::read("net.ipv4.conf.all.rp_filter").as_deref() {
            Ok("0") | Err(_) => {}
            Ok(mode) => warn!(
                rp_filter = mode,
                "net.ipv4.conf.all.rp_filter is not 0; the kernel applies the stricter of 'all' and the \
                 per-interface value, so pod traffic may be dropped"
            ),
        }
    }
    if ipv6 && sysctl::ensure("net.ipv6.conf.all.forwarding", "1")? {
        info!("enabled net.ipv6.conf.all.forwarding");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PodNetSpec {
        PodNetSpec {
            container_id: "abc".into(),
            netns_path: "/var/run/netns/x".into(),
            if_name: DEFAULT_POD_IF_NAME.into(),
            mtu: DEFAULT_MTU,
            ipv4: Some(Ipv4Addr::new(100, 64, 0, 1)),
            ipv6: None,
        }
    }

    #[test]
    fn spec_validation_rejects_bad_input() {
        validate_spec(&spec()).unwrap();
        let mut s = spec();
        s.mtu = 1000;
        assert!(matches!(validate_spec(&s), Err(PlumbError::InvalidSpec(_))));
        let mut s = spec();
        s.ipv4 = None;
        assert!(matches!(validate_spec(&s), Err(PlumbError::InvalidSpec(_))));
        let mut s = spec();
        s.if_name = "much-too-long-name".into();
        assert!(matches!(validate_spec(&s), Err(PlumbError::InvalidSpec(_))));
        let mut s = spec();
        s.container_id = "../x".into();
        assert!(matches!(validate_spec(&s), Err(PlumbError::InvalidSpec(_))));
    }

    #[test]
    fn kernel_tables_are_never_treated_as_a_pods() {
        let mut net = sample_pod_net();
        for reserved in [0, 253, 254, 255] {
            assert!(is_reserved_table(reserved));
            net.table = reserved;
            assert!(!is_pod_table(reserved, &net));
        }
        net.table = 0x7c00_0001;
        assert!(is_pod_table(0x7c00_0001, &net));
        assert!(!is_pod_table(0x7c00_0002, &net));
    }

    #[test]
    fn link_local_detection() {
        assert!(is_ipv6_link_local(&"fe80::1".parse().unwrap()));
        assert!(!is_ipv6_link_local(&"fd7a:115c:a1e0::1".parse().unwrap()));
        assert!(!is_ipv6_link_local(&"169.254.0.1".parse().unwrap()));
    }

    #[test]
    fn teardown_errors_list_every_error() {
        let errors = TeardownErrors(vec![
            PlumbError::Missing("a".into()),
            PlumbError::Drift("b".into()),
        ]);
        let text = errors.to_string();
        assert!(
            text.contains("2 error(s)") && text.contains("missing: a") && text.contains("drift: b"),
            "{text}"
        );
    }

    fn sample_pod_net() -> PodNet {
        PodNet {
            container_id: "abc".into(),
            tun_name: tun_name("abc"),
            host_veth: host_veth_name("abc"),
            pod_if_name: "ts0".into(),
            pod_mac: "02:00:00:00:00:01".into(),
            host_veth_mac: "02:00:00:00:00:02".into(),
            table: 0x7c00_0001,
            rule_priority: DEFAULT_RULE_PRIORITY,
            mtu: DEFAULT_MTU,
            ipv4: Some(Ipv4Addr::new(100, 64, 0, 1)),
            ipv6: Some("fd7a:115c:a1e0::1".parse().unwrap()),
        }
    }

    #[test]
    fn pod_net_serialises_round_trip() {
        let net = sample_pod_net();
        let json = serde_json::to_string(&net).unwrap();
        assert_eq!(serde_json::from_str::<PodNet>(&json).unwrap(), net);
        assert_eq!(
            net.host_links(),
            [net.tun_name.as_str(), net.host_veth.as_str()]
        );
    }
}
