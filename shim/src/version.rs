//! CNI spec versions the shim speaks, and what each one allows.

use std::fmt;

use crate::env::Command;

/// A CNI spec version this plugin supports. Ordered oldest first.
///
/// 0.1.0 and 0.2.0 are not supported: they predate `prevResult`, and a
/// chained plugin cannot work without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub const SUPPORTED: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn parse(text: &str) -> Option<Self> {
        Self::SUPPORTED
            .into_iter()
            .find(|version| version.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Results before 1.0.0 tag every IP with `"version": "4"|"6"`.
    pub fn ips_carry_version(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// `interfaces[].mtu` exists from 1.1.0 on.
    pub fn interfaces_carry_mtu(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// Whether the spec at this version defines `command`.
    pub fn allows(self, command: Command) -> bool {
        match command {
            Command::Add | Command::Del | Command::Version => true,
            Command::Check => self >= CniVersion::V0_4_0,
            Command::Status | Command::Gc => self >= CniVersion::V1_1_0,
        }
    }

    /// The supported versions, comma separated, for error messages.
    pub fn supported_list() -> String {
        Self::SUPPORTED
            .iter()
            .map(|version| version.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly_the_supported_versions() {
        for version in CniVersion::SUPPORTED {
            assert_eq!(CniVersion::parse(version.as_str()), Some(version));
        }
        for text in ["0.1.0", "0.2.0", "1.2.0", "1.1", "", " 1.1.0"] {
            assert_eq!(CniVersion::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn commands_follow_the_spec_version() {
        assert!(!CniVersion::V0_3_1.allows(Command::Check));
        assert!(CniVersion::V0_4_0.allows(Command::Check));
        assert!(!CniVersion::V1_0_0.allows(Command::Status));
        assert!(!CniVersion::V1_0_0.allows(Command::Gc));
        assert!(CniVersion::V1_1_0.allows(Command::Gc));
        assert!(CniVersion::V0_3_0.allows(Command::Del));
    }

    #[test]
    fn result_shape_changes_at_the_right_versions() {
        assert!(CniVersion::V0_4_0.ips_carry_version());
        assert!(!CniVersion::V1_0_0.ips_carry_version());
        assert!(!CniVersion::V1_0_0.interfaces_carry_mtu());
        assert!(CniVersion::V1_1_0.interfaces_carry_mtu());
    }
}
