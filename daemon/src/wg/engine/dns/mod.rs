//! A pod's MagicDNS resolver. Queries the pod sends to 100.100.100.100:53
//! or [fd7a:115c:a1e0::53]:53 never enter the tunnel: the transmit path
//! hands them here. Names of the pod's own netmap are answered at once;
//! every other query goes to an upstream over UDP (the cluster DNS, or a
//! split-DNS route's resolvers) from a task of its own, bounded per pod.
//! Answers come back to the pod's device as IP/UDP packets through one
//! channel the pod task drains.

mod table;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tailnet_wire::dns::{
    answers_question, fit_response, response_id, set_id, udp_packet, Query, Rcode, UdpDatagram,
    CLASS_IN, DNS_PORT,
};
use tailnet_wire::packet::Packet;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, trace};

pub use table::{Decision, DnsTable, RouteTarget};

/// MagicDNS's IPv4 address (inside 100.64.0.0/10, routed to the engine).
pub const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 100);
/// MagicDNS's IPv6 address (inside fd7a:115c:a1e0::/48).
pub const SERVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53);
/// TTL of tailnet answers: names change only with the netmap, and a pod's
/// resolver asks again cheaply.
const ANSWER_TTL: u32 = 600;
/// Answers waiting for the pod task to write them to the device.
const REPLY_QUEUE: usize = 64;
const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const UDP_HEADER: usize = 8;

/// Whether `dst` is the MagicDNS address.
pub fn is_service_addr(dst: IpAddr) -> bool {
    dst == IpAddr::V4(SERVICE_V4) || dst == IpAddr::V6(SERVICE_V6)
}

/// Engine-wide DNS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Where names that are not the tailnet's go: the cluster DNS. `None`
    /// answers them SERVFAIL.
    pub upstream: Option<SocketAddr>,
    /// How long one upstream has to answer before the next is tried.
    pub timeout: Duration,
    /// Forwarded queries one pod may have outstanding; more are answered
    /// SERVFAIL at once.
    pub max_in_flight: usize,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            upstream: None,
            timeout: Duration::from_secs(2),
            max_in_flight: 32,
        }
    }
}

/// What became of a packet sent to the MagicDNS address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Answered from the table (or refused) at once.
    Answered,
    /// Sent on to an upstream; the answer follows.
    Forwarded,
    /// Not a DNS query over UDP to port 53, or malformed: dropped.
    Dropped,
}

/// One pod's resolver.
pub(super) struct PodResolver {
    table: Arc<DnsTable>,
    settings: DnsSettings,
    in_flight: Arc<Semaphore>,
    replies: mpsc::Sender<Vec<u8>>,
    /// Largest packet the pod's device carries.
    max_packet: usize,
}

impl PodResolver {
    /// A resolver with an empty table; its answers arrive on the receiver.
    pub(super) fn new(settings: DnsSettings, max_packet: usize) -> (Self, mpsc::Receiver<Vec<u8>>) {
        let (replies, rx) = mpsc::channel(REPLY_QUEUE);
        let resolver = Self {
            table: Arc::default(),
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            settings,
            replies,
            max_packet,
        };
        (resolver, rx)
    }

    /// Replaces what the resolver knows (on every netmap change).
    pub(super) fn set_table(&mut self, table: Arc<DnsTable>) {
        self.table = table;
    }

    /// Serves one packet the pod sent to the MagicDNS address.
    pub(super) fn handle(&self, packet: &[u8]) -> Handled {
        let Some(datagram) = Packet::parse(packet)
            .ok()
            .and_then(|p| UdpDatagram::from_packet(&p))
        else {
            return Handled::Dropped;
        };
        if datagram.server.port() != DNS_PORT {
            return Handled::Dropped;
        }
        let query = match Query::parse(datagram.payload) {
            Ok(query) => query,
            Err(error) => {
                trace!(%error, "dropping malformed DNS query");
                return Handled::Dropped;
            }
        };
        let limit = self.answer_limit(datagram.client.ip());
        let decision = if query.qclass == CLASS_IN {
            self.table.decide(&query.name)
        } else {
            Decision::ForwardDefault
        };
        let servers = match decision {
            Decision::Answer(addrs) => {
                return self.reply(&datagram, query.answer(&addrs, ANSWER_TTL, limit));
            }
            Decision::NxDomain => return self.reply(&datagram, query.error(Rcode::NxDomain)),
            Decision::Fail => return self.reply(&datagram, query.error(Rcode::ServFail)),
            Decision::Forward(servers) => servers,
            Decision::ForwardDefault => self.settings.upstream.into_iter().collect(),
        };
        if servers.is_empty() {
            return self.reply(&datagram, query.error(Rcode::ServFail));
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            debug!("too many DNS queries in flight; answering SERVFAIL");
            return self.reply(&datagram, query.error(Rcode::ServFail));
        };
        let forward = Forward {
            query: datagram.payload.to_vec(),
            question: query.question().to_vec(),
            client_id: query.id,
            servers,
            timeout: self.settings.timeout,
            limit,
            servfail: query.error(Rcode::ServFail),
            from: datagram.server,
            to: datagram.client,
            replies: self.replies.clone(),
        };
        tokio::spawn(forward.run(permit));
        Handled::Forwarded
    }

    /// The largest DNS message that fits one packet to `client`.
    fn answer_limit(&self, client: IpAddr) -> usize {
        let ip_header = if client.is_ipv4() {
            IPV4_HEADER
        } else {
            IPV6_HEADER
        };
        self.max_packet.saturating_sub(ip_header + UDP_HEADER)
    }

    fn reply(&self, datagram: &UdpDatagram<'_>, message: Vec<u8>) -> Handled {
        if let Some(packet) = udp_packet(datagram.server, datagram.client, &message) {
            // A full queue drops the answer as a full link would; the
            // client asks again.
            self.replies.try_send(packet).ok();
        }
        Handled::Answered
    }
}

/// One query on its way to an upstream.
struct Forward {
    query: Vec<u8>,
    question: Vec<u8>,
    client_id: u16,
    servers: Vec<SocketAddr>,
    timeout: Duration,
    limit: usize,
    servfail: Vec<u8>,
    from: SocketAddr,
    to: SocketAddr,
    replies: mpsc::Sender<Vec<u8>>,
}

impl Forward {
    /// Asks each server in turn; answers the pod with the first response,
    /// or SERVFAIL when none gives one in time.
    async fn run(self, _permit: OwnedSemaphorePermit) {
        let mut answer = None;
        for &server in &self.servers {
            match self.exchange(server).await {
                Ok(Some(response)) => {
                    answer = Some(response);
                    break;
                }
                Ok(None) => debug!(%server, "DNS upstream did not answer in time"),
                Err(error) => debug!(%server, %error, "DNS upstream unreachable"),
            }
        }
        let message = answer.unwrap_or(self.servfail);
        if let Some(packet) = udp_packet(self.from, self.to, &message) {
            // The pod may have been detached meanwhile.
            self.replies.send(packet).await.ok();
        }
    }

    /// One query to one server from a fresh socket and a random id, so
    /// only that server's answer to that question is taken.
    async fn exchange(&self, server: SocketAddr) -> std::io::Result<Option<Vec<u8>>> {
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(server).await?;
        let id = rand::random::<u16>();
        let mut query = self.query.clone();
        set_id(&mut query, id);
        socket.send(&query).await?;
        // One byte more than fits: a longer response is seen as too long.
        let mut buf = vec![0u8; self.limit + 1];
        let wait = async {
            loop {
                let n = socket.recv(&mut buf).await?;
                let response = &buf[..n];
                if response_id(response) == Some(id) && answers_question(response, &self.question) {
                    let mut fitted = fit_response(response, self.limit);
                    if let Some(fitted) = fitted.as_mut() {
                        set_id(fitted, self.client_id);
                    }
                    return Ok::<_, std::io::Error>(fitted);
                }
            }
        };
        match tokio::time::timeout(self.timeout, wait).await {
            Ok(result) => result,
            Err(_) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests;
