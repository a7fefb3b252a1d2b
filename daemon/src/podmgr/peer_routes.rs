//! Which of a peer's AllowedIPs one pod installs, decided the way the
//! official client decides it.
//!
//! Control lists in a peer's `AllowedIPs` its own addresses, then the
//! routes it is primary for: subnet routes and, for an approved exit node,
//! `0.0.0.0/0` and `::/0`. A pod installs
//! - the peer's own addresses, always;
//! - its subnet routes (any other prefix that is not a default route) only
//!   when the pod accepts routes;
//! - its exit routes (prefix length 0) only when the peer is the pod's
//!   selected exit node.
//!
//! What is installed is both where the pod's packets may go and where the
//! peer's packets may come from, so a route the pod did not opt into also
//! never widens what a peer may send it. Sans-IO: unit-tested on netmap
//! records alone.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use tailnet_cni_proto::selection::{ACCEPT_ROUTES_ANNOTATION, EXIT_NODE_ANNOTATION};

use crate::control::tailcfg::Node;

/// A pod's route opt-ins, off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePrefs {
    /// Install peers' subnet routes.
    pub accept_routes: bool,
    /// The one peer whose exit routes are installed.
    pub exit_node: Option<ExitNode>,
}

impl RoutePrefs {
    /// The node's defaults, from the daemon's configuration.
    pub fn node_default(accept_routes: bool, exit_node: Option<&str>) -> Self {
        Self {
            accept_routes,
            exit_node: exit_node.and_then(ExitNode::parse),
        }
    }
}

/// What a pod's annotations ask for; `None` leaves the node's default.
/// Kept in the pod's record, so a restarted daemon installs the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_routes: Option<bool>,
    /// An empty value asks for no exit node, whatever the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_node: Option<String>,
}

impl RouteRequest {
    /// Reads `tailnet-cni.io/accept-routes` (`"true"` accepts, any other
    /// value refuses) and `tailnet-cni.io/exit-node`.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Self {
        Self {
            accept_routes: annotations
                .get(ACCEPT_ROUTES_ANNOTATION)
                .map(|v| v.trim().eq_ignore_ascii_case("true")),
            exit_node: annotations
                .get(EXIT_NODE_ANNOTATION)
                .map(|v| v.trim().to_string()),
        }
    }

    /// Whether the pod asked for nothing.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The pod's preferences: what it asked for, else the node's.
    pub fn resolve(&self, node: &RoutePrefs) -> RoutePrefs {
        RoutePrefs {
            accept_routes: self.accept_routes.unwrap_or(node.accept_routes),
            exit_node: match &self.exit_node {
                Some(text) => ExitNode::parse(text),
                None => node.exit_node.clone(),
            },
        }
    }
}

/// How a pod names its exit node: a tailnet address of the node, or its
/// stable node id, full MagicDNS name (trailing dot optional) or the first
/// label of that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitNode {
    Address(IpAddr),
    Name(String),
}

impl ExitNode {
    /// Reads an annotation or config value; `None` for an empty one, which
    /// means "no exit node".
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        Some(match text.parse() {
            Ok(addr) => Self::Address(addr),
            Err(_) => Self::Name(text.to_ascii_lowercase()),
        })
    }

    /// Whether `node` is the node this names.
    pub fn matches(&self, node: &Node) -> bool {
        match self {
            Self::Address(addr) => node
                .address_prefixes()
                .iter()
                .any(|&(own, len)| own == *addr && is_single_address(own, len)),
            Self::Name(name) => {
                let name = name.trim_end_matches('.');
                let fqdn = node.name.trim_end_matches('.').to_ascii_lowercase();
                let short = fqdn.split('.').next().unwrap_or_default();
                let by_id = !node.stableid.is_empty() && node.stableid.eq_ignore_ascii_case(name);
                let by_name = !fqdn.is_empty() && (fqdn == name || short == name);
                by_id || by_name
            }
        }
    }
}

/// What one of a peer's AllowedIPs is to a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixKind {
    /// One of the peer's own addresses.
    Own,
    /// A route to a network behind the peer.
    Subnet,
    /// A default route: the peer offers itself as exit node.
    Exit,
}

/// Classifies `prefix` among the AllowedIPs of a peer with addresses `own`.
pub fn classify(prefix: (IpAddr, u8), own: &[(IpAddr, u8)]) -> PrefixKind {
    if prefix.1 == 0 {
        PrefixKind::Exit
    } else if is_single_address(prefix.0, prefix.1) && own.contains(&prefix) {
        PrefixKind::Own
    } else {
        PrefixKind::Subnet
    }
}

fn is_single_address(addr: IpAddr, len: u8) -> bool {
    len == if addr.is_ipv4() { 32 } else { 128 }
}

/// Which of one peer's routes a pod installs. Only what the peer actually
/// offers is granted, so pods whose preferences differ only for routes a
/// peer does not have share its conversion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Grant {
    pub subnets: bool,
    pub exit: bool,
}

impl RoutePrefs {
    /// What this pod grants `node`.
    pub fn grant_for(&self, node: &Node) -> Grant {
        // The common cases cost no parsing: a pod that opted into nothing,
        // a peer whose AllowedIPs are its addresses.
        if (!self.accept_routes && self.exit_node.is_none()) || node.allowedips.is_none() {
            return Grant::default();
        }
        let own = node.address_prefixes();
        let offers = |kind| {
            node.allowed_prefixes()
                .into_iter()
                .any(|p| classify(p, &own) == kind)
        };
        Grant {
            subnets: self.accept_routes && offers(PrefixKind::Subnet),
            exit: self.exit_node.as_ref().is_some_and(|e| e.matches(node))
                && offers(PrefixKind::Exit),
        }
    }
}

/// The prefixes of `node` a pod with `grant` installs, in control's order.
pub fn installed(node: &Node, grant: Grant) -> Vec<(IpAddr, u8)> {
    let own = node.address_prefixes();
    node.allowed_prefixes()
        .into_iter()
        .filter(|&prefix| match classify(prefix, &own) {
            PrefixKind::Own => true,
            PrefixKind::Subnet => grant.subnets,
            PrefixKind::Exit => grant.exit,
        })
        .collect()
}

/// The subnet routes of `peers` a pod with `prefs` installs: what the pod
/// routes into its tailnet interface beyond the tailnet ranges. Exit routes
/// are never among them (see the README: a pod's default route belongs to
/// the cluster network). Sorted and without duplicates.
pub fn accepted_subnets<'a>(
    prefs: &RoutePrefs,
    peers: impl IntoIterator<Item = &'a Node>,
) -> Vec<(IpAddr, u8)> {
    if !prefs.accept_routes {
        return Vec::new();
    }
    let mut subnets: Vec<(IpAddr, u8)> = peers
        .into_iter()
        .filter(|node| !node.expired)
        .flat_map(|node| {
            let own = node.address_prefixes();
            node.allowed_prefixes()
                .into_iter()
                .filter(move |&p| classify(p, &own) == PrefixKind::Subnet)
        })
        .collect();
    subnets.sort_unstable();
    subnets.dedup();
    subnets
}

#[cfg(test)]
mod tests;
