//! The demultiplexer of a pod's one UDP socket, which carries WireGuard,
//! disco and STUN: each datagram is sorted by its first bytes alone.

use crate::disco::looks_like_disco;
use crate::stun::is_stun;

/// What kind of datagram arrived on the shared UDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// A STUN Binding request or success response.
    Stun,
    /// A disco message (starts with the disco magic).
    Disco,
    /// A WireGuard message (see [`looks_like_wireguard`]).
    WireGuard,
    /// None of these; dropped by the caller.
    Other,
}

/// Sorts a datagram from the shared UDP socket by its first bytes.
///
/// Disco is checked first (its magic can never look like STUN since its
/// first byte has bit 6 set); STUN is a Binding-class message (byte 1 is
/// 0x01: request or success response); WireGuard is
/// [`looks_like_wireguard`].
pub fn classify(datagram: &[u8]) -> PacketKind {
    if looks_like_disco(datagram) {
        PacketKind::Disco
    } else if is_stun(datagram) && datagram[1] == 0x01 {
        PacketKind::Stun
    } else if looks_like_wireguard(datagram) {
        PacketKind::WireGuard
    } else {
        PacketKind::Other
    }
}

/// WireGuard messages start with a type 1..=4 followed by three zero bytes.
pub fn looks_like_wireguard(datagram: &[u8]) -> bool {
    datagram.len() >= 4 && (1..=4).contains(&datagram[0]) && datagram[1..4] == [0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{binding_request_with_tx_id, binding_response, TxId};

    const TX: TxId = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn stun_binding_messages_only() {
        assert_eq!(classify(&binding_request_with_tx_id(TX)), PacketKind::Stun);
        let resp = binding_response(TX, "1.2.3.4:5".parse().unwrap());
        assert_eq!(classify(&resp), PacketKind::Stun);

        // A STUN error response (0x0111) is STUN-shaped but not Binding traffic.
        let mut error_resp = resp.clone();
        error_resp[1] = 0x11;
        assert!(is_stun(&error_resp));
        assert_eq!(classify(&error_resp), PacketKind::Other);
    }

    #[test]
    fn wireguard_by_type_and_zero_bytes() {
        let mut wg_init = vec![0u8; 148];
        wg_init[0] = 1;
        assert_eq!(classify(&wg_init), PacketKind::WireGuard);
        let mut wg_data = vec![0u8; 32];
        wg_data[0] = 4;
        assert_eq!(classify(&wg_data), PacketKind::WireGuard);
        wg_data[2] = 1;
        assert_eq!(classify(&wg_data), PacketKind::Other);
        assert_eq!(classify(&[5, 0, 0, 0]), PacketKind::Other);
        assert_eq!(classify(&[]), PacketKind::Other);

        assert!(looks_like_wireguard(&[1, 0, 0, 0, 9]));
        assert!(looks_like_wireguard(&[4, 0, 0, 0]));
        assert!(!looks_like_wireguard(&[5, 0, 0, 0]));
        assert!(!looks_like_wireguard(b"TS\xf0\x9f\x92\xac"));
    }

    #[test]
    fn disco_before_everything_else() {
        let mut disco = crate::disco::MAGIC.to_vec();
        disco.extend_from_slice(&[0u8; 56 + 16]);
        assert_eq!(classify(&disco), PacketKind::Disco);
    }
}
