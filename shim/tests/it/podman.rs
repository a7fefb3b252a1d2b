//! The binary driven by a real CNI runtime: podman 4 with its CNI backend
//! chains `bridge` + `host-local` and then `tailnet-cni`, against the fake
//! daemon. Needs root, podman, the reference plugins in /usr/lib/cni and a
//! static busybox; skips, saying why, without them (fails under `CI=true` or
//! `TAILNET_TEST_REQUIRE=1`). Everything podman creates lives in throwaway
//! network and mount namespaces.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use tailnet_testbed::{require, Needs, Unmet};

use crate::common::*;

const PLUGIN_DIR: &str = "/usr/lib/cni";
const BUSYBOX: &str = "/usr/bin/busybox";

/// Root, podman with the reference CNI plugins, and a static busybox.
fn requirements() -> Result<(), Unmet> {
    let plugins =
        ["bridge", "host-local", "loopback"].map(|plugin| Path::new(PLUGIN_DIR).join(plugin));
    plugins
        .iter()
        .fold(
            Needs::new().root().tools(&["podman", "unshare", BUSYBOX]),
            |needs, plugin| {
                needs.file(
                    plugin,
                    "`scripts/testbed.sh install` installs containernetworking-plugins",
                )
            },
        )
        .met()
}

/// What one podman run showed.
struct PodmanRun {
    /// The result libcni cached for the attachment (what the runtime keeps).
    cached_result: Value,
    /// The container's address as `podman inspect` reports it.
    reported_address: String,
    calls: Vec<Call>,
}

/// Starts a container on a bridge + tailnet-cni network against a fake
/// daemon following `script`, reads what the runtime cached and reports,
/// and removes the container.
fn run_podman(script: Script) -> PodmanRun {
    let daemon = FakeDaemon::start(script);
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    for sub in [
        "bin",
        "net.d",
        "rootfs/bin",
        "varlib",
        "root",
        "runroot",
        "tmp",
        "static",
        "volumes",
    ] {
        fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        symlink(
            Path::new(PLUGIN_DIR).join(plugin),
            dir.join("bin").join(plugin),
        )
        .expect("link");
    }
    symlink(
        env!("CARGO_BIN_EXE_tailnet-cni"),
        dir.join("bin/tailnet-cni"),
    )
    .expect("link");
    fs::copy(BUSYBOX, dir.join("rootfs/bin/busybox")).expect("busybox");
    for applet in ["sh", "sleep", "ip"] {
        symlink("busybox", dir.join("rootfs/bin").join(applet)).expect("applet");
    }
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "tailnet-test",
        "plugins": [
            {"type": "bridge", "bridge": "cni-tntest0", "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}],
                      "ranges": [[{"subnet": "10.89.7.0/24", "gateway": "10.89.7.1"}]]}},
            {"type": "tailnet-cni", "daemonSocket": daemon.socket.display().to_string(), "timeoutSeconds": 5}
        ]
    });
    fs::write(
        dir.join("net.d/tailnet-test.conflist"),
        conflist.to_string(),
    )
    .expect("conflist");
    let d = dir.display();
    fs::write(
        dir.join("containers.conf"),
        format!(
            "[network]\nnetwork_backend=\"cni\"\ncni_plugin_dirs=[\"{d}/bin\"]\nnetwork_config_dir=\"{d}/net.d\"\n\
             [engine]\ncgroup_manager=\"cgroupfs\"\nevents_logger=\"file\"\ntmp_dir=\"{d}/tmp\"\n\
             static_dir=\"{d}/static\"\nvolume_path=\"{d}/volumes\"\n"
        ),
    )
    .expect("containers.conf");

    // Start a container, read what the runtime cached and reports, stop it.
    let podman = format!("podman --root {d}/root --runroot {d}/runroot");
    let script = format!(
        "set -e
mount -t tmpfs tmpfs /run && mkdir -p /run/netns /run/lock
mount --bind {d}/varlib /var/lib
mount -t tmpfs tmpfs /dev/shm
umount /sys/fs/cgroup/unified 2>/dev/null || true
ip link set lo up
{podman} run -d --cgroups=disabled --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
  --network tailnet-test --name tn1 --rootfs {d}/rootfs /bin/sleep 30 >/dev/null
echo '--- cached'
cat /var/lib/cni/results/tailnet-test-*-eth0
echo
echo '--- address'
{podman} inspect tn1 --format '{{{{range .NetworkSettings.Networks}}}}{{{{.IPAddress}}}} {{{{end}}}}'
{podman} rm -f -t 0 tn1 >/dev/null
echo '--- done'
"
    );
    let output = Command::new("unshare")
        .args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .env("CONTAINERS_CONF", dir.join("containers.conf"))
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "podman failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    eprintln!("{stdout}");
    let cached_text = stdout
        .split("--- cached\n")
        .nth(1)
        .and_then(|rest| rest.split("\n--- address").next())
        .expect("cached section");
    let cached: Value = serde_json::from_str(cached_text.trim()).expect("cached result json");
    let reported_address = stdout
        .split("--- address\n")
        .nth(1)
        .and_then(|rest| rest.split("\n--- done").next())
        .expect("address section")
        .trim()
        .to_owned();
    PodmanRun {
        cached_result: cached["result"].clone(),
        reported_address,
        calls: daemon.calls(),
    }
}

#[test]
fn podman_chains_the_shim_and_keeps_the_bridge_address_as_pod_address() {
    require!(requirements());
    let run = run_podman(Script::default());
    let result = &run.cached_result;
    // The bridge's entries first, ours appended inside the container.
    let names: Vec<&str> = result["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .map(|i| i["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["cni-tntest0", names[1], "eth0", "ts0"], "{result}");
    assert_eq!(result["interfaces"][3]["mac"], "ee:ee:64:40:00:07");
    assert_eq!(
        result["interfaces"][3]["sandbox"],
        result["interfaces"][2]["sandbox"]
    );
    let first = result["ips"][0]["address"].as_str().unwrap_or_default();
    assert!(first.starts_with("10.89.7."), "{result}");
    assert_eq!(
        result["ips"][1],
        json!({"address": "100.64.0.7/32", "interface": 3})
    );
    assert_eq!(
        result["ips"][2],
        json!({"address": "fd7a:115c:a1e0::7/128", "interface": 3})
    );
    // The runtime reports the bridge address as the container's.
    assert_eq!(format!("{}/24", run.reported_address), first);

    let (Some(Call::Add(add)), Some(Call::Del(del))) = (run.calls.first(), run.calls.last()) else {
        panic!("expected ADD first and DEL last: {:?}", run.calls)
    };
    let pod = add.pod.clone().expect("pod");
    assert_eq!(pod.container_id.len(), 64, "{pod:?}");
    assert!(pod.netns.starts_with("/run/netns/"), "{pod:?}");
    assert_eq!(pod.runtime_if_name, "eth0");
    assert_eq!(pod.name, "tn1");
    assert_eq!(pod.network, "tailnet-test");
    assert_eq!(
        del.pod.as_ref().expect("pod").container_id,
        pod.container_id
    );
}

#[test]
fn podman_accepts_an_interface_without_mac() {
    require!(requirements());
    let mut script = Script::default();
    script.add.as_mut().expect("ok").mac.clear();
    let run = run_podman(script);
    let result = &run.cached_result;
    assert_eq!(result["interfaces"][3], json!({"name": "ts0"}), "{result}");
    assert_eq!(result["ips"][1]["interface"], 3);
    assert!(
        run.reported_address.starts_with("10.89.7."),
        "{}",
        run.reported_address
    );
}
