//! The `tailnet-cni` CNI plugin: a small shim chained after the primary CNI
//! plugin. It validates what the runtime passes, forwards the command to the
//! node daemon `tailnet-cnid` over its Unix socket, and extends the primary
//! plugin's result with the pod's tailnet interface.

#![forbid(unsafe_code)]

pub mod client;
pub mod commands;
pub mod env;
pub mod error;
pub mod netconf;
pub mod result;
pub mod selection;
pub mod version;

pub use client::{Daemon, DaemonError, DaemonTarget, UdsDaemon};
pub use commands::{run, Failure, Success};
pub use error::CniError;
pub use version::CniVersion;
