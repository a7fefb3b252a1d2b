//! Pod lifecycle and state.
