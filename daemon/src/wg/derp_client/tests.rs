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
    match connect(&node, &[1; 32]).await {
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

#[tokio::test]
async fn tls_relay_accepted_only_when_node_is_insecure_for_tests() {
    let (chain, key) = tailnet_testbed::require!(self_signed_localhost().ok_or_else(|| {
        tailnet_testbed::Missing::new(
            "the openssl CLI could not make a certificate",
            "apt-get install openssl",
        )
    }));
    let relay =
        crate::wg::local_relay::LocalRelay::start_tls("127.0.0.1:0".parse().unwrap(), chain, key)
            .await
            .unwrap();
    let mut node = test_node(relay.addr());
    node.plain_http = false;
    node.insecure_for_tests = true;
    let conn = connect(&node, &[3; 32])
        .await
        .expect("TLS connect with verification off");
    assert_ne!(conn.server_key, [0; 32]);

    // The same self-signed relay is refused once verification is on.
    node.insecure_for_tests = false;
    match connect(&node, &[4; 32]).await {
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
    let link = DerpLink::spawn(region, [1; 32], None, inbound, 1);
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
