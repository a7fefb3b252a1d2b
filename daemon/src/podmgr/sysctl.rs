//! Per-interface and global IP sysctls of the calling thread's network
//! namespace.
//!
//! They are read through `/proc/sys`. A container that is not privileged
//! has that mounted read-only, so writes go through the host's
//! `/proc/sys/net` mounted read-write at [`HOST_PROC_SYS`]`/net` when
//! `/proc/sys` is read-only (`deploy/daemonset.yaml` does so). Either way
//! the kernel resolves `net/` for the network namespace of the thread that
//! opens the file, not of the mount, so a write reaches the namespace the
//! daemon is in; it needs `CAP_NET_ADMIN` there, nothing more.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::sys::statvfs::{statvfs, FsFlags};
use tracing::info;

/// Where the kernel shows the sysctls.
const PROC_SYS: &str = "/proc/sys";
/// Where the daemon's container may mount the host's `/proc/sys` (or just
/// its `net/`) read-write, for the writes its own read-only `/proc/sys`
/// refuses.
pub const HOST_PROC_SYS: &str = "/host/proc/sys";

#[derive(Debug, thiserror::Error)]
#[error("sysctl {path}: {source}")]
pub struct SysctlError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn path_of(key: &str) -> PathBuf {
    path_in(Path::new(PROC_SYS), key)
}

fn path_in(root: &Path, key: &str) -> PathBuf {
    root.join(key.replace('.', "/"))
}

/// The root writes go through, chosen once (mounts do not change under a
/// running daemon).
fn write_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = choose_write_root(Path::new(PROC_SYS), Path::new(HOST_PROC_SYS));
        if root != Path::new(PROC_SYS) {
            info!(root = %root.display(), "{PROC_SYS} is read-only; writing sysctls through the host's mount");
        }
        root
    })
}

/// `proc_sys` unless its `net/` is mounted read-only and `host_proc_sys`
/// has a writable `net/`. When neither is writable the writes fail on
/// `proc_sys`, naming the path the operator knows.
fn choose_write_root(proc_sys: &Path, host_proc_sys: &Path) -> PathBuf {
    let writable = |root: &Path| {
        statvfs(&root.join("net")).is_ok_and(|fs| !fs.flags().contains(FsFlags::ST_RDONLY))
    };
    if !writable(proc_sys) && writable(host_proc_sys) {
        host_proc_sys.to_path_buf()
    } else {
        proc_sys.to_path_buf()
    }
}

/// Reads a sysctl value (trimmed). `key` is dotted, e.g. `net.ipv4.ip_forward`;
/// interface names must not contain dots (ours never do).
pub fn read(key: &str) -> Result<String, SysctlError> {
    let path = path_of(key);
    fs::read_to_string(&path)
        .map(|v| v.trim().to_string())
        .map_err(|source| SysctlError { path, source })
}

/// Reads a sysctl that may legitimately be absent (a family the kernel was
/// built or booted without, a link that has no such setting): `None` then.
pub fn read_optional(key: &str) -> Result<Option<String>, SysctlError> {
    match read(key) {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Whether a sysctl or a directory of them (`net.ipv6`) exists.
pub fn exists(key: &str) -> bool {
    path_of(key).exists()
}

/// Writes `value` unless the sysctl already holds it. Returns whether it
/// changed anything.
pub fn ensure(key: &str, value: &str) -> Result<bool, SysctlError> {
    ensure_through(write_root(), key, value)
}

/// [`ensure`], writing below `root`.
fn ensure_through(root: &Path, key: &str, value: &str) -> Result<bool, SysctlError> {
    if read(key)? == value {
        return Ok(false);
    }
    let path = path_in(root, key);
    fs::write(&path, value).map_err(|source| SysctlError { path, source })?;
    Ok(true)
}

#[cfg(test)]
mod tests;
