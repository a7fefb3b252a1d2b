//! Deterministic host-side names for a pod's devices, and (shared with the
//! shim) validation of the identifiers that end up in device names and file
//! paths.
//!
//! Names are derived from the container id alone, so a restarted daemon (or a
//! garbage collector that lost its records) finds the same devices again.

pub use tailnet_cni_proto::validate::{
    container_id as validate_container_id, interface_name as validate_if_name,
};

/// Prefix of the per-pod TUN device in the host netns.
pub const TUN_PREFIX: &str = "tnt";
/// Prefix of the host end of the per-pod veth pair.
pub const HOST_VETH_PREFIX: &str = "tnv";
/// Hex digits of the container-id hash in a device name: prefix (3) + 10
/// stays within IFNAMSIZ - 1 = 15.
const HASH_HEX_DIGITS: usize = 10;

/// Stable 64-bit FNV-1a: the same input gives the same hash on every build
/// and architecture, unlike `std`'s randomised hasher.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

fn hashed_name(prefix: &str, container_id: &str) -> String {
    let hash = fnv1a64(container_id.as_bytes()) & ((1u64 << (4 * HASH_HEX_DIGITS)) - 1);
    format!("{prefix}{hash:0width$x}", width = HASH_HEX_DIGITS)
}

/// Name of the pod's TUN device in the host netns, e.g. `tnt3f09a1c2de`.
pub fn tun_name(container_id: &str) -> String {
    hashed_name(TUN_PREFIX, container_id)
}

/// Name of the host end of the pod's veth pair, e.g. `tnv3f09a1c2de`.
pub fn host_veth_name(container_id: &str) -> String {
    hashed_name(HOST_VETH_PREFIX, container_id)
}

/// True for names this plugin creates in the host netns (and only those), so
/// garbage collection never touches another component's links.
pub fn is_owned_link_name(name: &str) -> bool {
    let Some(hash) = name
        .strip_prefix(TUN_PREFIX)
        .or_else(|| name.strip_prefix(HOST_VETH_PREFIX))
    else {
        return false;
    };
    hash.len() == HASH_HEX_DIGITS
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use tailnet_cni_proto::validate::MAX_INTERFACE_NAME_LEN;

    use super::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        // Published FNV-1a 64-bit test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn names_are_deterministic_short_and_distinct() {
        let id = "5f2b9c0e3a7d41e8b6c1f0a9d2e3b4c5a6f7e8d9c0b1a2f3e4d5c6b7a8f9e0d1";
        let tun = tun_name(id);
        let veth = host_veth_name(id);
        assert_eq!(tun, tun_name(id));
        assert_eq!(tun.len(), MAX_INTERFACE_NAME_LEN - 2);
        assert!(tun.len() <= MAX_INTERFACE_NAME_LEN);
        assert!(tun.starts_with("tnt") && veth.starts_with("tnv"));
        assert_eq!(tun[3..], veth[3..], "both names carry the same hash");
        assert_ne!(tun_name("pod-a"), tun_name("pod-b"));
        validate_if_name(&tun).unwrap();
        validate_if_name(&veth).unwrap();
    }

    #[test]
    fn owned_link_names_are_recognised_strictly() {
        assert!(is_owned_link_name(&tun_name("x")));
        assert!(is_owned_link_name(&host_veth_name("x")));
        assert!(!is_owned_link_name("tnt"));
        assert!(!is_owned_link_name("tnt0123456789a")); // one digit too many
        assert!(!is_owned_link_name("tntABCDEF0123")); // upper case is not ours
        assert!(!is_owned_link_name("tailscale0"));
        assert!(!is_owned_link_name("eth0"));
    }
}
