//! Whether a pod can have IPv6 at all. Homelab nodes often run with IPv6
//! switched off (`disable_ipv6`, or a kernel booted with `ipv6.disable=1`);
//! there every IPv6 write fails, so setup decides before the first one and
//! plumbs such pods IPv4-only.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::podmgr::sysctl::{self, SysctlError};

/// Where IPv6 was found missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    /// The node (the daemon's namespace), including the pod's host links.
    Node,
    /// The pod's network namespace, including its interface.
    Pod,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Place::Node => "on this node",
            Place::Pod => "in the pod's network namespace",
        })
    }
}

/// Why a pod's plumbing leaves IPv6 out although control assigned it an
/// IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Ipv6Unavailable {
    /// The kernel has no IPv6: `/proc/sys/net/ipv6` does not exist.
    #[error("the kernel has no IPv6 {place} (no /proc/sys/net/ipv6)")]
    NoStack { place: Place },
    /// A `disable_ipv6` sysctl switches it off.
    #[error("IPv6 is disabled {place} ({sysctl}={value})")]
    Disabled {
        place: Place,
        sysctl: String,
        value: String,
    },
}

/// The settings that decide whether a namespace can carry a pod's IPv6, as
/// read from its `/proc/sys/net`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Settings {
    /// `/proc/sys/net/ipv6` exists.
    pub stack: bool,
    /// Each `disable_ipv6` that matters with its value, `None` where the
    /// setting does not exist: `all`, `default` (what new links inherit),
    /// then the pod's links.
    pub disable_ipv6: Vec<(String, Option<String>)>,
}

impl Ipv6Settings {
    /// Reads the settings of the calling thread's network namespace for the
    /// given links.
    pub fn read(links: &[&str]) -> Result<Self, SysctlError> {
        if !sysctl::exists("net.ipv6") {
            return Ok(Self {
                stack: false,
                disable_ipv6: Vec::new(),
            });
        }
        let disable_ipv6 = ["all", "default"]
            .into_iter()
            .chain(links.iter().copied())
            .map(|scope| {
                let key = format!("net.ipv6.conf.{scope}.disable_ipv6");
                sysctl::read_optional(&key).map(|value| (key, value))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            stack: true,
            disable_ipv6,
        })
    }

    /// Why IPv6 cannot be used here, or `None` when it can. Any value but
    /// "0" disables, as the kernel reads it.
    pub fn verdict(&self, place: Place) -> Option<Ipv6Unavailable> {
        if !self.stack {
            return Some(Ipv6Unavailable::NoStack { place });
        }
        self.disable_ipv6.iter().find_map(|(sysctl, value)| {
            value
                .as_deref()
                .filter(|value| *value != "0")
                .map(|value| Ipv6Unavailable::Disabled {
                    place,
                    sysctl: sysctl.clone(),
                    value: value.to_string(),
                })
        })
    }
}
