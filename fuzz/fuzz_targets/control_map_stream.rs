//! The map long poll's framing (`u32 LE length · body`, each body a zstd
//! frame when compression was asked for) and the chunked `/key` body.
//!
//! Asserts: no panic; the frames read are the same whatever the chunking,
//! and re-encode to exactly the bytes they were read from; a length
//! field never makes the reader allocate (the allocator cap turns that into
//! a crash); decompression is bounded; a message decodes the same whether
//! sent plain or zstd-compressed; chunked encoding round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailnet_cni_fuzz::{chunks, Reader};
use tailnet_cnid::control::client::{decode_map_message, take_frame};
use tailnet_cnid::control::conn::dechunk;

/// Decompressed bytes allowed per message here; small, so the allocator
/// cap has room to catch anything unbounded.
const LIMIT: usize = 1 << 20;

/// All frames `take_frame` yields from `wire` fed in chunks; also whether
/// it stopped at a refused length.
fn take_all(wire: &[u8], cuts: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut buffer = Vec::new();
    let mut frames = Vec::new();
    for chunk in chunks(wire, cuts) {
        buffer.extend_from_slice(chunk);
        loop {
            let before = buffer.len();
            match take_frame(&mut buffer) {
                Ok(Some(body)) => {
                    assert_eq!(buffer.len(), before - 4 - body.len());
                    frames.push(body);
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

// Input: flags (bit 0: compressed stream; bits 1-3: zstd level), counted
// chunk sizes, a counted chunked-encoding body, then the stream itself.
fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let flags = r.u8();
    let compressed = flags & 1 == 1;
    let level = i32::from((flags >> 1) & 7);
    let cuts = r.counted();
    let chunked = r.counted();
    let wire = r.rest();

    // Framing: chunked delivery gives what one buffer gives, and the frames
    // re-encode to the bytes they came from.
    let (frames, refused) = take_all(wire, cuts);
    let (whole, whole_refused) = take_all(wire, &[]);
    assert_eq!(frames, whole);
    assert_eq!(refused, whole_refused);
    let mut again = Vec::new();
    for frame in &frames {
        again.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        again.extend_from_slice(frame);
    }
    assert!(wire.starts_with(&again));

    // Every body, as the stream would decode it.
    for body in frames.iter().take(16) {
        let _ = decode_map_message(body, compressed, LIMIT);
    }

    // Plain and compressed forms of a message decode alike.
    for message in frames.iter().take(4) {
        let Ok(packed) = zstd::stream::encode_all(&message[..], level) else {
            continue;
        };
        let plain = decode_map_message(message, false, LIMIT);
        let unpacked = decode_map_message(&packed, true, LIMIT);
        match (&plain, &unpacked) {
            (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
            (Err(_), Err(_)) => {}
            _ => panic!("plain {plain:?} but compressed {unpacked:?}"),
        }
    }

    // Chunked /key bodies: arbitrary bytes, and a round trip.
    let _ = dechunk(chunked);
    let mut encoded = Vec::new();
    let mut joined = Vec::new();
    for message in &frames {
        if message.is_empty() {
            continue; // a zero-size chunk ends the body
        }
        encoded.extend_from_slice(format!("{:x}\r\n", message.len()).as_bytes());
        encoded.extend_from_slice(message);
        encoded.extend_from_slice(b"\r\n");
        joined.extend_from_slice(message);
    }
    encoded.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(dechunk(&encoded), Some(joined));
});
