//! TLS to relay nodes: the roots the control connection trusts (its
//! `ca_file`, the system's store, the webpki roots), or (for nodes marked
//! `InsecureForTests`) any certificate.

use std::sync::{Arc, OnceLock};

use super::DerpClientError;

/// Which certificates relays are verified against, and the client
/// configurations built from that: one per kind, shared by every pod's
/// links (a configuration carries its own session cache, 13 KiB, which a
/// configuration per link would repeat per pod).
#[derive(Debug, Clone, Default)]
pub struct RelayTrust {
    /// The control connection's client configuration, shared so relays
    /// trust exactly what control does; `None` trusts the webpki roots only
    /// (engines built without a control client: tests, examples).
    shared: Option<Arc<rustls::ClientConfig>>,
    built: Arc<BuiltConfigs>,
}

#[derive(Debug, Default)]
struct BuiltConfigs {
    verified: OnceLock<Arc<rustls::ClientConfig>>,
    insecure: OnceLock<Arc<rustls::ClientConfig>>,
}

impl RelayTrust {
    /// Trust what `control` trusts.
    pub fn shared(control: Arc<rustls::ClientConfig>) -> Self {
        Self {
            shared: Some(control),
            built: Arc::default(),
        }
    }

    /// The configuration for a relay, `insecure` for nodes marked
    /// `InsecureForTests`; built on first use.
    pub(super) fn config(
        &self,
        insecure: bool,
    ) -> Result<Arc<rustls::ClientConfig>, DerpClientError> {
        let cell = if insecure {
            &self.built.insecure
        } else {
            &self.built.verified
        };
        if let Some(config) = cell.get() {
            return Ok(config.clone());
        }
        let config = self.build(insecure)?;
        // Two links may build at once; both then use the one that was kept.
        Ok(cell.get_or_init(|| config).clone())
    }

    fn build(&self, insecure: bool) -> Result<Arc<rustls::ClientConfig>, DerpClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = match (&self.shared, insecure) {
            (_, true) => rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert { provider }))
                .with_no_client_auth(),
            (Some(shared), false) => (**shared).clone(),
            (None, false) => {
                let roots = rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth()
            }
        };
        // Relays may share a port with an HTTP/2 control server: ask for
        // HTTP/1.1, the only protocol the Upgrade handshake works on.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Accepts any certificate: used only for nodes marked `InsecureForTests`.
#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_built_once_and_shared_by_clones() {
        let trust = RelayTrust::default();
        let first = trust.config(true).unwrap();
        let clone = trust.clone();
        assert!(Arc::ptr_eq(&first, &clone.config(true).unwrap()));
        let verified = clone.config(false).unwrap();
        assert!(!Arc::ptr_eq(&first, &verified));
        assert!(Arc::ptr_eq(&verified, &trust.config(false).unwrap()));
        assert_eq!(verified.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
