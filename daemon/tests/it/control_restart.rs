//! A control-server restart: sessions notice, reconnect with backoff, and
//! netmaps resume by themselves. Runs its own test bed instance (its own
//! rscale and PostgreSQL in a temporary directory) so stopping that rscale
//! disturbs no other test. Needs root and `scripts/isolated.sh`
//! (TAILNET_ISOLATED=1); skips, saying why, otherwise (fails under
//! `CI=true` or `TAILNET_TEST_REQUIRE=1`).

use std::sync::Arc;
use std::time::Duration;

use tailnet_cnid::control::{
    ControlClient, ControlConfig, IdentityKeys, IdentityOptions, SessionState,
};

use crate::common::keys::MintKeys;
use crate::common::{self, require, PrivateBed};

#[tokio::test]
async fn sessions_reconnect_after_a_control_server_restart() {
    require!(common::isolated_root().met());
    let bed = PrivateBed::up();
    let url = format!("http://127.0.0.1:{}", bed.read("rscale.port"));
    let client = ControlClient::new(ControlConfig::new(&url, None).unwrap()).unwrap();
    let handle = client.spawn_identity(
        IdentityKeys::generate(),
        IdentityOptions::new("restart-test", vec![]),
        Arc::new(MintKeys::new(bed.bed().admin(), "restart test")),
    );
    let before = handle
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("registered");
    let me = handle.self_node().expect("self");

    bed.stop_control_server();
    let mut state = handle.state();
    tokio::time::timeout(
        Duration::from_secs(30),
        state.wait_for(|s| matches!(s, SessionState::Reconnecting { .. })),
    )
    .await
    .expect("the session noticed the server going away")
    .expect("state channel");

    let mut netmap = handle.netmap();
    netmap.borrow_and_update();
    // Same config, same database: the server comes back as it was.
    bed.run("up");
    tokio::time::timeout(
        Duration::from_secs(90),
        state.wait_for(|s| *s == SessionState::Connected),
    )
    .await
    .expect("the session reconnected by itself")
    .expect("state channel");
    tokio::time::timeout(Duration::from_secs(30), netmap.changed())
        .await
        .expect("a fresh netmap arrived")
        .expect("netmap channel");
    let after = netmap.borrow().clone().expect("netmap");
    assert!(!Arc::ptr_eq(&before, &after), "netmap was not refreshed");
    assert_eq!(
        handle.self_node().as_ref(),
        Some(&me),
        "identity changed over the restart"
    );
    handle.shutdown();
}
