//! Helpers for tests elsewhere in the crate that act as raw relay clients.

use tailnet_wire::derp::{Frame, NodeKey};
use tokio::io::AsyncRead;

use super::FrameReader;

pub(crate) enum Received {
    Packet(NodeKey, Vec<u8>),
    Other,
}

pub(crate) async fn next<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) -> Received {
    match reader.next_frame().await.expect("relay frame") {
        Frame::RecvPacket { src, packet } => Received::Packet(src, packet.to_vec()),
        _ => Received::Other,
    }
}
