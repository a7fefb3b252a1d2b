//! rscale's admin API from the control client's side: auth keys minted on
//! demand, and nodes disabled when a test ends.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};

use tailnet_auth::Secret;
use tailnet_cnid::control::{AuthKeySource, MintError};
use tailnet_testbed::{Admin, AdminError, KeySpec};

/// Runs a blocking admin call off the async runtime; panics when it fails.
pub async fn admin_call<T: Send + 'static>(
    admin: &Admin,
    call: impl FnOnce(&Admin) -> Result<T, AdminError> + Send + 'static,
) -> T {
    let admin = admin.clone();
    tokio::task::spawn_blocking(move || call(&admin))
        .await
        .expect("admin call task")
        .unwrap_or_else(|e| panic!("admin API: {e}"))
}

/// Mints single-use keys through the admin API, counting them.
pub struct MintKeys {
    admin: Admin,
    description: &'static str,
    /// Seconds from now the keys expire (< 0: already expired); `None`
    /// leaves it to the server.
    expires_in: Option<i64>,
    pub minted: AtomicUsize,
}

impl MintKeys {
    pub fn new(admin: Admin, description: &'static str) -> Self {
        Self {
            admin,
            description,
            expires_in: None,
            minted: AtomicUsize::new(0),
        }
    }

    pub fn expiring_in(mut self, secs: i64) -> Self {
        self.expires_in = Some(secs);
        self
    }
}

#[tonic::async_trait]
impl AuthKeySource for MintKeys {
    async fn auth_key(&self) -> Result<Secret, MintError> {
        self.minted.fetch_add(1, Ordering::SeqCst);
        let admin = self.admin.clone();
        let spec = KeySpec {
            expires_in: self.expires_in,
            ..KeySpec::single_use(self.description)
        };
        tokio::task::spawn_blocking(move || admin.mint(&spec))
            .await
            .map_err(MintError::new)?
            .map(Secret::new)
            .map_err(MintError::new)
    }
}

/// Disables the test's node in control when the test ends (rscale has no
/// node deletion), so runs do not pile up live nodes in the peer's netmap.
pub struct NodeCleanup {
    pub admin: Admin,
    pub ipv4: Ipv4Addr,
}

impl Drop for NodeCleanup {
    fn drop(&mut self) {
        if let Ok(Some(node)) = self.admin.node_with_ipv4(self.ipv4) {
            if let Some(id) = node["id"].as_u64() {
                // Cleanup: a node left enabled only clutters the shared control server.
                self.admin.disable_node(id).ok();
            }
        }
    }
}
