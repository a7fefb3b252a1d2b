//! DERP frames from a relay (or a client, for the relay side), and the two
//! sealed handshake boxes.
//!
//! Asserts: no panic; `decode_frame` consumes exactly what `frame_len`
//! announced and never trusts a length past the 1 MiB limit; every decoded
//! frame re-encodes (with the module's encoders) to bytes that decode to
//! the same frame; chunked delivery yields the same frames as one buffer;
//! sealed ServerInfo/ClientInfo round-trip with fixed keys, and a box opens
//! for its own key pair only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailnet_cni_fuzz::{chunks, Reader};
use tailnet_wire::derp::{
    self, decode_frame, encode_frame, encode_note_preferred, encode_peer_gone, encode_ping,
    encode_pong, encode_recv_packet, encode_send_packet, encode_server_key, frame_len, Frame,
    FrameType, ServerInfo, FRAME_HEADER_LEN, MAX_FRAME_SIZE, MAX_PACKET_SIZE,
};

const CLIENT: [u8; 32] = [0x33; 32];
const SERVER: [u8; 32] = [0x44; 32];

/// Input layout: counted chunk sizes, a flag byte (bit 0: also round-trip
/// the sealed boxes, which costs X25519 operations, so cheap inputs explore
/// the framing faster), ServerInfo fields (u32, u64, u64 big endian), then
/// the frame stream.
struct Input<'a> {
    cuts: &'a [u8],
    boxes: bool,
    info: (u32, u64, u64),
    stream: &'a [u8],
}

impl<'a> Input<'a> {
    fn read(data: &'a [u8]) -> Self {
        let mut r = Reader::new(data);
        let cuts = r.counted();
        let boxes = r.u8() & 1 == 1;
        let info = (
            u32::from_be_bytes(r.array()),
            u64::from_be_bytes(r.array()),
            u64::from_be_bytes(r.array()),
        );
        Input {
            cuts,
            boxes,
            info,
            stream: r.rest(),
        }
    }
}

fn reencode(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    match frame {
        Frame::ServerKey { server_key } => encode_server_key(&mut out, server_key),
        Frame::ClientInfo { client_key, sealed } => {
            let mut payload = client_key.to_vec();
            payload.extend_from_slice(sealed);
            encode_frame(&mut out, FrameType::ClientInfo, &payload);
        }
        Frame::ServerInfo { sealed } => encode_frame(&mut out, FrameType::ServerInfo, sealed),
        // The encoders refuse packets over 64 KiB that a relay's frame may
        // still carry; those are checked by re-framing the raw payload.
        Frame::SendPacket { dst, packet } if packet.len() <= MAX_PACKET_SIZE => {
            encode_send_packet(&mut out, dst, packet).expect("a packet within the limit")
        }
        Frame::RecvPacket { src, packet } if packet.len() <= MAX_PACKET_SIZE => {
            encode_recv_packet(&mut out, src, packet).expect("a packet within the limit")
        }
        Frame::SendPacket { dst: key, packet } | Frame::RecvPacket { src: key, packet } => {
            let kind = match frame {
                Frame::SendPacket { .. } => FrameType::SendPacket,
                _ => FrameType::RecvPacket,
            };
            let mut payload = key.to_vec();
            payload.extend_from_slice(packet);
            encode_frame(&mut out, kind, &payload);
        }
        Frame::KeepAlive => encode_frame(&mut out, FrameType::KeepAlive, &[]),
        Frame::NotePreferred { preferred } => encode_note_preferred(&mut out, *preferred),
        Frame::PeerGone { peer, reason } => encode_peer_gone(&mut out, peer, *reason),
        Frame::PeerPresent { peer } => encode_frame(&mut out, FrameType::PeerPresent, peer),
        Frame::Ping { data } => encode_ping(&mut out, data),
        Frame::Pong { data } => encode_pong(&mut out, data),
        Frame::Health { problem } => encode_frame(&mut out, FrameType::Health, problem.as_bytes()),
        Frame::Restarting {
            reconnect_in_ms,
            try_for_ms,
        } => {
            let mut payload = reconnect_in_ms.to_be_bytes().to_vec();
            payload.extend_from_slice(&try_for_ms.to_be_bytes());
            encode_frame(&mut out, FrameType::Restarting, &payload);
        }
        Frame::Unknown {
            frame_type,
            payload,
        } => {
            out.push(*frame_type);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            out.extend_from_slice(payload);
        }
    }
    out
}

fn check_frame(frame: &Frame<'_>, boxes: bool) {
    let bytes = reencode(frame);
    let (again, used) = decode_frame(&bytes)
        .expect("a re-encoded frame decodes")
        .expect("a re-encoded frame is complete");
    assert_eq!(used, bytes.len());
    assert_eq!(&again, frame);

    // Boxes from the input: seeds hold genuine ones, so opening may work;
    // it must not panic, and a box opens for its one key pair only.
    if !boxes {
        return;
    }
    let server_public = derp::public_key(&SERVER);
    match frame {
        Frame::ServerInfo { sealed }
            if derp::open_server_info(&CLIENT, &server_public, sealed).is_ok() =>
        {
            assert!(derp::open_server_info(&SERVER, &server_public, sealed).is_err());
        }
        Frame::ClientInfo { client_key, sealed }
            if derp::open_client_info(&SERVER, client_key, sealed).is_ok() =>
        {
            assert!(derp::open_client_info(&CLIENT, client_key, sealed).is_err());
        }
        _ => {}
    }
}

/// Decodes frames off the front of `buf` the way the client's reader does.
fn drain<'a>(buf: &mut &'a [u8], out: &mut Vec<Frame<'a>>) -> bool {
    loop {
        let announced = frame_len(buf);
        match decode_frame(buf) {
            Ok(Some((frame, used))) => {
                assert_eq!(Some(used), announced);
                assert!(used <= FRAME_HEADER_LEN + MAX_FRAME_SIZE);
                out.push(frame);
                *buf = &buf[used..];
            }
            Ok(None) => {
                assert!(buf.len() < FRAME_HEADER_LEN || Some(buf.len()) < announced);
                return true;
            }
            Err(_) => return false,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let input = Input::read(data);
    // One buffer.
    let mut rest = input.stream;
    let mut frames = Vec::new();
    let clean = drain(&mut rest, &mut frames);
    for frame in &frames {
        check_frame(frame, input.boxes);
    }

    // The same bytes in chunks, reassembled as a reader would.
    let mut buffer = Vec::new();
    let mut count = 0;
    for chunk in chunks(input.stream, input.cuts) {
        buffer.extend_from_slice(chunk);
        let mut view = &buffer[..];
        let mut got = Vec::new();
        let ok = drain(&mut view, &mut got);
        for frame in &got {
            assert_eq!(Some(frame), frames.get(count));
            count += 1;
        }
        let consumed = buffer.len() - view.len();
        buffer.drain(..consumed);
        if !ok {
            assert!(!clean);
            break;
        }
    }
    if clean {
        assert_eq!(count, frames.len());
    }

    // Sealed handshake boxes round-trip with the right keys only.
    if !input.boxes {
        return;
    }
    let info = ServerInfo {
        version: input.info.0,
        token_bucket_bytes_per_second: input.info.1,
        token_bucket_bytes_burst: input.info.2,
    };
    let client_public = derp::public_key(&CLIENT);
    let server_public = derp::public_key(&SERVER);
    let mut out = Vec::new();
    derp::encode_server_info(&mut out, &SERVER, &client_public, &info).expect("seals");
    let Ok(Some((Frame::ServerInfo { sealed }, _))) = decode_frame(&out) else {
        panic!("encoded ServerInfo does not decode");
    };
    assert_eq!(
        derp::open_server_info(&CLIENT, &server_public, sealed).expect("opens"),
        info
    );
    assert!(derp::open_server_info(&SERVER, &server_public, sealed).is_err());
    let mut out = Vec::new();
    derp::encode_client_info(&mut out, &CLIENT, &server_public).expect("seals");
    let Ok(Some((Frame::ClientInfo { client_key, sealed }, _))) = decode_frame(&out) else {
        panic!("encoded ClientInfo does not decode");
    };
    assert_eq!(client_key, client_public);
    let opened = derp::open_client_info(&SERVER, &client_key, sealed).expect("opens");
    assert_eq!(opened.version, derp::PROTOCOL_VERSION);
});
