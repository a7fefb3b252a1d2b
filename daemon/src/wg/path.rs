//! Path selection for one peer (sans-IO): which of the peer's endpoints,
//! if any, is validated for direct UDP, and which disco pings to send.
//!
//! Traffic starts on the relay. An endpoint becomes the direct path when it
//! answers a disco ping; it stays trusted for [`TRUST_DURATION`] after each
//! pong, and heartbeats keep it fresh while the session is active. Without
//! pongs the path falls back to the relay.
//!
//! Candidates the peer announced (call-me-maybe) or pinged us from are
//! bounded: at most [`MAX_ENDPOINTS`] per peer, the stalest learned ones
//! evicted first, and a learned one that has not answered a ping for
//! [`LEARNED_LIFETIME`] is forgotten. Control's endpoints stay while
//! control lists them.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a pong keeps an endpoint trusted.
pub const TRUST_DURATION: Duration = Duration::from_millis(6500);
/// Ping the current direct path this often while the session is active.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// A session with no data for this long stops heartbeating.
pub const SESSION_ACTIVE_TIMEOUT: Duration = Duration::from_secs(45);
/// Minimum spacing between pings to one endpoint.
pub const PING_SPACING: Duration = Duration::from_secs(5);
/// A ping without a pong after this long is forgotten.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// With a direct path in place, look for a better one this often.
pub const UPGRADE_INTERVAL: Duration = Duration::from_secs(60);
/// A new endpoint must beat the current one by this much to replace it.
const BETTER_BY: Duration = Duration::from_millis(1);
/// Candidate endpoints kept per peer (Tailscale nodes report a handful).
pub const MAX_ENDPOINTS: usize = 16;
/// A learned candidate is forgotten this long after it was last announced
/// or answered a ping.
pub const LEARNED_LIFETIME: Duration = Duration::from_secs(120);

pub type TxId = [u8; 12];

/// Where packets to the peer go now: the peer's path. (A "route" in `wg`
/// is only ever cryptokey routing, see `routing`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Direct(SocketAddr),
    Relay,
}

#[derive(Debug, Default, Clone)]
struct EndpointState {
    last_ping: Option<Instant>,
    latency: Option<Duration>,
    /// For a candidate not from control: when it was last announced or
    /// answered a ping.
    learned: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct BestPath {
    addr: SocketAddr,
    latency: Duration,
    trust_until: Instant,
}

#[derive(Debug, Default)]
pub struct PathState {
    endpoints: HashMap<SocketAddr, EndpointState>,
    pending: HashMap<TxId, (SocketAddr, Instant)>,
    best: Option<BestPath>,
    last_data: Option<Instant>,
    last_full_round: Option<Instant>,
    /// Probe the endpoints at the next poll even if the session is idle
    /// (the peer asked us to, or pinged us from a new address).
    probe_requested: bool,
}

impl PathState {
    /// Replace the candidate endpoints (from control, or a CallMeMaybe).
    /// The current path survives if its address is still a candidate.
    pub fn set_endpoints(&mut self, endpoints: &[SocketAddr]) {
        let endpoints = &endpoints[..endpoints.len().min(MAX_ENDPOINTS)];
        self.endpoints.retain(|addr, _| endpoints.contains(addr));
        for addr in endpoints {
            self.endpoints.entry(*addr).or_default().learned = None;
        }
        if let Some(best) = self.best {
            if !self.endpoints.contains_key(&best.addr) {
                self.best = None;
            }
        }
        // New candidates deserve a prompt look.
        self.last_full_round = None;
    }

    /// Add candidates the peer announced or pinged from, keeping known
    /// ones; past [`MAX_ENDPOINTS`] the stalest learned ones give way.
    pub fn add_endpoints(&mut self, endpoints: &[SocketAddr], now: Instant) {
        for addr in endpoints.iter().take(MAX_ENDPOINTS) {
            match self.endpoints.entry(*addr) {
                Entry::Vacant(slot) => {
                    slot.insert(EndpointState {
                        learned: Some(now),
                        ..EndpointState::default()
                    });
                }
                // Control's endpoints stay control's.
                Entry::Occupied(mut known) => {
                    if known.get().learned.is_some() {
                        known.get_mut().learned = Some(now);
                    }
                }
            }
        }
        while self.endpoints.len() > MAX_ENDPOINTS {
            // Older learned candidates go first, then the new ones; never
            // control's or the current path.
            let Some(stalest) = self
                .stalest_learned(Some(endpoints))
                .or_else(|| self.stalest_learned(None))
            else {
                break;
            };
            self.endpoints.remove(&stalest);
        }
        self.last_full_round = None;
    }

    /// The learned candidate heard from longest ago, not the current path
    /// and (when given) not one of `keep`.
    fn stalest_learned(&self, keep: Option<&[SocketAddr]>) -> Option<SocketAddr> {
        let best = self.best.map(|b| b.addr);
        self.endpoints
            .iter()
            .filter(|(addr, _)| Some(**addr) != best)
            .filter(|(addr, _)| !keep.is_some_and(|k| k.contains(addr)))
            .filter_map(|(addr, ep)| ep.learned.map(|at| (at, *addr)))
            .min()
            .map(|(_, addr)| addr)
    }

    /// Forgets learned candidates silent for [`LEARNED_LIFETIME`].
    fn prune(&mut self, now: Instant) {
        let best = self.best.map(|b| b.addr);
        self.endpoints.retain(|addr, ep| {
            Some(*addr) == best
                || ep
                    .learned
                    .is_none_or(|at| now.saturating_duration_since(at) < LEARNED_LIFETIME)
        });
    }

    /// Ask for a full round of pings at the next poll, active or not.
    /// Endpoints pinged within [`PING_SPACING`] are still skipped.
    pub fn request_probe(&mut self) {
        self.probe_requested = true;
        self.last_full_round = None;
    }

    /// The path packets to the peer take at `now`.
    pub fn current(&self, now: Instant) -> Path {
        match self.best {
            Some(best) if now < best.trust_until => Path::Direct(best.addr),
            _ => Path::Relay,
        }
    }

    /// Record that data went to (or came from) the peer: keeps heartbeats going.
    pub fn note_activity(&mut self, now: Instant) {
        self.last_data = Some(now);
    }

    fn active(&self, now: Instant) -> bool {
        self.last_data
            .is_some_and(|t| now.saturating_duration_since(t) < SESSION_ACTIVE_TIMEOUT)
    }

    /// Pings to send now, each as (endpoint, transaction id). `new_tx_id`
    /// supplies random ids.
    pub fn poll_pings(
        &mut self,
        now: Instant,
        mut new_tx_id: impl FnMut() -> TxId,
    ) -> Vec<(SocketAddr, TxId)> {
        self.pending
            .retain(|_, (_, sent)| now.saturating_duration_since(*sent) < PING_TIMEOUT);
        self.prune(now);
        let probe = std::mem::take(&mut self.probe_requested);
        if !self.active(now) && !probe {
            return Vec::new();
        }
        let trusted = matches!(self.current(now), Path::Direct(_));
        let full_round_due = probe
            || !trusted
            || self
                .last_full_round
                .is_none_or(|t| now.saturating_duration_since(t) >= UPGRADE_INTERVAL);
        let mut targets = Vec::new();
        if full_round_due {
            for (addr, ep) in &self.endpoints {
                if ep
                    .last_ping
                    .is_none_or(|t| now.saturating_duration_since(t) >= PING_SPACING)
                {
                    targets.push(*addr);
                }
            }
            if !targets.is_empty() {
                self.last_full_round = Some(now);
            }
        } else if let Some(best) = self.best {
            let due = self
                .endpoints
                .get(&best.addr)
                .and_then(|e| e.last_ping)
                .is_none_or(|t| now.saturating_duration_since(t) >= HEARTBEAT_INTERVAL);
            if due {
                targets.push(best.addr);
            }
        }
        targets.sort();
        targets
            .into_iter()
            .map(|addr| {
                let tx = new_tx_id();
                self.pending.insert(tx, (addr, now));
                if let Some(ep) = self.endpoints.get_mut(&addr) {
                    ep.last_ping = Some(now);
                }
                (addr, tx)
            })
            .collect()
    }

    /// A pong arrived from `from`. Returns whether it matched a ping we sent
    /// to that same address (anything else is ignored).
    pub fn on_pong(&mut self, tx: TxId, from: SocketAddr, now: Instant) -> bool {
        let Some((sent_to, sent_at)) = self.pending.remove(&tx) else {
            return false;
        };
        let latency = now.saturating_duration_since(sent_at);
        if sent_to != from || latency >= PING_TIMEOUT {
            return false;
        }
        if let Some(ep) = self.endpoints.get_mut(&from) {
            ep.latency = Some(latency);
            if ep.learned.is_some() {
                ep.learned = Some(now);
            }
        }
        let trust_until = now + TRUST_DURATION;
        self.best = match self.best {
            Some(best) if best.addr == from => Some(BestPath {
                addr: from,
                latency,
                trust_until,
            }),
            Some(best) if now < best.trust_until && best.latency <= latency + BETTER_BY => {
                Some(best)
            }
            _ => Some(BestPath {
                addr: from,
                latency,
                trust_until,
            }),
        };
        true
    }

    /// Latency measured by the last pong of the current direct path.
    pub fn direct_latency(&self, now: Instant) -> Option<Duration> {
        self.best.filter(|b| now < b.trust_until).map(|b| b.latency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ids() -> impl FnMut() -> TxId {
        let mut n = 0u8;
        move || {
            n += 1;
            [n; 12]
        }
    }

    #[test]
    fn starts_on_relay_and_idle_sessions_send_no_pings() {
        let now = Instant::now();
        let mut p = PathState::default();
        p.set_endpoints(&[addr("10.0.0.1:41641")]);
        assert_eq!(p.current(now), Path::Relay);
        assert!(p.poll_pings(now, ids()).is_empty());
    }

    #[test]
    fn pong_upgrades_to_direct_and_silence_falls_back() {
        let t0 = Instant::now();
        let ep = addr("10.0.0.1:41641");
        let mut p = PathState::default();
        p.set_endpoints(&[ep]);
        p.note_activity(t0);
        let pings = p.poll_pings(t0, ids());
        assert_eq!(pings.len(), 1);
        assert_eq!(pings[0].0, ep);
        let t1 = t0 + Duration::from_millis(20);
        assert!(p.on_pong(pings[0].1, ep, t1));
        assert_eq!(p.current(t1), Path::Direct(ep));
        assert_eq!(p.direct_latency(t1), Some(Duration::from_millis(20)));
        // Trusted just under 6.5 s after the pong, relayed after.
        assert_eq!(
            p.current(t1 + Duration::from_millis(6499)),
            Path::Direct(ep)
        );
        assert_eq!(p.current(t1 + TRUST_DURATION), Path::Relay);
    }

    #[test]
    fn heartbeats_go_to_the_direct_path_every_three_seconds() {
        let t0 = Instant::now();
        let (a, b) = (addr("10.0.0.1:1"), addr("10.0.0.2:2"));
        let mut p = PathState::default();
        p.set_endpoints(&[a, b]);
        p.note_activity(t0);
        let mut next = ids();
        let pings = p.poll_pings(t0, &mut next);
        assert_eq!(pings.len(), 2);
        let to_a = pings.iter().find(|(e, _)| *e == a).unwrap().1;
        assert!(p.on_pong(to_a, a, t0 + Duration::from_millis(5)));
        p.note_activity(t0 + Duration::from_secs(2));
        assert!(p
            .poll_pings(t0 + Duration::from_secs(2), &mut next)
            .is_empty());
        let hb = p.poll_pings(t0 + HEARTBEAT_INTERVAL, &mut next);
        assert_eq!(hb.iter().map(|(e, _)| *e).collect::<Vec<_>>(), vec![a]);
    }

    #[test]
    fn pong_from_wrong_address_or_unknown_tx_is_ignored() {
        let t0 = Instant::now();
        let ep = addr("10.0.0.1:41641");
        let mut p = PathState::default();
        p.set_endpoints(&[ep]);
        p.note_activity(t0);
        let tx = p.poll_pings(t0, ids())[0].1;
        assert!(!p.on_pong([0xee; 12], ep, t0));
        assert!(!p.on_pong(tx, addr("10.9.9.9:41641"), t0));
        assert_eq!(p.current(t0), Path::Relay);
        // The tx was consumed by the mismatched pong: a replay does nothing.
        assert!(!p.on_pong(tx, ep, t0));
    }

    #[test]
    fn lower_latency_endpoint_wins_and_expired_pings_are_dropped() {
        let t0 = Instant::now();
        let (slow, fast) = (addr("10.0.0.1:1"), addr("10.0.0.2:2"));
        let mut p = PathState::default();
        p.set_endpoints(&[slow, fast]);
        p.note_activity(t0);
        let pings = p.poll_pings(t0, ids());
        let tx = |e| pings.iter().find(|(a, _)| *a == e).unwrap().1;
        assert!(p.on_pong(tx(slow), slow, t0 + Duration::from_millis(50)));
        assert!(p.on_pong(tx(fast), fast, t0 + Duration::from_millis(60)));
        // fast's round trip (60 ms) was slower than slow's (50 ms): slow stays.
        assert_eq!(
            p.current(t0 + Duration::from_millis(60)),
            Path::Direct(slow)
        );

        let mut p = PathState::default();
        p.set_endpoints(&[slow]);
        p.note_activity(t0);
        let mut next = ids();
        let tx = p.poll_pings(t0, &mut next)[0].1;
        let late = t0 + PING_TIMEOUT;
        p.note_activity(late);
        let _ = p.poll_pings(late, &mut next);
        assert!(
            !p.on_pong(tx, slow, late),
            "a pong after the timeout must not count"
        );
    }

    #[test]
    fn requested_probe_pings_an_idle_session_once() {
        let t0 = Instant::now();
        let (a, b) = (addr("10.0.0.1:1"), addr("10.0.0.2:2"));
        let mut p = PathState::default();
        p.set_endpoints(&[a]);
        assert!(p.poll_pings(t0, ids()).is_empty(), "idle: no pings");
        p.add_endpoints(&[b], t0);
        p.request_probe();
        let mut next = ids();
        let pings = p.poll_pings(t0, &mut next);
        assert_eq!(
            pings.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
            vec![a, b]
        );
        let tx = pings[1].1;
        assert!(p.on_pong(tx, b, t0 + Duration::from_millis(3)));
        assert_eq!(p.current(t0 + Duration::from_millis(3)), Path::Direct(b));
        // A second request within the spacing does not re-ping, and the
        // request is spent: an idle session stays quiet afterwards.
        p.request_probe();
        assert!(p
            .poll_pings(t0 + Duration::from_secs(1), &mut next)
            .is_empty());
        assert!(p.poll_pings(t0 + PING_SPACING, &mut next).is_empty());
    }

    #[test]
    fn learned_candidates_are_capped_and_controls_are_kept() {
        let t0 = Instant::now();
        let control = addr("10.0.0.1:41641");
        let mut p = PathState::default();
        p.set_endpoints(&[control]);
        // A peer (or anyone who can relay as it) announces far too many.
        for round in 0..10u16 {
            let flood: Vec<SocketAddr> = (0..40u16)
                .map(|i| SocketAddr::from(([10, 1, (round % 250) as u8, i as u8], 1000 + i)))
                .collect();
            p.add_endpoints(&flood, t0 + Duration::from_millis(u64::from(round)));
            assert!(p.endpoints.len() <= MAX_ENDPOINTS, "{}", p.endpoints.len());
            assert!(
                p.endpoints.contains_key(&control),
                "control's endpoint evicted"
            );
        }
        // The newest announcement displaced the older ones.
        let newest = SocketAddr::from(([10, 1, 9, 15], 1015));
        assert!(p.endpoints.contains_key(&newest));
        let from_last_round = |e: &SocketAddr| match e.ip() {
            std::net::IpAddr::V4(v4) => v4.octets()[2] == 9,
            std::net::IpAddr::V6(_) => false,
        };
        assert!(
            p.endpoints
                .keys()
                .all(|e| *e == control || from_last_round(e)),
            "candidates of older rounds survived"
        );
    }

    #[test]
    fn silent_learned_candidates_are_pruned_but_answering_ones_stay() {
        let t0 = Instant::now();
        let (control, silent, answering) =
            (addr("10.0.0.1:1"), addr("10.0.0.2:2"), addr("10.0.0.3:3"));
        let mut p = PathState::default();
        p.set_endpoints(&[control]);
        p.add_endpoints(&[silent, answering], t0);
        let mut next = ids();
        let t1 = t0 + Duration::from_secs(100);
        p.note_activity(t1);
        let pings = p.poll_pings(t1, &mut next);
        let to_answering = pings.iter().find(|(e, _)| *e == answering).unwrap().1;
        assert!(p.on_pong(to_answering, answering, t1));
        let t2 = t0 + LEARNED_LIFETIME;
        p.note_activity(t2);
        let _ = p.poll_pings(t2, &mut next);
        assert!(!p.endpoints.contains_key(&silent), "silent candidate kept");
        assert!(p.endpoints.contains_key(&answering));
        assert!(p.endpoints.contains_key(&control));
    }

    #[test]
    fn removing_the_direct_endpoint_falls_back_to_relay() {
        let t0 = Instant::now();
        let ep = addr("[fd00::1]:41641");
        let mut p = PathState::default();
        p.set_endpoints(&[ep]);
        p.note_activity(t0);
        let tx = p.poll_pings(t0, ids())[0].1;
        assert!(p.on_pong(tx, ep, t0));
        assert_eq!(p.current(t0), Path::Direct(ep));
        p.set_endpoints(&[]);
        assert_eq!(p.current(t0), Path::Relay);
    }
}
