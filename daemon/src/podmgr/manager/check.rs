//! CNI CHECK: the pod is running, has the addresses the runtime expects,
//! its plumbing is intact and its data plane is attached.

use std::collections::HashSet;

use tailnet_cni_proto::cni_code;
use tailnet_cni_proto::v1::CheckRequest;

use super::add::{host_cidrs, spec_of};
use super::seams::{Backends, Plumbing, PodAttachment, Records};
use super::{lock, PodManager};
use crate::podmgr::state::PodPhase;
use crate::rpc::CniError;

impl<B: Backends> PodManager<B> {
    pub(super) async fn do_check(&self, req: CheckRequest) -> Result<(), CniError> {
        let pod = req
            .pod
            .ok_or_else(|| CniError::new(cni_code::INVALID_CONFIG, "request names no pod"))?;
        let _guard = self.locks.lock(&pod.container_id).await;
        let record = self
            .records
            .load(&pod.container_id)
            .map_err(|e| CniError::new(cni_code::IO_FAILURE, e.to_string()))?
            .ok_or_else(|| {
                CniError::new(
                    cni_code::UNKNOWN_CONTAINER,
                    format!("no tailnet state for container {}", pod.container_id),
                )
            })?;
        if record.state != PodPhase::Running {
            return Err(CniError::new(
                cni_code::CHECK_FAILED,
                format!("pod is {:?}, not running", record.state),
            ));
        }
        let pod_net = record.pod_net.as_ref().ok_or_else(|| {
            CniError::new(cni_code::CHECK_FAILED, "pod has no interfaces recorded")
        })?;
        let ours: HashSet<String> = host_cidrs(record.ipv4, record.ipv6).into_iter().collect();
        for expected in &req.expected_ips {
            if !ours.contains(&expected.address) {
                return Err(CniError::new(
                    cni_code::CHECK_FAILED,
                    format!(
                        "runtime expects {} on {}, the daemon assigned {:?}",
                        expected.address, record.if_name, ours
                    ),
                ));
            }
        }
        let spec = spec_of(&record, pod_net.mtu);
        self.plumbing
            .check(pod_net, &spec)
            .await
            .map_err(|e| CniError::new(cni_code::CHECK_FAILED, e.to_string()))?;
        let liveness = lock(&self.live)
            .get(&record.container_id)
            .map(|pod| pod.data.liveness());
        match liveness {
            Some(Ok(())) => Ok(()),
            Some(Err(down)) => Err(CniError::new(
                cni_code::CHECK_FAILED,
                format!("pod's data plane is down: {down}"),
            )),
            None => Err(CniError::new(
                cni_code::CHECK_FAILED,
                "pod's data plane is not running",
            )),
        }
    }
}
