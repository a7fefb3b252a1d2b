//! Who may mint and what (sans-IO): a reviewed identity and a request in, the
//! tags to mint with or a typed refusal out.

use std::collections::HashMap;

use tailnet_auth::minter_api::MintRequest;

use super::config::CallerConfig;

/// The longest hostname a request may carry (a DNS name).
const MAX_HOSTNAME_CHARS: usize = 253;

/// Why a reviewed caller gets no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The token is valid but its identity is not a configured caller.
    #[error("{username} may not mint keys")]
    NotACaller { username: String },
    /// The caller asked for a tag it may not have.
    #[error("{service_account} may not use tag {tag}")]
    TagNotAllowed {
        service_account: String,
        tag: String,
    },
    /// The hostname is empty, too long or not a DNS name.
    #[error("hostname {0:?} is not a DNS name")]
    BadHostname(String),
}

/// What the minter allows, indexed by the username a TokenReview reports
/// for each caller (`system:serviceaccount:<namespace>:<name>`).
#[derive(Debug, Clone)]
pub struct Policy {
    callers: HashMap<String, CallerConfig>,
}

impl Policy {
    /// The policy of the configured callers.
    pub fn new(callers: &[CallerConfig]) -> Self {
        let callers = callers
            .iter()
            .map(|caller| (username_of(&caller.service_account), caller.clone()))
            .collect();
        Self { callers }
    }

    /// The tags `username` gets for `request`, or why it gets nothing.
    pub fn authorize(&self, username: &str, request: &MintRequest) -> Result<Vec<String>, Refusal> {
        let caller = self
            .callers
            .get(username)
            .ok_or_else(|| Refusal::NotACaller {
                username: username.to_owned(),
            })?;
        if !is_dns_name(&request.hostname) {
            return Err(Refusal::BadHostname(request.hostname.clone()));
        }
        if request.tags.is_empty() {
            return Ok(caller
                .default_tags
                .clone()
                .unwrap_or_else(|| caller.tags.clone()));
        }
        if let Some(tag) = request.tags.iter().find(|tag| !caller.tags.contains(tag)) {
            return Err(Refusal::TagNotAllowed {
                service_account: caller.service_account.clone(),
                tag: tag.clone(),
            });
        }
        Ok(request.tags.clone())
    }
}

/// The username Kubernetes gives a service account's tokens.
fn username_of(service_account: &str) -> String {
    format!(
        "system:serviceaccount:{}",
        service_account.replacen('/', ":", 1)
    )
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HOSTNAME_CHARS
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAEMON: &str = "system:serviceaccount:tailnet-cni:tailnet-cnid";

    fn policy() -> Policy {
        Policy::new(&[CallerConfig {
            service_account: "tailnet-cni/tailnet-cnid".to_owned(),
            tags: vec!["tag:k8s-pod".to_owned(), "tag:k8s-db".to_owned()],
            default_tags: Some(vec!["tag:k8s-pod".to_owned()]),
        }])
    }

    fn request(hostname: &str, tags: &[&str]) -> MintRequest {
        MintRequest {
            hostname: hostname.to_owned(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    #[test]
    fn the_daemon_gets_its_default_or_allowed_tags() {
        assert_eq!(
            policy().authorize(DAEMON, &request("c1-default-web", &[])),
            Ok(vec!["tag:k8s-pod".to_owned()])
        );
        assert_eq!(
            policy().authorize(DAEMON, &request("c1-db-0", &["tag:k8s-db"])),
            Ok(vec!["tag:k8s-db".to_owned()])
        );
    }

    #[test]
    fn another_service_account_is_refused() {
        for username in [
            "system:serviceaccount:default:default",
            "system:serviceaccount:tailnet-cni:tailnet-cnid-other",
            "tailnet-cni/tailnet-cnid",
            "system:node:worker-1",
        ] {
            assert_eq!(
                policy().authorize(username, &request("web", &[])),
                Err(Refusal::NotACaller {
                    username: username.to_owned()
                })
            );
        }
    }

    #[test]
    fn a_tag_outside_the_callers_list_is_refused() {
        assert_eq!(
            policy().authorize(DAEMON, &request("web", &["tag:k8s-pod", "tag:admin"])),
            Err(Refusal::TagNotAllowed {
                service_account: "tailnet-cni/tailnet-cnid".to_owned(),
                tag: "tag:admin".to_owned(),
            })
        );
    }

    #[test]
    fn hostnames_must_be_dns_names() {
        for bad in [
            "",
            "-web",
            "web-",
            "a..b",
            "web_1",
            "web 1",
            &"a".repeat(64),
        ] {
            assert_eq!(
                policy().authorize(DAEMON, &request(bad, &[])),
                Err(Refusal::BadHostname(bad.to_owned())),
                "{bad:?}"
            );
        }
    }
}
