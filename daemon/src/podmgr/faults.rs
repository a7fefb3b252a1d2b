//! Crash injection for the crash-safety tests.
//!
//! With `TAILNET_CNID_CRASH_AT=<step>` in its environment, the daemon kills
//! itself with SIGKILL (no destructors, no flushing: what a power cut or an
//! OOM kill does) when an ADD or DEL reaches the named step. The tests run
//! every step and check that the next start repairs what was left. Without
//! the variable each step costs one comparison against `None`.

use std::sync::OnceLock;

/// The environment variable naming the step to die at.
pub const CRASH_AT_ENV: &str = "TAILNET_CNID_CRASH_AT";

/// Every step a crash can be injected at, in the order ADD and DEL reach
/// them.
pub const STEPS: &[&str] = &[
    // ADD
    "add:pending-saved",
    "add:keys-saved",
    "add:registered",
    "add:plumbed",
    "add:attached",
    "add:running-saved",
    // DEL
    "del:deleting-saved",
    "del:detached",
    "del:torn-down",
    "del:node-removed",
];

fn configured() -> Option<&'static str> {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    AT.get_or_init(|| {
        std::env::var(CRASH_AT_ENV)
            .ok()
            .filter(|step| !step.is_empty())
    })
    .as_deref()
}

/// Dies here if the environment names this step.
pub fn point(step: &'static str) {
    debug_assert!(STEPS.contains(&step), "unlisted crash point {step}");
    if configured() == Some(step) {
        tracing::error!(step, "{CRASH_AT_ENV}: killing the daemon here");
        // SAFETY: signalling our own pid; SIGKILL cannot be caught, so this
        // does not return.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_unique_and_named_by_command() {
        let mut seen = std::collections::HashSet::new();
        for step in STEPS {
            assert!(seen.insert(step), "{step} listed twice");
            assert!(
                step.starts_with("add:") || step.starts_with("del:"),
                "{step}"
            );
        }
    }
}
