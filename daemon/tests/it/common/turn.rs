//! Turns in the shared network namespace.
//!
//! A daemon removes links no record of its own names, and some tests drop
//! traffic on `lo` for a while: tests that do either take turns through a
//! file lock. The lock is `flock`-based, so it holds between threads of one
//! test process (`cargo test`) as well as between processes (nextest).

use std::fs::{File, OpenOptions};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// How long a test waits for the others' turns: longer than the longest
/// of them (the bulk transfer and the churn) takes.
const TURN_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// This test's turn; the next one's begins when it is dropped.
pub struct Turn {
    _lock: Flock<File>,
}

pub fn take_turn() -> Turn {
    let path = std::env::temp_dir().join("tailnet-cni-e2e.lock");
    let deadline = Instant::now() + TURN_TIMEOUT;
    let mut file = open(&path);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Turn { _lock: lock },
            Err((back, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = back;
                std::thread::sleep(Duration::from_millis(250));
            }
            Err((_, Errno::EWOULDBLOCK)) => panic!(
                "timed out after {TURN_TIMEOUT:?} waiting for the other tests' turns ({} stays locked)",
                path.display()
            ),
            Err((_, e)) => panic!("flock {}: {e}", path.display()),
        }
    }
}

fn open(path: &std::path::Path) -> File {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("lock file {}: {e}", path.display()))
}
