//! Pod lifecycle and state.
pub mod locks;
pub mod hostname;
pub mod naming;
pub mod netns;
mod nl;
pub mod plumbing;
pub mod state;
pub mod sysctl;
pub mod tables;
pub mod tun;
pub mod manager;
pub mod sync;
