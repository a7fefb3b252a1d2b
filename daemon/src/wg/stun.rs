//! Endpoint discovery for one pod (sans-IO): STUN binding requests from the
//! pod's UDP socket to the DERP map's STUN servers, and the reflexive
//! (server-observed) addresses their answers name.
//!
//! A round goes to every server at once. Until one answers, rounds repeat
//! every [`RETRY_INTERVAL`]; after that every [`REFRESH_INTERVAL`], so NAT
//! mappings stay open and changes are noticed. A mapping not confirmed for
//! [`MAPPING_TTL`] is forgotten.
//!
//! A quiet pod (no live WireGuard session) stops refreshing a mapping it
//! knows and keeps reporting it, as the official client stops re-STUN when
//! idle: hundreds of idle pods would otherwise wake each other's node
//! every second for nothing, and a forgotten mapping would change the
//! pod's endpoints, which control sends to every peer. When the pod gets
//! busy again the mapping counts as just seen and a round goes out at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tailnet_wire::stun::{self, StunError, TxId, BINDING_REQUEST_LEN};

use super::config::DerpRegionConfig;

/// Rounds while no server has answered.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(3);
/// Rounds once a mapping is known.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(20);
/// A request without an answer after this long is forgotten.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A mapping not refreshed for this long (two missed rounds) is dropped.
pub const MAPPING_TTL: Duration = Duration::from_secs(50);

/// Why a STUN datagram was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunRejected {
    #[error("STUN response: {0}")]
    Parse(#[from] StunError),
    #[error("STUN response for no request of ours")]
    UnknownTransaction,
    #[error("STUN response from {from}, but the request went to {server}")]
    WrongServer {
        from: SocketAddr,
        server: SocketAddr,
    },
}

/// Every STUN server of the map with a literal address (nodes known only by
/// host name are skipped: the pod task does no DNS).
pub fn servers_from(map: &[DerpRegionConfig]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = map
        .iter()
        .flat_map(|r| r.nodes.iter())
        .flat_map(|n| {
            let port = n.effective_stun_port();
            [n.ipv4.map(IpAddr::V4), n.ipv6.map(IpAddr::V6)]
                .into_iter()
                .flatten()
                .map(move |ip| SocketAddr::new(ip, port))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[derive(Debug, Default)]
pub struct StunProber {
    servers: Vec<SocketAddr>,
    pending: HashMap<TxId, (SocketAddr, Instant)>,
    /// Server → (our address as it saw it, when it said so).
    mapped: HashMap<SocketAddr, (SocketAddr, Instant)>,
    next_round: Option<Instant>,
    changed: bool,
    /// Whether the pod is quiet: no refresh rounds, no expiry.
    quiet: bool,
}

impl StunProber {
    /// New servers (a DERP map change): probe at the next poll.
    pub fn set_servers(&mut self, servers: Vec<SocketAddr>) {
        if servers != self.servers {
            let before = self.mapped.len();
            self.mapped.retain(|s, _| servers.contains(s));
            self.changed |= self.mapped.len() != before;
            self.pending.retain(|_, (s, _)| servers.contains(s));
            self.servers = servers;
        }
        self.next_round = None;
    }

    /// Whether the pod has live sessions. Leaving quiet renews the
    /// mappings and makes a round due.
    pub fn set_busy(&mut self, busy: bool, now: Instant) {
        if busy && self.quiet {
            for (_, seen) in self.mapped.values_mut() {
                *seen = now;
            }
            self.next_round = None;
        }
        self.quiet = !busy;
    }

    /// Whether a known mapping is kept as it is, without rounds.
    fn resting(&self) -> bool {
        self.quiet && !self.mapped.is_empty()
    }

    /// Requests to send now: (server, datagram).
    pub fn poll(
        &mut self,
        now: Instant,
        mut new_tx_id: impl FnMut() -> TxId,
    ) -> Vec<(SocketAddr, [u8; BINDING_REQUEST_LEN])> {
        self.pending
            .retain(|_, (_, sent)| now.saturating_duration_since(*sent) < REQUEST_TIMEOUT);
        if self.resting() {
            return Vec::new();
        }
        let before = self.mapped.len();
        self.mapped
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < MAPPING_TTL);
        self.changed |= self.mapped.len() != before;
        if self.servers.is_empty() || self.next_round.is_some_and(|t| now < t) {
            return Vec::new();
        }
        let interval = if self.mapped.is_empty() {
            RETRY_INTERVAL
        } else {
            REFRESH_INTERVAL
        };
        self.next_round = Some(now + interval);
        self.servers
            .iter()
            .map(|server| {
                let tx_id = new_tx_id();
                self.pending.insert(tx_id, (*server, now));
                (*server, stun::binding_request_with_tx_id(tx_id))
            })
            .collect()
    }

    /// When [`Self::poll`] next has work: a round to send, a request to
    /// time out or a mapping to expire. `None` with no servers and nothing
    /// outstanding.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let timeouts = self
            .pending
            .values()
            .map(|(_, sent)| *sent + REQUEST_TIMEOUT);
        if self.resting() {
            return timeouts.min();
        }
        let round = (!self.servers.is_empty()).then(|| self.next_round.unwrap_or(now));
        let expiries = self.mapped.values().map(|(_, seen)| *seen + MAPPING_TTL);
        round.into_iter().chain(timeouts).chain(expiries).min()
    }

    /// A STUN datagram from `from` (canonical form). Only an answer to one
    /// of our pending requests, from the server it was sent to, counts.
    pub fn on_response(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> Result<SocketAddr, StunRejected> {
        let (tx_id, observed) = stun::parse_response(datagram)?;
        let Some(&(server, _)) = self.pending.get(&tx_id) else {
            return Err(StunRejected::UnknownTransaction);
        };
        if server != from {
            return Err(StunRejected::WrongServer { from, server });
        }
        self.pending.remove(&tx_id);
        let observed = super::udp::canonical(observed);
        let previous = self.mapped.insert(server, (observed, now));
        if previous.is_none_or(|(addr, _)| addr != observed) {
            self.changed = true;
            // A first answer ends the fast retries.
            self.next_round = Some(now + REFRESH_INTERVAL);
        }
        Ok(observed)
    }

    /// Our reflexive addresses, sorted and without duplicates.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self.mapped.values().map(|(a, _)| *a).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether [`Self::endpoints`] changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wg::config::DerpNodeConfig;

    fn node(ipv4: Option<&str>, ipv6: Option<&str>, stun_port: u16) -> DerpNodeConfig {
        DerpNodeConfig {
            name: "n".into(),
            host_name: "h".into(),
            ipv4: ipv4.map(|a| a.parse().unwrap()),
            ipv6: ipv6.map(|a| a.parse().unwrap()),
            derp_port: 0,
            stun_port,
            insecure_for_tests: false,
            stun_only: false,
            plain_http: false,
        }
    }

    fn ids() -> impl FnMut() -> TxId {
        let mut n = 0u8;
        move || {
            n += 1;
            [n; 12]
        }
    }

    fn tx_of(request: &[u8; BINDING_REQUEST_LEN]) -> TxId {
        stun::parse_binding_request(request).unwrap()
    }

    #[test]
    fn servers_come_from_literal_addresses_of_every_node() {
        let map = vec![
            DerpRegionConfig {
                region_id: 1,
                nodes: vec![
                    node(Some("127.0.0.1"), Some("::1"), 13478),
                    node(None, None, 1),
                ],
            },
            DerpRegionConfig {
                region_id: 2,
                nodes: vec![
                    node(Some("127.0.0.1"), None, 13478),
                    node(Some("127.0.0.2"), None, 0),
                ],
            },
        ];
        let servers: Vec<String> = servers_from(&map).iter().map(|s| s.to_string()).collect();
        assert_eq!(
            servers,
            vec!["127.0.0.1:13478", "127.0.0.2:3478", "[::1]:13478"]
        );
    }

    #[test]
    fn answer_from_the_server_becomes_an_endpoint_and_slows_the_rounds() {
        let t0 = Instant::now();
        let server: SocketAddr = "127.0.0.1:13478".parse().unwrap();
        let mut p = StunProber::default();
        let mut next = ids();
        assert!(p.poll(t0, &mut next).is_empty(), "no servers yet");
        p.set_servers(vec![server]);
        let round = p.poll(t0, &mut next);
        assert_eq!(round.len(), 1);
        assert_eq!(round[0].0, server);
        // Nothing more until the retry interval.
        assert!(p.poll(t0 + Duration::from_secs(1), &mut next).is_empty());

        let mapped: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let response = stun::binding_response(tx_of(&round[0].1), mapped);
        assert_eq!(
            p.on_response(&response, server, t0 + Duration::from_millis(5)),
            Ok(mapped)
        );
        assert!(p.take_changed());
        assert!(!p.take_changed());
        assert_eq!(p.endpoints(), vec![mapped]);
        // The same answer again changes nothing; a replay is unknown.
        assert_eq!(
            p.on_response(&response, server, t0),
            Err(StunRejected::UnknownTransaction)
        );
        assert!(p.poll(t0 + RETRY_INTERVAL, &mut next).is_empty());
        let refresh = p.poll(t0 + Duration::from_millis(5) + REFRESH_INTERVAL, &mut next);
        assert_eq!(refresh.len(), 1);
        let again = stun::binding_response(tx_of(&refresh[0].1), mapped);
        p.on_response(&again, server, t0 + REFRESH_INTERVAL)
            .unwrap();
        assert!(!p.take_changed(), "an unchanged mapping is no change");
    }

    #[test]
    fn unanswered_rounds_retry_and_stale_mappings_expire() {
        let t0 = Instant::now();
        let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let mut p = StunProber::default();
        let mut next = ids();
        p.set_servers(vec![server]);
        let first = p.poll(t0, &mut next);
        let second = p.poll(t0 + RETRY_INTERVAL, &mut next);
        assert_eq!((first.len(), second.len()), (1, 1));
        assert_ne!(tx_of(&first[0].1), tx_of(&second[0].1));
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:9".parse().unwrap();
        let response = stun::binding_response(tx_of(&second[0].1), mapped);
        // v4-mapped answers are stored as plain IPv4.
        assert_eq!(
            p.on_response(&response, server, t0 + RETRY_INTERVAL),
            Ok("10.0.0.1:9".parse().unwrap())
        );
        p.take_changed();
        let _ = p.poll(t0 + RETRY_INTERVAL + MAPPING_TTL, &mut next);
        assert!(p.take_changed());
        assert!(p.endpoints().is_empty());
    }

    /// A prober with one server whose first round was answered at `t0`.
    fn mapped_at(t0: Instant, server: SocketAddr, mapped: SocketAddr) -> StunProber {
        let mut p = StunProber::default();
        p.set_servers(vec![server]);
        let round = p.poll(t0, ids());
        let response = stun::binding_response(tx_of(&round[0].1), mapped);
        assert_eq!(p.on_response(&response, server, t0), Ok(mapped));
        assert!(p.take_changed());
        p
    }

    /// A prober whose pod went quiet at `t0`, right after its first
    /// mapping, and that mapping.
    fn quiet_with_mapping(t0: Instant) -> (StunProber, SocketAddr) {
        let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let mapped: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let mut p = mapped_at(t0, server, mapped);
        p.set_busy(false, t0);
        (p, mapped)
    }

    #[test]
    fn a_quiet_pod_keeps_its_mapping_without_rounds() {
        let t0 = Instant::now();
        let (mut p, mapped) = quiet_with_mapping(t0);
        assert_eq!(p.next_deadline(t0), None, "nothing to wake for");
        let later = t0 + MAPPING_TTL * 10;
        assert!(p.poll(later, ids()).is_empty(), "no refresh rounds");
        assert!(!p.take_changed());
        assert_eq!(p.endpoints(), vec![mapped], "the mapping is still reported");
    }

    #[test]
    fn a_pod_that_gets_busy_refreshes_at_once_and_expires_from_then() {
        let t0 = Instant::now();
        let (mut p, mapped) = quiet_with_mapping(t0);
        let woke = t0 + MAPPING_TTL * 10;
        p.set_busy(true, woke);
        assert_eq!(p.next_deadline(woke), Some(woke), "a round is due");
        let round = p.poll(woke, ids());
        assert_eq!(round.len(), 1);
        assert!(!p.take_changed(), "the mapping counts as just seen");
        // Unanswered, the mapping goes MAPPING_TTL after waking, not before.
        let _ = p.poll(woke + MAPPING_TTL - Duration::from_secs(1), ids());
        assert_eq!(p.endpoints(), vec![mapped]);
        let _ = p.poll(woke + MAPPING_TTL, ids());
        assert!(p.take_changed());
        assert!(p.endpoints().is_empty());
    }

    #[test]
    fn a_quiet_pod_without_a_mapping_keeps_asking() {
        let t0 = Instant::now();
        let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let mut p = StunProber::default();
        p.set_servers(vec![server]);
        p.set_busy(false, t0);
        assert_eq!(p.poll(t0, ids()).len(), 1);
        assert_eq!(p.poll(t0 + RETRY_INTERVAL, ids()).len(), 1);
    }

    #[test]
    fn answers_from_elsewhere_or_garbage_are_ignored() {
        let t0 = Instant::now();
        let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let mut p = StunProber::default();
        p.set_servers(vec![server]);
        let round = p.poll(t0, ids());
        let tx = tx_of(&round[0].1);
        let response = stun::binding_response(tx, "127.0.0.1:1".parse().unwrap());
        let other: SocketAddr = "127.0.0.1:9999".parse().unwrap();
        assert_eq!(
            p.on_response(&response, other, t0),
            Err(StunRejected::WrongServer {
                from: other,
                server
            })
        );
        assert!(matches!(
            p.on_response(&round[0].1, server, t0),
            Err(StunRejected::Parse(_))
        ));
        assert!(p.endpoints().is_empty());
        assert!(!p.take_changed());
        // The genuine answer still counts after the forgeries.
        assert!(p.on_response(&response, server, t0).is_ok());
    }

    #[test]
    fn changing_servers_forgets_their_mappings_and_probes_at_once() {
        let t0 = Instant::now();
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let mut p = StunProber::default();
        let mut next = ids();
        p.set_servers(vec![a]);
        let round = p.poll(t0, &mut next);
        let response = stun::binding_response(tx_of(&round[0].1), "127.0.0.1:7".parse().unwrap());
        p.on_response(&response, a, t0).unwrap();
        p.take_changed();
        p.set_servers(vec![b]);
        assert!(p.take_changed());
        assert!(p.endpoints().is_empty());
        let round = p.poll(t0 + Duration::from_millis(1), &mut next);
        assert_eq!(round.iter().map(|r| r.0).collect::<Vec<_>>(), vec![b]);
    }

    #[test]
    fn next_deadline_names_the_round_the_timeouts_and_the_expiries() {
        let t0 = Instant::now();
        let mut p = StunProber::default();
        assert_eq!(p.next_deadline(t0), None, "no servers, nothing pending");
        let server: SocketAddr = "10.0.0.9:3478".parse().unwrap();
        p.set_servers(vec![server]);
        assert_eq!(p.next_deadline(t0), Some(t0), "first round at once");
        let mut next = ids();
        let round = p.poll(t0, &mut next);
        assert_eq!(round.len(), 1);
        // Unanswered: the retry comes before the request's timeout.
        assert_eq!(p.next_deadline(t0), Some(t0 + RETRY_INTERVAL));
        p.set_servers(Vec::new());
        assert_eq!(
            p.next_deadline(t0),
            None,
            "pending requests went with their server"
        );
    }
}
