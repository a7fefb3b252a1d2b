//! The pod's UDP socket (direct paths, disco, STUN), the send batch it
//! fills while the device is drained, and how eagerly it is read.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::batch_pool::BatchPool;
use super::pod::{MIN_WG_BUFFER, WG_OVERHEAD};
use super::session::NodeKey;
use crate::wg::batch::DatagramBatch;
use crate::wg::udp;

/// Encrypted datagrams waiting for one `sendmmsg`, with the peer each is
/// for (a datagram the kernel refuses falls back to that peer's relay).
pub(super) struct OutBatch {
    pub(super) datagrams: DatagramBatch,
    pub(super) peers: Vec<NodeKey>,
}

/// The pod's UDP socket, if it has one, and the send batch being filled.
pub(super) struct PodSocket {
    /// `None` when binding failed: the pod then only uses relays.
    udp: Option<Arc<UdpSocket>>,
    port: Option<u16>,
    /// One slot holds the largest datagram.
    slot_len: usize,
    /// Whether the socket coalesces bursts (UDP GRO), as bound.
    gro: bool,
    /// Encrypted datagrams for direct paths, sent together after the
    /// device is drained; borrowed from the engine's pool until then.
    tx_batch: Option<Box<OutBatch>>,
    /// Whether sends still try UDP GSO (off after the first refusal).
    pub(super) gso: bool,
    /// When the socket may next be read.
    pub(super) pacing: ReadPacing,
}

impl PodSocket {
    /// Bind the pod's socket on an ephemeral port; without one the pod
    /// works through relays only.
    /// Binds `port` if given and free, else any port.
    pub(super) fn bind(pod_id: &str, max_packet_size: usize, port: Option<u16>) -> Self {
        let wanted = port.and_then(|port| match udp::bind_pod_socket(port) {
            Ok(sock) => Some(sock),
            Err(e) => {
                debug!(pod = %pod_id, port, error = %e, "UDP port taken; binding another");
                None
            }
        });
        let udp = match wanted.map_or_else(|| udp::bind_pod_socket(0), Ok) {
            Ok(sock) => Some(Arc::new(sock)),
            Err(e) => {
                warn!(pod = %pod_id, error = %e, "no UDP socket; relay only");
                None
            }
        };
        let port = udp
            .as_ref()
            .and_then(|s| s.local_addr().ok())
            .map(|a| a.port());
        let gro = udp.as_deref().is_some_and(udp::gro_enabled);
        Self {
            udp,
            port,
            gro,
            // A full packet plus WireGuard's header and tag (and room for
            // handshakes).
            slot_len: (max_packet_size + WG_OVERHEAD + 64).max(MIN_WG_BUFFER),
            tx_batch: None,
            gso: true,
            pacing: ReadPacing::default(),
        }
    }

    pub(super) fn udp(&self) -> Option<&UdpSocket> {
        self.udp.as_deref()
    }

    /// The socket as the pod loop holds it, to await its readiness.
    pub(super) fn shared_udp(&self) -> Option<Arc<UdpSocket>> {
        self.udp.clone()
    }

    pub(super) fn port(&self) -> Option<u16> {
        self.port
    }

    /// The send batch being filled, borrowed from `pool` if none is; give
    /// it back with [`Self::put_tx_batch`] to fill it further.
    pub(super) fn take_tx_batch(&mut self, pool: &BatchPool) -> Box<OutBatch> {
        self.tx_batch
            .take()
            .unwrap_or_else(|| pool.take_send(self.slot_len))
    }

    pub(super) fn put_tx_batch(&mut self, batch: Box<OutBatch>) {
        self.tx_batch = Some(batch);
    }

    /// The send batch only if one is in use (nothing to flush otherwise).
    pub(super) fn take_pending_tx_batch(&mut self) -> Option<Box<OutBatch>> {
        self.tx_batch.take()
    }

    /// A receive batch borrowed from `pool`, shaped for this socket.
    pub(super) fn take_rx_batch(&self, pool: &BatchPool) -> Box<DatagramBatch> {
        pool.take_receive(self.gro, self.slot_len)
    }
}

/// Datagrams over which the share of refusals is judged.
const PACING_SAMPLE: u32 = 32;
/// How long the next read of a flooded socket waits. The kernel queues
/// what arrives meanwhile (and drops past the socket's buffer, at no cost
/// to the daemon), so one wake-up reads a batch instead of a datagram or
/// two; the pod's real datagrams wait at most this long.
pub(super) const FLOODED_READ_DELAY: Duration = Duration::from_millis(2);
/// A socket not read for this long starts a fresh judgement: a flood
/// long gone does not slow the traffic after it.
const PACING_MEMORY: Duration = Duration::from_secs(1);

/// How eagerly the pod reads its socket. A flood of datagrams the pod
/// refuses (forged handshakes, junk) would otherwise wake the pod for each
/// one, and the wake-ups, more than the refusals, are what it costs the
/// node. Once three in four of a sample of [`PACING_SAMPLE`] datagrams were
/// refused, every read waits [`FLOODED_READ_DELAY`] after the last, until a
/// sample with more real traffic in it.
#[derive(Debug, Default)]
pub(super) struct ReadPacing {
    /// The sample so far.
    received: u32,
    refused: u32,
    /// What the last complete sample showed.
    flooded: bool,
    last_drain: Option<Instant>,
    not_before: Option<Instant>,
}

impl ReadPacing {
    /// Counts what one drain of the socket read and refused, and decides
    /// when the socket is read next.
    pub(super) fn after_drain(&mut self, received: usize, refused: usize, now: Instant) {
        let stale = self
            .last_drain
            .is_some_and(|last| now.saturating_duration_since(last) >= PACING_MEMORY);
        if stale {
            *self = Self::default();
        }
        self.last_drain = Some(now);
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.received = self.received.saturating_add(count(received));
        self.refused = self.refused.saturating_add(count(refused.min(received)));
        if self.received >= PACING_SAMPLE {
            self.flooded = u64::from(self.refused) * 4 >= u64::from(self.received) * 3;
            self.received = 0;
            self.refused = 0;
        }
        self.not_before = self.flooded.then(|| now + FLOODED_READ_DELAY);
    }

    /// When the socket may be read next; `None` is at once.
    pub(super) fn not_before(&self) -> Option<Instant> {
        self.not_before
    }

    /// Whether reads are deferred: the socket is flooded.
    pub(super) fn is_deferring(&self) -> bool {
        self.flooded
    }
}

/// Wait until the pod's socket has datagrams and may be read (forever
/// without a socket). Only readiness is awaited: the buffers are taken
/// after the wake-up, so an idle pod holds none.
pub(super) async fn readable(
    sock: Option<&UdpSocket>,
    not_before: Option<Instant>,
) -> io::Result<()> {
    let Some(sock) = sock else {
        return std::future::pending().await;
    };
    if let Some(deadline) = not_before {
        tokio::time::sleep_until(deadline).await;
    }
    sock.readable().await
}

#[cfg(test)]
#[path = "socket_tests.rs"]
mod tests;
