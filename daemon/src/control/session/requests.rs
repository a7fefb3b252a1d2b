//! The requests a session sends, built from its keys, options and what the
//! handle last reported (endpoints, a new hostname).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use tailnet_auth::Secret;

use super::super::capver::CAPABILITY_VERSION;
use super::super::keys::DiscoPublic;
use super::super::tailcfg::{
    AuthInfo, Hostinfo, MapRequest, NetInfo, RegisterRequest, ENDPOINT_LOCAL,
};
use super::super::tka::lock::PUBLIC_PREFIX;
use super::handle::Reported;
use super::supervisor::Session;

impl Session {
    fn hostinfo(&self, reported: &Reported) -> Hostinfo {
        Hostinfo {
            ipn_version: self.client.inner.version.clone(),
            backend_log_id: self.backend_log_id.clone(),
            os: "linux".into(),
            hostname: reported
                .hostname
                .clone()
                .unwrap_or_else(|| self.options.hostname.clone()),
            app: "tailnet-cni".into(),
            request_tags: self.options.tags.clone(),
            net_info: reported.preferred_derp.map(|region| NetInfo {
                preferred_derp: i64::from(region),
            }),
        }
    }

    /// The streaming map poll (`stream`) or a one-shot endpoint update.
    pub(super) fn map_request(&self, stream: bool) -> MapRequest {
        let reported = self.published.endpoints();
        MapRequest {
            version: CAPABILITY_VERSION,
            compress: if stream { "zstd".into() } else { String::new() },
            keep_alive: stream,
            node_key: self.keys.node_public().to_string(),
            disco_key: DiscoPublic(self.keys.disco.public()).to_string(),
            endpoint_types: vec![ENDPOINT_LOCAL; reported.endpoints.len()],
            endpoints: reported.endpoints.iter().map(ToString::to_string).collect(),
            stream,
            hostinfo: self.hostinfo(&reported),
            omit_peers: !stream,
        }
    }

    /// A registration of the current node key; `expiry` in the past logs
    /// out. A node key signed for tailnet lock carries its signature.
    pub(super) fn register_request(
        &self,
        auth_key: Option<Secret>,
        expiry: &str,
    ) -> RegisterRequest {
        let lock = self.keys.node_key_signature();
        RegisterRequest {
            version: CAPABILITY_VERSION,
            node_key: self.keys.node_public().to_string(),
            old_node_key: self.keys.old_node_public().to_string(),
            auth: auth_key.map(|auth_key| AuthInfo { auth_key }),
            expiry: expiry.into(),
            followup: String::new(),
            hostinfo: self.hostinfo(&self.published.endpoints()),
            ephemeral: false,
            node_key_signature: lock.map(|lock| STANDARD.encode(lock.signature().to_cbor())),
            nl_key: lock
                .map(|lock| format!("{PUBLIC_PREFIX}{}", hex::encode(lock.rotation_public()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::tailcfg::ZERO_TIME;
    use super::super::tailnet_lock_tests::unstarted;
    use super::super::IdentityOptions;

    /// A pooled identity bound to a pod tells the server the pod's hostname
    /// in every later request, map polls and re-registrations alike.
    #[test]
    fn a_reported_hostname_replaces_the_one_registered() {
        let session = unstarted(IdentityOptions::new("pool-1", vec!["tag:web".into()]));
        assert_eq!(session.map_request(false).hostinfo.hostname, "pool-1");

        session
            .published
            .endpoints
            .lock()
            .expect("reported")
            .hostname = Some("unit-default-web".into());
        assert_eq!(
            session.map_request(false).hostinfo.hostname,
            "unit-default-web"
        );
        assert_eq!(
            session.map_request(true).hostinfo.hostname,
            "unit-default-web"
        );
        let register = session.register_request(None, ZERO_TIME);
        assert_eq!(register.hostinfo.hostname, "unit-default-web");
        assert_eq!(register.hostinfo.request_tags, ["tag:web"]);
    }
}
