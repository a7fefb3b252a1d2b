//! The handshake gate (sans-IO): what a WireGuard handshake message must
//! pass before any X25519 work is spent on it.
//!
//! 1. Its mac1, keyed by the pod's public key: a sender that does not know
//!    the pod's key is dropped for the cost of one BLAKE2s.
//! 2. The pod's rate limiter: past [`POD_HANDSHAKES_PER_SEC`] in a second
//!    the pod is under load, and a direct sender must prove it owns its
//!    source address with a cookie (mac2); one without gets a cookie reply
//!    instead of a handshake. Relayed messages have no address a cookie
//!    could be bound to and are dropped while under load. Cookie replies
//!    are themselves budgeted per source address
//!    ([`COOKIE_REPLIES_PER_SOURCE_PER_SEC`]): past it a message is dropped
//!    silently, so a flood costs neither a send nor an encryption per
//!    forged packet, and other sources still get their cookies.
//! 3. The node's budget: at most [`NODE_HANDSHAKES_PER_SEC`] messages a
//!    second, over every pod, reach X25519, so a flood spread over many
//!    pods cannot take the node's CPU from the pods' traffic.
//!
//! The limiter is one per pod because mac1 and cookies are keyed by the
//! receiver's public key; every session of the pod shares it, so `Tunn`
//! applies the same count to what reaches it.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
/// Cookie replies a pod sends one source address in a second. A cookie
/// stays valid for two minutes, so a real peer needs one now and then; a
/// flood past this is dropped without a reply.
pub const COOKIE_REPLIES_PER_SOURCE_PER_SEC: u16 = 10;
/// Counters the sources of cookie requests share (by a keyed hash of the
/// address), so the budget's state is fixed in size whatever the number
/// of senders. A pod sends at most this many times
/// [`COOKIE_REPLIES_PER_SOURCE_PER_SEC`] replies a second.
const COOKIE_BUCKETS: usize = 32;

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
    #[error("handshake without a cookie, and its source's cookie replies are spent")]
    CookieBudget,
    #[error("the node's handshake budget for this second is spent")]
    NodeBudget,
}

/// One pod's gate: its rate limiter, its cookie replies and the node's
/// budget.
pub struct HandshakeGate {
    limiter: Arc<RateLimiter>,
    cookies: CookieBudget,
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
            cookies: CookieBudget::new(),
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
    pub fn check(&mut self, from: Option<IpAddr>, datagram: &[u8], now: Instant) -> Verdict {
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        // Room for a cookie reply only within its source's budget. Given
        // none, the limiter still checks mac2 (a peer holding a cookie
        // passes) but writes no reply, and reports the buffer too small.
        let bucket = from.and_then(|addr| self.cookies.available(addr, now));
        let room: &mut [u8] = match bucket {
            Some(_) => &mut reply,
            None => &mut [],
        };
        let handshake = match self.limiter.verify_packet(from, datagram, room) {
            Ok(Packet::HandshakeInit(_) | Packet::HandshakeResponse(_)) => true,
            Ok(Packet::PacketData(_) | Packet::PacketCookieReply(_)) => false,
            Err(TunnResult::WriteToNetwork(written)) => {
                if written.len() != COOKIE_REPLY_LEN {
                    return Verdict::Drop(Refusal::Malformed);
                }
                if let Some(bucket) = bucket {
                    self.cookies.spend(bucket);
                }
                return Verdict::Cookie(reply);
            }
            Err(TunnResult::Err(WireGuardError::DestinationBufferTooSmall))
                if from.is_some() && bucket.is_none() =>
            {
                return Verdict::Drop(Refusal::CookieBudget)
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

/// The cookie replies a pod may still send this second, per source
/// address. Sources share [`COOKIE_BUCKETS`] counters by a hash keyed at
/// random for each pod, so a flooding source spends only its own bucket:
/// a peer elsewhere shares it by chance (one in [`COOKIE_BUCKETS`]), and
/// not predictably. Only the pod's task uses it, so it needs no atomics.
struct CookieBudget {
    key: RandomState,
    window_start: Option<Instant>,
    sent: [u16; COOKIE_BUCKETS],
}

impl CookieBudget {
    fn new() -> Self {
        Self {
            key: RandomState::new(),
            window_start: None,
            sent: [0; COOKIE_BUCKETS],
        }
    }

    fn bucket_of(&self, from: IpAddr) -> usize {
        // The remainder is below COOKIE_BUCKETS, so it fits a usize.
        (self.key.hash_one(from) % COOKIE_BUCKETS as u64) as usize
    }

    /// The bucket of `from` if it may still be sent a cookie reply at
    /// `now`; a new window starts once a second has passed.
    fn available(&mut self, from: IpAddr, now: Instant) -> Option<usize> {
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if expired {
            self.window_start = Some(now);
            self.sent = [0; COOKIE_BUCKETS];
        }
        let bucket = self.bucket_of(from);
        (self.sent[bucket] < COOKIE_REPLIES_PER_SOURCE_PER_SEC).then_some(bucket)
    }

    /// Counts a reply sent to a source of `bucket`.
    fn spend(&mut self, bucket: usize) {
        if let Some(sent) = self.sent.get_mut(bucket) {
            *sent = sent.saturating_add(1);
        }
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
