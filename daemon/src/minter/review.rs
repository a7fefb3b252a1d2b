//! Who a caller is: its bearer token reviewed by the Kubernetes API server
//! (`POST /apis/authentication.k8s.io/v1/tokenreviews`), bound to the
//! minter's audience.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::Api;
use tailnet_auth::Secret;

/// The extra field a pod-bound token's review carries: the node the pod runs on.
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// How long one review may take, the client's own retries included: an
/// overloaded API server answers 429/503, which the Kubernetes client
/// retries for many minutes, while the node waits for its key.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// A caller as the API server vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    /// `system:serviceaccount:<namespace>:<name>` for a service account.
    pub username: String,
    /// The node of the pod the token is bound to, when the API server says (1.30+).
    pub node: Option<String>,
}

/// Why a token does not identify a caller.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The API server does not accept the token (expired, revoked, forged,
    /// or bound to another audience).
    #[error("the token is not accepted: {0}")]
    Rejected(String),
    /// The review could not be had: the API server is unreachable or failed.
    #[error("the token could not be reviewed: {0}")]
    Unavailable(#[source] Box<kube::Error>),
    /// The API server did not answer within [`REVIEW_TIMEOUT`].
    #[error("the token could not be reviewed within {0:?}")]
    TimedOut(Duration),
}

/// Reviews tokens with the minter's own service account.
#[derive(Clone)]
pub struct TokenReviewer {
    client: kube::Client,
    audience: String,
}

impl TokenReviewer {
    /// Reviews through `client`, accepting only tokens bound to `audience`.
    pub fn new(client: kube::Client, audience: impl Into<String>) -> Self {
        Self {
            client,
            audience: audience.into(),
        }
    }

    /// Who `token` belongs to, if the API server accepts it for our audience.
    pub async fn review(&self, token: &Secret) -> Result<Reviewed, ReviewError> {
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.expose().to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let reviewed = tokio::time::timeout(
            REVIEW_TIMEOUT,
            reviews.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| ReviewError::TimedOut(REVIEW_TIMEOUT))?
        .map_err(|error| ReviewError::Unavailable(Box::new(error)))?;
        judge(reviewed.status.unwrap_or_default(), &self.audience)
    }
}

/// What a review's status means for us (sans-IO).
fn judge(status: TokenReviewStatus, audience: &str) -> Result<Reviewed, ReviewError> {
    if status.authenticated != Some(true) {
        let why = status
            .error
            .filter(|error| !error.is_empty())
            .unwrap_or_else(|| "not authenticated".to_owned());
        return Err(ReviewError::Rejected(why));
    }
    // An empty list means the token is valid for the API server's own
    // audience, not ours: a token taken from anywhere else must not pass.
    let audiences = status.audiences.unwrap_or_default();
    if !audiences.iter().any(|granted| granted == audience) {
        return Err(ReviewError::Rejected(format!(
            "the token is not bound to the audience {audience:?}"
        )));
    }
    let user = status.user.unwrap_or_default();
    let username = user
        .username
        .filter(|name| !name.is_empty())
        .ok_or_else(|| ReviewError::Rejected("the review names no user".to_owned()))?;
    let node = user
        .extra
        .and_then(|mut extra| extra.remove(NODE_NAME_EXTRA))
        .and_then(|values| values.into_iter().next());
    Ok(Reviewed { username, node })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    const AUDIENCE: &str = "tailnet-cni-minter";

    fn authenticated(audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:tailnet-cni:tailnet-cnid".to_owned()),
                extra: Some(BTreeMap::from([(
                    NODE_NAME_EXTRA.to_owned(),
                    vec!["worker-1".to_owned()],
                )])),
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    #[test]
    fn an_authenticated_token_for_our_audience_names_its_user_and_node() {
        let reviewed = judge(authenticated(&[AUDIENCE]), AUDIENCE).unwrap();
        assert_eq!(
            reviewed.username,
            "system:serviceaccount:tailnet-cni:tailnet-cnid"
        );
        assert_eq!(reviewed.node.as_deref(), Some("worker-1"));
    }

    #[test]
    fn a_token_for_the_api_servers_audience_is_rejected() {
        for audiences in [&[][..], &["https://kubernetes.default.svc"][..]] {
            let result = judge(authenticated(audiences), AUDIENCE);
            assert!(
                matches!(result, Err(ReviewError::Rejected(_))),
                "{result:?}"
            );
        }
    }

    #[test]
    fn an_unauthenticated_token_is_rejected_with_the_servers_reason() {
        let status = TokenReviewStatus {
            authenticated: Some(false),
            error: Some("token has expired".to_owned()),
            ..TokenReviewStatus::default()
        };
        match judge(status, AUDIENCE) {
            Err(ReviewError::Rejected(why)) => assert_eq!(why, "token has expired"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            judge(TokenReviewStatus::default(), AUDIENCE),
            Err(ReviewError::Rejected(_))
        ));
    }
}
