//! A pod's peer set over records shared between pods (sans-IO): which peer
//! a node key, a destination address or a disco key names.
//!
//! Every pod of a tailnet sees nearly the same peers, and a pod talks to
//! few of them, so the records (`Arc<PeerConfig>`, interned by the netmap
//! sync) are shared and a pod keeps only small indices into its own list:
//!
//! - the list itself, sorted by node key: one pointer per peer;
//! - host routes (/32, /128: a peer's own addresses, nearly all routes),
//!   a 4-byte reference each, sorted by address;
//! - disco keys, a 4-byte reference per peer that has one, sorted by key;
//! - the few wider prefixes (subnet routers, exit nodes) in an
//!   [`AllowedIps`].
//!
//! Lookups are binary searches through those references into the records.

use std::net::IpAddr;
use std::sync::Arc;

use super::config::PeerConfig;
use super::routing::AllowedIps;

/// A WireGuard node key.
pub type NodeKey = [u8; 32];

/// Allowed IPs of one peer a host reference can name; the rest of a
/// (rare) longer list goes to the prefix table.
const HOST_SLOTS: usize = 1 << SLOT_BITS;
const SLOT_BITS: u32 = 8;
/// Peers one table can index (the rest of a larger set is ignored).
pub const MAX_PEERS: usize = (u32::MAX >> SLOT_BITS) as usize;

/// One pod's peers and their routes.
#[derive(Debug, Default)]
pub struct PeerTable {
    /// Sorted by node key, one record per key.
    peers: Vec<Arc<PeerConfig>>,
    /// `peer << SLOT_BITS | slot`: `peers[peer].allowed_ips[slot]` is a
    /// host route. Sorted by that address.
    hosts: Vec<u32>,
    /// Indices of the peers with a disco key, sorted by it.
    by_disco: Vec<u32>,
    /// Routes wider than a host, to peer indices.
    prefixes: AllowedIps<u32>,
}

impl PeerTable {
    /// The table of `peers`; of two records with one node key the first
    /// given stays.
    pub fn new(mut peers: Vec<Arc<PeerConfig>>) -> Self {
        peers.truncate(MAX_PEERS);
        // Stable: the first record of a key stays first.
        peers.sort_by_key(|p| p.node_key);
        peers.dedup_by(|later, earlier| later.node_key == earlier.node_key);
        peers.shrink_to_fit();
        let mut hosts = Vec::new();
        let mut prefixes = Vec::new();
        for (index, peer) in peers.iter().enumerate() {
            // Bounded by MAX_PEERS above.
            let index = index as u32;
            for (slot, &(ip, len)) in peer.allowed_ips.iter().enumerate() {
                if slot < HOST_SLOTS && is_host(ip, len) {
                    hosts.push(index << SLOT_BITS | slot as u32);
                } else {
                    prefixes.push((ip, len, index));
                }
            }
        }
        let mut table = Self {
            peers,
            hosts,
            by_disco: Vec::new(),
            prefixes: AllowedIps::from_entries(prefixes),
        };
        let mut hosts = std::mem::take(&mut table.hosts);
        hosts.sort_by_key(|&r| table.host_addr(r));
        hosts.shrink_to_fit();
        table.hosts = hosts;
        let mut by_disco: Vec<u32> = (0..table.peers.len() as u32)
            .filter(|&i| table.disco_at(i).is_some())
            .collect();
        by_disco.sort_by_key(|&i| table.disco_at(i));
        by_disco.shrink_to_fit();
        table.by_disco = by_disco;
        table
    }

    /// The address host reference `r` names.
    fn host_addr(&self, r: u32) -> Option<IpAddr> {
        let peer = self.peers.get((r >> SLOT_BITS) as usize)?;
        let slot = (r & (HOST_SLOTS as u32 - 1)) as usize;
        peer.allowed_ips.get(slot).map(|(ip, _)| *ip)
    }

    fn key_at(&self, index: u32) -> Option<&NodeKey> {
        self.peers.get(index as usize).map(|p| &p.node_key)
    }

    /// The record of the peer with `key`.
    pub fn get(&self, key: &NodeKey) -> Option<&Arc<PeerConfig>> {
        let at = self.peers.binary_search_by(|p| p.node_key.cmp(key)).ok()?;
        self.peers.get(at)
    }

    pub fn contains(&self, key: &NodeKey) -> bool {
        self.get(key).is_some()
    }

    /// The peer whose disco key is `disco` (of two with one key, the one
    /// with the lower node key).
    pub fn by_disco(&self, disco: &[u8; 32]) -> Option<&Arc<PeerConfig>> {
        let wanted = Some(*disco);
        let first = self
            .by_disco
            .partition_point(|&i| self.disco_at(i) < wanted);
        let peer = self.peers.get(*self.by_disco.get(first)? as usize)?;
        (peer.disco_key == wanted).then_some(peer)
    }

    fn disco_at(&self, index: u32) -> Option<[u8; 32]> {
        self.peers.get(index as usize)?.disco_key
    }

    /// Whom `addr` belongs to, for a packet to it or from it: a peer's own
    /// address first, else the longest wider prefix, where a default route
    /// (an exit node's) never covers a tailnet address (see
    /// [`AllowedIps::owner`]).
    pub fn owner(&self, addr: IpAddr) -> Option<&NodeKey> {
        let first = self
            .hosts
            .partition_point(|&r| self.host_addr(r) < Some(addr));
        if let Some(&r) = self.hosts.get(first) {
            if self.host_addr(r) == Some(addr) {
                return self.key_at(r >> SLOT_BITS);
            }
        }
        let index = *self.prefixes.owner(addr)?;
        self.key_at(index)
    }

    /// Every record, by node key.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<PeerConfig>> {
        self.peers.iter()
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Number of routes (host and wider).
    pub fn route_count(&self) -> usize {
        self.hosts.len() + self.prefixes.len()
    }

    /// Heap bytes the pod's own indices take (the records are shared).
    pub fn index_bytes(&self) -> usize {
        self.peers.capacity() * std::mem::size_of::<Arc<PeerConfig>>()
            + (self.hosts.capacity() + self.by_disco.capacity()) * std::mem::size_of::<u32>()
            + self.prefixes.heap_bytes()
    }
}

/// Whether `ip/len` names a single address.
fn is_host(ip: IpAddr, len: u8) -> bool {
    match ip {
        IpAddr::V4(_) => len == 32,
        IpAddr::V6(_) => len == 128,
    }
}

#[cfg(test)]
#[path = "peer_table_tests.rs"]
mod tests;
