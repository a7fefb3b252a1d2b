//! When to replace a node key: sans-IO, driven by the self node of each
//! netmap and the clock the caller passes in.
//!
//! A control server expires node keys (`KeyExpiry` passes, or it marks the
//! node `Expired`). The remedy, as Tailscale's client does it, is a new node
//! key registered with `OldNodeKey` set to the previous one under the same
//! machine key: the server keeps the node, its id and its addresses. This
//! module decides *when*: at once for an expired key, and ahead of time once
//! less than a configured fraction of the key's lifetime is left, so a pod
//! never sits with a dead key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// How eagerly keys are renewed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RotationPolicy {
    /// Renew once less than this fraction of the key's lifetime is left
    /// (0 renews only at expiry; clamped to 0..=0.5 so a key is always used
    /// for at least half its life).
    pub renew_fraction: f64,
    /// Renew at least this long before expiry (capped at half the lifetime).
    pub min_margin: Duration,
    /// Ahead-of-time renewals never come closer together than this, whatever
    /// lifetimes the server hands out.
    pub min_interval: Duration,
    /// Key lifetime to ask the server for (`RegisterRequest.Expiry`); `None`
    /// leaves it to the server's policy.
    pub requested_lifetime: Option<Duration>,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        Self {
            renew_fraction: 0.1,
            min_margin: Duration::from_secs(300),
            min_interval: Duration::from_secs(10),
            requested_lifetime: None,
        }
    }
}

/// Why a key is being replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The server marked the node expired or its `KeyExpiry` has passed.
    Expired,
    /// The key still works but is in its renewal window.
    ExpiresSoon { remaining: Duration },
    /// The server answered a registration with `NodeKeyExpired`.
    ServerSaysExpired,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Expired => f.write_str("node key expired"),
            Self::ExpiresSoon { remaining } => {
                write!(f, "node key expires in {} s", remaining.as_secs())
            }
            Self::ServerSaysExpired => f.write_str("server reports the node key expired"),
        }
    }
}

/// What to do about the current key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing now; look again after `recheck_in` (`None`: only when the
    /// self node changes).
    Keep { recheck_in: Option<Duration> },
    /// Replace the node key now.
    Rotate(Reason),
    /// The key was just replaced for this very expiry and the server still
    /// calls it expired: another rotation would loop.
    Stuck {
        /// `Node.KeyExpiry` as the server still sends it.
        key_expiry: String,
    },
}

/// The self node's key state as a netmap reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyState<'a> {
    /// The node key the record is about (`Node.Key`).
    pub key: &'a str,
    pub expired: bool,
    /// `Node.KeyExpiry` as sent: RFC 3339, empty or Go's zero time for never.
    pub key_expiry: &'a str,
}

/// One identity's rotation state.
#[derive(Debug, Clone)]
pub struct Rotator {
    policy: RotationPolicy,
    /// When the server last accepted the current key: the start of its
    /// lifetime as far as this process knows.
    registered_at: Option<SystemTime>,
    /// The expiry that triggered the last rotation, to notice a server that
    /// keeps calling the replacement expired.
    rotated_for: Option<(bool, String)>,
}

impl Rotator {
    pub fn new(policy: RotationPolicy) -> Self {
        Self {
            policy,
            registered_at: None,
            rotated_for: None,
        }
    }

    pub fn policy(&self) -> &RotationPolicy {
        &self.policy
    }

    /// The server accepted the current key at `now`.
    pub fn registered(&mut self, now: SystemTime) {
        self.registered_at = Some(now);
    }

    /// A rotation is starting because of this self-node state.
    pub fn rotating(&mut self, expired: bool, key_expiry: &str) {
        self.rotated_for = Some((expired, key_expiry.to_string()));
    }

    /// `RegisterRequest.Expiry` for the next registration at `now`.
    pub fn requested_expiry(&self, now: SystemTime) -> Option<SystemTime> {
        self.policy
            .requested_lifetime
            .map(|lifetime| now + lifetime)
    }

    /// Decides about the self node `state` of a netmap; `current` is the
    /// session's node key in its text form.
    pub fn assess(&self, state: &KeyState<'_>, current: &str, now: SystemTime) -> Verdict {
        // A record about another key (a stale map) says nothing about ours.
        if state.key != current {
            return Verdict::Keep { recheck_in: None };
        }
        let expiry = parse_time(state.key_expiry);
        let expired = state.expired || expiry.is_some_and(|at| at <= now);
        if expired {
            if self.rotated_for.as_ref() == Some(&(state.expired, state.key_expiry.to_string())) {
                return Verdict::Stuck {
                    key_expiry: state.key_expiry.to_string(),
                };
            }
            return Verdict::Rotate(Reason::Expired);
        }
        let Some(expiry) = expiry else {
            return Verdict::Keep { recheck_in: None };
        };
        let start = self.registered_at.unwrap_or(now).min(now);
        let lifetime = expiry.duration_since(start).unwrap_or_default();
        let fraction = self.policy.renew_fraction.clamp(0.0, 0.5);
        let margin = lifetime
            .mul_f64(fraction)
            .max(self.policy.min_margin)
            .min(lifetime / 2);
        let renew_at = (expiry - margin).max(start + self.policy.min_interval);
        match renew_at.duration_since(now) {
            Ok(wait) if !wait.is_zero() => Verdict::Keep {
                recheck_in: Some(wait),
            },
            _ => Verdict::Rotate(Reason::ExpiresSoon {
                remaining: expiry.duration_since(now).unwrap_or_default(),
            }),
        }
    }
}

/// An RFC 3339 time as Go sends it; `None` for empty, unparsable or
/// pre-1970 values (Go's zero time means "never").
pub fn parse_time(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    let nanos = u64::try_from(parsed.unix_timestamp_nanos()).ok()?;
    (nanos > 0).then(|| UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// `at` in the RFC 3339 form Go parses, whole seconds, UTC.
pub fn format_time(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| super::tailcfg::ZERO_TIME.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "nodekey:aa";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn state(expired: bool, key_expiry: &str) -> KeyState<'_> {
        KeyState {
            key: KEY,
            expired,
            key_expiry,
        }
    }

    fn policy(fraction: f64) -> RotationPolicy {
        RotationPolicy {
            renew_fraction: fraction,
            min_margin: Duration::from_secs(10),
            min_interval: Duration::from_secs(5),
            requested_lifetime: None,
        }
    }

    #[test]
    fn times_parse_like_go() {
        assert_eq!(parse_time("1970-01-01T00:02:03Z"), Some(at(123)));
        assert_eq!(
            parse_time("2026-11-30T02:00:52.5+01:00"),
            Some(at(1_796_004_052) + Duration::from_millis(500) - Duration::from_secs(3600))
        );
        assert_eq!(parse_time("0001-01-01T00:00:00Z"), None, "Go's zero time");
        assert_eq!(parse_time(""), None);
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(format_time(at(123)), "1970-01-01T00:02:03Z");
        assert_eq!(
            parse_time(&format_time(at(1_796_004_052))),
            Some(at(1_796_004_052))
        );
    }

    #[test]
    fn keys_without_expiry_are_kept() {
        let r = Rotator::new(policy(0.1));
        for expiry in ["", "0001-01-01T00:00:00Z"] {
            assert_eq!(
                r.assess(&state(false, expiry), KEY, at(1000)),
                Verdict::Keep { recheck_in: None }
            );
        }
    }

    #[test]
    fn expired_keys_rotate_at_once() {
        let r = Rotator::new(policy(0.1));
        assert_eq!(
            r.assess(&state(true, ""), KEY, at(1000)),
            Verdict::Rotate(Reason::Expired),
            "the Expired flag alone"
        );
        assert_eq!(
            r.assess(&state(false, &format_time(at(999))), KEY, at(1000)),
            Verdict::Rotate(Reason::Expired),
            "KeyExpiry in the past"
        );
    }

    #[test]
    fn records_about_another_key_are_ignored() {
        let r = Rotator::new(policy(0.1));
        assert_eq!(
            r.assess(&state(true, ""), "nodekey:bb", at(1000)),
            Verdict::Keep { recheck_in: None }
        );
    }

    #[test]
    fn renewal_starts_when_the_fraction_is_left() {
        let mut r = Rotator::new(policy(0.25));
        r.registered(at(1000));
        let expiry = format_time(at(1400)); // 400 s lifetime, renew with 100 s left
        assert_eq!(
            r.assess(&state(false, &expiry), KEY, at(1000)),
            Verdict::Keep {
                recheck_in: Some(Duration::from_secs(300))
            }
        );
        assert_eq!(
            r.assess(&state(false, &expiry), KEY, at(1299)),
            Verdict::Keep {
                recheck_in: Some(Duration::from_secs(1))
            }
        );
        assert_eq!(
            r.assess(&state(false, &expiry), KEY, at(1300)),
            Verdict::Rotate(Reason::ExpiresSoon {
                remaining: Duration::from_secs(100)
            })
        );
    }

    #[test]
    fn the_margin_has_a_floor_but_never_eats_more_than_half_the_life() {
        let mut r = Rotator::new(policy(0.01));
        r.registered(at(0));
        // 1 % of 100 s is 1 s; the 10 s floor applies.
        let verdict = r.assess(&state(false, &format_time(at(100))), KEY, at(0));
        assert_eq!(
            verdict,
            Verdict::Keep {
                recheck_in: Some(Duration::from_secs(90))
            }
        );
        // A 12 s lifetime: the 10 s floor is capped at 6 s.
        let verdict = r.assess(&state(false, &format_time(at(12))), KEY, at(0));
        assert_eq!(
            verdict,
            Verdict::Keep {
                recheck_in: Some(Duration::from_secs(6))
            }
        );
        // Fractions above one half are clamped.
        let mut r = Rotator::new(policy(0.9));
        r.registered(at(0));
        let verdict = r.assess(&state(false, &format_time(at(1000))), KEY, at(0));
        assert_eq!(
            verdict,
            Verdict::Keep {
                recheck_in: Some(Duration::from_secs(500))
            }
        );
    }

    #[test]
    fn tiny_lifetimes_do_not_rotate_in_a_hot_loop() {
        let mut r = Rotator::new(policy(0.5));
        r.registered(at(100));
        // A 2 s lifetime: ahead-of-time renewal waits for the 5 s interval,
        // which is past the expiry, so the key is renewed when it expires.
        let expiry = format_time(at(102));
        assert_eq!(
            r.assess(&state(false, &expiry), KEY, at(100)),
            Verdict::Keep {
                recheck_in: Some(Duration::from_secs(5))
            }
        );
        assert_eq!(
            r.assess(&state(false, &expiry), KEY, at(102)),
            Verdict::Rotate(Reason::Expired)
        );
    }

    #[test]
    fn a_server_that_keeps_saying_expired_is_not_looped_on() {
        let mut r = Rotator::new(policy(0.1));
        let expired = state(true, "");
        assert_eq!(
            r.assess(&expired, KEY, at(10)),
            Verdict::Rotate(Reason::Expired)
        );
        r.rotating(expired.expired, expired.key_expiry);
        r.registered(at(11));
        assert!(matches!(
            r.assess(&expired, KEY, at(12)),
            Verdict::Stuck { .. }
        ));
        // A different expiry is a new event and rotates again.
        let later = format_time(at(11));
        assert_eq!(
            r.assess(&state(false, &later), KEY, at(12)),
            Verdict::Rotate(Reason::Expired)
        );
    }

    #[test]
    fn requested_expiry_follows_the_policy() {
        let mut p = policy(0.1);
        assert_eq!(Rotator::new(p).requested_expiry(at(5)), None);
        p.requested_lifetime = Some(Duration::from_secs(60));
        assert_eq!(Rotator::new(p).requested_expiry(at(5)), Some(at(65)));
    }
}
