//! A synthetic tailnet as control describes it, for the examples that feed
//! netmaps through the daemon's decoding and sync.

/// A key of node `i` in its text form.
fn key(prefix: &str, fill: u8, i: usize) -> String {
    let mut bytes = [fill; 32];
    bytes[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    format!("{prefix}:{}", hex::encode(bytes))
}

/// Node `i`: two addresses, two endpoints on `port`, a disco key, a home
/// relay.
pub fn node_json(i: usize, port: u16) -> String {
    let (hi, lo) = (i / 250, i % 250 + 1);
    format!(
        r#"{{"ID": {id}, "StableID": "n{id}", "Name": "node-{i}.tailnet.", "Key": "{nk}", "DiscoKey": "{dk}",
            "Addresses": ["100.64.{hi}.{lo}/32", "fd7a:115c:a1e0::{hi}:{lo}/128"],
            "Endpoints": ["10.88.{hi}.{lo}:{port}", "[fd00::{hi}:{lo}]:{port}"], "HomeDERP": 900, "Online": true}}"#,
        id = i + 1,
        nk = key("nodekey", 0x10, i),
        dk = key("discokey", 0x20, i),
    )
}

/// A region with one STUN-only server on a closed loopback port: the DERP
/// map goes through the daemon's conversion without relay connections.
pub const DERP_MAP: &str = r#"{"Regions": {"900": {"RegionID": 900, "RegionCode": "lo", "Nodes": [
    {"Name": "900a", "RegionID": 900, "HostName": "localhost", "IPv4": "127.0.0.1", "IPv6": "none",
     "STUNPort": 9, "STUNOnly": true}]}}}"#;
