use super::*;

struct Fixed {
    ready: bool,
    healthy: bool,
}

impl Snapshot for Fixed {
    fn pods_by_state(&self) -> Vec<(String, i64)> {
        vec![("ready".into(), 3), ("registering".into(), 1)]
    }
    fn sessions_by_state(&self) -> Vec<(String, i64)> {
        vec![("connected".into(), 4)]
    }
    fn pod_samples(&self) -> Vec<PodSample> {
        vec![PodSample {
            labels: Some(PodLabels {
                namespace: "default".into(),
                pod: "web".into(),
                hostname: "homelab-default-web".into(),
            }),
            rx_bytes: 1500,
            tx_bytes: 700,
            rx_packets: 3,
            tx_packets: 2,
            filtered_packets: 4,
            handshake_age_secs: Some(12.5),
            oldest_handshake_age_secs: Some(97.0),
            peers_direct: 1,
            peers_derp: 2,
            resume_handshakes: 5,
        }]
    }
    fn health(&self) -> Result<(), String> {
        if self.healthy {
            Ok(())
        } else {
            Err("the control session of 1 live pod(s) has ended: c1".into())
        }
    }
    fn readiness(&self) -> Result<(), String> {
        if self.ready {
            Ok(())
        } else {
            Err("recovering pods".into())
        }
    }
}

#[test]
fn render_includes_every_family() {
    let metrics = Metrics::default();
    metrics.observe(CniCommand::Add, "ok", Duration::from_millis(120));
    metrics.observe(CniCommand::Add, "100", Duration::from_secs(3));
    metrics.pods_missing_plugin.set(2);
    metrics.kube_reports_dropped.inc();
    let text = metrics
        .render(&Fixed {
            ready: true,
            healthy: true,
        })
        .unwrap();
    for needle in [
        "tailnet_cni_pods{state=\"ready\"} 3",
        "tailnet_cni_control_sessions{state=\"connected\"} 4",
        "tailnet_cni_pod_rx_bytes_total{namespace=\"default\",pod=\"web\",hostname=\"homelab-default-web\"} 1500",
        "tailnet_cni_peer_paths{path=\"derp\"} 2",
        "tailnet_cni_pod_filtered_packets_total{namespace=\"default\",pod=\"web\",hostname=\"homelab-default-web\"} 4",
        "tailnet_cni_cni_commands_total{command=\"Add\",result=\"100\"} 1",
        "tailnet_cni_cni_command_duration_seconds_count{command=\"Add\",result=\"ok\"} 1",
        "tailnet_cni_pod_handshake_age_seconds{namespace=\"default\",pod=\"web\",hostname=\"homelab-default-web\"} 12.5",
        "tailnet_cni_pod_oldest_handshake_age_seconds{namespace=\"default\",pod=\"web\",hostname=\"homelab-default-web\"} 97.0",
        "tailnet_cni_resume_handshakes_total 5",
        "tailnet_cni_pods_missing_plugin 2",
        "tailnet_cni_kube_reports_dropped_total 1",
        "tailnet_cni_kube_api_errors_total 0",
        "tailnet_cni_derp_reconnects_total ",
        "tailnet_cni_control_reconnects_total ",
        &format!(
            "tailnet_cni_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            env!("TAILNET_CNI_COMMIT")
        ),
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test]
async fn readyz_reports_the_reason() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::default());
    metrics.rpc_serving.store(true, Ordering::Relaxed);
    let app = router(
        metrics,
        Arc::new(Fixed {
            ready: false,
            healthy: true,
        }),
    );
    tokio::spawn(async move {
        axum::serve(listener, app)
            .await
            .expect("serving the test router");
    });
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("recovering pods"));
    let (status, body) = http_get(addr, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("tailnet_cni_pods"));
}

/// Serves `router` on a loopback port.
async fn serve_router(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .await
            .expect("serving the test router");
    });
    addr
}

#[tokio::test]
async fn healthz_fails_when_a_session_ended() {
    let metrics = Arc::new(Metrics::default());
    metrics.rpc_serving.store(true, Ordering::Relaxed);
    let snapshot = Arc::new(Fixed {
        ready: true,
        healthy: false,
    });
    let addr = serve_router(router(metrics, snapshot)).await;
    let (status, body) = http_get(addr, "/healthz").await;
    assert_eq!(status, 503);
    assert!(body.contains("control session"), "{body}");
}

#[tokio::test]
async fn healthz_fails_when_the_cni_socket_is_not_served() {
    let metrics = Arc::new(Metrics::default());
    let snapshot = Arc::new(Fixed {
        ready: true,
        healthy: true,
    });
    let addr = serve_router(router(metrics.clone(), snapshot)).await;
    let (status, body) = http_get(addr, "/healthz").await;
    assert_eq!(status, 503);
    assert!(body.contains("CNI socket"), "{body}");
    metrics.rpc_serving.store(true, Ordering::Relaxed);
    let (status, _) = http_get(addr, "/healthz").await;
    assert_eq!(status, 200);
}

/// A minimal HTTP/1.0 GET, to keep an HTTP client out of the dependencies.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
