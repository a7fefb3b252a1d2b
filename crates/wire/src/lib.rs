//! Sans-IO data-plane protocol cores.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
pub mod demux;
pub mod derp;
pub mod disco;
pub mod dns;
pub mod filter;
pub mod packet;
pub mod stun;
