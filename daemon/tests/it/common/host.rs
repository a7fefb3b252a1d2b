//! Host-wide accounting: what of ours (links, rules, routes) is left in
//! the test's network namespace, and what a process holds open.

use std::fs;
use std::process::Command;

use serde_json::{json, Value};

use super::process::{run, run_ok};

/// Priority of the daemon's `ip rule`s.
pub const RULE_PRIORITY: u64 = 1;
/// The daemon's per-pod routing tables: `tables::DEFAULT_TABLE_BASE` and
/// its count.
pub const TABLE_BASE: u64 = 0x7c00_0000;
pub const TABLE_COUNT: u64 = 0x0001_0000;

/// What a process's descriptors point at, with its TCP connections.
pub fn describe_fds(pid: u32) -> String {
    let mut out = String::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
        let mut targets: Vec<String> = dir
            .filter_map(Result::ok)
            .filter_map(|e| fs::read_link(e.path()).ok())
            .map(|t| t.display().to_string())
            .collect();
        targets.sort();
        out.push_str(&targets.join("\n"));
    }
    let ss = run(Command::new("ss").args(["-tanp"]));
    for line in String::from_utf8_lossy(&ss.stdout).lines() {
        if line.contains(&format!("pid={pid},")) {
            out.push('\n');
            out.push_str(line);
        }
    }
    out
}

/// Links in the host netns whose name starts with one of `prefixes`.
pub fn links_named(prefixes: &[&str]) -> Vec<String> {
    let out = run_ok(Command::new("ip").args(["-j", "link", "show"]));
    let links: Value = serde_json::from_str(&out).expect("ip -j link");
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| prefixes.iter().any(|p| n.starts_with(p)))
        .map(str::to_string)
        .collect()
}

/// `tnt*`/`tnv*` links in the host netns.
pub fn our_links() -> Vec<String> {
    links_named(&["tnt", "tnv"])
}

/// `ip rule`s at the daemon's priority, both families.
pub fn our_rules() -> Vec<Value> {
    let mut rules = Vec::new();
    for family in ["-4", "-6"] {
        let out = run_ok(Command::new("ip").args([family, "-j", "rule", "show"]));
        let list: Value = serde_json::from_str(&out).expect("ip -j rule");
        rules.extend(
            list.as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["priority"] == json!(RULE_PRIORITY))
                .cloned(),
        );
    }
    rules
}

/// Routes in any of the daemon's per-pod tables, or through its links.
pub fn our_routes() -> Vec<Value> {
    let mut routes = Vec::new();
    for family in ["-4", "-6"] {
        let out = run_ok(Command::new("ip").args([family, "-j", "route", "show", "table", "all"]));
        let list: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        routes.extend(
            list.as_array()
                .into_iter()
                .flatten()
                .filter(|r| {
                    let table = r["table"]
                        .as_u64()
                        .or_else(|| r["table"].as_str().and_then(|t| t.parse().ok()));
                    let in_range =
                        table.is_some_and(|t| (TABLE_BASE..TABLE_BASE + TABLE_COUNT).contains(&t));
                    let dev = r["dev"].as_str().unwrap_or_default();
                    in_range || dev.starts_with("tnt") || dev.starts_with("tnv")
                })
                .cloned(),
        );
    }
    routes
}

/// Everything of ours left on the host: empty when nothing leaked.
pub fn host_leaks() -> Vec<String> {
    let mut leaks: Vec<String> = our_links()
        .into_iter()
        .map(|l| format!("link {l}"))
        .collect();
    leaks.extend(our_rules().into_iter().map(|r| format!("rule {r}")));
    leaks.extend(our_routes().into_iter().map(|r| format!("route {r}")));
    leaks
}
