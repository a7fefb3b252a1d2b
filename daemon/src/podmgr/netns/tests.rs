use std::io::ErrorKind;
use std::time::Duration;

use super::*;

fn refusal(path: &Path) -> NotAPodNetns {
    let error = Netns::open(path).expect_err("must be refused");
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
    *error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<NotAPodNetns>())
        .expect("a typed refusal")
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("netns");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR).unwrap();
    // Opened blocking, a FIFO without a writer would hang this thread.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(refusal(&fifo)));
    let refused = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("open returned");
    assert_eq!(refused, NotAPodNetns::NotNsfs);
}

#[test]
fn a_regular_file_is_refused() {
    let file = tempfile::NamedTempFile::new().unwrap();
    assert_eq!(refusal(file.path()), NotAPodNetns::NotNsfs);
}

#[test]
fn another_kind_of_namespace_is_refused() {
    assert_eq!(
        refusal(Path::new("/proc/self/ns/uts")),
        NotAPodNetns::OtherNamespace
    );
}

#[test]
fn the_daemons_own_namespace_is_refused() {
    assert_eq!(
        refusal(Path::new("/proc/thread-self/ns/net")),
        NotAPodNetns::DaemonsOwn
    );
}
