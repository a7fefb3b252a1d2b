//! An immutable index over peer records (sans-IO): positions of the peers
//! by node key, by host address and by disco key, and the few wider
//! prefixes. [`super::PeerTable`] builds pods' views from two of these: a
//! base shared by every pod of a tailnet and a small one of its own.
//!
//! - the records, sorted by node key: one pointer per peer;
//! - host routes (/32, /128: a peer's own addresses, nearly all routes),
//!   a 4-byte reference each, sorted by address;
//! - disco keys, a 4-byte position per peer that has one, sorted by key;
//! - the routes wider than a host (subnet routers, exit nodes) in an
//!   [`AllowedIps`].

use std::net::IpAddr;
use std::sync::Arc;

use super::super::config::PeerConfig;
use super::super::routing::AllowedIps;
use super::NodeKey;

/// Allowed IPs of one peer a host reference can name; the rest of a
/// (rare) longer list goes to the prefix table.
const HOST_SLOTS: usize = 1 << SLOT_BITS;
const SLOT_BITS: u32 = 8;
/// Peers one index can hold (the rest of a larger set is ignored).
pub const MAX_PEERS: usize = (u32::MAX >> SLOT_BITS) as usize;

/// Records sorted by node key and their lookups, by position.
#[derive(Debug, Default)]
pub(super) struct PeerIndex {
    /// Sorted by node key, one record per key.
    peers: Vec<Arc<PeerConfig>>,
    /// `peer << SLOT_BITS | slot`: `peers[peer].allowed_ips[slot]` is a
    /// host route. Sorted by that address.
    hosts: Vec<u32>,
    /// Positions of the peers with a disco key, sorted by it.
    by_disco: Vec<u32>,
    /// Routes wider than a host, to positions.
    prefixes: AllowedIps<u32>,
}

impl PeerIndex {
    /// The index of `peers`, already sorted by node key without repeats.
    pub(super) fn from_sorted(mut peers: Vec<Arc<PeerConfig>>) -> Self {
        debug_assert!(peers.windows(2).all(|w| w[0].node_key < w[1].node_key));
        peers.truncate(MAX_PEERS);
        peers.shrink_to_fit();
        let mut hosts = Vec::new();
        let mut prefixes = Vec::new();
        for (position, peer) in peers.iter().enumerate() {
            // Bounded by MAX_PEERS above.
            let position = position as u32;
            for (slot, &(ip, len)) in peer.allowed_ips.iter().enumerate() {
                if slot < HOST_SLOTS && is_host(ip, len) {
                    hosts.push(position << SLOT_BITS | slot as u32);
                } else {
                    prefixes.push((ip, len, position));
                }
            }
        }
        let mut index = Self {
            peers,
            hosts: Vec::new(),
            by_disco: Vec::new(),
            prefixes: AllowedIps::from_entries(prefixes),
        };
        hosts.sort_by_key(|&r| index.host_addr(r));
        hosts.shrink_to_fit();
        index.hosts = hosts;
        let mut by_disco: Vec<u32> = (0..index.peers.len() as u32)
            .filter(|&i| index.disco_at(i).is_some())
            .collect();
        by_disco.sort_by_key(|&i| index.disco_at(i));
        by_disco.shrink_to_fit();
        index.by_disco = by_disco;
        index
    }

    /// The address host reference `r` names.
    fn host_addr(&self, r: u32) -> Option<IpAddr> {
        let peer = self.peers.get((r >> SLOT_BITS) as usize)?;
        let slot = (r & (HOST_SLOTS as u32 - 1)) as usize;
        peer.allowed_ips.get(slot).map(|(ip, _)| *ip)
    }

    fn disco_at(&self, position: u32) -> Option<[u8; 32]> {
        self.peers.get(position as usize)?.disco_key
    }

    /// The records, by node key.
    pub(super) fn records(&self) -> &[Arc<PeerConfig>] {
        &self.peers
    }

    /// The record at `position`.
    pub(super) fn record(&self, position: u32) -> Option<&Arc<PeerConfig>> {
        self.peers.get(position as usize)
    }

    /// Where the peer with `key` is.
    pub(super) fn position(&self, key: &NodeKey) -> Option<u32> {
        let at = self.peers.binary_search_by(|p| p.node_key.cmp(key)).ok()?;
        // Bounded by MAX_PEERS.
        Some(at as u32)
    }

    /// Positions of the peers with disco key `disco`, by node key.
    pub(super) fn disco_positions(&self, disco: &[u8; 32]) -> impl Iterator<Item = u32> + '_ {
        let wanted = Some(*disco);
        let first = self
            .by_disco
            .partition_point(|&i| self.disco_at(i) < wanted);
        self.by_disco[first..]
            .iter()
            .copied()
            .take_while(move |&i| self.disco_at(i) == wanted)
    }

    /// Positions of the peers with `addr` as a host route.
    pub(super) fn host_positions(&self, addr: IpAddr) -> impl Iterator<Item = u32> + '_ {
        let wanted = Some(addr);
        let first = self.hosts.partition_point(|&r| self.host_addr(r) < wanted);
        self.hosts[first..]
            .iter()
            .copied()
            .take_while(move |&r| self.host_addr(r) == wanted)
            .map(|r| r >> SLOT_BITS)
    }

    /// The longest wider prefix owning `addr` (see [`AllowedIps::owner`])
    /// among peers `keep` accepts: its length and position.
    pub(super) fn prefix_owner(
        &self,
        addr: IpAddr,
        keep: impl Fn(u32) -> bool,
    ) -> Option<(u8, u32)> {
        self.prefixes
            .owner_where(addr, |&i| keep(i))
            .map(|(len, &i)| (len, i))
    }

    pub(super) fn len(&self) -> usize {
        self.peers.len()
    }

    /// Number of routes (host and wider).
    pub(super) fn route_count(&self) -> usize {
        self.hosts.len() + self.prefixes.len()
    }

    /// Heap bytes the index takes beyond the records it points to.
    pub(super) fn heap_bytes(&self) -> usize {
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
