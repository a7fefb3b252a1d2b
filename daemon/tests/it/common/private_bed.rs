//! A private test bed (own PostgreSQL, rscale and peer) for tests that
//! stop the control server or change tailnet-wide settings.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tailnet_testbed::Bed;

use super::process::{run, wait_until};

/// Brought down on drop.
pub struct PrivateBed {
    pub dir: tempfile::TempDir,
}

fn testbed_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/testbed.sh")
}

impl PrivateBed {
    pub fn up() -> Self {
        let bed = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        bed.run("up");
        bed
    }

    pub fn run(&self, command: &str) -> String {
        let out = run(Command::new(testbed_script())
            .arg(command)
            .env("TAILNET_TESTBED_DIR", self.dir.path()));
        assert!(
            out.status.success(),
            "testbed.sh {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join(name))
            .expect(name)
            .trim()
            .to_string()
    }

    /// Its environment, as `testbed.sh env` prints it.
    pub fn bed(&self) -> Bed {
        Bed::from_exports(&self.run("env"))
            .unwrap_or_else(|missing| panic!("private test bed: {missing}"))
    }

    pub fn stop_control_server(&self) {
        let pid = Pid::from_raw(self.read("rscale.pid").parse().expect("pid"));
        // Fails only when it has already stopped, which the wait below checks.
        kill(pid, Signal::SIGTERM).ok();
        wait_until(Duration::from_secs(10), "rscale to stop", || {
            kill(pid, None).is_err().then_some(())
        });
    }
}

impl Drop for PrivateBed {
    fn drop(&mut self) {
        // Cleanup: a bed that is already down needs nothing more.
        Command::new(testbed_script())
            .arg("down")
            .env("TAILNET_TESTBED_DIR", self.dir.path())
            .output()
            .ok();
    }
}
