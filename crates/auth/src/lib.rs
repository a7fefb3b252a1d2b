//! Auth-key backends.
