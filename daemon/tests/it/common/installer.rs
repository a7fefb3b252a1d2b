//! The project's own installer (`tailnet-cnid install`) and the static shim
//! it installs, as a node gets them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tailnet_testbed::Missing;

use super::daemon::Daemon;
use super::process::run;

/// The static shim `scripts/build-shim.sh` builds (the one the DaemonSet
/// ships: nodes without glibc run it), `TAILNET_CNI_STATIC_SHIM` if set.
pub fn static_shim() -> Result<PathBuf, Missing> {
    let path = match std::env::var_os("TAILNET_CNI_STATIC_SHIM") {
        Some(path) => PathBuf::from(path),
        // CARGO_TARGET_TMPDIR is `<target dir>/tmp`.
        None => Path::new(env!("CARGO_TARGET_TMPDIR"))
            .with_file_name("static")
            .join("tailnet-cni"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Missing::new(
            format!("the static shim {} is missing", path.display()),
            "build it with `scripts/build-shim.sh` (`make test` does)",
        ))
    }
}

/// Runs `tailnet-cnid install` once (no `--watch`) with `shim`, for
/// `daemon`: its config gives the entry's `selection`, as the DaemonSet's
/// installer reads the daemon's config. Plus `args`.
pub fn install(shim: &Path, daemon: &Daemon, args: &[&std::ffi::OsStr]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_tailnet-cnid"))
        .arg("--config")
        .arg(&daemon.config)
        .arg("install")
        .arg("--shim")
        .arg(shim)
        .arg("--daemon-socket")
        .arg(&daemon.socket)
        .args(args))
}
