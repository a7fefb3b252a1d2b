//! ADD: the TUN, the veth pair, the pod's addresses, routes and gateway
//! neighbour, the host-side table, neighbours and rules, and the sysctls
//! they need, for each address family the pod gets.

use std::collections::HashSet;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rtnetlink::Handle;
use tracing::{debug, info, warn};

use super::family::{self, Family, FAMILIES};
use super::ipv6::{Ipv6Settings, Ipv6Unavailable, Place};
use super::pod_routes::pod_route;
use super::{
    alias_for, is_pod_table, is_reserved_table, netlink_err, open_pod_netns, require_link, tun_op,
    validate_spec, PlumbError, Plumber, PodNet, PodNetSpec,
};
use crate::podmgr::naming::{host_veth_name, tun_name};
use crate::podmgr::netns::Netns;
use crate::podmgr::nl::{self, format_mac, is_exists, LinkInfoView, Route};
use crate::podmgr::sysctl::{self, SysctlError};
use crate::podmgr::tun;

const OPERATIONAL_WAIT: Duration = Duration::from_secs(3);

/// The links a setup works with once they exist.
struct Links {
    tun: LinkInfoView,
    host_veth: LinkInfoView,
    pod: LinkInfoView,
    host_mac: [u8; 6],
    pod_mac: [u8; 6],
}

impl Plumber {
    /// Creates everything for one pod in `table`. On failure, whatever was
    /// created is removed again before the error is returned.
    ///
    /// Where IPv6 is unavailable (on the node, on the new links or in the
    /// pod's namespace) a pod that also has an IPv4 address is plumbed
    /// IPv4-only: the returned [`PodNet`] then has no `ipv6` and says why in
    /// `ipv6_omitted`.
    pub async fn setup(&self, spec: &PodNetSpec, table: u32) -> Result<PodNet, PlumbError> {
        validate_spec(spec)?;
        if is_reserved_table(table) {
            return Err(PlumbError::InvalidSpec(format!(
                "routing table {table} is reserved by the kernel"
            )));
        }
        let mut laps = Laps::start();
        let (netns, pod) = open_pod_netns(&spec.netns_path).await?;
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

        // IPv6 joins once it is known to be usable: until then a rollback
        // has no IPv6 to clean up.
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
            ipv6: None,
            ipv6_omitted: None,
        };
        // Leftovers of an earlier, interrupted attempt for this container
        // would make the creates below fail; clear them first.
        self.clear_leftovers(&pod_net).await?;
        laps.lap("open");

        match self
            .build(spec, &netns, &pod, &mut pod_net, &mut laps)
            .await
        {
            Ok(()) => {
                debug!(container_id = %spec.container_id, steps = %laps, "plumbing steps");
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
        let ours = alias_for(&pod_net.container_id);
        for name in pod_net.host_links() {
            let Some(link) = nl::link_by_name(&self.host, name)
                .await
                .map_err(netlink_err(format!("looking up {name}")))?
            else {
                continue;
            };
            match &link.alias {
                Some(alias) if *alias != ours => {
                    return Err(PlumbError::NameCollision {
                        link: name.to_string(),
                        alias: alias.clone(),
                    })
                }
                _ => {
                    warn!(link = name, container_id = %pod_net.container_id, "removing leftover host link");
                    self.delete_host_link(&link).await?;
                }
            }
        }
        let names: HashSet<&str> = pod_net.host_links().into_iter().collect();
        for family in family::on_node() {
            for rule in self.host_rules(family.version.clone()).await?.iter() {
                if rule.iif.as_deref().is_some_and(|iif| names.contains(iif))
                    || is_pod_table(rule.table, pod_net)
                {
                    self.delete_host_rule(rule).await?;
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
        laps: &mut Laps,
    ) -> Result<(), PlumbError> {
        let links = self.create_links(spec, netns, pod, pod_net).await?;
        laps.lap("links");
        pod_net.pod_mac = format_mac(&links.pod_mac);
        pod_net.host_veth_mac = format_mac(&links.host_mac);

        if let Some(ipv6) = spec.ipv6 {
            match ipv6_unavailable(spec, netns, pod_net).await? {
                None => pod_net.ipv6 = Some(ipv6),
                Some(reason) if spec.ipv4.is_none() => {
                    return Err(PlumbError::Ipv6OnlyWithoutIpv6(reason))
                }
                Some(reason) => {
                    warn!(
                        container_id = %spec.container_id,
                        "{reason}; pod {} gets no {ipv6} address",
                        spec.container_id
                    );
                    pod_net.ipv6_omitted = Some(reason);
                }
            }
        }

        laps.lap("ipv6_check");
        // Host links: sysctls before they come up, so the kernel never
        // autoconfigures them.
        for (link, is_tun) in [(&links.tun, true), (&links.host_veth, false)] {
            configure_host_link_sysctls(&link.name, is_tun)?;
            nl::set_link_up(&self.host, link.index)
                .await
                .map_err(netlink_err(format!("setting {} up", link.name)))?;
        }

        laps.lap("host_up");
        // Inside the pod.
        for (family, address) in family::plumbed(pod_net) {
            nl::add_address(
                pod,
                links.pod.index,
                address,
                family.host_prefix_len,
                family.skip_dad,
            )
            .await
            .map_err(netlink_err(format!(
                "adding {address}/{} to pod {}",
                family.host_prefix_len, spec.if_name
            )))?;
        }
        nl::set_link_up(pod, links.pod.index)
            .await
            .map_err(netlink_err(format!("setting {} up in pod", spec.if_name)))?;
        for (family, address) in family::plumbed(pod_net) {
            add_neighbour(
                pod,
                links.pod.index,
                family.pod_gateway,
                &links.host_mac,
                "pod gateway",
            )
            .await?;
            let route = pod_tailnet_route(family, links.pod.index, address);
            nl::add_route(pod, &route)
                .await
                .map_err(netlink_err(format!(
                    "adding the tailnet {} route in the pod",
                    family.name
                )))?;
        }

        laps.lap("pod_side");
        // Host side: the pod's table and the rules selecting it.
        for (family, address) in family::plumbed(pod_net) {
            add_neighbour(
                &self.host,
                links.host_veth.index,
                address,
                &links.pod_mac,
                "pod address",
            )
            .await?;
            for (route, what) in table_routes(family, pod_net.table, &links, address) {
                nl::add_route(&self.host, &route)
                    .await
                    .map_err(netlink_err(format!(
                        "adding {} {what} route to table {}",
                        family.name, pod_net.table
                    )))?;
            }
            self.move_local_rule_behind(family, pod_net.rule_priority)
                .await?;
            for iif in pod_net.host_links() {
                nl::add_rule(
                    &self.host,
                    family.version.clone(),
                    iif,
                    pod_net.table,
                    pod_net.rule_priority,
                )
                .await
                .map_err(netlink_err(format!(
                    "adding {} rule iif {iif} lookup {}",
                    family.name, pod_net.table
                )))?;
            }
            ensure_forwarding(family)?;
        }
        laps.lap("host_side");
        wait_until_operational(pod, &spec.if_name).await;
        laps.lap("operational");
        Ok(())
    }

    /// The persistent TUN (it outlives a daemon restart) and the veth pair
    /// whose peer is born inside the pod with its final name; all still down.
    async fn create_links(
        &self,
        spec: &PodNetSpec,
        netns: &Netns,
        pod: &Handle,
        pod_net: &PodNet,
    ) -> Result<Links, PlumbError> {
        let host = &self.host;
        let alias = alias_for(&spec.container_id);

        tun_op(&pod_net.tun_name, "create", tun::create_persistent_tun).await?;
        let tun = require_link(host, &pod_net.tun_name).await?;
        nl::set_link_alias(host, tun.index, &alias, Some(spec.mtu))
            .await
            .map_err(netlink_err(format!("configuring {}", pod_net.tun_name)))?;

        if let Err(e) = nl::add_veth(
            host,
            &pod_net.host_veth,
            &spec.if_name,
            spec.mtu,
            netns.file().as_fd(),
        )
        .await
        {
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
        nl::set_link_alias(host, host_veth.index, &alias, None)
            .await
            .map_err(netlink_err(format!("configuring {}", pod_net.host_veth)))?;

        let pod_link = nl::link_by_name(pod, &spec.if_name)
            .await
            .map_err(netlink_err(format!("looking up {} in pod", spec.if_name)))?
            .ok_or_else(|| {
                PlumbError::Missing(format!("{} in pod after creation", spec.if_name))
            })?;
        let pod_mac = pod_link
            .mac
            .ok_or_else(|| PlumbError::Missing(format!("MAC of {} in pod", spec.if_name)))?;
        Ok(Links {
            tun,
            host_veth,
            pod: pod_link,
            host_mac,
            pod_mac,
        })
    }
}

/// Why the pod cannot have IPv6, judged before anything IPv6 is written:
/// the node's settings and its new host links first, then the pod's
/// namespace and interface.
async fn ipv6_unavailable(
    spec: &PodNetSpec,
    netns: &Netns,
    pod_net: &PodNet,
) -> Result<Option<Ipv6Unavailable>, PlumbError> {
    let node = Ipv6Settings::read(&pod_net.host_links())?;
    if let Some(reason) = node.verdict(Place::Node) {
        return Ok(Some(reason));
    }
    let if_name = spec.if_name.clone();
    let pod = netns
        .query(move || Ok(Ipv6Settings::read(&[if_name.as_str()])))
        .await
        .map_err(|source| PlumbError::Netns {
            path: spec.netns_path.clone(),
            source,
        })??;
    Ok(pod.verdict(Place::Pod))
}

/// The pod's route to the tailnet range through its link-local gateway.
fn pod_tailnet_route(family: &Family, pod_if: u32, address: IpAddr) -> Route {
    pod_route(
        family,
        pod_if,
        address,
        (family.tailnet, family.tailnet_prefix_len),
    )
}

/// The pod's table: everything else goes to its TUN, its own address to its
/// host veth.
fn table_routes(
    family: &Family,
    table: u32,
    links: &Links,
    address: IpAddr,
) -> [(Route, &'static str); 2] {
    let route = |destination, prefix_len, oif| Route {
        table,
        destination,
        prefix_len,
        gateway: None,
        oif,
        pref_source: None,
        scope: family.table_route_scope,
        onlink: false,
    };
    [
        (
            route(family.unspecified(), 0, links.tun.index),
            "default via TUN",
        ),
        (
            route(address, family.host_prefix_len, links.host_veth.index),
            "pod address",
        ),
    ]
}

async fn add_neighbour(
    handle: &Handle,
    index: u32,
    ip: IpAddr,
    mac: &[u8; 6],
    what: &str,
) -> Result<(), PlumbError> {
    nl::add_permanent_neighbour(handle, index, ip, mac)
        .await
        .map_err(netlink_err(format!("adding neighbour for {what} {ip}")))
}

/// Every family's link settings whose sysctls the kernel has; IPv6's also
/// when the pod gets no IPv6, so the links stay quiet should it come back.
fn configure_host_link_sysctls(name: &str, is_tun: bool) -> Result<(), SysctlError> {
    for family in FAMILIES.into_iter().filter(|family| family.on_node()) {
        for setting in family.link_sysctls {
            if setting.tun_only && !is_tun {
                continue;
            }
            sysctl::ensure(&setting.key(family, name), setting.value)?;
        }
    }
    Ok(())
}

fn ensure_forwarding(family: &Family) -> Result<(), SysctlError> {
    if sysctl::ensure(family.forwarding, "1")? {
        info!("enabled {}", family.forwarding);
    }
    if let Some(key) = family.global_rp_filter {
        match sysctl::read(key).as_deref() {
            Ok("0") | Err(_) => {}
            Ok(mode) => warn!(
                rp_filter = mode,
                "{key} is not 0; the kernel applies the stricter of 'all' and the per-interface \
                 value, so pod traffic may be dropped"
            ),
        }
    }
    Ok(())
}

/// Milliseconds each part of a setup took, for the debug log: where a
/// burst of ADDs spends its plumbing time.
struct Laps {
    last: Instant,
    took: Vec<(&'static str, Duration)>,
}

impl Laps {
    fn start() -> Self {
        Self {
            last: Instant::now(),
            took: Vec::with_capacity(8),
        }
    }

    /// Ends part `name`: the time since the previous lap is its.
    fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.took.push((name, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Laps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, took)) in self.took.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{name}_ms={:.1}", took.as_secs_f64() * 1e3)?;
        }
        Ok(())
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
