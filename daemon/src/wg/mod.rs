//! The data plane: one shared WireGuard engine for every pod on the node.
//!
//! - [`config`]: the engine's plain input types (pods, peers, DERP map).
//! - [`engine`]: the engine, per-pod tasks and their handles.
//! - [`derp_client`]: relay connections (I/O around `tailnet_wire::derp`).
//! - [`routing`]: cryptokey routing and packet address checks.
//! - [`path`]: per-peer choice between direct UDP and the relay.
//! - [`packet_fd`]: async packet I/O on TUN (or test) descriptors.
//! - [`udp`]: the per-pod UDP socket for direct paths.
//! - [`local_relay`]: a minimal DERP relay for tests and local debugging.

pub mod config;
pub mod derp_client;
pub mod engine;
pub mod local_relay;
pub mod packet_fd;
pub mod path;
pub mod routing;
pub mod udp;

pub use config::{
    DerpNodeConfig, DerpRegionConfig, EngineConfig, PeerConfig, PodDataConfig, PodEndpoints,
};
pub use engine::{Engine, EngineError, PathKind, PeerStats, PodHandle, PodStats};
