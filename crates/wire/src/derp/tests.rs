use super::*;

fn key(b: u8) -> [u8; 32] {
    [b; 32]
}

#[test]
fn header_layout_is_type_then_big_endian_length() {
    let mut out = Vec::new();
    encode_frame(&mut out, FrameType::Ping, &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(&out[..5], &[0x12, 0, 0, 0, 8]);
    assert_eq!(out.len(), 13);
}

#[test]
fn decode_waits_for_complete_frame() {
    let mut out = Vec::new();
    encode_pong(&mut out, &[9; 8]);
    for cut in 0..out.len() {
        assert!(decode_frame(&out[..cut]).unwrap().is_none(), "cut at {cut}");
    }
    let (frame, used) = decode_frame(&out).unwrap().unwrap();
    assert_eq!(frame, Frame::Pong { data: [9; 8] });
    assert_eq!(used, out.len());
}

#[test]
fn decode_two_frames_back_to_back() {
    let mut out = Vec::new();
    encode_frame(&mut out, FrameType::KeepAlive, &[]);
    encode_recv_packet(&mut out, &key(7), b"hello").unwrap();
    let (first, used) = decode_frame(&out).unwrap().unwrap();
    assert_eq!(first, Frame::KeepAlive);
    let (second, used2) = decode_frame(&out[used..]).unwrap().unwrap();
    assert_eq!(
        second,
        Frame::RecvPacket {
            src: key(7),
            packet: b"hello"
        }
    );
    assert_eq!(used + used2, out.len());
}

#[test]
fn oversize_frame_rejected() {
    let buf = [0x05, 0x00, 0x10, 0x00, 0x01];
    assert!(matches!(
        decode_frame(&buf),
        Err(DerpError::FrameTooLarge { .. })
    ));
}

#[test]
fn oversize_packet_not_encoded() {
    let mut out = Vec::new();
    let big = vec![0u8; MAX_PACKET_SIZE + 1];
    assert!(matches!(
        encode_send_packet(&mut out, &key(1), &big),
        Err(DerpError::PacketTooLarge { .. })
    ));
    assert!(out.is_empty());
}

#[test]
fn server_key_parses_with_magic_and_ignores_extra() {
    let mut payload = MAGIC.to_vec();
    payload.extend_from_slice(&key(3));
    payload.extend_from_slice(b"extra");
    let mut out = Vec::new();
    encode_frame(&mut out, FrameType::ServerKey, &payload);
    let (f, _) = decode_frame(&out).unwrap().unwrap();
    assert_eq!(f, Frame::ServerKey { server_key: key(3) });
    // The canonical magic bytes are the UTF-8 of "DERP🔑".
    assert_eq!(&MAGIC, "DERP\u{1F511}".as_bytes());
}

#[test]
fn server_key_bad_magic_rejected() {
    let mut payload = b"DERPXXXX".to_vec();
    payload.extend_from_slice(&key(3));
    let mut out = Vec::new();
    encode_frame(&mut out, FrameType::ServerKey, &payload);
    assert!(matches!(decode_frame(&out), Err(DerpError::BadMagic)));
}

#[test]
fn send_packet_round_trip() {
    let mut out = Vec::new();
    encode_send_packet(&mut out, &key(4), b"wg").unwrap();
    assert_eq!(out[0], 0x04);
    let (f, _) = decode_frame(&out).unwrap().unwrap();
    assert_eq!(
        f,
        Frame::SendPacket {
            dst: key(4),
            packet: b"wg"
        }
    );
}

#[test]
fn short_payloads_are_errors_not_panics() {
    for ft in [0x01u8, 0x02, 0x04, 0x05, 0x07, 0x08, 0x09, 0x12, 0x13, 0x15] {
        let buf = [ft, 0, 0, 0, 0];
        assert!(
            matches!(decode_frame(&buf), Err(DerpError::Truncated { .. })),
            "type {ft:#x}"
        );
    }
}

#[test]
fn peer_gone_reasons() {
    let mut out = Vec::new();
    encode_peer_gone(&mut out, &key(5), PeerGoneReason::NotHere);
    let (f, _) = decode_frame(&out).unwrap().unwrap();
    assert_eq!(
        f,
        Frame::PeerGone {
            peer: key(5),
            reason: PeerGoneReason::NotHere
        }
    );
    // No reason byte at all: disconnected.
    let mut out = Vec::new();
    encode_frame(&mut out, FrameType::PeerGone, &key(5));
    let (f, _) = decode_frame(&out).unwrap().unwrap();
    assert_eq!(
        f,
        Frame::PeerGone {
            peer: key(5),
            reason: PeerGoneReason::Disconnected
        }
    );
}

#[test]
fn peer_present_with_endpoint_suffix() {
    let mut payload = key(6).to_vec();
    payload.extend_from_slice(&[0u8; 19]);
    let mut out = Vec::new();
    encode_frame(&mut out, FrameType::PeerPresent, &payload);
    let (f, _) = decode_frame(&out).unwrap().unwrap();
    assert_eq!(f, Frame::PeerPresent { peer: key(6) });
}

#[test]
fn restarting_and_health() {
    let mut out = Vec::new();
    let mut p = 1500u32.to_be_bytes().to_vec();
    p.extend_from_slice(&30000u32.to_be_bytes());
    encode_frame(&mut out, FrameType::Restarting, &p);
    encode_frame(&mut out, FrameType::Health, b"duplicate client");
    let (f, n) = decode_frame(&out).unwrap().unwrap();
    assert_eq!(
        f,
        Frame::Restarting {
            reconnect_in_ms: 1500,
            try_for_ms: 30000
        }
    );
    let (f, _) = decode_frame(&out[n..]).unwrap().unwrap();
    assert_eq!(
        f,
        Frame::Health {
            problem: "duplicate client"
        }
    );
}

#[test]
fn note_preferred_and_unknown() {
    let mut out = Vec::new();
    encode_note_preferred(&mut out, true);
    encode_frame(&mut out, FrameType::NotePreferred, &[0]);
    out.extend_from_slice(&[0x10, 0, 0, 0, 2, 0xaa, 0xbb]);
    let (f, n) = decode_frame(&out).unwrap().unwrap();
    assert_eq!(f, Frame::NotePreferred { preferred: true });
    let (f, m) = decode_frame(&out[n..]).unwrap().unwrap();
    assert_eq!(f, Frame::NotePreferred { preferred: false });
    let (f, _) = decode_frame(&out[n + m..]).unwrap().unwrap();
    assert_eq!(
        f,
        Frame::Unknown {
            frame_type: 0x10,
            payload: &[0xaa, 0xbb]
        }
    );
}

#[test]
fn client_info_seals_to_server_and_opens() {
    let client_priv = [0x11u8; 32];
    let server_priv = [0x22u8; 32];
    let server_pub = public_key(&server_priv);
    let mut out = Vec::new();
    encode_client_info(&mut out, &client_priv, &server_pub).unwrap();
    let (f, _) = decode_frame(&out).unwrap().unwrap();
    let Frame::ClientInfo { client_key, sealed } = f else {
        panic!("not ClientInfo: {f:?}")
    };
    assert_eq!(client_key, public_key(&client_priv));
    // nonce 24 + tag 16 + JSON
    let json = br#"{"version":2,"CanAckPings":true}"#;
    assert_eq!(sealed.len(), NONCE_LEN + 16 + json.len());
    let info = open_client_info(&server_priv, &client_key, sealed).unwrap();
    assert_eq!(
        info,
        ClientInfo {
            version: 2,
            can_ack_pings: true,
            is_prober: false
        }
    );
    // The wrong server key cannot open it.
    assert!(matches!(
        open_client_info(&[0x33; 32], &client_key, sealed),
        Err(DerpError::BoxOpen { .. })
    ));
}

#[test]
fn server_info_round_trip_and_tamper() {
    let client_priv = [0x44u8; 32];
    let server_priv = [0x55u8; 32];
    let info = ServerInfo {
        version: 2,
        token_bucket_bytes_per_second: 1000,
        token_bucket_bytes_burst: 5,
    };
    let mut out = Vec::new();
    encode_server_info(&mut out, &server_priv, &public_key(&client_priv), &info).unwrap();
    let (f, _) = decode_frame(&out).unwrap().unwrap();
    let Frame::ServerInfo { sealed } = f else {
        panic!("not ServerInfo: {f:?}")
    };
    let opened = open_server_info(&client_priv, &public_key(&server_priv), sealed).unwrap();
    assert_eq!(opened, info);
    let mut bad = sealed.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        open_server_info(&client_priv, &public_key(&server_priv), &bad),
        Err(DerpError::BoxOpen { .. })
    ));
}

#[test]
fn server_info_accepts_go_json() {
    // What a Go server seals: extra fields must be tolerated.
    let client_priv = [0x66u8; 32];
    let server_priv = [0x77u8; 32];
    let json = br#"{"version":2,"TokenBucketBytesPerSecond":0,"TokenBucketBytesBurst":0,"X":1}"#;
    let sealed = seal(
        &server_priv,
        &public_key(&client_priv),
        json,
        FrameType::ServerInfo,
    )
    .unwrap();
    let opened = open_server_info(&client_priv, &public_key(&server_priv), &sealed).unwrap();
    assert_eq!(opened.version, 2);
}

#[test]
fn frame_len_reports_total() {
    let mut out = Vec::new();
    encode_send_packet(&mut out, &key(1), &[0; 100]).unwrap();
    assert_eq!(frame_len(&out[..5]), Some(5 + 32 + 100));
    assert_eq!(frame_len(&out[..4]), None);
}
