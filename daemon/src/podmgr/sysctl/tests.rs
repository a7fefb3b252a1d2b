use super::*;

#[test]
fn dotted_keys_map_to_proc_paths() {
    assert_eq!(
        path_of("net.ipv4.conf.tnt0123456789.rp_filter"),
        PathBuf::from("/proc/sys/net/ipv4/conf/tnt0123456789/rp_filter")
    );
}

#[test]
fn a_missing_key_is_absent_not_an_error_when_optional() {
    assert_eq!(
        read_optional("net.ipv4.conf.does-not-exist-xyz.rp_filter").unwrap(),
        None
    );
    assert!(!exists("net.ipv4.conf.does-not-exist-xyz"));
}

#[test]
fn reading_a_missing_key_reports_the_path() {
    let err = read("net.ipv4.conf.does-not-exist-xyz.rp_filter").unwrap_err();
    assert!(err
        .to_string()
        .contains("/proc/sys/net/ipv4/conf/does-not-exist-xyz/rp_filter"));
}

#[test]
fn a_writable_proc_sys_is_written_directly() {
    let dir = tempfile::tempdir().unwrap();
    let (proc_sys, host) = (dir.path().join("proc/sys"), dir.path().join("host"));
    for root in [&proc_sys, &host] {
        fs::create_dir_all(root.join("net")).unwrap();
    }
    assert_eq!(choose_write_root(&proc_sys, &host), proc_sys);
    // Without a usable host mount, the errors name the usual path.
    assert_eq!(
        choose_write_root(&proc_sys, &dir.path().join("absent")),
        proc_sys
    );
}

/// As in a container that is not privileged: `/proc/sys` read-only, the
/// host's `/proc/sys/net` mounted read-write elsewhere. Runs in a child
/// with its own mount and network namespaces, so neither the test's
/// mounts nor its sysctls are changed.
#[test]
fn sysctls_are_written_through_the_host_mount_when_proc_sys_is_read_only() {
    tailnet_testbed::require!(tailnet_testbed::Needs::new().root().met());
    // SAFETY: the child makes system calls and file operations on its own
    // memory only, then leaves with `_exit`, never returning into the test
    // harness; glibc's fork handlers leave its allocator usable in the child.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let code = match in_a_container_like_namespace() {
                Ok(()) => 0,
                Err(failure) => {
                    eprintln!("{failure}");
                    1
                }
            };
            // SAFETY: ends the child without running the parent's exit
            // handlers or destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(
                status,
                nix::sys::wait::WaitStatus::Exited(child, 0),
                "the child's checks failed (its stderr says which)"
            );
        }
    }
}

fn in_a_container_like_namespace() -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};

    let step = |what: &'static str| move |e: nix::Error| format!("{what}: {e}");
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET).map_err(step("unshare"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("making mounts private"))?;
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let host_proc_sys = dir.path().join("host/proc/sys");
    fs::create_dir_all(host_proc_sys.join("net")).map_err(|e| format!("mkdir: {e}"))?;

    // What the runtime does: the hostPath volume, then /proc/sys read-only.
    mount(
        Some("/proc/sys/net"),
        &host_proc_sys.join("net"),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(step("mounting the host's /proc/sys/net"))?;
    mount(
        Some(PROC_SYS),
        PROC_SYS,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(step("binding /proc/sys"))?;
    mount(
        None::<&str>,
        PROC_SYS,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(step("remounting /proc/sys read-only"))?;

    // A fresh namespace: forwarding off, lo without accept_local.
    let keys = ["net.ipv4.ip_forward", "net.ipv4.conf.lo.accept_local"];
    let values = || keys.map(|key| read(key).map_err(|e| e.to_string()));
    if values() != [Ok("0".to_string()), Ok("0".to_string())] {
        return Err(format!("fresh namespace reads {:?}", values()));
    }
    // Without the host mount, the write fails as it does in a container.
    let direct = ensure_through(Path::new(PROC_SYS), keys[0], "1").map(|_| ());
    if !matches!(&direct, Err(e) if e.source.raw_os_error() == Some(libc::EROFS)) {
        return Err(format!("a write to read-only /proc/sys gave {direct:?}"));
    }

    let root = choose_write_root(Path::new(PROC_SYS), &host_proc_sys);
    if root != host_proc_sys {
        return Err(format!("chose {} to write through", root.display()));
    }
    for key in keys {
        match ensure_through(&root, key, "1") {
            Ok(true) => {}
            other => return Err(format!("ensuring {key}=1 gave {other:?}")),
        }
    }
    // Read back through /proc/sys: the writes reached this namespace.
    if values() != [Ok("1".to_string()), Ok("1".to_string())] {
        return Err(format!("after the writes: {:?}", values()));
    }
    match ensure_through(&root, keys[0], "1") {
        Ok(false) => Ok(()),
        other => Err(format!("ensuring it again gave {other:?}")),
    }
}
