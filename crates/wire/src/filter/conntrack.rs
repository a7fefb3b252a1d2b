//! Connection tracking: the flows a node opened, so their replies pass.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::packet::proto;

/// Limits of the connection-tracking table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// Most flows tracked at once; the least recently used is evicted.
    pub capacity: usize,
    /// Idle lifetime of a TCP flow.
    pub tcp_idle: Duration,
    /// Idle lifetime of a UDP or SCTP flow.
    pub udp_idle: Duration,
    /// Idle lifetime of an ICMP echo exchange.
    pub icmp_idle: Duration,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            capacity: 1024,
            tcp_idle: Duration::from_secs(300),
            udp_idle: Duration::from_secs(30),
            icmp_idle: Duration::from_secs(30),
        }
    }
}

impl ConntrackConfig {
    /// Idle lifetime of a flow of `protocol`; protocols with ports other
    /// than TCP (UDP, SCTP) share UDP's.
    pub(super) fn idle_for(&self, protocol: u8) -> Duration {
        match protocol {
            proto::TCP => self.tcp_idle,
            proto::ICMPV4 | proto::ICMPV6 => self.icmp_idle,
            _ => self.udp_idle,
        }
    }
}

/// A flow as seen from the node: protocol, local end, remote end. For ICMP
/// echo the local "port" is the echo identifier and the remote one is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct FlowKey {
    pub(super) protocol: u8,
    pub(super) local: IpAddr,
    pub(super) local_port: u16,
    pub(super) remote: IpAddr,
    pub(super) remote_port: u16,
}

/// No slot: the end of the recency list.
const NIL: usize = usize::MAX;

#[derive(Debug, Clone)]
struct FlowSlot {
    key: FlowKey,
    expires: Instant,
    /// Toward the most recently used end.
    newer: usize,
    /// Toward the least recently used end.
    older: usize,
}

/// A bounded LRU table of flows with idle expiry: a hash map into a slab of
/// slots threaded on a doubly linked recency list, so lookups, refreshes,
/// inserts and evictions are all O(1).
#[derive(Debug, Clone)]
pub(super) struct Conntrack {
    index: HashMap<FlowKey, usize>,
    slots: Vec<FlowSlot>,
    free: Vec<usize>,
    newest: usize,
    oldest: usize,
    capacity: usize,
}

impl Conntrack {
    pub(super) fn new(capacity: usize) -> Self {
        Conntrack {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            newest: NIL,
            oldest: NIL,
            capacity,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// Inserts or refreshes a flow.
    pub(super) fn track(&mut self, key: FlowKey, expires: Instant) {
        if self.capacity == 0 {
            return;
        }
        if let Some(&slot) = self.index.get(&key) {
            self.slots[slot].expires = expires;
            self.move_to_newest(slot);
            return;
        }
        if self.index.len() >= self.capacity {
            self.remove(self.oldest);
        }
        let fresh = FlowSlot {
            key,
            expires,
            newer: NIL,
            older: NIL,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = fresh;
                slot
            }
            None => {
                self.slots.push(fresh);
                self.slots.len() - 1
            }
        };
        self.index.insert(key, slot);
        self.link_newest(slot);
    }

    /// True when the flow is tracked and live; a live hit is refreshed to
    /// `refreshed_expiry`, an expired one is removed.
    pub(super) fn hit(&mut self, key: &FlowKey, now: Instant, refreshed_expiry: Instant) -> bool {
        let Some(&slot) = self.index.get(key) else {
            return false;
        };
        if self.slots[slot].expires <= now {
            self.remove(slot);
            return false;
        }
        self.slots[slot].expires = refreshed_expiry;
        self.move_to_newest(slot);
        true
    }

    /// Removes every expired flow; returns how many.
    pub(super) fn sweep(&mut self, now: Instant) -> usize {
        let expired: Vec<usize> = self
            .index
            .values()
            .copied()
            .filter(|&slot| self.slots[slot].expires <= now)
            .collect();
        for &slot in &expired {
            self.remove(slot);
        }
        expired.len()
    }

    fn remove(&mut self, slot: usize) {
        if slot == NIL {
            return;
        }
        self.unlink(slot);
        let key = self.slots[slot].key;
        self.index.remove(&key);
        self.free.push(slot);
    }

    fn unlink(&mut self, slot: usize) {
        let FlowSlot { newer, older, .. } = self.slots[slot];
        if newer == NIL {
            self.newest = older;
        } else {
            self.slots[newer].older = older;
        }
        if older == NIL {
            self.oldest = newer;
        } else {
            self.slots[older].newer = newer;
        }
        self.slots[slot].newer = NIL;
        self.slots[slot].older = NIL;
    }

    fn link_newest(&mut self, slot: usize) {
        self.slots[slot].older = self.newest;
        self.slots[slot].newer = NIL;
        if self.newest != NIL {
            self.slots[self.newest].newer = slot;
        }
        self.newest = slot;
        if self.oldest == NIL {
            self.oldest = slot;
        }
    }

    fn move_to_newest(&mut self, slot: usize) {
        if self.newest != slot {
            self.unlink(slot);
            self.link_newest(slot);
        }
    }
}
