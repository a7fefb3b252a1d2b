use tokio::net::TcpListener;

use super::*;

/// Serves one connection with `response`, returns the request line seen.
async fn serve_once(response: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 512];
        let n = conn.read(&mut buf).await.unwrap();
        conn.write_all(response.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    });
    (addr, task)
}

#[tokio::test]
async fn ready_only_on_200() {
    let (addr, task) = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n").await;
    check(addr).await.unwrap();
    assert_eq!(task.await.unwrap(), "GET /readyz HTTP/1.0");

    let (addr, _task) =
        serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready: recovering pods\n").await;
    assert!(matches!(
        check(addr).await,
        Err(NotReady::Status { status: 503, .. })
    ));

    let (addr, _task) = serve_once("garbage\r\n").await;
    assert!(matches!(check(addr).await, Err(NotReady::Malformed { .. })));
}

#[tokio::test]
async fn nothing_listening_is_not_ready() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    assert!(matches!(
        check(addr).await,
        Err(NotReady::Unreachable { .. })
    ));
}
