//! Where one ADD's time goes: each step's duration, logged at debug level
//! when the pod is up (`TAILNET_CNID_LOG=tailnet_cnid::podmgr::manager=debug`).

use std::time::{Duration, Instant};

use tracing::debug;

/// The steps of an ADD, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Validation and selection (runtime annotations or the API).
    Select,
    /// The per-pod lock, clearing an earlier attempt, the Pending record.
    Record,
    /// Keys, auth key, registration and first netmap; or binding a pooled
    /// identity.
    Identity,
    /// Devices, addresses, routes, rules.
    Plumb,
    /// Engine attachment and the Running record.
    Attach,
    /// Waiting for the home relay connection.
    HomeRelay,
    /// Waiting for the data plane to take the first netmap.
    Netmap,
}

const STEPS: usize = 7;

/// Durations of the steps of one ADD.
pub(super) struct StepClock {
    last: Instant,
    took: [Duration; STEPS],
    /// The identity came from the pool.
    pub pooled: bool,
}

impl StepClock {
    pub fn start() -> Self {
        Self {
            last: Instant::now(),
            took: [Duration::ZERO; STEPS],
            pooled: false,
        }
    }

    /// Ends `step`: the time since the previous lap is its.
    pub fn lap(&mut self, step: Step) {
        let now = Instant::now();
        self.took[step as usize] += now - self.last;
        self.last = now;
    }

    /// How long `step` took.
    pub fn took(&self, step: Step) -> Duration {
        self.took[step as usize]
    }

    /// Logs every step's milliseconds.
    pub fn report(&self, hostname: &str) {
        let ms = |step| self.took(step).as_secs_f64() * 1e3;
        debug!(
            %hostname,
            pooled = self.pooled,
            select_ms = ms(Step::Select),
            record_ms = ms(Step::Record),
            identity_ms = ms(Step::Identity),
            plumb_ms = ms(Step::Plumb),
            attach_ms = ms(Step::Attach),
            home_relay_ms = ms(Step::HomeRelay),
            netmap_ms = ms(Step::Netmap),
            "ADD steps"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_lap_goes_to_its_step() {
        let mut clock = StepClock::start();
        std::thread::sleep(Duration::from_millis(5));
        clock.lap(Step::Plumb);
        clock.lap(Step::Attach);
        assert!(clock.took(Step::Plumb) >= Duration::from_millis(5));
        assert!(clock.took(Step::Attach) < clock.took(Step::Plumb));
        assert_eq!(clock.took(Step::Select), Duration::ZERO);
    }
}
