//! The identifiers a runtime passes with every CNI call, checked the same
//! way by the shim (before anything is sent) and the daemon (which trusts no
//! caller): container ids become file names and interface names reach the
//! kernel, so both must be safe there.

/// Longest container id accepted; runtimes use 64 hex digits.
pub const MAX_CONTAINER_ID_LEN: usize = 128;
/// Longest interface name Linux accepts (`IFNAMSIZ` minus the NUL).
pub const MAX_INTERFACE_NAME_LEN: usize = 15;
/// Smallest MTU of a pod's tailnet interface: IPv6's minimum, and every pod
/// gets an IPv6 tailnet address.
pub const MIN_MTU: u32 = 1280;
/// Largest MTU of a pod's tailnet interface (a jumbo-frame underlay); the
/// engine sizes its per-pod buffers for it, so no packet a pod may send is
/// ever cut.
pub const MAX_MTU: u32 = 9000;

/// Why a container id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidContainerId {
    /// The id is empty.
    #[error("container id is empty")]
    Empty,
    /// The id is longer than [`MAX_CONTAINER_ID_LEN`] bytes; holds its length.
    #[error("container id is {0} bytes long, more than {MAX_CONTAINER_ID_LEN}")]
    TooLong(usize),
    /// The id starts with something other than an ASCII letter or digit.
    #[error("container id must start with a letter or digit, not {0:?}")]
    BadFirstCharacter(char),
    /// The id contains a character other than ASCII letters, digits, `_`, `.` and `-`.
    #[error("container id contains {0:?}; only letters, digits, '_', '.' and '-' are allowed")]
    BadCharacter(char),
}

/// Why an interface name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInterfaceName {
    /// The name is empty.
    #[error("interface name is empty")]
    Empty,
    /// The name is longer than [`MAX_INTERFACE_NAME_LEN`] bytes; holds its length.
    #[error("interface name is {0} bytes long, more than {MAX_INTERFACE_NAME_LEN}")]
    TooLong(usize),
    /// The name is `.` or `..`.
    #[error("interface name must not be '.' or '..'")]
    DotName,
    /// The name contains `/`, `:`, whitespace or NUL.
    #[error("interface name must not contain {0:?}")]
    BadCharacter(char),
}

/// An MTU outside [`MIN_MTU`]`..=`[`MAX_MTU`]; holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("MTU {0} is outside {MIN_MTU}..={MAX_MTU}")]
pub struct InvalidMtu(pub u64);

/// Checks an MTU against the one range every setting of it obeys: the
/// daemon's configuration, a network configuration's `mtu` and each ADD.
pub fn mtu(value: u64) -> Result<u32, InvalidMtu> {
    u32::try_from(value)
        .ok()
        .filter(|mtu| (MIN_MTU..=MAX_MTU).contains(mtu))
        .ok_or(InvalidMtu(value))
}

/// Checks a container id against the CNI rule: a letter or digit, then
/// letters, digits, `_`, `.` or `-`, at most [`MAX_CONTAINER_ID_LEN`] bytes.
/// An id that passes is a safe file name: no `/`, no NUL, never `.` or `..`.
pub fn container_id(id: &str) -> Result<(), InvalidContainerId> {
    let mut chars = id.chars();
    let first = chars.next().ok_or(InvalidContainerId::Empty)?;
    if id.len() > MAX_CONTAINER_ID_LEN {
        return Err(InvalidContainerId::TooLong(id.len()));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(InvalidContainerId::BadFirstCharacter(first));
    }
    match chars.find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        Some(bad) => Err(InvalidContainerId::BadCharacter(bad)),
        None => Ok(()),
    }
}

/// Checks an interface name the way the kernel's `dev_valid_name` does:
/// 1 to [`MAX_INTERFACE_NAME_LEN`] bytes, not `.` or `..`, and no `/`, `:`,
/// whitespace or NUL.
pub fn interface_name(name: &str) -> Result<(), InvalidInterfaceName> {
    if name.is_empty() {
        return Err(InvalidInterfaceName::Empty);
    }
    if name.len() > MAX_INTERFACE_NAME_LEN {
        return Err(InvalidInterfaceName::TooLong(name.len()));
    }
    if name == "." || name == ".." {
        return Err(InvalidInterfaceName::DotName);
    }
    match name
        .chars()
        .find(|&c| matches!(c, '/' | ':' | '\0') || c.is_whitespace())
    {
        Some(bad) => Err(InvalidInterfaceName::BadCharacter(bad)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
