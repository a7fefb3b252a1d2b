//! Plain input types of the data-plane engine. The control-plane side
//! converts its netmap into these; the engine knows nothing of control.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::Duration;

use super::derp_client::RelayTrust;
pub use super::engine::DnsSettings;
use tailnet_cni_proto::validate::MAX_MTU;

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How often boringtun timers run for sessions that exist.
    pub timer_interval: Duration,
    /// Capacity of each pod's inbound queue (packets from relays).
    pub inbound_queue: usize,
    /// Capacity of each relay connection's outbound queue.
    pub derp_queue: usize,
    /// A non-home relay connection unused for this long is closed.
    pub derp_idle_timeout: Duration,
    /// Largest inner IP packet: at least the largest MTU a pod's TUN may
    /// have, or packets above it are cut. Sizes each pod's buffers.
    pub max_packet_size: usize,
    /// Which certificates relays are verified against: the daemon shares
    /// the control connection's, so `ca_file` covers both.
    pub relay_trust: RelayTrust,
    /// Each pod's MagicDNS resolver: its upstream, timeout and bound.
    pub dns: DnsSettings,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            timer_interval: Duration::from_millis(250),
            inbound_queue: 512,
            derp_queue: 512,
            derp_idle_timeout: Duration::from_secs(60),
            max_packet_size: MAX_MTU as usize,
            relay_trust: RelayTrust::default(),
            dns: DnsSettings::default(),
        }
    }
}

/// One pod's identity and its packet device.
pub struct PodDataConfig {
    pub pod_id: String,
    /// An already-created TUN (IFF_TUN|IFF_NO_PI), or any datagram fd that
    /// carries one raw IP packet per read/write (tests use a socketpair).
    pub tun_fd: OwnedFd,
    /// WireGuard static key = node key.
    pub node_private: [u8; 32],
    pub disco_private: [u8; 32],
    /// The pod's own tailnet addresses; packets from other sources are dropped.
    pub addresses: Vec<IpAddr>,
}

impl fmt::Debug for PodDataConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodDataConfig")
            .field("pod_id", &self.pod_id)
            .field("tun_fd", &self.tun_fd)
            .field("node_private", &"<redacted>")
            .field("disco_private", &"<redacted>")
            .field("addresses", &self.addresses)
            .finish()
    }
}

/// A peer as seen from one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub node_key: [u8; 32],
    pub disco_key: Option<[u8; 32]>,
    /// Prefixes the peer may send from and that route to it.
    pub allowed_ips: Vec<(IpAddr, u8)>,
    pub endpoints: Vec<SocketAddr>,
    pub home_derp: Option<u16>,
}

/// One DERP region of the DERP map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerpRegionConfig {
    pub region_id: u16,
    pub nodes: Vec<DerpNodeConfig>,
}

/// One relay server of a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerpNodeConfig {
    pub name: String,
    pub host_name: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// 0 means the default, 443.
    pub derp_port: u16,
    /// 0 means the default, 3478.
    pub stun_port: u16,
    /// Skip certificate verification for this node only.
    pub insecure_for_tests: bool,
    /// The node only serves STUN; never connect to it for relaying.
    pub stun_only: bool,
    /// Speak plain HTTP instead of TLS. Real DERP maps always use TLS;
    /// this serves local relays in tests and debugging.
    pub plain_http: bool,
}

impl DerpNodeConfig {
    pub fn effective_derp_port(&self) -> u16 {
        if self.derp_port == 0 {
            443
        } else {
            self.derp_port
        }
    }

    pub fn effective_stun_port(&self) -> u16 {
        if self.stun_port == 0 {
            3478
        } else {
            self.stun_port
        }
    }
}

/// What the pod should report to control as its network position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodEndpoints {
    /// Candidate addresses peers may try for direct UDP.
    pub endpoints: Vec<SocketAddr>,
    /// Home DERP region (to report as NetInfo.PreferredDERP).
    pub preferred_derp: Option<u16>,
    /// Local port of the pod's UDP socket, if it has one.
    pub udp_port: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_buffers_hold_the_largest_mtu_a_pod_may_have() {
        assert!(EngineConfig::default().max_packet_size >= MAX_MTU as usize);
    }
}
