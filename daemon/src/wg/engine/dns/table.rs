//! What a pod's MagicDNS resolver knows: the names of its netmap, the
//! suffixes it answers for itself and the split-DNS routes. Sans-IO: a
//! name and a question type in, a decision out.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// One pod's view of tailnet names, built from its own netmap, so a name
/// the pod's ACLs hide from it does not resolve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsTable {
    /// Fully qualified names (lowercase, no final dot) and their addresses.
    names: BTreeMap<String, Vec<IpAddr>>,
    /// Single-label names of nodes under the tailnet's domain.
    short_names: BTreeMap<String, Vec<IpAddr>>,
    /// Suffixes the resolver owns: a name below one that is not in
    /// `names` does not exist.
    local_suffixes: Vec<String>,
    /// Split DNS: names below the suffix go to these resolvers.
    routes: Vec<(String, RouteTarget)>,
}

/// Where a split-DNS route sends its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// These resolvers, tried in order.
    Upstreams(Vec<SocketAddr>),
    /// Control named only resolvers this engine cannot use (DoH, DoT):
    /// names below the suffix fail rather than leak to the default upstream.
    Unusable,
}

/// What the resolver does with one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The name is the tailnet's: answer with these addresses (possibly
    /// none of the asked family, which is "no data").
    Answer(Vec<IpAddr>),
    /// The name is below a suffix the resolver owns and does not exist.
    NxDomain,
    /// Ask these resolvers (a split-DNS route).
    Forward(Vec<SocketAddr>),
    /// Ask the default upstream (the cluster DNS).
    ForwardDefault,
    /// The route for this name cannot be served.
    Fail,
}

impl DnsTable {
    /// Adds a name (any case, final dot optional) with its addresses.
    /// Names under `tailnet_domain` also answer to their first label.
    pub fn add_name(&mut self, name: &str, addrs: Vec<IpAddr>, tailnet_domain: &str) {
        let name = normalize(name);
        if name.is_empty() {
            return;
        }
        let domain = normalize(tailnet_domain);
        if let Some((short, rest)) = name.split_once('.') {
            if !domain.is_empty() && rest == domain {
                self.short_names
                    .entry(short.to_string())
                    .or_default()
                    .extend(addrs.iter().copied());
            }
        }
        self.names.entry(name).or_default().extend(addrs);
    }

    /// Makes the resolver answer every name below `suffix` itself.
    pub fn add_local_suffix(&mut self, suffix: &str) {
        let suffix = normalize(suffix);
        if !suffix.is_empty() && !self.local_suffixes.contains(&suffix) {
            self.local_suffixes.push(suffix);
        }
    }

    /// Sends names below `suffix` to `target`.
    pub fn add_route(&mut self, suffix: &str, target: RouteTarget) {
        let suffix = normalize(suffix);
        if !suffix.is_empty() {
            self.routes.push((suffix, target));
        }
    }

    /// Whether the table answers nothing itself (MagicDNS off, no routes).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.local_suffixes.is_empty() && self.routes.is_empty()
    }

    /// Decides for `name` (lowercase, no final dot, as
    /// `tailnet_wire::dns::Query` gives it).
    pub fn decide(&self, name: &str) -> Decision {
        if let Some(addrs) = self.names.get(name) {
            return Decision::Answer(addrs.clone());
        }
        if !name.contains('.') {
            if let Some(addrs) = self.short_names.get(name) {
                return Decision::Answer(addrs.clone());
            }
        }
        // The longest matching route wins over a shorter local suffix, so
        // a delegated subdomain of the tailnet's domain still forwards.
        let route = self
            .routes
            .iter()
            .filter(|(suffix, _)| is_below(name, suffix))
            .max_by_key(|(suffix, _)| suffix.len());
        let local = self
            .local_suffixes
            .iter()
            .filter(|suffix| is_below(name, suffix))
            .map(String::len)
            .max();
        match (route, local) {
            (Some((suffix, target)), local) if local.is_none_or(|l| suffix.len() > l) => {
                match target {
                    RouteTarget::Upstreams(servers) => Decision::Forward(servers.clone()),
                    RouteTarget::Unusable => Decision::Fail,
                }
            }
            (_, Some(_)) => Decision::NxDomain,
            _ => Decision::ForwardDefault,
        }
    }
}

/// Lowercase, without the final dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// `name` is `suffix` or a name below it.
fn is_below(name: &str, suffix: &str) -> bool {
    name == suffix
        || name
            .strip_suffix(suffix)
            .is_some_and(|head| head.ends_with('.'))
}
