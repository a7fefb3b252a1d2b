//! What goes wrong in a session, typed. Whether the runtime should try a pod
//! again later or someone has to act is told by variant, never by text.

use std::sync::Arc;
use std::time::Duration;

use super::super::client::ClientError;
use super::super::identity::KeyStoreError;
use super::super::registration::Refusal;
use super::super::rotation::Reason;
use super::super::tka::AuthKeyError;
use super::super::tls::TlsSetupError;
use super::mint::MintError;

/// Why a call on the control client or an identity's handle failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid control URL {url:?}: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("invalid control URL {url:?}: must be http:// or https:// with a host")]
    UnsupportedUrl { url: String },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("{0}")]
    Client(#[from] ClientError),
    /// The session gave up on the identity until something changes: the
    /// server refused it, no auth key could be minted, or the server keeps
    /// calling a fresh node key expired ([`SessionError::is_transient`] is
    /// false).
    #[error("{0}")]
    Refused(#[source] Arc<SessionError>),
    /// The wait ran out; the second field says where the session stood.
    #[error("timed out after {0:?}; last error: {1}")]
    Timeout(Duration, #[source] Stall),
    #[error("logout got no answer within {0:?}")]
    LogoutTimeout(Duration),
    #[error("session stopped")]
    Stopped,
}

impl ControlError {
    /// Whether the pod should be tried again later (CNI code 11) rather
    /// than failed: the server could not be reached, or kept dropping us,
    /// for the whole wait. Every other error needs someone to act.
    pub fn is_temporary(&self) -> bool {
        matches!(self, Self::Timeout(_, Stall::Reconnecting(_)))
    }

    /// Whether tailnet lock keeps the identity out: a pre-signed auth key
    /// that cannot be used, or a locked tailnet and an unsigned node key.
    /// Configuration to fix, never a reason to try again.
    pub fn is_tailnet_lock(&self) -> bool {
        matches!(self, Self::Refused(error) if error.is_tailnet_lock())
    }
}

/// Where a session stood when a wait for it ran out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Stall {
    /// Retrying after this failure.
    #[error("{0}")]
    Reconnecting(#[source] Arc<SessionError>),
    /// Still in this state (its name), with no failure to report.
    #[error("session {0}")]
    In(&'static str),
}

/// Why one connection's session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    // Transient: retried soon, with backoff.
    #[error("{0}")]
    Connection(#[from] ClientError),
    #[error("map poll silent for {} s", .0.as_secs())]
    Silent(Duration),
    #[error("endpoint update failed: {0}")]
    EndpointUpdate(#[source] ClientError),
    #[error("saving the rotated node key: {0}")]
    SaveRotatedKey(#[source] KeyStoreError),
    #[error("saving the node key's tailnet-lock signature: {0}")]
    SaveSignature(#[source] KeyStoreError),
    #[error("the session's handle was dropped")]
    HandleDropped,

    // The identity cannot register as it stands: retried slowly.
    #[error("control server refused registration: {0}")]
    Refused(#[source] Refusal),
    #[error("{0}")]
    Mint(#[source] MintError),
    #[error("{reason} while a key rotation is still unconfirmed")]
    RotationUnconfirmed { reason: Reason },
    #[error(
        "the control server still reports the node key expired (expiry {key_expiry:?}) right after it was replaced"
    )]
    KeyStillExpired { key_expiry: String },
    #[error("the pre-signed auth key cannot be used: {0}")]
    AuthKey(#[source] AuthKeyError),
    #[error(
        "the tailnet has tailnet lock enabled and this node key is not signed: \
         use a pre-signed auth key (`tailscale lock sign <auth key>`)"
    )]
    LockedOut,
}

impl SessionError {
    /// Whether reconnecting soon can help (network trouble, a server
    /// restart); otherwise the identity waits for someone to act.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connection(_)
            | Self::Silent(_)
            | Self::EndpointUpdate(_)
            | Self::SaveRotatedKey(_)
            | Self::SaveSignature(_)
            | Self::HandleDropped => true,
            // An auth API (or the cluster's minter) that cannot be reached is
            // retried like control; one that refused waits for someone to act.
            Self::Mint(error) => error.is_temporary(),
            Self::Refused(_)
            | Self::RotationUnconfirmed { .. }
            | Self::KeyStillExpired { .. }
            | Self::AuthKey(_)
            | Self::LockedOut => false,
        }
    }

    /// Whether tailnet lock is what stops the identity.
    pub fn is_tailnet_lock(&self) -> bool {
        matches!(self, Self::AuthKey(_) | Self::LockedOut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_wait_spent_reconnecting_is_temporary() {
        let unreachable = Arc::new(SessionError::Silent(Duration::from_secs(120)));
        assert!(unreachable.is_transient());
        let waited = Duration::from_secs(45);
        assert!(ControlError::Timeout(waited, Stall::Reconnecting(unreachable)).is_temporary());
        assert!(!ControlError::Timeout(waited, Stall::In("registering")).is_temporary());

        let refused = Arc::new(SessionError::Refused(Refusal::NotAuthorized));
        assert!(!refused.is_transient());
        let error = ControlError::Refused(refused);
        assert!(!error.is_temporary());
        assert_eq!(
            error.to_string(),
            "control server refused registration: machine not authorized"
        );
        assert!(!ControlError::Stopped.is_temporary());
        assert!(!ControlError::LogoutTimeout(waited).is_temporary());
    }

    #[test]
    fn tailnet_lock_refusals_are_permanent_and_told_apart_by_variant() {
        for error in [
            SessionError::LockedOut,
            SessionError::AuthKey(AuthKeyError::MissingSeparator),
        ] {
            assert!(!error.is_transient(), "{error}");
            let refused = ControlError::Refused(Arc::new(error));
            assert!(refused.is_tailnet_lock() && !refused.is_temporary());
        }
        let other = ControlError::Refused(Arc::new(SessionError::Refused(Refusal::NotAuthorized)));
        assert!(!other.is_tailnet_lock());
        let waited = Duration::from_secs(45);
        let stalled = ControlError::Timeout(
            waited,
            Stall::Reconnecting(Arc::new(SessionError::LockedOut)),
        );
        assert!(!stalled.is_tailnet_lock());
        assert!(SessionError::LockedOut
            .to_string()
            .contains("tailscale lock sign"));
    }

    #[test]
    fn a_failed_mint_is_not_transient_and_not_called_a_refusal() {
        let error = SessionError::Mint(MintError::new("rscale admin API unreachable"));
        assert!(!error.is_transient());
        let text = error.to_string();
        assert!(text.starts_with("minting an auth key: "), "{text}");
        assert!(!text.contains("refused"), "{text}");
    }

    #[test]
    fn an_unreachable_auth_api_is_transient_a_refusing_one_is_not() {
        let unreachable =
            SessionError::Mint(MintError::new(tailnet_auth::AuthError::Unreachable {
                backend: "minter",
                url: "http://127.0.0.1:1/v1/keys".to_owned(),
                reason: "connect failed".to_owned(),
            }));
        assert!(unreachable.is_transient());
        let refused = SessionError::Mint(MintError::new(tailnet_auth::AuthError::Unauthorized {
            backend: "minter",
            url: "http://127.0.0.1:1/v1/keys".to_owned(),
            status: 401,
        }));
        assert!(!refused.is_transient());
    }
}
