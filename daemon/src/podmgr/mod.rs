//! Pod lifecycle and state.
pub mod faults;
pub mod filters;
pub mod hostname;
pub mod locks;
pub mod manager;
pub mod naming;
pub mod netns;
mod nl;
pub mod plumbing;
pub mod rekey;
pub mod state;
pub mod sync;
pub mod sysctl;
pub mod tables;
pub mod tun;
