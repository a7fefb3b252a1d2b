//! Sans-IO data-plane protocol cores.
pub mod demux;
pub mod derp;
pub mod disco;
pub mod filter;
pub mod packet;
pub mod stun;
