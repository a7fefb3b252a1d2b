//! Daemon configuration (TOML).
