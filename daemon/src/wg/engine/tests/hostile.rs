//! Hostile senders at a pod's published UDP port.

use std::net::Ipv4Addr;
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;

use super::*;
use crate::wg::EngineConfig;

/// A stranger who knows the pod's public key (every peer does) floods it
/// with well-formed initiations. Once the pod is under load it answers
/// with cookie replies, which cost no X25519, and never with a handshake
/// response.
#[tokio::test]
async fn an_initiation_flood_is_answered_with_cookies() {
    let engine = Engine::new(EngineConfig::default());
    let pod = attach(&engine, "pod", [0xc1; 32], Ipv4Addr::new(100, 64, 0, 1));
    let pod_addr = loopback_socket_of(&pod);
    let mut stranger = Tunn::new(
        x25519::StaticSecret::from([0xc2; 32]),
        x25519::PublicKey::from(pod.key),
        None,
        None,
        5,
        None,
    );
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 256];
    for _ in 0..400 {
        let TunnResult::WriteToNetwork(init) = stranger.format_handshake_initiation(&mut buf, true)
        else {
            panic!("no initiation")
        };
        sock.send_to(init, pod_addr).await.unwrap();
    }
    let mut cookies = 0;
    let mut reply = [0u8; 512];
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut reply)).await
    {
        assert_eq!(
            reply[0], 3,
            "only cookie replies, got message type {}",
            reply[0]
        );
        assert_eq!(n, 64);
        cookies += 1;
    }
    assert!(cookies > 0, "a flooded pod sent no cookie reply");
}
