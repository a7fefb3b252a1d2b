//! Replacing the node key, two-phase: the new key is saved before any
//! server sees it and the old one dropped only once the server accepted the
//! new one. When to replace it is [`rotation`](super::super::rotation)'s
//! decision.

use std::time::SystemTime;

use tracing::{info, warn};

use super::super::netmap::NetMap;
use super::super::rotation::{self, KeyState, Reason, Verdict};
use super::super::tailcfg::ZERO_TIME;
use super::errors::SessionError;
use super::supervisor::Session;

impl Session {
    /// `RegisterRequest.Expiry` for a normal registration.
    pub(super) fn expiry(&self) -> String {
        match self.rotator.requested_expiry(SystemTime::now()) {
            Some(at) => rotation::format_time(at),
            None => ZERO_TIME.to_string(),
        }
    }

    /// What the rotation policy says about the self node of `netmap`.
    pub(super) fn assess(&self, netmap: &NetMap) -> Verdict {
        match &netmap.self_node {
            Some(node) => self.rotator.assess(
                &KeyState {
                    key: &node.key,
                    expired: node.expired,
                    key_expiry: &node.keyexpiry,
                },
                &self.keys.node_public().to_string(),
                SystemTime::now(),
            ),
            None => Verdict::Keep { recheck_in: None },
        }
    }

    /// Phase one: the new key is on disk before any server sees it.
    pub(super) fn begin_rotation(&mut self, reason: Reason) -> Result<(), SessionError> {
        let Some(rotated) = self.keys.begin_rotation() else {
            return Err(SessionError::RotationUnconfirmed { reason });
        };
        if let Some(store) = &self.options.key_store {
            store.save(&rotated).map_err(SessionError::SaveRotatedKey)?;
        }
        info!(
            hostname = %self.options.hostname,
            %reason,
            old = ?self.keys.node_public(),
            new = ?rotated.node_public(),
            "rotating the node key"
        );
        self.keys = rotated;
        Ok(())
    }

    /// Phase two: the server accepted `self.keys.node`; forget the old key
    /// and hand the new one to the data plane.
    pub(super) fn confirm_keys(&mut self) {
        self.rotator.registered(SystemTime::now());
        if self.keys.finish_rotation() {
            info!(hostname = %self.options.hostname, node = ?self.keys.node_public(), "node key rotated");
            if let Some(store) = &self.options.key_store {
                // Not fatal: a file that still names the old key makes the
                // next start send it as OldNodeKey, which servers accept.
                if let Err(error) = store.save(&self.keys) {
                    warn!(hostname = %self.options.hostname, %error, "could not drop the old node key from disk");
                }
            }
        }
        let stale = {
            let published = self.published.keys.borrow();
            published.node_public() != self.keys.node_public() || published.old_node.is_some()
        };
        if stale {
            self.published.keys.send_replace(self.keys.clone());
        }
    }
}
