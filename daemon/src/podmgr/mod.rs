//! Pod lifecycle and state.
pub mod dataplane;
pub mod faults;
pub mod filters;
pub mod hostname;
pub mod keyfile;
pub mod locks;
pub mod magicdns;
pub mod manager;
pub mod naming;
pub mod netns;
mod nl;
pub mod plumbing;
pub mod state;
pub mod sync;
pub mod sysctl;
pub mod tables;
pub mod tun;
