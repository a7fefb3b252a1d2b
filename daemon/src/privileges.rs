//! Least privilege: the daemon keeps only the capabilities its work needs.
//!
//! Run before any other thread exists (capabilities are per thread; every
//! thread the async runtime starts later inherits these). What the daemon
//! does once started, and what it needs for it:
//!
//! - `CAP_NET_ADMIN`: every netlink change (links, addresses, routes, rules,
//!   neighbours), creating and re-attaching the persistent TUN devices
//!   (`TUNSETIFF`, `TUNSETPERSIST`) and the per-link sysctls.
//! - `CAP_SYS_ADMIN`: `setns` into a pod's network namespace to create its
//!   interface and read its state.
//! - `CAP_NET_BIND_SERVICE`: only when `health_addr` is a port below 1024.
//!
//! Everything else goes from every set (effective, permitted, inheritable,
//! bounding, ambient), and `no_new_privs` is set, so nothing the process
//! could ever execute regains a capability. Files the daemon opens (state,
//! keys, secrets, `/dev/net/tun`, netns bind mounts under `/run/netns`) are
//! root's own, so no `CAP_DAC_*` is needed; a `CNI_NETNS` under
//! `/proc/<pid>/ns` of a more privileged process would need
//! `CAP_SYS_PTRACE`, which is not kept.

use rustix::thread::{self, CapabilitySet, CapabilitySets};

use crate::config::Config;

/// Ports below this need `CAP_NET_BIND_SERVICE`.
const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// Why the capabilities could not be reduced.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(#[source] rustix::io::Errno),
    #[error("cannot clear the ambient capability set: {0}")]
    Ambient(#[source] rustix::io::Errno),
    #[error("cannot read the capability bounding set: {0}")]
    ReadBounding(#[source] rustix::io::Errno),
    #[error("cannot drop capability {capability} from the bounding set: {source}")]
    DropBounding {
        capability: u32,
        #[source]
        source: rustix::io::Errno,
    },
    #[error("cannot read the process's capabilities: {0}")]
    Read(#[source] rustix::io::Errno),
    #[error("cannot set the process's capabilities: {0}")]
    Set(#[source] rustix::io::Errno),
}

/// The capabilities the daemon needs for `config` (see the module docs).
pub fn needed(config: &Config) -> CapabilitySet {
    let mut needed = CapabilitySet::NET_ADMIN | CapabilitySet::SYS_ADMIN;
    if config
        .health_addr
        .is_some_and(|addr| addr.port() != 0 && addr.port() < FIRST_UNPRIVILEGED_PORT)
    {
        needed |= CapabilitySet::NET_BIND_SERVICE;
    }
    needed
}

/// What [`restrict_to`] left the process with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restricted {
    /// Effective and permitted now: what was wanted and held.
    pub kept: CapabilitySet,
    /// Wanted but not held at start (an unprivileged run).
    pub missing: CapabilitySet,
    /// Whether the bounding set could be reduced (it needs
    /// `CAP_SETPCAP`, which a process without it cannot drop from).
    pub bounding_reduced: bool,
}

/// Sets `no_new_privs` and reduces every capability set of the calling
/// thread to `wanted` (what of it is held). Call it while the process has
/// one thread.
pub fn restrict_to(wanted: CapabilitySet) -> Result<Restricted, PrivilegeError> {
    thread::set_no_new_privs(true).map_err(PrivilegeError::NoNewPrivs)?;
    thread::clear_ambient_capability_set().map_err(PrivilegeError::Ambient)?;
    let held = thread::capabilities(None).map_err(PrivilegeError::Read)?;
    let kept = wanted & held.permitted;
    // Dropping from the bounding set needs CAP_SETPCAP, so it comes before
    // the effective set loses it.
    let bounding_reduced = held.effective.contains(CapabilitySet::SETPCAP);
    if bounding_reduced {
        for capability in 0..u64::BITS {
            let single = CapabilitySet::from_bits_retain(1 << capability);
            match thread::capability_is_in_bounding_set(single) {
                Ok(true) if !kept.contains(single) => {
                    thread::remove_capability_from_bounding_set(single)
                        .map_err(|source| PrivilegeError::DropBounding { capability, source })?
                }
                Ok(_) => {}
                // Past the kernel's last capability.
                Err(rustix::io::Errno::INVAL) => break,
                Err(source) => return Err(PrivilegeError::ReadBounding(source)),
            }
        }
    }
    thread::set_capabilities(
        None,
        CapabilitySets {
            effective: kept,
            permitted: kept,
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(PrivilegeError::Set)?;
    Ok(Restricted {
        kept,
        missing: wanted - held.permitted,
        bounding_reduced,
    })
}

/// Names of the capabilities in `set`, for logs.
pub fn names(set: CapabilitySet) -> Vec<&'static str> {
    set.iter_names().map(|(name, _)| name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(health_addr: &str) -> Config {
        let text = format!(
            "cluster_name = \"c\"\ncontrol_url = \"http://127.0.0.1:1\"\nallow_insecure_http = true\n\
             health_addr = \"{health_addr}\"\n[auth]\nkind = \"static\"\nkey_file = \"/k\"\n"
        );
        let path = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(path.path(), text).expect("write config");
        Config::load(path.path()).expect("config")
    }

    #[test]
    fn the_daemon_needs_net_admin_and_sys_admin() {
        let needed = needed(&config("127.0.0.1:9464"));
        assert_eq!(needed, CapabilitySet::NET_ADMIN | CapabilitySet::SYS_ADMIN);
        assert_eq!(names(needed), vec!["NET_ADMIN", "SYS_ADMIN"]);
    }

    #[test]
    fn a_privileged_health_port_keeps_net_bind_service() {
        assert!(needed(&config("127.0.0.1:80")).contains(CapabilitySet::NET_BIND_SERVICE));
        assert!(!needed(&config("127.0.0.1:1024")).contains(CapabilitySet::NET_BIND_SERVICE));
    }
}
