//! What the installer, the shim and the daemon must agree on to decide
//! which pods join: the annotation names, the runtime capability that
//! carries them, and the selection modes the plugin entry names.

/// The capability (and `runtimeConfig` key) under which containerd (1.6+)
/// and CRI-O pass a sandbox's annotations to a plugin that declares it.
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";
/// Prefix of every annotation the daemon reads.
pub const ANNOTATION_PREFIX: &str = "tailnet-cni.io/";
/// Opt-in (`"true"`) or opt-out (any other value).
pub const ENABLED_ANNOTATION: &str = "tailnet-cni.io/enabled";
/// The tailnet hostname a pod asks for.
pub const HOSTNAME_ANNOTATION: &str = "tailnet-cni.io/hostname";
/// The tags a pod asks for, comma-separated.
pub const TAGS_ANNOTATION: &str = "tailnet-cni.io/tags";
/// `"true"` installs peers' subnet routes for the pod (any other value
/// refuses them, whatever the node's default).
pub const ACCEPT_ROUTES_ANNOTATION: &str = "tailnet-cni.io/accept-routes";
/// The pod's exit node: its tailnet address, stable node id or name; empty
/// for none, whatever the node's default.
pub const EXIT_NODE_ANNOTATION: &str = "tailnet-cni.io/exit-node";

/// How the daemon selects pods, as the plugin entry's `selection` key says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectionMode {
    /// Only pods annotated `tailnet-cni.io/enabled: "true"` join.
    Annotated,
    /// Pods in a namespace labelled `tailnet-cni.io/enabled: "true"` join
    /// too, which only the daemon can see.
    Namespace,
    /// Every pod joins unless it opts out.
    All,
}

impl SelectionMode {
    /// The entry's `selection` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Annotated => "annotated",
            Self::Namespace => "namespace",
            Self::All => "all",
        }
    }

    /// Parses the entry's `selection` value.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Annotated, Self::Namespace, Self::All]
            .into_iter()
            .find(|mode| mode.as_str() == text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_and_unknown_ones_are_refused() {
        for mode in [
            SelectionMode::Annotated,
            SelectionMode::Namespace,
            SelectionMode::All,
        ] {
            assert_eq!(SelectionMode::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(SelectionMode::parse("Annotated"), None);
        assert_eq!(SelectionMode::parse(""), None);
    }
}
