//! What a test requires of its environment, checked all at once.

use std::fmt;
use std::path::{Path, PathBuf};

/// How to get the test bed's tools.
const INSTALL: &str = "`scripts/testbed.sh install` (as root) installs the test bed's tools";
/// How to run a test inside the test bed's network namespace.
const ISOLATE: &str =
    "run the tests through `scripts/isolated.sh scripts/test-in-netns.sh <cargo test arguments>` as root";

/// One thing a test needs that this environment lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// What is missing, e.g. "TAILNET_TEST_CONTROL_URL is not set".
    pub what: String,
    /// How to get it.
    pub remedy: String,
}

impl Missing {
    pub fn new(what: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            remedy: remedy.into(),
        }
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.remedy)
    }
}

/// Everything a test needs that this environment lacks (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet(pub Vec<Missing>);

impl From<Missing> for Unmet {
    fn from(missing: Missing) -> Self {
        Self(vec![missing])
    }
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, missing) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            missing.fmt(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for Unmet {}

/// A test's requirements, gathered so that one message names every one
/// that is unmet.
#[derive(Debug, Default)]
#[must_use = "finish with `met` or `with`"]
pub struct Needs {
    missing: Vec<Missing>,
}

impl Needs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Effective uid 0 (network namespaces, TUN devices, routing rules).
    pub fn root(mut self) -> Self {
        if !nix::unistd::geteuid().is_root() {
            self.missing
                .push(Missing::new("not running as root", ISOLATE));
        }
        self
    }

    /// Inside the private network and mount namespace `scripts/isolated.sh`
    /// makes, where a test may change links, rules and firewall state.
    pub fn isolated(mut self) -> Self {
        if std::env::var("TAILNET_ISOLATED").as_deref() != Ok("1") {
            self.missing.push(Missing::new(
                "not inside scripts/isolated.sh (TAILNET_ISOLATED is not 1)",
                ISOLATE,
            ));
        }
        self
    }

    /// Programs on `PATH` (or at the given absolute path).
    pub fn tools(mut self, names: &[&str]) -> Self {
        for name in names {
            if find_tool(name).is_none() {
                self.missing
                    .push(Missing::new(format!("`{name}` is not installed"), INSTALL));
            }
        }
        self
    }

    /// A file or device, with how to get it when it is absent.
    pub fn file(mut self, path: impl AsRef<Path>, remedy: &str) -> Self {
        let path = path.as_ref();
        if !path.exists() {
            self.missing.push(Missing::new(
                format!("{} is missing", path.display()),
                remedy,
            ));
        }
        self
    }

    /// A kernel TUN device node.
    pub fn tun(self) -> Self {
        self.file("/dev/net/tun", "load the tun module (`modprobe tun`)")
    }

    /// `Ok` when every requirement is met.
    pub fn met(self) -> Result<(), Unmet> {
        self.with(Ok(()))
    }

    /// `found` when it and every requirement are there.
    pub fn with<T>(mut self, found: Result<T, Missing>) -> Result<T, Unmet> {
        match found {
            Ok(found) if self.missing.is_empty() => Ok(found),
            Ok(_) => Err(Unmet(self.missing)),
            Err(missing) => {
                self.missing.push(missing);
                Err(Unmet(self.missing))
            }
        }
    }

    /// The shared test bed, when it and every requirement are there.
    pub fn bed(self) -> Result<crate::Bed, Unmet> {
        self.with(crate::Bed::from_env())
    }
}

/// Where `name` is: itself when it is a path, else the first `PATH` entry
/// holding it.
fn find_tool(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).exists().then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unmet_requirement_is_named_with_its_remedy() {
        let unmet = Needs::new()
            .tools(&["sh", "tailnet-no-such-tool"])
            .file("/tailnet-no-such-file", "make it")
            .met()
            .expect_err("two requirements are unmet");
        assert_eq!(unmet.0.len(), 2, "{unmet}");
        let text = unmet.to_string();
        assert!(
            text.contains("`tailnet-no-such-tool` is not installed: `scripts/testbed.sh install`"),
            "{text}"
        );
        assert!(
            text.contains("/tailnet-no-such-file is missing: make it"),
            "{text}"
        );
    }

    #[test]
    fn a_value_is_given_only_when_everything_is_met() {
        assert_eq!(Needs::new().tools(&["sh"]).with(Ok(3)), Ok(3));
        let missing = Missing::new("X is not set", "set X");
        assert_eq!(
            Needs::new().with::<()>(Err(missing.clone())),
            Err(Unmet(vec![missing]))
        );
        assert!(Needs::new()
            .tools(&["tailnet-no-such-tool"])
            .with(Ok(3))
            .is_err());
    }
}
