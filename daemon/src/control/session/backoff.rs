//! How long a session waits before it reconnects, and what it reports
//! meanwhile (sans-IO).

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::errors::SessionError;
use super::state::SessionState;

const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// Consecutive failed connections of one session.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// Failures since the session last received a map message.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A map message arrived: the connection works again.
    pub fn connected(&mut self) {
        self.attempt = 0;
    }

    /// After `error`: how long to wait and the state to report meanwhile.
    /// Transient failures back off exponentially; an identity the server
    /// will not take is retried at the cap.
    pub fn after(&mut self, error: Arc<SessionError>) -> (Duration, SessionState) {
        if !error.is_transient() {
            return (BACKOFF_CAP, SessionState::NeedsAuth { error });
        }
        self.attempt = self.attempt.saturating_add(1);
        (
            backoff(self.attempt),
            SessionState::Reconnecting {
                attempt: self.attempt,
                error,
            },
        )
    }
}

fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(10));
    let cap = exp.min(BACKOFF_CAP);
    // Full jitter: hundreds of identities reconnecting after a control
    // server restart must not arrive in lockstep.
    let millis = rand::thread_rng().gen_range(cap.as_millis() as u64 / 4..=cap.as_millis() as u64);
    Duration::from_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::registration::Refusal;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for attempt in 0..20 {
            let d = backoff(attempt);
            assert!(d <= BACKOFF_CAP);
        }
        assert!(backoff(1) <= Duration::from_secs(1));
        let late: Vec<Duration> = (0..20).map(|_| backoff(15)).collect();
        assert!(late.iter().all(|d| *d >= BACKOFF_CAP / 4));
        assert!(late.windows(2).any(|w| w[0] != w[1]), "no jitter");
    }

    #[test]
    fn transient_failures_count_attempts_and_refusals_wait_the_cap() {
        let mut backoff = Backoff::default();
        let silent = Arc::new(SessionError::Silent(Duration::from_secs(120)));
        for expected in 1..=3 {
            let (delay, state) = backoff.after(silent.clone());
            assert!(delay <= BACKOFF_CAP);
            assert!(
                matches!(state, SessionState::Reconnecting { attempt, .. } if attempt == expected),
                "{state:?}"
            );
        }
        let refused = Arc::new(SessionError::Refused(Refusal::NotAuthorized));
        let (delay, state) = backoff.after(refused);
        assert_eq!(delay, BACKOFF_CAP);
        assert!(matches!(state, SessionState::NeedsAuth { .. }), "{state:?}");
        assert_eq!(
            backoff.attempt(),
            3,
            "a refusal is not a connection attempt"
        );
        backoff.connected();
        assert_eq!(backoff.attempt(), 0);
    }
}
