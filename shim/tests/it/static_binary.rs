//! The shim as a node runs it: the static build from `scripts/build-shim.sh`
//! in an empty root (a directory holding only the binary, entered with
//! `chroot`), with no dynamic loader, no libc and no daemon socket.
//!
//! Needs root and the static binary (`TAILNET_CNI_STATIC_SHIM`, or
//! `<target dir>/static/tailnet-cni`). Without them the tests skip, saying
//! why; under `CI=true` or `TAILNET_TEST_REQUIRE=1` they fail instead.

use std::collections::HashMap;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::common::stdout_json;
use serde_json::json;
use tailnet_cni::client::CONNECT_TIMEOUT;
use tailnet_cni::error::TRY_AGAIN_LATER;
use tailnet_cni::CniVersion;
use tailnet_testbed::{require, Missing, Needs};

/// Overrides where the static shim is looked for.
const SHIM_VAR: &str = "TAILNET_CNI_STATIC_SHIM";
/// Where `chroot(8)` lives on Debian and most other distributions.
const CHROOT_PATHS: [&str; 2] = ["/usr/sbin/chroot", "/usr/bin/chroot"];
/// The shim's default socket; nothing exists at this path in the empty root.
const DEFAULT_SOCKET: &str = "/run/tailnet-cni/daemon.sock";
/// ELF program header type of the dynamic loader's path.
const PT_INTERP: u32 = 3;

/// The static shim `scripts/build-shim.sh` installed.
fn static_shim() -> Result<PathBuf, Missing> {
    let path = match std::env::var_os(SHIM_VAR) {
        Some(path) => PathBuf::from(path),
        // CARGO_TARGET_TMPDIR is `<target dir>/tmp`.
        None => Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .ok_or_else(|| {
                Missing::new(
                    "CARGO_TARGET_TMPDIR has no parent",
                    "set TAILNET_CNI_STATIC_SHIM",
                )
            })?
            .join("static/tailnet-cni"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Missing::new(
            format!("no static shim at {}", path.display()),
            format!("build it with scripts/build-shim.sh, or set {SHIM_VAR}"),
        ))
    }
}

/// Root and `chroot(8)`, as needed to enter an empty root.
fn chroot_tool() -> Result<&'static Path, tailnet_testbed::Unmet> {
    let found = CHROOT_PATHS
        .into_iter()
        .map(Path::new)
        .find(|path| path.is_file())
        .ok_or_else(|| {
            Missing::new(
                format!("chroot(8) is not at {}", CHROOT_PATHS.join(" or ")),
                "install coreutils",
            )
        });
    Needs::new().root().with(found)
}

/// Held while a copy of the shim is open for writing and while a child is
/// forked: a child forked by another test while the copy is still open
/// would hold its descriptor and make exec fail with ETXTBSY.
static WRITE_OR_FORK: Mutex<()> = Mutex::new(());

fn write_or_fork() -> MutexGuard<'static, ()> {
    WRITE_OR_FORK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A directory holding only the shim, as `/tailnet-cni`.
struct EmptyRoot {
    dir: tempfile::TempDir,
    chroot: &'static Path,
}

impl EmptyRoot {
    fn new(shim: &Path, chroot: &'static Path) -> Self {
        // Under the target dir rather than /tmp, which may be mounted noexec.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let path = dir.path().join("tailnet-cni");
        // A hard link opens nothing for writing; copy across file systems.
        if std::fs::hard_link(shim, &path).is_err() {
            let _guard = write_or_fork();
            std::fs::copy(shim, &path).expect("copy the shim");
        }
        Self { dir, chroot }
    }

    /// Runs the shim inside the root with only `env` and `stdin`.
    fn run(&self, env: &HashMap<&str, &str>, stdin: &[u8]) -> Output {
        let mut input = tempfile::tempfile().expect("stdin file");
        input.write_all(stdin).expect("write stdin");
        input.rewind().expect("rewind stdin");
        let output = {
            let _guard = write_or_fork();
            Command::new(self.chroot)
                .arg(self.dir.path())
                .arg("/tailnet-cni")
                .env_clear()
                .envs(env)
                .stdin(input)
                .output()
        }
        .expect("run the shim through chroot");
        // chroot(8) exits 125 when it fails itself, 126 when the shim cannot
        // be executed and 127 when exec finds no such file, which is how a
        // missing dynamic loader shows; the shim only exits 0 or 1.
        assert!(
            !matches!(output.status.code(), Some(125..=127)),
            "chroot could not run the shim ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

/// What a runtime passes for a pod that did not opt in to the tailnet.
fn unannotated_pod_env(command: &'static str) -> HashMap<&'static str, &'static str> {
    HashMap::from([
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "5c2be1d9a0f3"),
        ("CNI_NETNS", "/var/run/netns/cni-5c2be1d9"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=plain;K8S_POD_UID=77aa",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ])
}

/// The conflist entry the installer writes, after flannel's result.
fn chained_config() -> Vec<u8> {
    let config = json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "tailnet-cni",
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "0a:58:0a:2a:00:07", "sandbox": "/var/run/netns/cni-5c2be1d9"}],
            "ips": [{"address": "10.42.0.7/24", "gateway": "10.42.0.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.42.0.1"}]
        }
    });
    serde_json::to_vec(&config).expect("json")
}

/// `N` bytes of `elf` at offset `at`.
fn field<const N: usize>(elf: &[u8], at: usize) -> Result<[u8; N], String> {
    at.checked_add(N)
        .and_then(|end| elf.get(at..end))
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| format!("truncated ELF: no {N} bytes at offset {at}"))
}

/// The `p_type` of each program header of a little-endian ELF64 file.
fn program_header_types(elf: &[u8]) -> Result<Vec<u32>, String> {
    if field::<4>(elf, 0)? != *b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if field::<2>(elf, 4)? != [2, 1] {
        return Err("not a little-endian ELF64 file".into());
    }
    let phoff = usize::try_from(u64::from_le_bytes(field(elf, 32)?))
        .map_err(|_| "program header offset out of range")?;
    let phentsize = usize::from(u16::from_le_bytes(field(elf, 54)?));
    let phnum = usize::from(u16::from_le_bytes(field(elf, 56)?));
    (0..phnum)
        .map(|index| {
            let at = index
                .checked_mul(phentsize)
                .and_then(|offset| offset.checked_add(phoff))
                .ok_or("program header offset out of range")?;
            field(elf, at).map(u32::from_le_bytes)
        })
        .collect()
}

#[test]
fn static_shim_has_no_program_interpreter() {
    let shim = require!(static_shim());
    let elf = std::fs::read(&shim).expect("read the static shim");
    let types = program_header_types(&elf).expect("parse the static shim's ELF headers");
    assert!(!types.is_empty(), "{}: no program headers", shim.display());
    assert!(
        !types.contains(&PT_INTERP),
        "{} asks for a dynamic loader (PT_INTERP): it would fail on a node without one",
        shim.display()
    );
}

#[test]
fn version_is_answered_in_an_empty_root() {
    let shim = require!(static_shim());
    let root = EmptyRoot::new(&shim, require!(chroot_tool()));
    let supported: Vec<&str> = CniVersion::SUPPORTED
        .iter()
        .map(|version| version.as_str())
        .collect();

    // (stdin, cniVersion expected back): without a config the latest, with
    // one the config's own.
    let cases: [(&[u8], &str); 2] = [
        (b"", CniVersion::LATEST.as_str()),
        (br#"{"cniVersion":"0.4.0"}"#, "0.4.0"),
    ];
    for (stdin, version) in cases {
        let output = root.run(&HashMap::from([("CNI_COMMAND", "VERSION")]), stdin);
        assert!(
            output.status.success(),
            "VERSION failed: {output:?} (a dynamically linked shim cannot start here)"
        );
        assert_eq!(
            stdout_json(&output),
            json!({"cniVersion": version, "supportedVersions": supported}),
            "stdin {:?}",
            String::from_utf8_lossy(stdin)
        );
        assert!(output.stderr.is_empty(), "stderr: {output:?}");
    }
}

/// Whether a pod joins the tailnet is the daemon's decision (annotations), so
/// with no daemon the shim cannot tell, and a pod that did not opt in fails
/// ADD like any other: at once, with 11 "try again later" naming the socket,
/// which the runtime retries.
#[test]
fn add_without_a_daemon_fails_at_once_with_try_again_later() {
    let shim = require!(static_shim());
    let root = EmptyRoot::new(&shim, require!(chroot_tool()));

    let started = Instant::now();
    let output = root.run(&unannotated_pod_env("ADD"), &chained_config());
    let elapsed = started.elapsed();

    assert!(!output.status.success(), "ADD succeeded: {output:?}");
    let error = stdout_json(&output);
    assert_eq!(error["code"], json!(TRY_AGAIN_LATER), "{error}");
    assert_eq!(error["cniVersion"], json!("1.0.0"), "{error}");
    let msg = error["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains(DEFAULT_SOCKET),
        "{msg:?} does not name the socket"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr:?}");
    assert!(stderr.contains("command=ADD"), "stderr: {stderr:?}");
    // An absent socket is known without waiting out the connect timeout.
    assert!(
        elapsed < CONNECT_TIMEOUT,
        "ADD took {elapsed:?}, not less than the {CONNECT_TIMEOUT:?} connect timeout"
    );
}

/// DEL must not block pod removal while the daemon is away: it succeeds,
/// prints nothing and warns on stderr.
#[test]
fn del_without_a_daemon_succeeds_in_an_empty_root() {
    let shim = require!(static_shim());
    let root = EmptyRoot::new(&shim, require!(chroot_tool()));

    let output = root.run(&unannotated_pod_env("DEL"), &chained_config());

    assert!(output.status.success(), "DEL failed: {output:?}");
    assert!(output.stdout.is_empty(), "stdout: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr:?}");
    assert!(
        stderr.contains("level=warn") && stderr.contains(DEFAULT_SOCKET),
        "stderr: {stderr:?}"
    );
}

/// The reader must find the interpreter of a dynamically linked binary, or
/// the check on the static shim could not fail.
#[test]
fn program_header_reader_sees_a_dynamic_loader() {
    let this_test = std::env::current_exe().expect("current_exe");
    let elf = std::fs::read(&this_test).expect("read the test binary");
    let types = program_header_types(&elf).expect("parse the test binary's ELF headers");
    let linked_dynamically = cfg!(target_env = "gnu") && !cfg!(target_feature = "crt-static");
    assert_eq!(
        types.contains(&PT_INTERP),
        linked_dynamically,
        "{}: program header types {types:?}",
        this_test.display()
    );
}

#[test]
fn program_header_reader_refuses_what_is_not_elf64() {
    assert!(program_header_types(b"#!/bin/sh\n").is_err());
    assert!(program_header_types(b"\x7fELF\x01\x01").is_err());
    assert!(
        program_header_types(b"\x7fELF\x02\x01").is_err(),
        "truncated"
    );
}
