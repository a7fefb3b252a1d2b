//! Child processes and waits, every one of them bounded.

use std::io::{Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a command may run unless its caller says otherwise.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `cmd` to completion, capturing its output; panics when it cannot
/// start or outlives [`COMMAND_TIMEOUT`].
pub fn run(cmd: &mut Command) -> Output {
    run_within(cmd, COMMAND_TIMEOUT)
}

/// [`run`], allowing `cmd` up to `timeout`.
pub fn run_within(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    finish_within(child, timeout, &format!("{cmd:?}"))
}

/// Runs `cmd` with `input` on its stdin, capturing its output.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).expect("write stdin");
    }
    finish_within(child, COMMAND_TIMEOUT, &format!("{cmd:?}"))
}

/// [`run`], panicking with the command's output unless it succeeded;
/// returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let output = run(cmd);
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits for `child` to exit and collects what it printed; kills it and
/// panics, naming `what`, after `timeout`.
fn finish_within(mut child: Child, timeout: Duration, what: &str) -> Output {
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                // A child that exited meanwhile needs nothing more; the panic reports the timeout.
                child.kill().ok();
                child.wait().ok();
                panic!("timed out after {timeout:?} waiting for {what} to exit");
            }
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            // Whatever was read before a failure is still worth showing.
            pipe.read_to_end(&mut bytes).ok();
        }
        bytes
    })
}

/// Polls `probe` every 200 ms until it gives a value; panics naming
/// `what` after `timeout`.
#[track_caller]
pub fn wait_until<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A short random suffix, so names of one run never meet those of an
/// earlier run against the same control server.
pub fn run_tag() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}
