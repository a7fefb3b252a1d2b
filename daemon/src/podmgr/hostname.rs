//! Tailnet machine names for pods: `{cluster}-{namespace}-{pod}` as one DNS
//! label, stable across restarts of the same pod.

use super::naming::fnv1a64;

/// Longest DNS label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;
/// Hex digits of the hash appended when a name has to be shortened.
const SUFFIX_HEX_DIGITS: usize = 8;

/// Builds the pod's hostname. Lowercases, maps every character outside
/// `[a-z0-9]` to '-', collapses runs of '-', trims '-' at both ends. Names
/// longer than 63 characters are cut and end in `-` + 8 hex digits of a hash
/// of the full input, so two long names that share a prefix stay distinct.
pub fn pod_hostname(cluster: &str, namespace: &str, pod: &str) -> String {
    let parts: Vec<&str> = [cluster, namespace, pod]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect();
    let joined = parts.join("-");
    let label = sanitize_label(&joined);
    if label.len() <= MAX_LABEL_LEN {
        return if label.is_empty() {
            // A label must not be empty; fall back to something stable.
            format!(
                "pod-{:0width$x}",
                hash_suffix(&joined),
                width = SUFFIX_HEX_DIGITS
            )
        } else {
            label
        };
    }
    let keep = MAX_LABEL_LEN - 1 - SUFFIX_HEX_DIGITS;
    // The label is ASCII, so byte slicing is on character boundaries.
    let head = label[..keep].trim_end_matches('-');
    format!(
        "{head}-{:0width$x}",
        hash_suffix(&joined),
        width = SUFFIX_HEX_DIGITS
    )
}

/// Places a hostname a pod asked for under its namespace's prefix
/// `{cluster}-{namespace}-`, so a pod of one namespace can never take a name
/// of another's. A request already under the prefix is kept as it is; any
/// other becomes [`pod_hostname`] of the request.
pub fn namespaced_hostname(cluster: &str, namespace: &str, requested: &str) -> String {
    let prefix = sanitize_label(&format!("{cluster}-{namespace}"));
    let requested = sanitize_label(requested);
    let kept = requested
        .strip_prefix(prefix.as_str())
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|rest| !rest.is_empty());
    if kept && !prefix.is_empty() {
        return requested;
    }
    pod_hostname(cluster, namespace, &requested)
}

fn hash_suffix(input: &str) -> u64 {
    fnv1a64(input.as_bytes()) & ((1u64 << (4 * SUFFIX_HEX_DIGITS)) - 1)
}

/// Lowercase `[a-z0-9-]` with no leading, trailing or repeated '-'.
pub fn sanitize_label(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for c in input.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_label(label: &str) -> bool {
        !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && !label.starts_with('-')
            && !label.ends_with('-')
            && !label.contains("--")
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }

    #[test]
    fn joins_cluster_namespace_and_pod() {
        assert_eq!(
            pod_hostname("prod", "default", "web-0"),
            "prod-default-web-0"
        );
    }

    #[test]
    fn sanitises_to_a_dns_label() {
        assert_eq!(
            pod_hostname("Prod_EU", "kube.system", "--Coredns__ABC--"),
            "prod-eu-kube-system-coredns-abc"
        );
        assert_eq!(sanitize_label("a...b"), "a-b");
        assert_eq!(sanitize_label("ÄÖ-x"), "x");
        assert_eq!(sanitize_label("---"), "");
    }

    #[test]
    fn empty_parts_are_skipped_and_empty_result_falls_back() {
        assert_eq!(pod_hostname("", "ns", "p"), "ns-p");
        let fallback = pod_hostname("", "", "___");
        assert!(fallback.starts_with("pod-"), "{fallback}");
        assert!(is_dns_label(&fallback));
        assert_eq!(fallback, pod_hostname("", "", "___"));
    }

    #[test]
    fn long_names_are_cut_to_63_with_a_distinguishing_suffix() {
        let pod_a = format!("{}-a", "x".repeat(80));
        let pod_b = format!("{}-b", "x".repeat(80));
        let a = pod_hostname("cluster", "namespace", &pod_a);
        let b = pod_hostname("cluster", "namespace", &pod_b);
        assert_eq!(a.len(), MAX_LABEL_LEN);
        assert!(is_dns_label(&a), "{a}");
        assert!(is_dns_label(&b), "{b}");
        assert_ne!(a, b);
        assert!(a.starts_with("cluster-namespace-xxx"));
        // Deterministic: the same pod gets the same name after a restart.
        assert_eq!(a, pod_hostname("cluster", "namespace", &pod_a));
    }

    #[test]
    fn cut_never_leaves_a_double_dash() {
        // Put a '-' exactly where the cut falls.
        let keep = MAX_LABEL_LEN - 1 - SUFFIX_HEX_DIGITS;
        let pod = format!("{}-{}", "y".repeat(keep - 1), "z".repeat(40));
        let name = pod_hostname("", "", &pod);
        assert!(is_dns_label(&name), "{name}");
        assert!(name.len() <= MAX_LABEL_LEN);
    }

    #[test]
    fn requested_names_go_under_the_namespace_prefix() {
        for (requested, expected) in [
            ("prod-db", "homelab-dev-prod-db"),
            // Already under the prefix: kept.
            ("Homelab-Dev-web", "homelab-dev-web"),
            // The bare prefix, or another namespace's, is not kept.
            ("homelab-dev", "homelab-dev-homelab-dev"),
            ("homelab-prod-db", "homelab-dev-homelab-prod-db"),
        ] {
            assert_eq!(
                namespaced_hostname("homelab", "dev", requested),
                expected,
                "{requested}"
            );
        }
        let long = namespaced_hostname("homelab", "dev", &"a".repeat(63));
        assert!(is_dns_label(&long), "{long}");
        assert!(long.starts_with("homelab-dev-"), "{long}");
    }

    #[test]
    fn exactly_63_is_kept_unchanged() {
        let pod = "p".repeat(MAX_LABEL_LEN);
        assert_eq!(pod_hostname("", "", &pod), pod);
    }
}
