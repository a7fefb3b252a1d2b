//! The pod's UDP socket (direct paths, disco, STUN) and the batch buffers
//! it uses while the pod is busy.

use std::sync::Arc;

use tokio::net::UdpSocket;
use tracing::{debug, warn};

use super::pod::{MIN_WG_BUFFER, WG_OVERHEAD};
use super::session::NodeKey;
use crate::wg::batch::{DatagramBatch, BATCH_SLOTS};
use crate::wg::udp;

/// Timer ticks without traffic after which a pod frees its batch buffers,
/// so idle pods do not pay for them.
const BATCH_IDLE_TICKS: u8 = 4;

/// Encrypted datagrams waiting for one `sendmmsg`, with the peer each is
/// for (a datagram the kernel refuses falls back to that peer's relay).
pub(super) struct OutBatch {
    pub(super) datagrams: DatagramBatch,
    pub(super) peers: Vec<NodeKey>,
}

/// The pod's UDP socket, if it has one, and its batch buffers.
pub(super) struct PodSocket {
    /// `None` when binding failed: the pod then only uses relays.
    udp: Option<Arc<UdpSocket>>,
    port: Option<u16>,
    /// One slot holds the largest datagram.
    slot_len: usize,
    /// Encrypted datagrams for direct paths, sent together after the
    /// device is drained; allocated while the pod is busy.
    tx_batch: Option<Box<OutBatch>>,
    /// Datagrams from the UDP socket; allocated while the pod is busy.
    rx_batch: Option<Box<DatagramBatch>>,
    /// Timer ticks since a batch was last used.
    batch_idle_ticks: u8,
    /// Whether sends still try UDP GSO (off after the first refusal).
    pub(super) gso: bool,
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
        Self {
            udp,
            port,
            // A full packet plus WireGuard's header and tag (and room for
            // handshakes).
            slot_len: (max_packet_size + WG_OVERHEAD + 64).max(MIN_WG_BUFFER),
            tx_batch: None,
            rx_batch: None,
            batch_idle_ticks: 0,
            gso: true,
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

    /// The send batch, allocated if the pod was idle; give it back with
    /// [`Self::put_tx_batch`].
    pub(super) fn take_tx_batch(&mut self) -> Box<OutBatch> {
        self.batch_idle_ticks = 0;
        let slot_len = self.slot_len;
        self.tx_batch.take().unwrap_or_else(|| {
            Box::new(OutBatch {
                datagrams: DatagramBatch::new(BATCH_SLOTS, slot_len),
                peers: Vec::with_capacity(BATCH_SLOTS),
            })
        })
    }

    pub(super) fn put_tx_batch(&mut self, batch: Box<OutBatch>) {
        self.tx_batch = Some(batch);
    }

    /// The send batch only if one is in use (nothing to flush otherwise).
    pub(super) fn take_pending_tx_batch(&mut self) -> Option<Box<OutBatch>> {
        self.tx_batch.take()
    }

    /// The receive batch, allocated if the pod was idle; give it back with
    /// [`Self::put_rx_batch`].
    pub(super) fn take_rx_batch(&mut self) -> Box<DatagramBatch> {
        self.batch_idle_ticks = 0;
        let slot_len = self.slot_len;
        let gro = self.udp.as_deref().is_some_and(udp::gro_enabled);
        self.rx_batch
            .take()
            .unwrap_or_else(|| Box::new(DatagramBatch::for_receive(gro, slot_len)))
    }

    pub(super) fn put_rx_batch(&mut self, batch: Box<DatagramBatch>) {
        self.rx_batch = Some(batch);
    }

    /// Whether batch buffers are held, which the timer frees once the pod
    /// goes quiet.
    pub(super) fn holds_batches(&self) -> bool {
        self.tx_batch.is_some() || self.rx_batch.is_some()
    }

    /// Timer: free the batch buffers of a pod that has gone quiet.
    pub(super) fn release_idle_batches(&mut self) {
        if self.tx_batch.is_none() && self.rx_batch.is_none() {
            return;
        }
        self.batch_idle_ticks = self.batch_idle_ticks.saturating_add(1);
        if self.batch_idle_ticks >= BATCH_IDLE_TICKS {
            self.tx_batch = None;
            self.rx_batch = None;
        }
    }
}
