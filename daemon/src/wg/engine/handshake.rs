//! The handshake gate (sans-IO): what a WireGuard handshake message must
//! pass before any X25519 work is spent on it.
//!
//! 1. Its mac1, keyed by the pod's public key: a sender that does not know
//!    the pod's key is dropped for the cost of one BLAKE2s.
//! 2. The pod's rate limiter: past [`POD_HANDSHAKES_PER_SEC`] in a second
//!    the pod is under load.
//!    - A direct sender must then prove it owns its source address with a
//!      cookie (mac2); one without gets a cookie reply instead of a
//!      handshake. Cookie replies are budgeted per source address
//!      ([`COOKIE_REPLIES_PER_SOURCE_PER_SEC`]): past it a message is
//!      dropped silently, so a flood costs neither a send nor an
//!      encryption per forged packet, and other sources still get theirs.
//!    - A relayed message has no address a cookie could be bound to, but
//!      its sender is the node key the relay authenticated, one of the
//!      pod's peers. Each such sender may still start
//!      [`RELAYED_HANDSHAKES_PER_PEER_PER_SEC`] handshakes: a peer whose
//!      address a flood shares can always get through its relay.
//! 3. The node's budget: at most [`NODE_HANDSHAKES_PER_SEC`] messages a
//!    second, over every pod, reach X25519, so a flood spread over many
//!    pods cannot take the node's CPU from the pods' traffic.
//!
//! The load is judged here, once. The pod's sessions get a limiter of
//! their own that checks mac1 and is never under load: sharing this one
//! would judge every message twice, and refuse in the session what the
//! gate admitted from a relay.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use boringtun::x25519;

use super::sender_budget::{Allowance, SenderBudget};
use super::session::NodeKey;

/// Handshake messages a pod takes in a second before it asks for cookies:
/// far more than a pod's peers ever start.
pub const POD_HANDSHAKES_PER_SEC: u64 = 100;
/// Handshake messages the whole node hands to X25519 in a second. One
/// costs about four scalar multiplications: a few percent of one core.
pub const NODE_HANDSHAKES_PER_SEC: u64 = 1000;
/// Size of a WireGuard cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Cookie replies a pod sends one source address in a second. A cookie
/// stays valid for two minutes, so a real peer needs one now and then; a
/// flood past this is dropped without a reply.
pub const COOKIE_REPLIES_PER_SOURCE_PER_SEC: u16 = 10;
/// Cookie replies a second to every source past the ones counted one by
/// one, together (see [`SenderBudget`]).
const COOKIE_REPLIES_SHARED_PER_SEC: u16 = 64;
/// Handshake messages a peer may send a pod through a relay in a second
/// while the pod is under load. A peer retries every five seconds.
pub const RELAYED_HANDSHAKES_PER_PEER_PER_SEC: u16 = 3;
/// The same, for every relayed sender past the ones counted one by one.
const RELAYED_HANDSHAKES_SHARED_PER_SEC: u16 = 16;

/// Where a WireGuard datagram came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// The pod's UDP socket, from this address.
    Address(IpAddr),
    /// A relay, from the peer with this node key (the relay authenticated it).
    Relayed(NodeKey),
}

/// What to do with one WireGuard datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the sessions.
    Pass,
    /// Under load and without a valid cookie: send this cookie reply back
    /// to the source instead.
    Cookie([u8; COOKIE_REPLY_LEN]),
    /// Drop it, for this reason.
    Drop(Refusal),
}

/// Why a datagram did not pass the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a WireGuard message")]
    Malformed,
    #[error("handshake with a wrong mac1 (sender does not know the pod's key)")]
    BadMac,
    #[error("relayed handshake while the pod is under load, past its sender's budget")]
    RelayedBudget,
    #[error("handshake without a cookie, and its source's cookie replies are spent")]
    CookieBudget,
    #[error("the node's handshake budget for this second is spent")]
    NodeBudget,
}

/// One pod's gate: its rate limiter, its cookie replies, its relayed
/// senders' allowances and the node's budget.
pub struct HandshakeGate {
    limiter: RateLimiter,
    session_limiter: Arc<RateLimiter>,
    cookies: SenderBudget<IpAddr>,
    relayed: SenderBudget<NodeKey>,
    budget: Arc<NodeBudget>,
}

impl HandshakeGate {
    /// The gate of the pod whose static public key is `pod_public`.
    pub fn new(pod_public: &x25519::PublicKey, budget: Arc<NodeBudget>) -> Self {
        Self::with_limit(pod_public, POD_HANDSHAKES_PER_SEC, budget)
    }

    pub(super) fn with_limit(
        pod_public: &x25519::PublicKey,
        per_sec: u64,
        budget: Arc<NodeBudget>,
    ) -> Self {
        Self {
            limiter: RateLimiter::new(pod_public, per_sec),
            session_limiter: Arc::new(RateLimiter::new(pod_public, u64::MAX)),
            cookies: SenderBudget::new(
                COOKIE_REPLIES_PER_SOURCE_PER_SEC,
                COOKIE_REPLIES_SHARED_PER_SEC,
            ),
            relayed: SenderBudget::new(
                RELAYED_HANDSHAKES_PER_PEER_PER_SEC,
                RELAYED_HANDSHAKES_SHARED_PER_SEC,
            ),
            budget,
        }
    }

    /// The limiter every session of the pod is built with: it checks mac1
    /// and never reports load, which the gate judged already.
    pub fn session_limiter(&self) -> Arc<RateLimiter> {
        self.session_limiter.clone()
    }

    /// Starts a new counting period once a second has passed; call it from
    /// the pod's timer.
    pub fn tick(&self) {
        self.limiter.reset_count();
    }

    /// Judges one datagram that looks like WireGuard, from `from`.
    pub fn check(&mut self, from: Sender, datagram: &[u8], now: Instant) -> Verdict {
        let handshake = match from {
            Sender::Address(addr) => match self.check_direct(addr, datagram, now) {
                Ok(handshake) => handshake,
                Err(verdict) => return verdict,
            },
            Sender::Relayed(peer) => match self.check_relayed(peer, datagram, now) {
                Ok(handshake) => handshake,
                Err(refusal) => return Verdict::Drop(refusal),
            },
        };
        if handshake && !self.budget.take(now) {
            return Verdict::Drop(Refusal::NodeBudget);
        }
        Verdict::Pass
    }

    /// A datagram from `addr` on the pod's socket: whether it is a
    /// handshake that passed, or what to do instead.
    fn check_direct(
        &mut self,
        addr: IpAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<bool, Verdict> {
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        // Room for a cookie reply only within its source's budget. Given
        // none, the limiter still checks mac2 (a peer holding a cookie
        // passes) but writes no reply, and reports the buffer too small.
        let allowance = self.cookies.available(addr, now);
        let room: &mut [u8] = match allowance {
            Some(_) => &mut reply,
            None => &mut [],
        };
        match self.limiter.verify_packet(Some(addr), datagram, room) {
            Ok(packet) => Ok(is_handshake(&packet)),
            Err(TunnResult::WriteToNetwork(written)) => {
                if written.len() != COOKIE_REPLY_LEN {
                    return Err(Verdict::Drop(Refusal::Malformed));
                }
                if let Some(allowance) = allowance {
                    self.cookies.spend(allowance);
                }
                Err(Verdict::Cookie(reply))
            }
            Err(TunnResult::Err(WireGuardError::DestinationBufferTooSmall))
                if allowance.is_none() =>
            {
                Err(Verdict::Drop(Refusal::CookieBudget))
            }
            Err(TunnResult::Err(WireGuardError::InvalidMac)) => Err(Verdict::Drop(Refusal::BadMac)),
            Err(_) => Err(Verdict::Drop(Refusal::Malformed)),
        }
    }

    /// A datagram a relay delivered from `peer`: whether it is a handshake
    /// that passed, or why it is refused.
    fn check_relayed(
        &mut self,
        peer: NodeKey,
        datagram: &[u8],
        now: Instant,
    ) -> Result<bool, Refusal> {
        match self.limiter.verify_packet(None, datagram, &mut []) {
            Ok(packet) => Ok(is_handshake(&packet)),
            Err(TunnResult::Err(WireGuardError::UnderLoad)) => {
                let allowance: Allowance = self
                    .relayed
                    .available(peer, now)
                    .ok_or(Refusal::RelayedBudget)?;
                self.relayed.spend(allowance);
                Ok(true)
            }
            Err(TunnResult::Err(WireGuardError::InvalidMac)) => Err(Refusal::BadMac),
            Err(_) => Err(Refusal::Malformed),
        }
    }
}

fn is_handshake(packet: &Packet<'_>) -> bool {
    matches!(
        packet,
        Packet::HandshakeInit(_) | Packet::HandshakeResponse(_)
    )
}

/// The node-wide handshake budget: a fixed one-second window shared by
/// every pod's gate, kept in atomics so pods never wait on each other.
/// Two pods that open a new window at once may each reset it; the budget
/// then admits up to one window's worth more, which is harmless.
pub struct NodeBudget {
    per_sec: u64,
    epoch: Instant,
    /// Start of the current window in milliseconds since `epoch`, plus one;
    /// 0 before the first handshake, which opens the first window.
    window_start_ms: AtomicU64,
    used: AtomicU64,
}

impl NodeBudget {
    pub fn new(per_sec: u64) -> Self {
        Self {
            per_sec,
            epoch: Instant::now(),
            window_start_ms: AtomicU64::new(0),
            used: AtomicU64::new(0),
        }
    }

    /// Takes one handshake from the budget at `now`; `false` when this
    /// second's is spent.
    pub fn take(&self, now: Instant) -> bool {
        let now_ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        let start = self.window_start_ms.load(Ordering::Relaxed);
        let expired = start == 0 || now_ms.saturating_sub(start - 1) >= WINDOW_MS;
        if expired
            && self
                .window_start_ms
                .compare_exchange(
                    start,
                    now_ms.saturating_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
        }
        self.used.fetch_add(1, Ordering::Relaxed) < self.per_sec
    }
}

/// Length of the budgets' window.
const WINDOW: Duration = Duration::from_secs(1);
const WINDOW_MS: u64 = WINDOW.as_millis() as u64;

impl Default for NodeBudget {
    fn default() -> Self {
        Self::new(NODE_HANDSHAKES_PER_SEC)
    }
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
