//! The task that runs one identity's session: connect, register, poll,
//! and after a failure wait out the backoff and start again, until a
//! logout or the handle goes away.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::super::client::{ClientError, ControlConn};
use super::super::identity::IdentityKeys;
use super::super::rotation::Rotator;
use super::super::tailcfg::LOGOUT_EXPIRY;
use super::backoff::Backoff;
use super::errors::{ControlError, SessionError};
use super::handle::{Command, Published};
use super::map_poll::Polled;
use super::mint::AuthKeySource;
use super::state::SessionState;
use super::{ControlClient, IdentityOptions};

/// One identity's session state, owned by its task.
pub(super) struct Session {
    pub(super) client: ControlClient,
    /// The keys in use, possibly with a rotation pending.
    pub(super) keys: IdentityKeys,
    pub(super) rotator: Rotator,
    pub(super) options: IdentityOptions,
    pub(super) auth: Arc<dyn AuthKeySource>,
    pub(super) published: Published,
    pub(super) backend_log_id: String,
}

/// How a session ended for good.
enum Exit {
    LoggedOut,
    /// The handle is gone: nobody is left to report to.
    Abandoned,
}

impl Session {
    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut backoff = Backoff::default();
        loop {
            let error = match self.connect_and_poll(&mut commands, &mut backoff).await {
                Ok(()) => {
                    // Fails only when nobody watches the state, which is fine.
                    self.published.state.send(SessionState::LoggedOut).ok();
                    return;
                }
                Err(error) => Arc::new(error),
            };
            let (delay, state) = backoff.after(error.clone());
            match &state {
                SessionState::Reconnecting { attempt, .. } => {
                    crate::metrics::count_control_reconnect();
                    warn!(hostname = %self.options.hostname, attempt, %error, "control session lost; reconnecting");
                }
                _ => {
                    warn!(hostname = %self.options.hostname, %error, "control server refused the identity")
                }
            }
            // Fails only when nobody watches the state, which is fine.
            self.published.state.send(state).ok();
            match self.wait_out(delay, &mut commands).await {
                None => {}
                Some(Exit::LoggedOut) => {
                    // Fails only when nobody watches the state, which is fine.
                    self.published.state.send(SessionState::LoggedOut).ok();
                    return;
                }
                Some(Exit::Abandoned) => return,
            }
        }
    }

    /// Sleeps `delay`, but answers a logout at once.
    async fn wait_out(
        &self,
        delay: std::time::Duration,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Option<Exit> {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return None,
                command = commands.recv() => match command {
                    None => return Some(Exit::Abandoned),
                    Some(Command::ReportChanged) => {}
                    Some(Command::Logout(reply)) => {
                        // The caller may have stopped waiting; the logout stands.
                        reply.send(self.logout_once().await).ok();
                        return Some(Exit::LoggedOut);
                    }
                },
            }
        }
    }

    /// One connection's life; `Ok` once the identity logged out.
    async fn connect_and_poll(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        backoff: &mut Backoff,
    ) -> Result<(), SessionError> {
        let mut conn = self.open().await?;
        loop {
            self.register(&mut conn).await?;
            match self.poll(&mut conn, commands, backoff).await? {
                Polled::LoggedOut => return Ok(()),
                // Same connection: it is bound to the machine key, which
                // a rotation keeps.
                Polled::Rotate(reason) => self.begin_rotation(reason)?,
            }
        }
    }

    pub(super) async fn open(&self) -> Result<ControlConn, ClientError> {
        let endpoint = &self.client.inner.endpoint;
        let server = self.client.server_key(false).await?;
        let (stream, early) = match endpoint.upgrade(&self.keys.machine, &server).await {
            Ok(ok) => ok,
            Err(e) => {
                // The server may have a new key: fetch it again next time.
                // The upgrade error is the one to report; a failed refetch is
                // tried again on the next attempt.
                if let Err(error) = self.client.server_key(true).await {
                    debug!(%error, "refetching the control server key failed");
                }
                return Err(e.into());
            }
        };
        if let Some(early) = early {
            debug!(bytes = early.len(), "control early payload");
        }
        ControlConn::handshake(endpoint, stream).await
    }

    /// Expires the node key at the server over a new connection.
    async fn logout_once(&self) -> Result<(), ControlError> {
        let mut conn = self.open().await?;
        conn.register(&self.register_request(None, LOGOUT_EXPIRY))
            .await?;
        Ok(())
    }
}
