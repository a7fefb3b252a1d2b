//! The capability version the daemon advertises, and what it promises.
//!
//! A client's capability version tells the control server which protocol
//! features it understands; the server shapes what it sends to match. Go's
//! `tailcfg.CurrentCapabilityVersion` keeps the history. [`PROMISES`] lists
//! every version up to [`CAPABILITY_VERSION`] with how this daemon stands
//! toward it, so raising the version means reading what the new ones
//! promise and saying how they are kept (the tests refuse a gap).
//!
//! Most promises concern the control protocol (handled in `tailcfg`,
//! `netmap`, `session/`) or the data plane (`wg/`). Many concern features a
//! pod's identity does not have: Tailscale SSH, Taildrop, exit nodes, the
//! c2n (control-to-node) HTTP API, the LocalAPI. Control sends those only
//! to nodes that announce them in Hostinfo or that it reaches over c2n, and
//! the decoder ignores their fields, so keeping the promise is not using
//! them. The few promises not kept yet say so ([`Stance::NotKept`]) and
//! what happens instead, so nothing silently half-works.

mod history;

/// Capability version announced by the Noise prologue, `/key` and every
/// register and map request. 130 is the latest (tailscale 1.90, October
/// 2025); 113 is Headscale's minimum.
pub const CAPABILITY_VERSION: u16 = 130;

/// How the daemon stands toward one version's promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stance {
    /// Implemented; says where.
    Honoured(&'static str),
    /// About a feature a pod's identity does not have; its fields are
    /// ignored and control does not depend on them (why is said).
    NotApplicable(&'static str),
    /// Not kept yet: what a server relying on it meets instead.
    NotKept(&'static str),
}

/// One entry of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promise {
    pub version: u16,
    /// What a client of this version promises, in short.
    pub promise: &'static str,
    pub stance: Stance,
}

/// Versions absent from Go's history (never assigned).
pub const UNASSIGNED: &[u16] = &[35];
/// The first version in the history.
pub const FIRST: u16 = 3;

pub(super) const fn honoured(version: u16, promise: &'static str, how: &'static str) -> Promise {
    Promise {
        version,
        promise,
        stance: Stance::Honoured(how),
    }
}

pub(super) const fn not_kept(
    version: u16,
    promise: &'static str,
    instead: &'static str,
) -> Promise {
    Promise {
        version,
        promise,
        stance: Stance::NotKept(instead),
    }
}

pub(super) const fn not_applicable(
    version: u16,
    promise: &'static str,
    why: &'static str,
) -> Promise {
    Promise {
        version,
        promise,
        stance: Stance::NotApplicable(why),
    }
}

pub(super) const NO_SSH: &str = "pods run no Tailscale SSH server; SSHPolicy is ignored";
pub(super) const NO_C2N: &str =
    "the daemon serves no c2n API; control cannot reach it and gets no answer";
pub(super) const NO_LOCALAPI: &str =
    "concerns tailscaled's LocalAPI or CLI, which the daemon has none of";
pub(super) const NO_EXIT: &str = "pods neither use nor offer exit nodes or subnet routes";
pub(super) const NO_FILES: &str = "pods do not send or receive Taildrop files or Taildrive shares";
pub(super) const NO_DEBUG: &str = "MapResponse.Debug and debug node attributes are ignored";
pub(super) const CLIENT_FIX: &str =
    "a fix inside tailscaled; nothing for control to send differently";

/// Every version from [`FIRST`] to [`CAPABILITY_VERSION`], in order.
pub const PROMISES: &[Promise] = history::HISTORY;

/// The versions whose promises are not kept yet.
pub fn unkept() -> impl Iterator<Item = &'static Promise> {
    PROMISES
        .iter()
        .filter(|p| matches!(p.stance, Stance::NotKept(_)))
}

/// The entry for `version`, if it was ever assigned.
pub fn promise(version: u16) -> Option<&'static Promise> {
    PROMISES.iter().find(|p| p.version == version)
}

#[cfg(test)]
mod tests;
