//! One pod's state and the task that serves it: a single loop over its
//! commands, relay packets, packet device, UDP socket and one timer, set to
//! the next deadline the pod has (see `timers`).

use std::io;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use boringtun::x25519;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::discovery::Discovery;
use super::dns::PodResolver;
use super::filter::PodFilter;
use super::handshake::HandshakeGate;
use super::relay::RelayLinks;
use super::session::Peers;
use super::socket::{self, PodSocket};
use super::stats::{Counters, PeerSelection, PodStats};
use super::timers::TimerState;
use super::{Command, EngineInner, Reused};
use crate::wg::config::PodEndpoints;
use crate::wg::derp_client::{DerpInbound, HomeRelay};
use crate::wg::packet_fd::PacketFd;

/// boringtun needs room for its header and tag, and at least 148 bytes for handshakes.
pub(super) const WG_OVERHEAD: usize = 32;
pub(super) const MIN_WG_BUFFER: usize = 148;
/// Packets drained from the device per wake-up before serving other events.
const TUN_BATCH: usize = 64;

/// Who the pod is on the tailnet.
pub(super) struct Identity {
    pub(super) pod_id: String,
    pub(super) node_secret: x25519::StaticSecret,
    pub(super) node_public: x25519::PublicKey,
    /// The pod's own addresses: the only valid sources of its packets and
    /// the only destinations injected into it.
    pub(super) addresses: Vec<IpAddr>,
}

/// Everything one pod task owns, grouped by the module that uses it.
pub(super) struct PodState {
    pub(super) identity: Identity,
    pub(super) peers: Peers,
    pub(super) socket: PodSocket,
    pub(super) discovery: Discovery,
    pub(super) relay: RelayLinks,
    pub(super) filter: PodFilter,
    /// Checks handshakes before they cost X25519 work.
    pub(super) handshakes: HandshakeGate,
    pub(super) dns: PodResolver,
    pub(super) counters: Counters,
    /// When the timer pass last ran and what it must do next.
    pub(super) timers: TimerState,
    pub(super) engine: Arc<EngineInner>,
}

/// The receiving ends a [`super::PodHandle`] holds.
pub(super) struct PodWatches {
    pub(super) endpoints: watch::Receiver<PodEndpoints>,
    pub(super) stats: watch::Receiver<PodStats>,
    pub(super) home_relay: watch::Receiver<HomeRelay>,
}

/// What the pod task waits on besides its state: the packet device,
/// commands from its handles and packets its relay links deliver.
pub(super) struct PodInputs {
    pub(super) device: PacketFd,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) relayed: mpsc::Receiver<DerpInbound>,
    /// Answers of the pod's MagicDNS resolver, as IP packets.
    pub(super) dns_replies: mpsc::Receiver<Vec<u8>>,
}

/// The receiving ends of what the pod's own parts send it.
pub(super) struct PodInbound {
    pub(super) relayed: mpsc::Receiver<DerpInbound>,
    pub(super) dns_replies: mpsc::Receiver<Vec<u8>>,
}

impl PodState {
    pub(super) fn new(
        engine: Arc<EngineInner>,
        pod_id: String,
        node_private: [u8; 32],
        disco_private: [u8; 32],
        addresses: Vec<IpAddr>,
        reused: Reused,
    ) -> (Self, PodWatches, PodInbound) {
        let socket = PodSocket::bind(&pod_id, engine.config.max_packet_size, reused.udp_port);
        let (mut discovery, endpoints) =
            Discovery::new(disco_private, socket.port(), &engine.host_addresses);
        let warm = reused
            .relay
            .and_then(|warm| warm.into_parts_for(&node_private));
        if let Some((links, _, _)) = &warm {
            debug!(pod = %pod_id, "takes over its identity's warm relay links");
            // Its home region goes with the pod's first endpoint report.
            discovery.set_preferred_relay(links.home_region());
        }
        let (relay, home_relay, relayed) =
            warm.unwrap_or_else(|| RelayLinks::new(node_private, &engine.config));
        let (counters, stats) = Counters::new();
        let (dns, dns_replies) =
            PodResolver::new(engine.config.dns.clone(), engine.config.max_packet_size);
        let node_secret = x25519::StaticSecret::from(node_private);
        let node_public = x25519::PublicKey::from(&node_secret);
        let state = Self {
            handshakes: HandshakeGate::new(&node_public, engine.handshake_budget.clone()),
            identity: Identity {
                node_public,
                node_secret,
                pod_id,
                addresses,
            },
            peers: Peers::default(),
            socket,
            discovery,
            relay,
            filter: PodFilter::default(),
            dns,
            counters,
            timers: TimerState::new(Instant::now()),
            engine,
        };
        let watches = PodWatches {
            endpoints,
            stats,
            home_relay,
        };
        let inbound = PodInbound {
            relayed,
            dns_replies,
        };
        (state, watches, inbound)
    }

    /// Reads and sends what the pod's device holds, up to a bound so that
    /// events still get served, into a buffer borrowed for the read. An
    /// error on the first read is the device's failure.
    fn drain_device(&mut self, device: &PacketFd) -> io::Result<()> {
        let mut buffer = self.take_packet_buffer();
        let mtu = self.engine.config.max_packet_size;
        let mut read = 0;
        let mut failed = None;
        while read < TUN_BATCH {
            match device.try_recv(&mut buffer[..mtu]) {
                Ok(n) => {
                    self.handle_outbound_packet(&buffer[..n]);
                    read += 1;
                }
                Err(e) if read == 0 && e.kind() != io::ErrorKind::WouldBlock => {
                    failed = Some(e);
                    break;
                }
                Err(_) => break,
            }
        }
        self.give_packet_buffer(buffer);
        if read > 0 {
            self.flush_tx();
            self.counters.mark_changed();
        }
        failed.map_or(Ok(()), Err)
    }

    /// A buffer to seal or open one packet into, borrowed from the engine:
    /// a pod holds none between packets.
    pub(super) fn take_packet_buffer(&self) -> Vec<u8> {
        let len = (self.engine.config.max_packet_size + WG_OVERHEAD).max(MIN_WG_BUFFER);
        self.engine.batches.take_packet(len)
    }

    pub(super) fn give_packet_buffer(&self, buffer: Vec<u8>) {
        self.engine.batches.give_packet(buffer);
    }

    fn handle_command(&mut self, cmd: Command) {
        if !matches!(cmd, Command::Stats(_)) {
            self.counters.mark_changed();
        }
        match cmd {
            Command::SetPeers(peers) => self.set_peers(peers),
            Command::SetDerpMap(map) => self.set_derp_map(map),
            Command::SetFilter(rules) => {
                self.filter.set_rules(rules, &self.identity.addresses);
                debug!(pod = %self.identity.pod_id, "packet filter updated");
            }
            Command::SetRememberedFilter(rules, until) => {
                self.filter
                    .set_remembered_rules(rules, &self.identity.addresses, until);
                debug!(pod = %self.identity.pod_id, "remembered packet filter set");
            }
            Command::InitiateHandshakes(peers) => self.initiate_handshakes(peers),
            Command::SetDns(table) => {
                self.dns.set_table(table);
                debug!(pod = %self.identity.pod_id, "MagicDNS names updated");
            }
            Command::Stats(reply) => {
                // The caller may have stopped waiting for the numbers.
                reply.send(self.snapshot_stats(PeerSelection::All)).ok();
            }
            Command::Detach(_) => {}
        }
    }

    /// The timer pass: whatever of the pod's periodic work is due. Each
    /// part checks its own deadline; per-session work runs only over the
    /// peers with state.
    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.timers.start_pass(now) {
            self.handshakes.tick();
        }
        self.engine.timer_wakeups.fetch_add(1, Ordering::Relaxed);
        if self.peers.has_live_session() {
            self.update_session_timers();
            self.poll_disco(now.into_std());
            // Time since the last handshake moves while a session lives.
            self.counters.mark_changed();
        }
        self.peers.expire_pending_initiations();
        self.poll_stun(now.into_std());
        self.publish_stats_if_due();
        self.filter.sweep_if_due();
        self.relay.close_idle(self.engine.config.derp_idle_timeout);
    }
}

/// Serve the pod until it is detached, its handles are gone or its device fails.
pub(super) async fn run(mut state: Box<PodState>, inputs: PodInputs) {
    let PodInputs {
        device,
        mut commands,
        mut relayed,
        mut dns_replies,
    } = inputs;
    let udp = state.socket.shared_udp();
    let mut armed = state.next_wake();
    let timer = tokio::time::sleep_until(armed.unwrap_or_else(Instant::now));
    tokio::pin!(timer);
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::Detach(done)) => {
                    // The caller may have stopped waiting; the pod detaches anyway.
                    done.send(()).ok();
                    break;
                }
                Some(cmd) => state.handle_command(cmd),
                None => break,
            },
            msg = relayed.recv() => {
                // The pod holds a sender itself, so this never yields None.
                if let Some(msg) = msg {
                    state.timers.note_wireguard(Instant::now());
                    state.handle_relayed(&device, msg).await;
                    state.counters.mark_changed();
                }
            }
            reply = dns_replies.recv() => {
                // The resolver holds a sender itself, so this never yields None.
                if let Some(packet) = reply {
                    if let Err(e) = device.send(&packet).await {
                        debug!(pod = %state.identity.pod_id, error = %e, "DNS answer not delivered");
                    }
                }
            }
            ready = device.readable() => {
                if let Err(e) = ready.and_then(|()| state.drain_device(&device)) {
                    warn!(pod = %state.identity.pod_id, error = %e, "packet device failed; detaching");
                    break;
                }
            }
            ready = socket::readable(udp.as_deref(), state.socket.pacing.not_before()) => match (ready, udp.as_deref()) {
                (Ok(()), Some(sock)) => {
                    state.timers.note_wireguard(Instant::now());
                    state.drain_udp(&device, sock).await;
                    state.counters.mark_changed();
                }
                (Ok(()), None) => {}
                (Err(e), _) => debug!(pod = %state.identity.pod_id, error = %e, "UDP socket failed"),
            },
            () = &mut timer, if armed.is_some() => {
                state.on_timer();
                // The elapsed sleep must be set again even to the same deadline.
                armed = None;
            }
        }
        let next = state.next_wake();
        if next != armed {
            if let Some(deadline) = next {
                timer.as_mut().reset(deadline);
            }
            armed = next;
        }
    }
    info!(pod = %state.identity.pod_id, "pod detached from data plane");
}
