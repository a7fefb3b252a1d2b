//! The map long poll: publish each netmap, keep the watchdog, send endpoint
//! updates, and stop for a logout or a due node-key rotation.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::super::client::ControlConn;
use super::super::netmap::NetMap;
use super::super::rotation::{Reason, Verdict};
use super::super::tailcfg::LOGOUT_EXPIRY;
use super::backoff::Backoff;
use super::errors::{ControlError, SessionError};
use super::handle::Command;
use super::state::SessionState;
use super::supervisor::Session;

/// The Go client gives up on a silent map poll after two minutes; servers
/// send keep-alives well within that.
const WATCHDOG: Duration = Duration::from_secs(120);

/// Why a map poll ended without an error.
pub(super) enum Polled {
    LoggedOut,
    Rotate(Reason),
}

impl Session {
    pub(super) async fn poll(
        &mut self,
        conn: &mut ControlConn,
        commands: &mut mpsc::Receiver<Command>,
        backoff: &mut Backoff,
    ) -> Result<Polled, SessionError> {
        let mut stream = conn.map_stream(&self.map_request(true)).await?;
        let mut netmap = NetMap::default();
        // Whether the tailnet has tailnet lock on, as last told.
        let mut locked = false;
        // When the key enters its renewal window, if it has an expiry.
        let mut renew_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            let renew_due = async {
                match renew_timer.as_mut() {
                    Some(timer) => timer.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            let mut check_key = false;
            tokio::select! {
                message = tokio::time::timeout(WATCHDOG, stream.next()) => {
                    let message = message.map_err(|_| SessionError::Silent(WATCHDOG))??;
                    if message.is_keep_alive_only() {
                        continue;
                    }
                    debug!(
                        peers = message.peers.as_ref().map(Vec::len),
                        changed = message.peerschanged.as_ref().map(Vec::len),
                        removed = message.peersremoved.as_ref().map(Vec::len),
                        patched = message.peerschangedpatch.as_ref().map(Vec::len),
                        online = message.onlinechange.as_ref().map(|o| o.len()),
                        node = message.node.is_some(),
                        "map message"
                    );
                    let lock_news = message.tkainfo.is_some();
                    if let Some(info) = &message.tkainfo {
                        locked = info.enabled();
                    }
                    let change = netmap.apply(message, &self.client.inner.interner);
                    if lock_news || change.self_node {
                        self.check_signed(&netmap, locked)?;
                    }
                    self.publish(&netmap, change.any(), backoff);
                    check_key = change.self_node;
                }
                () = renew_due => check_key = true,
                command = commands.recv() => match command {
                    None => return Err(SessionError::HandleDropped),
                    Some(Command::ReportChanged) => {
                        // The new set is recorded already and would not be
                        // reported again: reconnect, and the next poll
                        // carries it.
                        let update = self.map_request(false);
                        debug!(
                            hostname = %update.hostinfo.hostname,
                            endpoints = update.endpoints.len(),
                            preferred_derp = update.hostinfo.net_info.as_ref().map(|n| n.preferred_derp),
                            "reporting to control"
                        );
                        conn.update(&update)
                            .await
                            .map_err(SessionError::EndpointUpdate)?;
                    }
                    Some(Command::Logout(reply)) => {
                        let result = conn
                            .register(&self.register_request(None, LOGOUT_EXPIRY))
                            .await
                            .map(|_| ())
                            .map_err(ControlError::from);
                        // The caller may have stopped waiting; the logout stands.
                        reply.send(result).ok();
                        return Ok(Polled::LoggedOut);
                    }
                },
            }
            if !check_key {
                continue;
            }
            match self.assess(&netmap) {
                Verdict::Keep { recheck_in } => {
                    renew_timer = recheck_in.map(|wait| Box::pin(tokio::time::sleep(wait)));
                }
                Verdict::Rotate(reason) => {
                    if let Some(node) = &netmap.self_node {
                        self.rotator.rotating(node.expired, &node.keyexpiry);
                    }
                    return Ok(Polled::Rotate(reason));
                }
                Verdict::Stuck { key_expiry } => {
                    return Err(SessionError::KeyStillExpired { key_expiry })
                }
            }
        }
    }

    /// On a `locked` tailnet, a self node without a signature is locked out:
    /// peers drop its traffic. Before the first netmap that fails the
    /// registration for good; later (a signature revoked) it is reported.
    pub(super) fn check_signed(&self, netmap: &NetMap, locked: bool) -> Result<(), SessionError> {
        let unsigned = netmap
            .self_node
            .as_ref()
            .is_some_and(|node| !node.key_signed);
        if !(locked && unsigned) {
            return Ok(());
        }
        if self.published.netmap.borrow().is_none() {
            return Err(SessionError::LockedOut);
        }
        warn!(hostname = %self.options.hostname, "{}", SessionError::LockedOut);
        Ok(())
    }

    /// Hands `netmap` to the data plane when it `changed` (or is the first)
    /// and reports the session connected.
    fn publish(&self, netmap: &NetMap, changed: bool, backoff: &mut Backoff) {
        let first = self.published.netmap.borrow().is_none();
        if changed || first {
            self.published
                .netmap
                .send_replace(Some(Arc::new(netmap.clone())));
            if first || backoff.attempt() > 0 {
                info!(hostname = %self.options.hostname, peers = netmap.peers.len(), "netmap received");
            }
        }
        backoff.connected();
        if *self.published.state.borrow() != SessionState::Connected {
            // Fails only when nobody watches the state, which is fine.
            self.published.state.send(SessionState::Connected).ok();
        }
    }
}
