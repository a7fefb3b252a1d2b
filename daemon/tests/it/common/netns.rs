//! Named network namespaces and `ip` for tests that build pod-side plumbing
//! by hand.

use std::net::TcpListener;
use std::process::Command;

use super::process::run;

/// Runs `ip` with `args`; panics with its stderr when it fails.
pub fn ip(args: &[&str]) {
    let out = run(Command::new("ip").args(args));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace made with `ip netns add` (with `lo` up); deleted when the
/// test ends, pass or fail.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: String) -> Self {
        // A leftover from an earlier run may or may not exist.
        Command::new("ip")
            .args(["netns", "del", &name])
            .output()
            .ok();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }

    /// Run `f` on a thread inside this namespace; sockets and devices it
    /// creates stay in the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Cleanup: nothing is left to do if the namespace is already gone.
        Command::new("ip")
            .args(["netns", "del", &self.0])
            .output()
            .ok();
    }
}

/// Answers every connection on `listener` with the same small page, on a
/// thread of its own.
pub fn serve_hello(listener: TcpListener) {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut request = [0u8; 1024];
            // The request is not looked at, and a client that hung up fails its own checks.
            drop(conn.read(&mut request));
            let body = "hello from the pod\n";
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .ok();
        }
    });
}
