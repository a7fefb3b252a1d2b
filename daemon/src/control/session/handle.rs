//! The pod manager's side of a session: waiting for registration, the
//! netmap, state and confirmed keys as watch channels, endpoint reports,
//! renaming, logout and shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::super::identity::IdentityKeys;
use super::super::netmap::{NetMap, SelfNode};
use super::errors::{ControlError, Stall};
use super::state::SessionState;
use super::supervisor::Session;

/// How long a logout waits for the server's answer.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(15);

/// What the handle last reported, sent with every map request: the data
/// plane's endpoints and, once the identity is bound to a pod that was not
/// the one it registered for, the pod's hostname.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Reported {
    pub endpoints: Vec<SocketAddr>,
    pub preferred_derp: Option<u16>,
    /// Replaces the hostname the session was started with.
    pub hostname: Option<String>,
    /// A new hostname waits for the next endpoint report to go with it.
    pub hostname_unsent: bool,
}

impl Reported {
    /// Records a new hostname, to go with the next endpoint report.
    fn rename(&mut self, hostname: &str) {
        if self.hostname.as_deref() != Some(hostname) {
            self.hostname = Some(hostname.to_string());
            self.hostname_unsent = true;
        }
    }

    /// Records the data plane's endpoints; whether the server must hear of
    /// them (they changed, or a rename waits for them).
    fn report(&mut self, endpoints: Vec<SocketAddr>, preferred_derp: Option<u16>) -> bool {
        let unchanged = self.endpoints == endpoints && self.preferred_derp == preferred_derp;
        if unchanged && !self.hostname_unsent {
            return false;
        }
        self.endpoints = endpoints;
        self.preferred_derp = preferred_derp;
        // The caller wakes the session, whose next request reads it.
        self.hostname_unsent = false;
        true
    }
}

/// What the handle asks of its session.
pub(super) enum Command {
    /// [`Reported`] changed: send it to the server.
    ReportChanged,
    Logout(oneshot::Sender<Result<(), ControlError>>),
}

/// The session's side of the channels to its handle.
pub(super) struct Published {
    pub netmap: watch::Sender<Option<Arc<NetMap>>>,
    pub state: watch::Sender<SessionState>,
    /// The keys the server confirmed, for the data plane.
    pub keys: watch::Sender<IdentityKeys>,
    pub endpoints: Arc<Mutex<Reported>>,
}

impl Published {
    /// A snapshot of the endpoints to report.
    pub fn endpoints(&self) -> Reported {
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The handle's side of the channels, before its session runs.
pub(super) struct Pending {
    netmap: watch::Receiver<Option<Arc<NetMap>>>,
    state: watch::Receiver<SessionState>,
    keys: watch::Receiver<IdentityKeys>,
    commands: (mpsc::Sender<Command>, mpsc::Receiver<Command>),
    endpoints: Arc<Mutex<Reported>>,
}

impl Pending {
    /// Spawns `session` and hands back its handle.
    pub fn run(self, session: Session) -> IdentityHandle {
        let (commands, commands_rx) = self.commands;
        IdentityHandle {
            netmap: self.netmap,
            state: self.state,
            keys: self.keys,
            commands,
            endpoints: self.endpoints,
            task: tokio::spawn(session.run(commands_rx)),
        }
    }
}

/// The channels between a session starting with `keys` and its handle.
pub(super) fn channels(keys: IdentityKeys) -> (Published, Pending) {
    let (netmap_tx, netmap_rx) = watch::channel(None);
    let (state_tx, state_rx) = watch::channel(SessionState::Registering);
    let (keys_tx, keys_rx) = watch::channel(keys);
    let endpoints = Arc::new(Mutex::new(Reported::default()));
    let published = Published {
        netmap: netmap_tx,
        state: state_tx,
        keys: keys_tx,
        endpoints: endpoints.clone(),
    };
    let pending = Pending {
        netmap: netmap_rx,
        state: state_rx,
        keys: keys_rx,
        commands: mpsc::channel(8),
        endpoints,
    };
    (published, pending)
}

/// The daemon's handle on one identity's session.
pub struct IdentityHandle {
    netmap: watch::Receiver<Option<Arc<NetMap>>>,
    state: watch::Receiver<SessionState>,
    keys: watch::Receiver<IdentityKeys>,
    commands: mpsc::Sender<Command>,
    endpoints: Arc<Mutex<Reported>>,
    task: tokio::task::JoinHandle<()>,
}

impl IdentityHandle {
    /// Waits until the identity is registered and has its first netmap.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Arc<NetMap>, ControlError> {
        let mut netmap = self.netmap.clone();
        let mut state = self.state.clone();
        let wait = async {
            loop {
                if let Some(map) = netmap.borrow_and_update().clone() {
                    if map.self_node.is_some() {
                        return Ok(map);
                    }
                }
                match &*state.borrow_and_update() {
                    SessionState::NeedsAuth { error } => {
                        return Err(ControlError::Refused(error.clone()))
                    }
                    SessionState::Stopped | SessionState::LoggedOut => {
                        return Err(ControlError::Stopped)
                    }
                    _ => {}
                }
                tokio::select! {
                    changed = netmap.changed() => if changed.is_err() { return Err(ControlError::Stopped) },
                    changed = state.changed() => if changed.is_err() { return Err(ControlError::Stopped) },
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result,
            Err(_) => {
                let stall = match &*self.state.borrow() {
                    SessionState::Reconnecting { error, .. } => Stall::Reconnecting(error.clone()),
                    other => Stall::In(other.name()),
                };
                Err(ControlError::Timeout(timeout, stall))
            }
        }
    }

    pub fn netmap(&self) -> watch::Receiver<Option<Arc<NetMap>>> {
        self.netmap.clone()
    }

    pub fn state(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    pub fn state_name(&self) -> &'static str {
        self.state.borrow().name()
    }

    /// The identity's keys as the server last confirmed them: changes when
    /// the node key is rotated, so the data plane can follow.
    pub fn keys(&self) -> watch::Receiver<IdentityKeys> {
        self.keys.clone()
    }

    pub fn self_node(&self) -> Option<SelfNode> {
        let map = self.netmap.borrow();
        let node = map.as_ref()?.self_node.as_ref()?;
        Some(SelfNode::from_node(node))
    }

    /// Reports where the data plane can be reached; sent to the server now
    /// and with every later map request.
    pub fn set_endpoints(&self, endpoints: Vec<SocketAddr>, preferred_derp: Option<u16>) {
        self.reporter().report(endpoints, preferred_derp);
    }

    /// Renames the identity: its Hostinfo carries `hostname` from the next
    /// map request on. For an identity registered ahead of demand and then
    /// bound to a pod: the rename waits for the endpoint report the pod's
    /// attach makes, so that the server (which tells every peer of each
    /// change) hears of both in one request.
    pub fn set_hostname(&self, hostname: &str) {
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rename(hostname);
    }

    /// A cloneable way to report endpoints, for the task that watches the
    /// data plane.
    pub fn reporter(&self) -> EndpointReporter {
        EndpointReporter {
            endpoints: self.endpoints.clone(),
            commands: self.commands.clone(),
        }
    }

    /// Expires the node key at the server and ends the session.
    pub async fn logout(self) -> Result<(), ControlError> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Logout(tx)).await.is_err() {
            return Err(ControlError::Stopped);
        }
        let result = tokio::time::timeout(LOGOUT_TIMEOUT, rx)
            .await
            .map_err(|_| ControlError::LogoutTimeout(LOGOUT_TIMEOUT))?
            .unwrap_or(Err(ControlError::Stopped));
        self.task.abort();
        result
    }

    /// Ends the session and keeps the node registered (daemon shutdown).
    pub fn shutdown(self) {
        self.task.abort();
    }
}

/// Sends the data plane's endpoints to the identity's session.
#[derive(Clone)]
pub struct EndpointReporter {
    endpoints: Arc<Mutex<Reported>>,
    commands: mpsc::Sender<Command>,
}

impl EndpointReporter {
    /// The home relay last reported to control.
    pub fn reported_relay(&self) -> Option<u16> {
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .preferred_derp
    }

    pub fn report(&self, endpoints: Vec<SocketAddr>, preferred_derp: Option<u16>) {
        let changed = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .report(endpoints, preferred_derp);
        if !changed {
            return;
        }
        // A full queue already holds a wake-up, after which the session reads
        // the current endpoints; a closed one means the session has ended.
        self.commands.try_send(Command::ReportChanged).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn only_a_change_of_endpoints_or_relay_is_reported() {
        let mut reported = Reported::default();
        assert!(reported.report(vec![endpoint(1)], Some(900)));
        assert!(!reported.report(vec![endpoint(1)], Some(900)));
        assert!(reported.report(vec![endpoint(1)], Some(901)));
        assert!(reported.report(vec![endpoint(2)], Some(901)));
    }

    #[test]
    fn a_rename_goes_with_the_next_endpoint_report_even_an_unchanged_one() {
        let mut reported = Reported::default();
        assert!(reported.report(Vec::new(), Some(900)));
        reported.rename("web-0");
        assert_eq!(reported.hostname.as_deref(), Some("web-0"));
        assert!(
            reported.report(Vec::new(), Some(900)),
            "the pending rename is sent"
        );
        assert!(!reported.report(Vec::new(), Some(900)), "and only once");
        reported.rename("web-0");
        assert!(
            !reported.report(Vec::new(), Some(900)),
            "the same name again is no rename"
        );
    }
}
