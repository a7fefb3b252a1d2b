//! Sans-IO data-plane protocol cores.
pub mod derp;
