//! The handshake gate (sans-IO): what a WireGuard handshake message must
//! pass before any X25519 work is spent on it.
//!
//! 1. Its mac1, keyed by the pod's public key: a sender that does not know
//!    the pod's key is dropped for the cost of one BLAKE2s.
//! 2. The pod's rate limiter: past [`POD_HANDSHAKES_PER_SEC`] in a second
//!    the pod is under load, and a direct sender must prove it owns its
//!    source address with a cookie (mac2); one without gets a cookie reply
//!    instead of a handshake. Relayed messages have no address a cookie
//!    could be bound to and are dropped while under load.
//! 3. The node's budget: at most [`NODE_HANDSHAKES_PER_SEC`] messages a
//!    second, over every pod, reach X25519, so a flood spread over many
//!    pods cannot take the node's CPU from the pods' traffic.
//!
//! The limiter is one per pod because mac1 and cookies are keyed by the
//! receiver's public key; every session of the pod shares it, so `Tunn`
//! applies the same count to what reaches it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use boringtun::x25519;

/// Handshake messages a pod takes in a second before it asks for cookies.
/// A message that reaches a session is counted twice (here and by its
/// `Tunn`, which shares the limiter), so this admits about half as many
/// handshakes: still far more than a pod's peers ever start.
pub const POD_HANDSHAKES_PER_SEC: u64 = 100;
/// Handshake messages the whole node hands to X25519 in a second. One
/// costs about four scalar multiplications: a few percent of one core.
pub const NODE_HANDSHAKES_PER_SEC: u64 = 1000;
/// Size of a WireGuard cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;

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
    #[error("handshake while the pod is under load, with no address for a cookie")]
    UnderLoad,
    #[error("the node's handshake budget for this second is spent")]
    NodeBudget,
}

/// One pod's gate: its rate limiter and the node's budget.
pub struct HandshakeGate {
    limiter: Arc<RateLimiter>,
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
            limiter: Arc::new(RateLimiter::new(pod_public, per_sec)),
            budget,
        }
    }

    /// The limiter every session of the pod is built with.
    pub fn limiter(&self) -> Arc<RateLimiter> {
        self.limiter.clone()
    }

    /// Starts a new counting period once a second has passed; call it from
    /// the pod's timer (sessions with a shared limiter do not).
    pub fn tick(&self) {
        self.limiter.reset_count();
    }

    /// Judges one datagram that looks like WireGuard. `from` is its source
    /// on the pod's socket, `None` when a relay delivered it.
    pub fn check(&self, from: Option<IpAddr>, datagram: &[u8], now: Instant) -> Verdict {
        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        let handshake = match self.limiter.verify_packet(from, datagram, &mut cookie) {
            Ok(Packet::HandshakeInit(_) | Packet::HandshakeResponse(_)) => true,
            Ok(Packet::PacketData(_) | Packet::PacketCookieReply(_)) => false,
            Err(TunnResult::WriteToNetwork(reply)) => {
                let mut owned = [0u8; COOKIE_REPLY_LEN];
                match reply.get(..COOKIE_REPLY_LEN) {
                    Some(reply) => owned.copy_from_slice(reply),
                    None => return Verdict::Drop(Refusal::Malformed),
                }
                return Verdict::Cookie(owned);
            }
            Err(TunnResult::Err(WireGuardError::InvalidMac)) => {
                return Verdict::Drop(Refusal::BadMac)
            }
            Err(TunnResult::Err(WireGuardError::UnderLoad)) => {
                return Verdict::Drop(Refusal::UnderLoad)
            }
            Err(_) => return Verdict::Drop(Refusal::Malformed),
        };
        if handshake && !self.budget.take(now) {
            return Verdict::Drop(Refusal::NodeBudget);
        }
        Verdict::Pass
    }
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

/// Length of the budget's window.
const WINDOW_MS: u64 = 1000;

impl Default for NodeBudget {
    fn default() -> Self {
        Self::new(NODE_HANDSHAKES_PER_SEC)
    }
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
