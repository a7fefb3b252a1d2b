//! Working inside a pod's network namespace without moving the daemon.
//!
//! A netlink socket belongs to the namespace it was created in, for its whole
//! life. So a short-lived thread enters the pod's namespace, opens the socket
//! and exits; the socket is then driven from the daemon's runtime like any
//! other. The daemon's own threads never change namespace.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

/// An open network namespace file (`/var/run/netns/x`, `/proc/<pid>/ns/net`).
/// Holding it open keeps the namespace alive while we work on it.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    file: File,
}

/// Why a path given as a pod's namespace (`CNI_NETNS`) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotAPodNetns {
    /// Not a namespace file at all (a FIFO, a regular file, a directory).
    #[error("not a namespace file")]
    NotNsfs,
    /// A namespace, but not a network one.
    #[error("a namespace, but not a network namespace")]
    OtherNamespace,
    /// The daemon's own network namespace: a `/proc/<pid>/ns/net` read in
    /// a PID namespace other than the host's names another process.
    #[error("the daemon's own network namespace, not a pod's")]
    DaemonsOwn,
}

impl Netns {
    /// Opens a pod's network namespace file and checks that it is one: a
    /// namespace file (nsfs) of a network namespace that is not the
    /// daemon's own. Opened non-blocking, so a FIFO cannot hold a thread.
    /// Refusals are `InvalidInput` errors carrying a [`NotAPodNetns`].
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        check_pod_netns(&file)
            .map_err(|refused| io::Error::new(io::ErrorKind::InvalidInput, refused))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `work` on a fresh thread that has entered this namespace, and
    /// waits for it. Blocking: call from a blocking context.
    pub fn run<T, F>(&self, work: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let ns = self.file.try_clone()?;
        std::thread::Builder::new()
            .name("netns-worker".into())
            .spawn(move || {
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                work()
            })?
            .join()
            .map_err(|_| io::Error::other("netns worker thread panicked"))?
    }

    /// Runs `work` on a fresh thread that has entered this namespace and
    /// awaits its answer without blocking the runtime. For short reads of
    /// namespace-scoped state (its `/proc/sys/net`, a new socket).
    pub async fn query<T, F>(&self, work: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let ns = self.file.try_clone()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("netns-query".into())
            .spawn(move || {
                let answer = setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)
                    .and_then(|()| work());
                // The caller may have stopped waiting; nothing is left to do.
                tx.send(answer).ok();
            })?;
        rx.await
            .map_err(|_| io::Error::other("netns worker thread exited without an answer"))?
    }

    /// Opens an rtnetlink connection bound to this namespace and spawns its
    /// driver on the current tokio runtime. The connection ends when the
    /// returned handle (and its clones) are dropped.
    pub async fn netlink(&self) -> io::Result<rtnetlink::Handle> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle, _) = self
            .query(move || {
                // The socket registers with the runtime's reactor; which
                // thread does that does not matter.
                let _entered = runtime.enter();
                rtnetlink::new_connection()
            })
            .await?;
        tokio::spawn(connection);
        Ok(handle)
    }
}

#[cfg(test)]
mod tests;

/// Whether a pod's namespace file still exists. Only "no such file"
/// (`ENOENT`) means the pod is gone; any other failure to look (`EACCES`, a
/// symlink loop, a mount in transition) is an error, so a caller never
/// releases a live pod on a hiccup.
pub fn still_exists(path: &Path) -> io::Result<bool> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(error) => Err(error),
    }
}

/// The checks of [`Netns::open`] on an open file.
fn check_pod_netns(file: &File) -> Result<(), NotAPodNetns> {
    match fstatfs(file) {
        Ok(stat) if stat.filesystem_type() == NSFS_MAGIC => {}
        _ => return Err(NotAPodNetns::NotNsfs),
    }
    // Entering it tells its kind without an ioctl (NS_GET_NSTYPE): EINVAL
    // for another kind. A short-lived thread does it so the caller never
    // moves; any other failure is left to the real entry later.
    let probe = file.try_clone().map_err(|_| NotAPodNetns::NotNsfs)?;
    let entered = std::thread::spawn(move || setns(probe.as_fd(), CloneFlags::CLONE_NEWNET))
        .join()
        .map_err(|_| NotAPodNetns::OtherNamespace)?;
    if entered == Err(nix::errno::Errno::EINVAL) {
        return Err(NotAPodNetns::OtherNamespace);
    }
    let ours = std::fs::metadata("/proc/thread-self/ns/net").map_err(|_| NotAPodNetns::NotNsfs)?;
    let theirs = file.metadata().map_err(|_| NotAPodNetns::NotNsfs)?;
    if (ours.dev(), ours.ino()) == (theirs.dev(), theirs.ino()) {
        return Err(NotAPodNetns::DaemonsOwn);
    }
    Ok(())
}
