//! `tailnet-cnid`: the node daemon. See ARCHITECTURE.md for the map of modules.
pub mod config;
pub mod control;
pub mod daemon;
pub mod install;
pub mod k8s;
pub mod metrics;
pub mod minter;
pub mod podmgr;
pub mod privileges;
pub mod rpc;
pub mod selection;
pub mod status;
pub mod wg;
