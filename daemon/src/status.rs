//! `tailnet-cnid status`: what the daemon runs, as a table or JSON.

use serde::Serialize;
use tailnet_cni_proto::v1::{ListPodsResponse, PodStatus, StatusResponse};

/// The JSON form of `tailnet-cnid status --json`.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub ready: bool,
    pub reason: String,
    pub daemon_version: String,
    pub pods: Vec<PodReport>,
}

#[derive(Debug, Serialize)]
pub struct PodReport {
    pub container_id: String,
    pub namespace: String,
    pub name: String,
    pub hostname: String,
    pub ipv4: String,
    pub ipv6: String,
    pub state: String,
    /// "direct", "derp", "mixed" or "none": how this pod reaches its peers.
    pub path: String,
    pub peers_direct: u32,
    pub peers_derp: u32,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Inbound packets the tailnet packet filter refused.
    pub filtered_packets: u64,
    pub error: String,
}

impl StatusReport {
    pub fn new(status: StatusResponse, pods: ListPodsResponse) -> Self {
        Self {
            ready: status.ready,
            reason: status.reason,
            daemon_version: status.daemon_version,
            pods: pods.pods.into_iter().map(PodReport::from).collect(),
        }
    }

    /// A fixed-width table, one pod a line, for people.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let readiness = if self.ready { "ready" } else { "not ready" };
        out.push_str(&format!(
            "daemon {} ({readiness}{}), {} pod(s)\n",
            self.daemon_version,
            if self.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", self.reason)
            },
            self.pods.len()
        ));
        let header = [
            "CONTAINER",
            "POD",
            "HOSTNAME",
            "IPV4",
            "IPV6",
            "STATE",
            "PATH",
            "FILTERED",
        ];
        let rows: Vec<[String; 8]> = self
            .pods
            .iter()
            .map(|p| {
                let pod = if p.namespace.is_empty() {
                    p.name.clone()
                } else {
                    format!("{}/{}", p.namespace, p.name)
                };
                let state = if p.error.is_empty() {
                    p.state.clone()
                } else {
                    format!("{} ({})", p.state, p.error)
                };
                [
                    p.container_id.chars().take(12).collect(),
                    pod,
                    p.hostname.clone(),
                    p.ipv4.clone(),
                    p.ipv6.clone(),
                    state,
                    format!("{} ({}d/{}r)", p.path, p.peers_direct, p.peers_derp),
                    p.filtered_packets.to_string(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut line = |cells: &[&str]| {
            let mut l = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(cell);
                } else {
                    l.push_str(&format!("{cell:<w$}  "));
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&header);
        for row in &rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            line(&cells);
        }
        out
    }
}

impl From<PodStatus> for PodReport {
    fn from(p: PodStatus) -> Self {
        let path = match (p.peers_direct, p.peers_derp) {
            (0, 0) => "none",
            (_, 0) => "direct",
            (0, _) => "derp",
            _ => "mixed",
        };
        Self {
            path: path.to_string(),
            container_id: p.container_id,
            namespace: p.namespace,
            name: p.name,
            hostname: p.hostname,
            ipv4: p.ipv4,
            ipv6: p.ipv6,
            state: p.state,
            peers_direct: p.peers_direct,
            peers_derp: p.peers_derp,
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
            filtered_packets: p.filtered_packets,
            error: p.error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(id: &str, direct: u32, derp: u32) -> PodStatus {
        PodStatus {
            container_id: id.to_string(),
            namespace: "default".into(),
            name: "web".into(),
            hostname: "homelab-default-web".into(),
            ipv4: "100.64.0.7".into(),
            ipv6: "fd7a:115c:a1e0::7".into(),
            state: "ready".into(),
            peers_direct: direct,
            peers_derp: derp,
            filtered_packets: 3,
            ..Default::default()
        }
    }

    #[test]
    fn table_lists_every_pod_with_its_path() {
        let report = StatusReport::new(
            StatusResponse {
                ready: true,
                daemon_version: "0.1.0".into(),
                ..Default::default()
            },
            ListPodsResponse {
                pods: vec![pod("0123456789abcdef", 2, 0), pod("fedcba9876543210", 1, 1)],
                ..Default::default()
            },
        );
        let table = report.render_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].contains("ready") && lines[0].contains("2 pod(s)"));
        assert!(lines[1].starts_with("CONTAINER"));
        assert!(lines[2].starts_with("0123456789ab ") && lines[2].contains("direct (2d/0r)"));
        assert!(lines[3].contains("mixed (1d/1r)") && lines[3].contains("default/web"));
        assert!(
            lines[1].ends_with("FILTERED") && lines[3].ends_with(" 3"),
            "{table}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["pods"][1]["path"], "mixed");
        assert_eq!(json["pods"][1]["filtered_packets"], 3);
    }
}
