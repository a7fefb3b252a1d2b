//! Registration: mint an auth key when one is needed, send the request, and
//! follow the server's answer as [`registration`](super::super::registration)
//! decides.

use tailnet_auth::Secret;
use tracing::debug;

use super::super::client::{ClientError, ControlConn};
use super::super::registration::{next_step, Answer, Step};
use super::super::rotation::Reason;
use super::super::tka::{AuthKey, NodeLock};
use super::errors::SessionError;
use super::supervisor::Session;

impl Session {
    /// Registers the current node key, replacing it if the server calls it
    /// expired; `Ok` once the server accepted a key.
    pub(super) async fn register(&mut self, conn: &mut ControlConn) -> Result<(), SessionError> {
        // A key minted for the next attempt, and the last key sent: once one
        // was sent, a denial is a refusal, not a request for a key.
        let mut fresh_key = None;
        let mut sent_key: Option<Secret> = None;
        if !self.options.registered {
            fresh_key = Some(self.mint().await?);
        }
        let mut regenerated = false;
        loop {
            let attached = fresh_key.take();
            if attached.is_some() {
                sent_key.clone_from(&attached);
            }
            let request = self.register_request(attached, &self.expiry());
            let answer = match conn.register(&request).await {
                Ok(response) => Answer::Response(response),
                Err(ClientError::Status {
                    status: status @ (401 | 403),
                    body,
                    ..
                }) => Answer::Denied { status, body },
                Err(e) => return Err(e.into()),
            };
            match next_step(answer, sent_key.as_ref(), regenerated) {
                Step::Accepted => {
                    self.options.registered = true;
                    self.confirm_keys();
                    return Ok(());
                }
                Step::NewNodeKey => {
                    self.begin_rotation(Reason::ServerSaysExpired)?;
                    regenerated = true;
                }
                Step::SendAuthKey => {
                    debug!(hostname = %self.options.hostname, "server wants an auth key");
                    fresh_key = Some(self.mint().await?);
                }
                Step::Refused(refusal) => return Err(SessionError::Refused(refusal)),
            }
        }
    }

    /// A fresh auth key, ready to send: a pre-signed one has signed the
    /// current node key first.
    async fn mint(&mut self) -> Result<Secret, SessionError> {
        let minted = self.auth.auth_key().await.map_err(SessionError::Mint)?;
        self.attach(&minted)
    }

    /// Splits `minted` at its tailnet-lock suffix. With one, the current
    /// node key is signed by the key's credential and the signature saved
    /// before any server sees it, so rotations can re-sign after a
    /// restart. Returns what goes in `Auth.AuthKey`.
    pub(super) fn attach(&mut self, minted: &Secret) -> Result<Secret, SessionError> {
        let AuthKey { key, credential } = AuthKey::parse(minted).map_err(SessionError::AuthKey)?;
        if let Some(credential) = credential {
            let mut signed = self.keys.clone();
            signed.lock = Some(NodeLock::sign_by_credential(
                &credential,
                &signed.node_public(),
            ));
            if let Some(store) = &self.options.key_store {
                store.save(&signed).map_err(SessionError::SaveSignature)?;
            }
            debug!(hostname = %self.options.hostname, "node key signed for tailnet lock");
            self.keys = signed;
        }
        Ok(key)
    }
}
