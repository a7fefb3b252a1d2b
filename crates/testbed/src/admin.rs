//! rscale's admin API over plain HTTP on loopback: nodes, auth keys,
//! tailnet policy.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// How long one admin call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("reading the admin token from {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{method} {path} at {addr}: {source}")]
    Io {
        method: String,
        path: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{method} {path}: not an HTTP response")]
    Malformed { method: String, path: String },
    #[error("{method} {path}: HTTP {status}: {body}")]
    Status {
        method: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("{method} {path}: the body is not JSON: {source}")]
    Json {
        method: String,
        path: String,
        source: serde_json::Error,
    },
    #[error("the auth-key answer has no key")]
    NoKey,
}

/// An auth key to mint.
#[derive(Debug, Clone)]
pub struct KeySpec<'a> {
    pub description: &'a str,
    pub reusable: bool,
    /// Seconds from now the key expires (< 0: already expired); `None`
    /// leaves it to the server.
    pub expires_in: Option<i64>,
}

impl<'a> KeySpec<'a> {
    /// A single-use, untagged, non-ephemeral key.
    pub fn single_use(description: &'a str) -> Self {
        Self {
            description,
            reusable: false,
            expires_in: None,
        }
    }

    pub fn reusable(self) -> Self {
        Self {
            reusable: true,
            ..self
        }
    }

    pub fn expiring_in(self, secs: i64) -> Self {
        Self {
            expires_in: Some(secs),
            ..self
        }
    }
}

/// A client of rscale's admin API. Reads the token from its file at each
/// call and never prints it.
#[derive(Debug, Clone)]
pub struct Admin {
    addr: SocketAddr,
    token_file: PathBuf,
}

impl Admin {
    /// The admin API of the rscale at `addr` (plain HTTP).
    pub fn new(addr: SocketAddr, token_file: PathBuf) -> Self {
        Self { addr, token_file }
    }

    /// One call; the answer's JSON body (`Null` when empty).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, AdminError> {
        let (status, text) = self.exchange(method, path, body)?;
        if !(200..300).contains(&status) {
            return Err(AdminError::Status {
                method: method.into(),
                path: path.into(),
                status,
                body: text,
            });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|source| AdminError::Json {
            method: method.into(),
            path: path.into(),
            source,
        })
    }

    pub fn get(&self, path: &str) -> Result<Value, AdminError> {
        self.call("GET", path, None)
    }

    /// Every node the server lists.
    pub fn nodes(&self) -> Result<Vec<Value>, AdminError> {
        let listed = self.get("/api/v1/admin/nodes")?;
        let nodes = listed.get("nodes").unwrap_or(&listed);
        Ok(nodes.as_array().cloned().unwrap_or_default())
    }

    /// Every node whose name starts with `prefix`.
    pub fn nodes_named(&self, prefix: &str) -> Result<Vec<Value>, AdminError> {
        Ok(self
            .nodes()?
            .into_iter()
            .filter(|node| named(node, prefix))
            .collect())
    }

    /// Nodes whose name starts with `prefix` and that are not disabled.
    pub fn enabled_nodes(&self, prefix: &str) -> Result<Vec<Value>, AdminError> {
        Ok(self
            .nodes_named(prefix)?
            .into_iter()
            .filter(|node| node["status"] != json!("disabled"))
            .collect())
    }

    /// The node holding `ipv4`, if any.
    pub fn node_with_ipv4(&self, ipv4: Ipv4Addr) -> Result<Option<Value>, AdminError> {
        let ip = ipv4.to_string();
        Ok(self
            .nodes()?
            .into_iter()
            .find(|node| node["ipv4"].as_str() == Some(ip.as_str())))
    }

    /// Disables node `id` (rscale has no node deletion).
    pub fn disable_node(&self, id: u64) -> Result<(), AdminError> {
        self.call("POST", &format!("/api/v1/admin/nodes/{id}/disable"), None)
            .map(drop)
    }

    /// Mints an untagged, non-ephemeral auth key.
    pub fn mint(&self, spec: &KeySpec<'_>) -> Result<String, AdminError> {
        let mut body = json!({
            "description": spec.description, "tags": [], "reusable": spec.reusable,
            "ephemeral": false,
        });
        if let Some(secs) = spec.expires_in {
            body["expires_at_unix_secs"] = json!(unix_now() + secs);
        }
        let answer = self.call("POST", "/api/v1/admin/auth-keys", Some(&body))?;
        answer["key"]
            .as_str()
            .map(str::to_owned)
            .ok_or(AdminError::NoKey)
    }

    /// HTTP/1.0 on a fresh connection: the server answers without chunked
    /// framing and closes, so the body is everything after the head.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), AdminError> {
        let token =
            std::fs::read_to_string(&self.token_file).map_err(|source| AdminError::Token {
                path: self.token_file.clone(),
                source,
            })?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let io = |source| AdminError::Io {
            method: method.into(),
            path: path.into(),
            addr: self.addr,
            source,
        };
        let mut stream = TcpStream::connect_timeout(&self.addr, CALL_TIMEOUT).map_err(io)?;
        stream.set_read_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{body}",
            addr = self.addr,
            token = token.trim(),
            length = body.len(),
        );
        stream.write_all(request.as_bytes()).map_err(io)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).map_err(io)?;
        let response = String::from_utf8_lossy(&response);
        let malformed = || AdminError::Malformed {
            method: method.into(),
            path: path.into(),
        };
        let (head, body) = response.split_once("\r\n\r\n").ok_or_else(malformed)?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(malformed)?;
        Ok((status, body.to_owned()))
    }
}

fn named(node: &Value, prefix: &str) -> bool {
    ["hostname", "name", "given_name", "givenName"]
        .iter()
        .filter_map(|field| node[*field].as_str())
        .any(|name| name.starts_with(prefix))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}
