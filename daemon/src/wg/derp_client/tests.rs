use tokio::io::AsyncReadExt;

use super::*;

#[tokio::test]
async fn frame_reader_handles_split_and_coalesced_frames() {
    let mut bytes = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\n\r\n".to_vec();
    derp::encode_server_key(&mut bytes, &[7; 32]);
    derp::encode_recv_packet(&mut bytes, &[8; 32], &vec![0xab; 40_000]).unwrap();
    derp::encode_frame(&mut bytes, derp::FrameType::KeepAlive, &[]);
    let (mut client, mut server) = tokio::io::duplex(1000);
    let feeder = tokio::spawn(async move {
        // Dribble the bytes in odd-sized pieces.
        for chunk in bytes.chunks(777) {
            server.write_all(chunk).await.unwrap();
        }
    });
    let mut reader = FrameReader::new(&mut client);
    let status = reader.read_http_head().await.unwrap();
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
    assert_eq!(
        reader.next_frame().await.unwrap(),
        Frame::ServerKey {
            server_key: [7; 32]
        }
    );
    match reader.next_frame().await.unwrap() {
        Frame::RecvPacket { src, packet } => {
            assert_eq!(src, [8; 32]);
            assert_eq!(packet.len(), 40_000);
            assert!(packet.iter().all(|b| *b == 0xab));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(reader.next_frame().await.unwrap(), Frame::KeepAlive);
    feeder.await.unwrap();
    assert!(matches!(
        reader.next_frame().await,
        Err(DerpClientError::Closed)
    ));
}

#[tokio::test]
async fn connect_refuses_non_101() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        // The request is not looked at; only the 404 below matters.
        drop(s.read(&mut buf).await);
        s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
    });
    let node = test_node(addr);
    match connect(&node, &RelayTrust::default(), &[1; 32]).await {
        Err(DerpClientError::UpgradeRefused { status_line }) => {
            assert!(status_line.contains("404"))
        }
        other => panic!("expected refusal, got {:?}", other.map(|c| c.node)),
    }
}

/// A self-signed certificate for "localhost" (DER chain, PKCS#8 DER key),
/// made with the openssl CLI; None when openssl is missing.
fn self_signed_localhost() -> Option<(Vec<rustls::pki_types::CertificateDer<'static>>, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let ok = run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &path("key.pem"),
        "-out",
        &path("cert.pem"),
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost",
        // A server certificate, not a CA: webpki refuses a CA as the end
        // entity even when it is pinned as a root.
        "-addext",
        "basicConstraints=critical,CA:FALSE",
    ]) && run(&[
        "x509",
        "-in",
        &path("cert.pem"),
        "-outform",
        "DER",
        "-out",
        &path("cert.der"),
    ]) && run(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        &path("key.pem"),
        "-outform",
        "DER",
        "-out",
        &path("key.der"),
    ]);
    if !ok {
        return None;
    }
    let cert = std::fs::read(path("cert.der")).unwrap();
    let key = std::fs::read(path("key.der")).unwrap();
    Some((vec![cert.into()], key))
}

/// [`self_signed_localhost`], or what is missing for it.
fn localhost_certificate(
) -> Result<(Vec<rustls::pki_types::CertificateDer<'static>>, Vec<u8>), tailnet_testbed::Missing> {
    self_signed_localhost().ok_or_else(|| {
        tailnet_testbed::Missing::new(
            "the openssl CLI could not make a certificate",
            "apt-get install openssl",
        )
    })
}

#[tokio::test]
async fn tls_relay_accepted_only_when_node_is_insecure_for_tests() {
    let (chain, key) = tailnet_testbed::require!(localhost_certificate());
    let (_relay, mut node) = tls_relay(chain, key, true).await;
    let conn = connect(&node, &RelayTrust::default(), &[3; 32])
        .await
        .expect("TLS connect with verification off");
    assert_ne!(conn.server_key, [0; 32]);

    // The same self-signed relay is refused once verification is on.
    node.insecure_for_tests = false;
    match connect(&node, &RelayTrust::default(), &[4; 32]).await {
        Err(DerpClientError::Connect { source, .. }) => {
            assert!(
                source.to_string().to_lowercase().contains("certificate"),
                "{source}"
            )
        }
        other => panic!(
            "expected a certificate error, got {:?}",
            other.map(|c| c.node)
        ),
    }
}

/// A relay whose certificate is in the control connection's `ca_file` is
/// trusted without `InsecureForTests`: relays share control's trust.
#[tokio::test]
async fn a_relay_signed_by_the_ca_file_is_trusted_like_control() {
    use base64::Engine as _;
    let (chain, key) = tailnet_testbed::require!(localhost_certificate());
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("relay.pem");
    let b64 = base64::engine::general_purpose::STANDARD.encode(chain[0].as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    std::fs::write(
        &ca_file,
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        ),
    )
    .unwrap();
    let (_relay, node) = tls_relay(chain, key, false).await;
    let control = crate::control::tls::client_config(Some(&ca_file)).unwrap();
    let conn = connect(&node, &RelayTrust::shared(control), &[5; 32])
        .await
        .expect("the ca_file's certificate is trusted for relays");
    assert_ne!(conn.server_key, [0; 32]);
    // Without the shared trust the same relay is refused.
    let refused = connect(&node, &RelayTrust::default(), &[6; 32]).await;
    assert!(
        matches!(refused, Err(DerpClientError::Connect { .. })),
        "{:?}",
        refused.map(|c| c.node)
    );
}

/// A relayed packet larger than any datagram the pod could take is dropped
/// by the link; the packets around it still arrive.
#[tokio::test]
async fn relayed_packets_larger_than_a_datagram_are_dropped() {
    let relay = crate::wg::local_relay::LocalRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let node = test_node(relay.addr());
    let region = crate::wg::config::DerpRegionConfig {
        region_id: 900,
        nodes: vec![node.clone()],
    };
    let receiver_private = [7u8; 32];
    let receiver_key = boringtun::x25519::PublicKey::from(&boringtun::x25519::StaticSecret::from(
        receiver_private,
    ))
    .to_bytes();
    let (inbound, mut delivered) = tokio::sync::mpsc::channel(16);
    let (home, mut home_state) = tokio::sync::watch::channel(HomeRelay::Unknown);
    let _link = DerpLink::spawn(
        region,
        receiver_private,
        Some(std::sync::Arc::new(home)),
        inbound,
        LinkSettings {
            queue: 16,
            max_datagram: 1000,
            trust: RelayTrust::default(),
        },
    );
    home_state
        .wait_for(|s| *s == HomeRelay::Connected)
        .await
        .unwrap();
    let mut sender = connect(&node, &RelayTrust::default(), &[8; 32])
        .await
        .unwrap();
    let mut out = Vec::new();
    for len in [1000, 1001, 60_000, 10] {
        derp::encode_send_packet(&mut out, &receiver_key, &vec![0xee; len]).unwrap();
    }
    sender.writer.write_all(&out).await.unwrap();
    sender.writer.flush().await.unwrap();
    let mut lengths = Vec::new();
    while lengths.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), delivered.recv())
            .await
            .expect("relayed packets")
            .expect("link alive");
        lengths.push(msg.packet.len());
    }
    assert_eq!(lengths, vec![1000, 10]);
}

/// A TLS relay on loopback serving `chain`, and its node entry.
async fn tls_relay(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: Vec<u8>,
    insecure_for_tests: bool,
) -> (crate::wg::local_relay::LocalRelay, DerpNodeConfig) {
    let relay =
        crate::wg::local_relay::LocalRelay::start_tls("127.0.0.1:0".parse().unwrap(), chain, key)
            .await
            .unwrap();
    let node = DerpNodeConfig {
        plain_http: false,
        insecure_for_tests,
        ..test_node(relay.addr())
    };
    (relay, node)
}

pub(crate) fn test_node(addr: SocketAddr) -> DerpNodeConfig {
    let SocketAddr::V4(v4) = addr else {
        panic!("v4 only")
    };
    DerpNodeConfig {
        name: "test".into(),
        host_name: "localhost".into(),
        ipv4: Some(*v4.ip()),
        ipv6: None,
        derp_port: v4.port(),
        stun_port: 0,
        insecure_for_tests: true,
        stun_only: false,
        plain_http: true,
    }
}

/// Each redial of a link whose relay cannot be reached counts toward
/// `tailnet_cni_derp_reconnects_total`.
#[tokio::test]
async fn redials_are_counted_as_reconnects() {
    use std::sync::atomic::Ordering;

    use crate::metrics::DERP_RECONNECTS;
    use crate::wg::config::DerpRegionConfig;

    // A port nothing listens on: every connect is refused.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let before = DERP_RECONNECTS.load(Ordering::Relaxed);
    let (inbound, _received) = tokio::sync::mpsc::channel(1);
    let region = DerpRegionConfig {
        region_id: 1,
        nodes: vec![test_node(addr)],
    };
    let link = DerpLink::spawn(
        region,
        [1; 32],
        None,
        inbound,
        LinkSettings {
            queue: 1,
            max_datagram: 1000,
            trust: RelayTrust::default(),
        },
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while DERP_RECONNECTS.load(Ordering::Relaxed) == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reconnect counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(link);
}
