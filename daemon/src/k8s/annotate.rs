//! The annotations that tell users and tools a pod's tailnet identity, as a
//! JSON merge patch (RFC 7386): only these keys change, whatever else the
//! pod carries.

use std::net::IpAddr;

use serde_json::{json, Value};

/// The pod's tailnet addresses, comma-separated (IPv4 first).
pub const ADDRESSES: &str = "tailnet-cni.io/addresses";
/// The pod's machine name on the tailnet.
pub const TAILNET_HOSTNAME: &str = "tailnet-cni.io/tailnet-hostname";

/// The merge patch that sets both annotations.
pub fn tailnet_annotations(hostname: &str, addresses: &[IpAddr]) -> Value {
    let addresses: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
    json!({
        "metadata": {
            "annotations": {
                ADDRESSES: addresses.join(","),
                TAILNET_HOSTNAME: hostname,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_touches_only_our_annotations() {
        let patch = tailnet_annotations(
            "homelab-apps-web-0",
            &[
                "100.64.0.7".parse().unwrap(),
                "fd7a:115c:a1e0::7".parse().unwrap(),
            ],
        );
        assert_eq!(
            patch,
            json!({"metadata": {"annotations": {
                "tailnet-cni.io/addresses": "100.64.0.7,fd7a:115c:a1e0::7",
                "tailnet-cni.io/tailnet-hostname": "homelab-apps-web-0",
            }}})
        );
    }
}
