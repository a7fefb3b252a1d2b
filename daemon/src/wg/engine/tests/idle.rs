//! Idle pods cost nothing: no timer pass without a deadline of their own,
//! no statistics published without a change.

use std::time::Duration;

use super::*;
use crate::wg::engine::STATS_PUBLISH_INTERVAL;
use crate::wg::EngineConfig;

/// Two pods that know each other and their home relay, no traffic yet.
async fn idle_pair(engine: &Engine, relay: &LocalRelay) -> (TestPod, TestPod) {
    let (a, b) = pods_on_relay(relay, (engine, 1), (engine, 2)).await;
    introduce(&a, &b).await;
    a.handle.wait_home_relay(Duration::from_secs(3)).await;
    b.handle.wait_home_relay(Duration::from_secs(3)).await;
    // Let the first STUN round, snapshot and the like pass.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    (a, b)
}

#[tokio::test]
async fn idle_pods_run_no_timer_pass_every_tick() {
    let relay = local_relay().await;
    let engine = Engine::new(EngineConfig::default());
    let (_a, _b) = idle_pair(&engine, &relay).await;
    let before = engine.timer_wakeups();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let passes = engine.timer_wakeups() - before;
    // A fixed tick would run 2 pods x 4 passes a second; the deadlines of
    // idle pods (a STUN retry every 3 s each) allow at most one each here,
    // plus one each for a round that falls on the window's edge.
    assert!(passes <= 4, "{passes} timer passes in 2 s for 2 idle pods");
}

#[tokio::test]
async fn a_live_session_keeps_its_timers_running() {
    let relay = local_relay().await;
    let engine = Engine::new(EngineConfig::default());
    let (a, b) = idle_pair(&engine, &relay).await;
    let packet = ipv4_udp(a.addr, b.addr, b"wake up");
    assert_eq!(deliver_eventually(&a, &b, &packet).await, packet);
    let before = engine.timer_wakeups();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let passes = engine.timer_wakeups() - before;
    // Both pods hold a session now: boringtun's timers run every 250 ms.
    assert!(
        passes >= 8,
        "{passes} timer passes in 2 s with live sessions"
    );
}

#[tokio::test]
async fn an_idle_pod_publishes_no_unchanged_statistics() {
    let relay = local_relay().await;
    let engine = Engine::new(EngineConfig::default());
    let (mut a, b) = idle_pair(&engine, &relay).await;
    a.handle.stats.borrow_and_update();
    tokio::time::sleep(STATS_PUBLISH_INTERVAL * 2).await;
    assert!(
        !a.handle.stats.has_changed().unwrap(),
        "an idle pod republished its statistics"
    );
    // Traffic is published within an interval.
    let packet = ipv4_udp(a.addr, b.addr, b"counted");
    deliver_eventually(&a, &b, &packet).await;
    tokio::time::sleep(STATS_PUBLISH_INTERVAL + Duration::from_millis(300)).await;
    assert!(a.handle.stats.has_changed().unwrap());
    assert!(a.handle.stats_now().tx_packets >= 1);
}
