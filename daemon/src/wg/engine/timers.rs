//! When a pod's task next wakes for its timers: one deadline per pod, the
//! earliest of those its parts report, instead of a fixed tick.
//!
//! An idle pod (no live WireGuard session, no traffic) has only slow
//! deadlines: its STUN refresh, the re-read of the host's interfaces and
//! what its relay links and packet filter need to expire. A pod with a
//! live session wakes every [`EngineConfig::timer_interval`] for
//! boringtun's timers and its path heartbeats, as before.
//!
//! [`EngineConfig::timer_interval`]: crate::wg::config::EngineConfig::timer_interval

use std::time::Duration;

use tokio::time::Instant;

use super::pod::PodState;

/// How long a pod's handshake limiter counts before it starts afresh
/// (boringtun's `RateLimiter` resets at most this often).
const LIMITER_WINDOW: Duration = Duration::from_secs(1);

/// The earliest of several optional deadlines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct NextWake(Option<Instant>);

impl NextWake {
    /// Take `deadline` into account, if there is one.
    pub(super) fn at(&mut self, deadline: Option<Instant>) -> &mut Self {
        if let Some(deadline) = deadline {
            self.0 = Some(self.0.map_or(deadline, |current| current.min(deadline)));
        }
        self
    }

    /// The earliest deadline; `None` when nothing is due ever.
    pub(super) fn get(self) -> Option<Instant> {
        self.0
    }
}

/// What the pod's timer pass remembers between wake-ups.
#[derive(Debug)]
pub(super) struct TimerState {
    /// When the last timer pass ran: periodic work is due one interval on.
    last_pass: Instant,
    /// Start of the handshake limiter's counting window, while handshakes
    /// may have been counted in it.
    limiter_window: Option<Instant>,
}

impl TimerState {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            last_pass: now,
            limiter_window: None,
        }
    }

    /// A WireGuard datagram may have been counted by the pod's handshake
    /// limiter: its count must be reset a window from now.
    pub(super) fn note_wireguard(&mut self, now: Instant) {
        self.limiter_window.get_or_insert(now);
    }

    /// A timer pass runs at `now`; returns whether the limiter's window
    /// is over (its count is then reset).
    pub(super) fn start_pass(&mut self, now: Instant) -> bool {
        self.last_pass = now;
        let window_over = self
            .limiter_window
            .is_some_and(|start| now.saturating_duration_since(start) >= LIMITER_WINDOW);
        if window_over {
            self.limiter_window = None;
        }
        window_over
    }

    /// Periodic work (session timers, batch release) is due one
    /// `interval` after the last pass.
    pub(super) fn periodic(&self, interval: Duration) -> Instant {
        self.last_pass + interval
    }

    /// When the limiter's window ends, if one is open.
    pub(super) fn limiter_deadline(&self) -> Option<Instant> {
        self.limiter_window.map(|start| start + LIMITER_WINDOW)
    }
}

impl PodState {
    /// When the pod's timer pass must next run; `None` when nothing is
    /// pending at all.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        let interval = self.engine.config.timer_interval;
        let periodic = self.timers.periodic(interval);
        let mut next = NextWake::default();
        next.at(self.peers.has_live_session().then_some(periodic))
            .at(self.timers.limiter_deadline())
            .at(self.peers.pending_initiations_deadline())
            .at(self.discovery.next_deadline())
            .at(self.stats_deadline())
            .at(self.filter.sweep_deadline())
            .at(self
                .relay
                .next_idle_close(self.engine.config.derp_idle_timeout));
        next.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_wake_is_the_earliest_deadline_given() {
        let t0 = Instant::now();
        let mut next = NextWake::default();
        assert_eq!(next.get(), None);
        next.at(None).at(Some(t0 + Duration::from_secs(20)));
        assert_eq!(next.get(), Some(t0 + Duration::from_secs(20)));
        next.at(Some(t0 + Duration::from_secs(3)))
            .at(None)
            .at(Some(t0 + Duration::from_secs(5)));
        assert_eq!(next.get(), Some(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn limiter_window_opens_on_traffic_and_closes_after_a_second() {
        let t0 = Instant::now();
        let mut timers = TimerState::new(t0);
        assert_eq!(timers.limiter_deadline(), None, "no traffic, no deadline");
        timers.note_wireguard(t0);
        // More datagrams do not move the window's end.
        timers.note_wireguard(t0 + Duration::from_millis(400));
        assert_eq!(timers.limiter_deadline(), Some(t0 + LIMITER_WINDOW));
        assert!(!timers.start_pass(t0 + Duration::from_millis(999)));
        assert!(timers.limiter_deadline().is_some());
        assert!(timers.start_pass(t0 + LIMITER_WINDOW));
        assert_eq!(timers.limiter_deadline(), None);
    }

    #[test]
    fn periodic_work_is_due_an_interval_after_the_last_pass() {
        let t0 = Instant::now();
        let mut timers = TimerState::new(t0);
        let interval = Duration::from_millis(250);
        assert_eq!(timers.periodic(interval), t0 + interval);
        timers.start_pass(t0 + Duration::from_secs(7));
        assert_eq!(
            timers.periodic(interval),
            t0 + Duration::from_secs(7) + interval
        );
    }
}
