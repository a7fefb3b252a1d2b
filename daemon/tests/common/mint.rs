//! rscale's admin API through curl from async code: minting single-use auth
//! keys for the control client and listing nodes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tailnet_auth::Secret;
use tailnet_cnid::control::{AuthKeySource, MintError};

/// The admin API's base URL and bearer token.
#[derive(Debug, Clone)]
pub struct AdminCurl {
    pub url: String,
    pub token: String,
}

impl AdminCurl {
    /// The shared test bed's admin API, from its exported environment.
    pub fn from_env() -> Option<Self> {
        let url = std::env::var("TAILNET_TEST_CONTROL_URL").ok()?;
        let token_file = std::env::var("TAILNET_TEST_ADMIN_TOKEN_FILE").ok()?;
        let token = std::fs::read_to_string(token_file).ok()?.trim().to_string();
        Some(Self { url, token })
    }

    /// Every node the server lists.
    pub async fn nodes(&self) -> Vec<Value> {
        let out = tokio::process::Command::new("curl")
            .args(["-fsS", "-H"])
            .arg(format!("Authorization: Bearer {}", self.token))
            .arg(format!("{}/api/v1/admin/nodes", self.url))
            .output()
            .await
            .expect("curl");
        let v: Value = serde_json::from_slice(&out.stdout).expect("nodes json");
        let list = v.get("nodes").cloned().unwrap_or(v);
        list.as_array().cloned().unwrap_or_default()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Mints single-use keys through the admin API, counting them.
pub struct MintKeys {
    admin: AdminCurl,
    description: &'static str,
    /// Seconds from now the keys expire (< 0: already expired); `None`
    /// leaves it to the server.
    expires_in: Option<i64>,
    pub minted: AtomicUsize,
}

impl MintKeys {
    pub fn new(admin: &AdminCurl, description: &'static str) -> Self {
        Self {
            admin: admin.clone(),
            description,
            expires_in: None,
            minted: AtomicUsize::new(0),
        }
    }

    pub fn expiring_in(mut self, secs: i64) -> Self {
        self.expires_in = Some(secs);
        self
    }

    pub fn minted(&self) -> usize {
        self.minted.load(Ordering::SeqCst)
    }
}

impl MintKeys {
    async fn mint(&self) -> Result<String, String> {
        self.minted.fetch_add(1, Ordering::SeqCst);
        let mut body = json!({
            "description": self.description, "tags": [], "reusable": false,
            "ephemeral": false,
        });
        if let Some(secs) = self.expires_in {
            body["expires_at_unix_secs"] = json!(unix_now() + secs);
        }
        let out = tokio::process::Command::new("curl")
            .args([
                "-fsS",
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-H",
            ])
            .arg(format!("Authorization: Bearer {}", self.admin.token))
            .arg("-d")
            .arg(body.to_string())
            .arg(format!("{}/api/v1/admin/auth-keys", self.admin.url))
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "mint failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        v["key"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "no key".into())
    }
}

#[tonic::async_trait]
impl AuthKeySource for MintKeys {
    async fn auth_key(&self) -> Result<Secret, MintError> {
        self.mint().await.map(Secret::new).map_err(MintError::new)
    }
}
