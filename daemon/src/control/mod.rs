//! The Tailscale control protocol (ts2021), one session per pod identity.
//!
//! - [`capver`]: the capability version announced, and what each version
//!   up to it promises and how the daemon keeps it.
//! - [`keys`]: key types and their text forms.
//! - [`identity`]: one identity's keys, two-phase node-key rotation, where
//!   they are kept.
//! - [`rotation`]: when to replace a node key (sans-IO).
//! - [`registration`]: what a registration answer means, what comes next
//!   (sans-IO).
//! - [`json`], [`tailcfg`]: wire types, decoded the way Go decodes them.
//! - [`noise`]: the sans-IO Noise IK handshake and record layer.
//! - [`conn`]: `/key`, the `/ts2021` upgrade, the Noise byte stream.
//! - [`client`]: HTTP/2 requests over it: register, map poll, updates.
//! - [`netmap`]: a netmap kept current from deltas; shared peer records.
//! - [`session`]: the per-identity supervisor the pod manager drives.
//! - [`server_text`]: a control server's error text, bounded and redacted.
//! - [`tls`]: trusted roots and certificate errors in plain words.
//! - [`tka`]: tailnet lock: signing node keys with pre-signed auth keys.

pub mod capver;
pub mod client;
pub mod conn;
pub mod identity;
pub mod json;
pub mod keys;
pub mod netmap;
pub mod noise;
pub mod registration;
pub mod rotation;
pub mod server_text;
pub mod session;
pub mod tailcfg;
pub mod tka;
pub mod tls;

pub use identity::{IdentityKeys, KeyStore, KeyStoreError};
pub use netmap::{NetMap, SelfNode};
pub use rotation::RotationPolicy;
pub use session::{
    AuthKeySource, ControlClient, ControlConfig, ControlError, EndpointReporter, IdentityHandle,
    IdentityOptions, MintError, SessionError, SessionState, Stall,
};
