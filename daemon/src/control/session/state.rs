//! Where a session stands, as the pod manager and `status` see it.

use std::sync::Arc;

use super::errors::SessionError;

#[derive(Debug, Clone)]
pub enum SessionState {
    Registering,
    Connected,
    /// The server could not be reached or dropped us: retried with backoff.
    Reconnecting {
        attempt: u32,
        error: Arc<SessionError>,
    },
    /// The identity cannot be registered as it stands (the server refused
    /// it, no auth key could be minted): retried slowly.
    NeedsAuth {
        error: Arc<SessionError>,
    },
    LoggedOut,
    Stopped,
}

impl SessionState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Registering => "registering",
            Self::Connected => "connected",
            Self::Reconnecting { .. } => "reconnecting",
            Self::NeedsAuth { .. } => "needs_auth",
            Self::LoggedOut => "logged_out",
            Self::Stopped => "stopped",
        }
    }
}

/// Equal states are the same step after the same failure: errors compare by
/// identity, since two failures that read alike need not be alike.
impl PartialEq for SessionState {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Self::Reconnecting { attempt, error },
                Self::Reconnecting {
                    attempt: other_attempt,
                    error: other_error,
                },
            ) => attempt == other_attempt && Arc::ptr_eq(error, other_error),
            (Self::NeedsAuth { error }, Self::NeedsAuth { error: other_error }) => {
                Arc::ptr_eq(error, other_error)
            }
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

impl Eq for SessionState {}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn states_with_errors_are_equal_only_for_the_same_failure() {
        let silent = Arc::new(SessionError::Silent(Duration::from_secs(120)));
        let again = Arc::new(SessionError::Silent(Duration::from_secs(120)));
        let reconnecting = |attempt, error: &Arc<SessionError>| SessionState::Reconnecting {
            attempt,
            error: error.clone(),
        };
        assert_eq!(reconnecting(1, &silent), reconnecting(1, &silent));
        assert_ne!(reconnecting(1, &silent), reconnecting(2, &silent));
        assert_ne!(reconnecting(1, &silent), reconnecting(1, &again));
        assert_ne!(
            reconnecting(1, &silent),
            SessionState::NeedsAuth {
                error: silent.clone()
            }
        );
        assert_eq!(SessionState::Connected, SessionState::Connected);
        assert_ne!(SessionState::Connected, SessionState::Registering);
    }
}
