//! CHECK: a pod passes only while its data plane serves it.

use tailnet_cni_proto::cni_code;
use tailnet_cni_proto::v1::CheckRequest;

use super::Bed;
use crate::podmgr::dataplane::DataPlaneDown;
use crate::rpc::{CniError, CniHandler};

const POD: &str = "c1c2c3c4c5c60001";

async fn check(bed: &Bed) -> Result<(), CniError> {
    bed.manager
        .check(CheckRequest {
            pod: Some(bed.pod(POD)),
            ..CheckRequest::default()
        })
        .await
}

#[tokio::test]
async fn check_fails_once_the_data_plane_stops_serving_the_pod() {
    for reason in [
        DataPlaneDown::SupervisorStopped,
        DataPlaneDown::EngineTaskStopped,
        DataPlaneDown::StaleKey,
    ] {
        let bed = Bed::start().await;
        bed.add(POD).await.expect("ADD");
        check(&bed).await.expect("CHECK of a served pod");
        // Still attached and recorded: only the data plane's view knows.
        bed.engine.fail_data_plane(POD, reason);
        let error = check(&bed).await.expect_err("CHECK must fail");
        assert_eq!(error.code, cni_code::CHECK_FAILED, "{reason:?}");
        assert!(error.msg.contains(&reason.to_string()), "{}", error.msg);
    }
}

#[tokio::test]
async fn healthz_fails_once_a_live_pods_data_plane_has_stopped() {
    use crate::metrics::Snapshot;
    for (reason, healthy) in [
        (DataPlaneDown::SupervisorStopped, false),
        (DataPlaneDown::EngineTaskStopped, false),
        // Being re-attached with the rotated key: repaired by the supervisor.
        (DataPlaneDown::StaleKey, true),
    ] {
        let bed = Bed::start().await;
        bed.add(POD).await.expect("ADD");
        bed.manager.health().expect("healthy with a served pod");
        bed.engine.fail_data_plane(POD, reason);
        match bed.manager.health() {
            Ok(()) => assert!(healthy, "{reason:?} must make the daemon unhealthy"),
            Err(reason_text) => {
                assert!(!healthy, "{reason:?}: {reason_text}");
                assert!(reason_text.contains("data plane"), "{reason_text}");
            }
        }
    }
}
