//! How long each verb may take, defined once for both sides. The shim waits
//! [`Budget::shim`] for the daemon's answer (after connecting); the daemon
//! bounds its own work on the call to [`Budget::daemon`], which leaves
//! [`MARGIN`] inside the shim's wait for the answer's way back. Whatever the
//! daemon cannot finish in its budget is best effort (a logout, the node's
//! removal) and left to GC and reconcile.

use std::time::Duration;

/// One verb's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// How long the shim waits for the daemon's answer.
    pub shim: Duration,
    /// How long the daemon's work on the call may take.
    pub daemon: Duration,
}

/// What the daemon's budget leaves of the shim's wait.
pub const MARGIN: Duration = Duration::from_secs(2);

const fn budget(shim_secs: u64) -> Budget {
    Budget {
        shim: Duration::from_secs(shim_secs),
        daemon: Duration::from_secs(shim_secs - MARGIN.as_secs()),
    }
}

/// ADD: minting a key, registering and the first netmap included.
pub const ADD: Budget = budget(60);
/// DEL: detach, logout, teardown, the node's removal.
pub const DEL: Budget = budget(10);
/// CHECK.
pub const CHECK: Budget = budget(10);
/// GC.
pub const GC: Budget = budget(10);
/// STATUS.
pub const STATUS: Budget = budget(10);

/// The part of DEL's daemon budget a logout may take: the rest is for the
/// teardown DEL must finish and the node's removal.
pub const DEL_LOGOUT: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_work_fits_inside_the_shims_wait() {
        for verb in [ADD, DEL, CHECK, GC, STATUS] {
            assert_eq!(verb.daemon + MARGIN, verb.shim, "{verb:?}");
        }
        assert!(DEL_LOGOUT < DEL.daemon);
    }
}
