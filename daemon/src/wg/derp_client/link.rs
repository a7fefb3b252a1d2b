//! [`DerpLink`]: one identity's connection to one DERP region, kept alive
//! by a task that reconnects with backoff, answers Pings and moves packets
//! between the relay and the engine through bounded queues.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tailnet_wire::derp::{self, Frame, NodeKey};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tracing::{debug, info, warn};

use super::frames::INITIAL_READ_BUF;
use super::{connect, frame_name, DerpClientError, DerpConnection, RelayTrust};
use crate::wg::config::{DerpNodeConfig, DerpRegionConfig};

/// Servers send a KeepAlive about every 60 s; silence for twice that is a dead link.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Coalesce queued packets into one write up to this many bytes.
const WRITE_BATCH_BYTES: usize = 64 << 10;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A packet for the relay to deliver to `dst`.
#[derive(Debug)]
pub struct DerpOutbound {
    pub dst: NodeKey,
    pub packet: Vec<u8>,
}

/// A packet the relay delivered from `src`.
#[derive(Debug)]
pub struct DerpInbound {
    pub region: u16,
    pub src: NodeKey,
    pub packet: Vec<u8>,
}

/// Whether a pod's home relay can deliver to it yet. Peers send their first
/// handshake to a pod's home region, and a relay drops packets for a client
/// that has not connected, so a pod is reachable only once this is
/// `Connected` (or the DERP map has no relay at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HomeRelay {
    /// No DERP map yet.
    Unknown,
    /// The DERP map has no relay region: nothing to wait for.
    Absent,
    Connecting,
    Connected,
}

/// What every link of an engine shares.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Capacity of the outbound queue.
    pub queue: usize,
    /// The largest packet a peer can validly relay (a WireGuard message
    /// of the largest inner packet); larger ones are dropped uncopied.
    pub max_datagram: usize,
    /// Which certificates relays are verified against.
    pub trust: RelayTrust,
}

/// One identity's connection to one DERP region, kept alive by a task.
/// Dropping it closes the connection.
pub struct DerpLink {
    region: u16,
    outbound: mpsc::Sender<DerpOutbound>,
    task: JoinHandle<()>,
}

impl DerpLink {
    /// `home` is given for the pod's home region: the link reports its
    /// connection state there.
    pub fn spawn(
        region: DerpRegionConfig,
        node_private: [u8; 32],
        home: Option<Arc<watch::Sender<HomeRelay>>>,
        inbound: mpsc::Sender<DerpInbound>,
        settings: LinkSettings,
    ) -> Self {
        let (outbound, rx) = mpsc::channel(settings.queue.max(1));
        let region_id = region.region_id;
        let task = tokio::spawn(run_link(region, node_private, home, inbound, rx, settings));
        Self {
            region: region_id,
            outbound,
            task,
        }
    }

    pub fn region(&self) -> u16 {
        self.region
    }

    /// Queue a packet. Relays are datagram transports: when the queue is full
    /// (link down or slow) the packet is dropped rather than stalling the pod,
    /// and WireGuard's own retransmission takes over. Returns whether queued.
    pub fn try_send(&self, dst: NodeKey, packet: Vec<u8>) -> bool {
        self.outbound.try_send(DerpOutbound { dst, packet }).is_ok()
    }
}

impl Drop for DerpLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_link(
    region: DerpRegionConfig,
    node_private: [u8; 32],
    home: Option<Arc<watch::Sender<HomeRelay>>>,
    inbound: mpsc::Sender<DerpInbound>,
    mut outbound: mpsc::Receiver<DerpOutbound>,
    settings: LinkSettings,
) {
    let region_id = region.region_id;
    // The home flag is sent at connect time and tells the relay to keep us
    // as the region's preferred connection.
    let preferred = home.is_some();
    let report = |state| {
        if let Some(home) = &home {
            home.send_replace(state);
        }
    };
    report(HomeRelay::Connecting);
    let mut backoff = BACKOFF_MIN;
    let mut node_index = 0usize;
    loop {
        let nodes: Vec<&DerpNodeConfig> = region.nodes.iter().filter(|n| !n.stun_only).collect();
        if nodes.is_empty() {
            warn!(region = region_id, error = %DerpClientError::NoNode { region: region_id }, "DERP link idle");
            return;
        }
        let node = nodes[node_index % nodes.len()];
        let started = Instant::now();
        match connect(node, &settings.trust, &node_private).await {
            Ok(conn) => {
                info!(region = region_id, node = %conn.node, "DERP connected");
                report(HomeRelay::Connected);
                let mut restart_hint = None;
                let result = serve(
                    conn,
                    Serving {
                        region: region_id,
                        preferred,
                        max_datagram: settings.max_datagram,
                    },
                    &inbound,
                    &mut outbound,
                    &mut restart_hint,
                )
                .await;
                match result {
                    Ok(()) => return, // The engine dropped its side.
                    Err(e) => {
                        report(HomeRelay::Connecting);
                        crate::metrics::count_derp_reconnect();
                        warn!(region = region_id, node = %node.name, error = %e, "DERP connection lost")
                    }
                }
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = BACKOFF_MIN;
                }
                if let Some(wait) = restart_hint {
                    // The server said when it will be back: wait that long, then retry promptly.
                    tokio::time::sleep(wait).await;
                    backoff = BACKOFF_MIN;
                    continue;
                }
            }
            Err(e) => {
                crate::metrics::count_derp_reconnect();
                warn!(region = region_id, node = %node.name, error = %e, "DERP connect failed");
                node_index += 1;
            }
        }
        let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        // Packets queued while down are stale by now; WireGuard will resend.
        while outbound.try_recv().is_ok() {}
    }
}

/// How one established connection is served.
struct Serving {
    region: u16,
    /// Tell the relay this is our home connection.
    preferred: bool,
    max_datagram: usize,
}

/// Run an established connection until it fails (Err) or the engine side
/// goes away (Ok).
async fn serve(
    conn: DerpConnection,
    Serving {
        region,
        preferred,
        max_datagram,
    }: Serving,
    inbound: &mpsc::Sender<DerpInbound>,
    outbound: &mut mpsc::Receiver<DerpOutbound>,
    restart_hint: &mut Option<Duration>,
) -> Result<(), DerpClientError> {
    let DerpConnection {
        mut reader,
        mut writer,
        node,
        ..
    } = conn;
    // Pongs must go out through the writer; a tiny queue between the halves.
    let (pong_tx, mut pong_rx) = mpsc::channel::<[u8; 8]>(8);

    if preferred {
        let mut out = Vec::with_capacity(6);
        derp::encode_note_preferred(&mut out, true);
        writer.write_all(&out).await?;
        writer.flush().await?;
    }

    let read_side = async {
        loop {
            let frame = timeout(READ_TIMEOUT, reader.next_frame())
                .await
                .map_err(|_| DerpClientError::Timeout {
                    node: node.clone(),
                    stage: "read",
                })??;
            match frame {
                // Nothing valid is larger: drop it before it is copied.
                Frame::RecvPacket { packet, .. } if packet.len() > max_datagram => {
                    debug!(
                        region,
                        len = packet.len(),
                        "dropping a relayed packet larger than any datagram"
                    );
                }
                Frame::RecvPacket { src, packet } => {
                    let msg = DerpInbound {
                        region,
                        src,
                        packet: packet.to_vec(),
                    };
                    if inbound.send(msg).await.is_err() {
                        return Ok(());
                    }
                }
                Frame::Ping { data } => {
                    // Only the latest pings matter; dropping one on overload is fine.
                    pong_tx.try_send(data).ok();
                }
                Frame::KeepAlive | Frame::Pong { .. } | Frame::PeerPresent { .. } => {}
                Frame::PeerGone { peer, reason } => {
                    debug!(region, peer = %hex::encode(&peer[..4]), ?reason, "DERP peer gone");
                }
                Frame::Health { problem } => {
                    if problem.is_empty() {
                        debug!(region, "DERP health ok");
                    } else {
                        warn!(region, problem, "DERP server reports a problem");
                    }
                }
                Frame::Restarting {
                    reconnect_in_ms,
                    try_for_ms,
                } => {
                    info!(
                        region,
                        reconnect_in_ms, try_for_ms, "DERP server restarting"
                    );
                    *restart_hint = Some(Duration::from_millis(
                        u64::from(reconnect_in_ms).min(60_000),
                    ));
                }
                other => debug!(region, frame = %frame_name(&other), "ignoring DERP frame"),
            }
        }
    };

    let write_side = async {
        let mut out = Vec::with_capacity(INITIAL_READ_BUF);
        loop {
            out.clear();
            tokio::select! {
                msg = outbound.recv() => {
                    let Some(msg) = msg else { return Ok::<(), DerpClientError>(()) };
                    append_packet(&mut out, &msg);
                    // Coalesce whatever else is queued into the same write.
                    while out.len() < WRITE_BATCH_BYTES {
                        match outbound.try_recv() {
                            Ok(msg) => append_packet(&mut out, &msg),
                            Err(_) => break,
                        }
                    }
                }
                Some(data) = pong_rx.recv() => derp::encode_pong(&mut out, &data),
            }
            writer.write_all(&out).await?;
            writer.flush().await?;
        }
    };

    tokio::select! {
        r = read_side => r,
        r = write_side => r,
    }
}

fn append_packet(out: &mut Vec<u8>, msg: &DerpOutbound) {
    if let Err(e) = derp::encode_send_packet(out, &msg.dst, &msg.packet) {
        debug!(error = %e, "dropping packet too large for DERP");
    }
}
