//! The binary against a real `tailnet-cnid`. Runs only when
//! `TAILNET_CNI_TEST_DAEMON_SOCKET` names the socket of a running daemon
//! (and the test runs as a uid the daemon accepts, root by default).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::*;
use serde_json::json;

fn live_socket() -> Option<PathBuf> {
    match std::env::var_os("TAILNET_CNI_TEST_DAEMON_SOCKET") {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            eprintln!("skipped: TAILNET_CNI_TEST_DAEMON_SOCKET is not set");
            None
        }
    }
}

#[test]
fn status_answers_ready_or_not_available() {
    let Some(socket) = live_socket() else { return };
    let env: HashMap<String, String> = [("CNI_COMMAND".to_owned(), "STATUS".to_owned())].into();
    let config = serde_json::to_vec(&plugin_config("1.1.0", &socket, json!({}))).expect("json");
    let output = run_binary(&env, &config);
    if output.status.success() {
        assert!(output.stdout.is_empty());
    } else {
        let error = stdout_json(&output);
        assert!(error["code"] == 50 || error["code"] == 51, "{error}");
        assert!(!error["msg"].as_str().unwrap_or_default().is_empty());
    }
}

#[test]
fn del_of_a_never_added_container_succeeds_twice() {
    let Some(socket) = live_socket() else { return };
    let mut env = container_env("DEL");
    let id = format!("shimtest{}", std::process::id());
    env.insert("CNI_CONTAINERID".into(), id);
    env.remove("CNI_NETNS");
    let config = serde_json::to_vec(&plugin_config("1.1.0", &socket, json!({}))).expect("json");
    for attempt in 0..2 {
        let output = run_binary(&env, &config);
        assert!(
            output.status.success(),
            "attempt {attempt}: {} {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.stdout.is_empty());
    }
}
