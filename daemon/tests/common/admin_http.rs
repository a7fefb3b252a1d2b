//! rscale's admin API spoken over a raw HTTP/1.1 connection on loopback, for
//! tests that need it from async code or without curl.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the admin API is and the token that opens it.
#[derive(Debug, Clone)]
pub struct AdminApi {
    pub control_url: String,
    pub token_file: PathBuf,
}

/// `ip:port` of a plain-HTTP control URL.
pub fn control_addr(url: &str) -> SocketAddr {
    let rest = url.strip_prefix("http://").expect("plain http control URL");
    rest.trim_end_matches('/')
        .parse()
        .expect("ip:port control URL")
}

/// The JSON value in a response body (tolerates chunked encoding).
pub fn json_in(body: &str) -> serde_json::Value {
    let start = body.find(['{', '[']).expect("JSON body");
    let end = body.rfind(['}', ']']).expect("JSON end");
    serde_json::from_str(&body[start..=end]).expect("JSON")
}

impl AdminApi {
    /// One request; returns the body.
    pub fn request(&self, method: &str, path: &str, body: &str) -> String {
        let token = std::fs::read_to_string(&self.token_file).expect("admin token");
        let addr = control_addr(&self.control_url);
        let mut stream = TcpStream::connect(addr).expect("connect control");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            token.trim(),
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        let body_start = response.find("\r\n\r\n").expect("HTTP head") + 4;
        response[body_start..].to_owned()
    }

    /// A single-use auth key valid for an hour, or why there is none.
    pub fn mint_single_use(&self, description: &str) -> Result<String, String> {
        let expires = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
            + 3600;
        let body = format!(
            r#"{{"description":"{description}","tags":[],"reusable":false,"ephemeral":false,"expires_at_unix_secs":{expires}}}"#
        );
        let value = json_in(&self.request("POST", "/api/v1/admin/auth-keys", &body));
        value["key"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "no key in the admin API answer".to_owned())
    }
}

/// Disables the test's node in control when the test ends (rscale has no
/// node deletion), so runs do not pile up live nodes in the peer's netmap.
pub struct NodeCleanup<'a> {
    pub api: &'a AdminApi,
    pub ipv4: Ipv4Addr,
}

impl Drop for NodeCleanup<'_> {
    fn drop(&mut self) {
        let nodes = json_in(&self.api.request("GET", "/api/v1/admin/nodes", ""));
        let ip = self.ipv4.to_string();
        let id = nodes
            .as_array()
            .and_then(|all| all.iter().find(|n| n["ipv4"].as_str() == Some(ip.as_str())))
            .and_then(|n| n["id"].as_u64());
        if let Some(id) = id {
            self.api
                .request("POST", &format!("/api/v1/admin/nodes/{id}/disable"), "");
        }
    }
}
