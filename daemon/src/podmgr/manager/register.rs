//! Waiting for a new identity's registration: when a control server that
//! cannot be reached is "try again later" rather than a failure.

use std::time::{Duration, Instant};

use tailnet_cni_proto::cni_code;

use super::seams::PodSession;
use crate::control::SessionState;
use crate::rpc::CniError;

/// How long an ADD waits for the control server to register the pod and
/// send its first netmap.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(45);

/// How long an ADD keeps trying a control server it cannot reach before it
/// answers "try again later" (CNI code 11): the runtime retries the pod,
/// which is cheaper than holding its sandbox for the full registration
/// timeout.
const UNREACHABLE_GRACE: Duration = Duration::from_secs(10);

/// Waits for a new identity's registration and first netmap. A control
/// server that cannot be reached for [`UNREACHABLE_GRACE`] is "try again
/// later" (code 11), as is running out of time while still reconnecting; a
/// server that answers and refuses is a control failure.
pub(super) async fn wait_registered(
    session: &impl PodSession,
    hostname: &str,
) -> Result<(), CniError> {
    let unreachable = |error: &dyn std::fmt::Display| {
        CniError::new(
            cni_code::TRY_AGAIN_LATER,
            format!("control server unreachable while registering {hostname}: {error}"),
        )
    };
    let started = Instant::now();
    let watch_unreachable = async {
        let mut state = session.state();
        loop {
            if let SessionState::Reconnecting { error, .. } = &*state.borrow_and_update() {
                let waited = started.elapsed();
                if waited >= UNREACHABLE_GRACE {
                    return unreachable(error);
                }
            }
            // Wake on a state change, or when the grace period may be over.
            if let Ok(Err(_)) =
                tokio::time::timeout(Duration::from_millis(500), state.changed()).await
            {
                // The session is gone; wait_ready reports that.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    tokio::select! {
        ready = session.wait_ready(REGISTER_TIMEOUT) => match ready {
            Ok(()) => Ok(()),
            Err(e) => {
                if e.is_temporary() {
                    Err(unreachable(&e))
                } else if e.is_tailnet_lock() {
                    // The auth key configured does not fit the tailnet.
                    Err(CniError::new(
                        cni_code::INVALID_CONFIG,
                        format!("registering {hostname} with the control server: {e}"),
                    ))
                } else {
                    Err(CniError::new(
                        cni_code::CONTROL_FAILURE,
                        format!("registering {hostname} with the control server: {e}"),
                    ))
                }
            }
        },
        error = watch_unreachable => Err(error),
    }
}
