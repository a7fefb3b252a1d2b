//! The host's own unicast addresses: the local endpoint candidates of every
//! pod. The daemon runs in the host's network namespace, so they are the
//! same for every pod and are read once for the node: each read dumps every
//! link of the host with its statistics, two links per pod, and 250 pods
//! each reading them every 20 s cost half of the daemon's idle CPU.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How old the node's reading may be before a pod's request reads again.
pub const HOST_ADDRESSES_MAX_AGE: Duration = Duration::from_secs(10);

/// The node's last reading of its addresses, shared by every pod.
#[derive(Debug)]
pub struct HostAddresses {
    max_age: Duration,
    last: Mutex<Option<Reading>>,
}

#[derive(Debug)]
struct Reading {
    at: Instant,
    addresses: Arc<[IpAddr]>,
}

impl Default for HostAddresses {
    fn default() -> Self {
        Self::new(HOST_ADDRESSES_MAX_AGE)
    }
}

impl HostAddresses {
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            last: Mutex::new(None),
        }
    }

    /// The addresses, read again if the last reading is older than the
    /// maximum age. Pods asking at once wait for one reading.
    pub fn current(&self) -> Arc<[IpAddr]> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(reading) = last.as_ref().filter(|r| r.at.elapsed() < self.max_age) {
            return reading.addresses.clone();
        }
        let addresses: Arc<[IpAddr]> = read().into();
        *last = Some(Reading {
            at: Instant::now(),
            addresses: addresses.clone(),
        });
        addresses
    }

    /// The pod socket on `port` at each of the host's addresses.
    pub fn endpoints(&self, port: u16) -> Vec<SocketAddr> {
        endpoints(&self.current(), port)
    }
}

/// Every global or private unicast address of the host's interfaces, sorted.
/// Loopback and link-local addresses are useless to other machines. A
/// failed read counts as none: the pod still has its relay and STUN.
fn read() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = interfaces
        .filter_map(|ifa| {
            let addr = ifa.address?;
            let ip = match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
                (Some(v4), _) => IpAddr::V4(v4.ip()),
                (None, Some(v6)) => IpAddr::V6(v6.ip()),
                (None, None) => return None,
            };
            usable(ip).then_some(ip)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn usable(ip: IpAddr) -> bool {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    !ip.is_loopback() && !ip.is_unspecified() && !link_local
}

/// `addresses` paired with `port`.
pub fn endpoints(addresses: &[IpAddr], port: u16) -> Vec<SocketAddr> {
    addresses
        .iter()
        .map(|&ip| SocketAddr::new(ip, port))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_skip_loopback_and_carry_the_port() {
        let host = HostAddresses::default();
        for ep in host.endpoints(41641) {
            assert_eq!(ep.port(), 41641);
            assert!(usable(ep.ip()), "{ep}");
        }
    }

    #[test]
    fn only_addresses_other_machines_can_reach_are_usable() {
        for ip in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "::",
            "169.254.1.2",
            "fe80::1",
        ] {
            assert!(!usable(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.1.2.3", "192.0.2.7", "fd7a:115c:a1e0::1", "2001:db8::1"] {
            assert!(usable(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn pods_share_one_reading_until_it_is_too_old() {
        let host = HostAddresses::new(Duration::from_secs(3600));
        let first = host.current();
        assert!(Arc::ptr_eq(&first, &host.current()), "read again");

        let always_stale = HostAddresses::new(Duration::ZERO);
        let first = always_stale.current();
        assert!(
            !Arc::ptr_eq(&first, &always_stale.current()),
            "not read again"
        );
    }
}
