//! Auth-key backends for tailnet-cni.
//!
//! Every pod becomes its own tailnet node, so the daemon needs one fresh, single-use,
//! pre-authorized auth key per pod, and removes the node again when the pod goes away.
//! [`AuthBackend`] does both against the configured control server:
//!
//! | `kind` | mint | remove |
//! |---|---|---|
//! | `static` | the content of `key_file` (re-read each time) | nothing |
//! | `rscale` | `POST /api/v1/admin/auth-keys` | `POST /api/v1/admin/nodes/{id}/disable` |
//! | `headscale` | `POST /api/v1/preauthkey` | `DELETE /api/v1/node/{id}` |
//! | `tailscale` | OAuth token, then `POST /api/v2/tailnet/{tailnet}/keys` | `DELETE /api/v2/device/{id}` |
//! | `minter` | `POST /v1/keys` to the cluster's minter with the node's service account token | the node's own logout |

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod config;
mod error;
mod http;
pub mod minter_api;
mod oauth;
mod retry;
mod secret;

pub use backend::{AuthBackend, AuthKey, KeyRequest, NodeRef, MAX_DESCRIPTION_CHARS};
pub use config::{
    AuthConfig, BackendConfig, DEFAULT_KEY_TTL_SECS, DEFAULT_TAILNET, DEFAULT_TAILSCALE_API_URL,
};
pub use error::{redact_excerpt, AuthError};
pub use http::BackendOptions;
pub use retry::RetryPolicy;
pub use secret::Secret;
