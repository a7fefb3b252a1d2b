//! The data plane: one shared WireGuard engine for every pod on the node.
//!
//! Vocabulary: a peer's *path* is direct (UDP to a validated endpoint) or
//! relay (through a DERP server); a *route* is only cryptokey routing.
//! "DERP" names the protocol, the DERP map and control's fields.
//!
//! - [`config`]: the engine's plain input types (pods, peers, DERP map).
//! - [`engine`]: the engine, per-pod tasks and their handles.
//! - [`derp_client`]: relay connections (I/O around `tailnet_wire::derp`).
//! - [`routing`]: cryptokey routing and packet address checks.
//! - [`peer_table`]: a pod's peers over shared records: by key, address, disco key.
//! - [`path`]: per-peer choice between the direct path and the relay.
//! - [`disco`]: per-pod disco keys and the reaction to each disco message.
//! - [`stun`]: per-pod endpoint discovery through the DERP map's STUN servers.
//! - [`packet_fd`]: async packet I/O on TUN (or test) descriptors.
//! - [`offload`]: virtio-net headers and TCP segment joining for the TUN.
//! - [`udp`]: the per-pod UDP socket for direct paths.
//! - [`host_addresses`]: the host's addresses, every pod's local candidates,
//!   read once for the node.
//! - [`batch`]: batched datagram I/O (recvmmsg/sendmmsg) on that socket.
//! - [`local_relay`]: a minimal DERP relay for tests and local debugging.

pub mod batch;
pub mod config;
pub mod derp_client;
pub mod disco;
pub mod engine;
pub mod host_addresses;
pub mod local_relay;
pub mod offload;
pub mod packet_fd;
pub mod path;
pub mod peer_table;
pub mod routing;
pub mod stun;
pub mod udp;

pub use config::{
    DerpNodeConfig, DerpRegionConfig, EngineConfig, PeerConfig, PodDataConfig, PodEndpoints,
};
pub use derp_client::HomeRelay;
pub use engine::{
    DnsSettings, DnsTable, Engine, EngineError, PathKind, PeerStats, PodHandle, PodStats, Reused,
    RouteTarget, WarmRelay,
};
