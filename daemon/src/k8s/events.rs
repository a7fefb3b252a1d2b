//! The core/v1 Events the daemon posts on pods, built without I/O.
//!
//! A failure's Event says what failed from the CNI error code alone: the
//! error's text can quote a control server's answer, and an Event is
//! readable by anyone who can read the pod's namespace. The details stay in
//! the daemon's log.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use tailnet_cni_proto::cni_code;

use super::PodRef;

/// The `source.component` and `reportingComponent` of our Events.
pub const COMPONENT: &str = "tailnet-cnid";

/// Why an Event is posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodEvent {
    /// The pod is on the tailnet.
    Joined {
        hostname: String,
        addresses: Vec<IpAddr>,
    },
    /// ADD failed with this CNI error code; the runtime will retry.
    JoinFailed { code: u32 },
    /// The pod opted in and is running, but the plugin never set it up.
    MissingPlugin,
    /// The pod was evicted because the plugin never set it up.
    EvictedMissingPlugin,
}

impl PodEvent {
    /// The Event's `reason`: a short CamelCase word, as Kubernetes uses.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Joined { .. } => "TailnetJoined",
            Self::JoinFailed { .. } => "TailnetJoinFailed",
            Self::MissingPlugin => "TailnetPluginMissing",
            Self::EvictedMissingPlugin => "TailnetPluginMissingEvicted",
        }
    }

    /// `Normal` or `Warning`.
    pub fn severity(&self) -> &'static str {
        match self {
            Self::Joined { .. } => "Normal",
            _ => "Warning",
        }
    }

    /// The Event's `action`: what the reporter did or tried.
    fn action(&self) -> &'static str {
        match self {
            Self::Joined { .. } | Self::JoinFailed { .. } => "Join",
            Self::MissingPlugin => "Detect",
            Self::EvictedMissingPlugin => "Evict",
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> String {
        match self {
            Self::Joined {
                hostname,
                addresses,
            } => {
                let addresses: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
                format!(
                    "joined the tailnet as {hostname} with {}",
                    addresses.join(", ")
                )
            }
            Self::JoinFailed { code } => format!(
                "joining the tailnet failed (CNI error {code}: {}); the runtime retries, \
                 the tailnet-cnid log on this node has the details",
                failure_summary(*code)
            ),
            Self::MissingPlugin => "the pod opted in to the tailnet but is running without it: \
                 it started before tailnet-cni was chained on this node, or the plugin was \
                 skipped; recreate the pod"
                .to_string(),
            Self::EvictedMissingPlugin => "evicted: the pod opted in to the tailnet but was \
                 running without it; it is recreated with the plugin"
                .to_string(),
        }
    }
}

/// What a CNI error code means, in words that quote nothing from outside.
fn failure_summary(code: u32) -> &'static str {
    match code {
        cni_code::CONTROL_FAILURE => "the control server refused or failed the registration",
        cni_code::AUTH_FAILURE => "no auth key could be minted",
        cni_code::PLUMBING_FAILURE => "the pod's interfaces could not be set up",
        cni_code::TRY_AGAIN_LATER => "a transient failure, such as an unreachable control server",
        cni_code::IO_FAILURE => "the daemon could not save the pod's state",
        cni_code::INVALID_CONFIG => "the pod's request or the configuration is invalid",
        cni_code::INVALID_ENV => "the runtime's request is invalid",
        _ => "the plugin failed",
    }
}

/// The Event for `pod`, reported by the daemon on `node` at `now`.
///
/// Its name is the pod's name and the time in nanoseconds, in hex, as
/// kubelet names its own: unique without a read first.
pub fn event_for(pod: &PodRef, event: &PodEvent, node: &str, now: Timestamp) -> Event {
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", pod.name, now.as_nanosecond())),
            namespace: Some(pod.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(pod.namespace.clone()),
            name: Some(pod.name.clone()),
            uid: (!pod.uid.is_empty()).then(|| pod.uid.clone()),
            ..ObjectReference::default()
        },
        reason: Some(event.reason().into()),
        message: Some(event.message()),
        type_: Some(event.severity().into()),
        action: Some(event.action().into()),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: Some(node.to_string()),
        }),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(node.to_string()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodRef {
        PodRef {
            namespace: "apps".into(),
            name: "web-0".into(),
            uid: "4f1c".into(),
        }
    }

    #[test]
    fn joined_event_names_the_hostname_and_addresses() {
        let now = Timestamp::from_second(1_700_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let event = event_for(
            &pod(),
            &PodEvent::Joined {
                hostname: "homelab-apps-web-0".into(),
                addresses: vec![
                    "100.64.0.7".parse().unwrap(),
                    "fd7a:115c:a1e0::7".parse().unwrap(),
                ],
            },
            "node-a",
            now,
        );
        assert_eq!(event.type_.as_deref(), Some("Normal"));
        assert_eq!(event.reason.as_deref(), Some("TailnetJoined"));
        assert_eq!(
            event.message.as_deref(),
            Some("joined the tailnet as homelab-apps-web-0 with 100.64.0.7, fd7a:115c:a1e0::7")
        );
        assert_eq!(event.involved_object.uid.as_deref(), Some("4f1c"));
        assert_eq!(event.involved_object.kind.as_deref(), Some("Pod"));
        assert_eq!(event.metadata.namespace.as_deref(), Some("apps"));
        assert_eq!(
            event.metadata.name,
            Some(format!("web-0.{:x}", now.as_nanosecond()))
        );
    }

    #[test]
    fn failure_event_says_only_what_the_code_means() {
        let event = PodEvent::JoinFailed {
            code: cni_code::CONTROL_FAILURE,
        };
        assert_eq!(event.severity(), "Warning");
        let message = event.message();
        assert!(message.contains("CNI error 100"), "{message}");
        assert!(
            message.contains("refused or failed the registration"),
            "{message}"
        );
    }
}
