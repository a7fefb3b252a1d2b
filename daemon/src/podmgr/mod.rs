//! Pod lifecycle and state.
pub mod locks;
