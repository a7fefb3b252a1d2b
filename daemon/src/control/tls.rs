//! TLS to the control server: which roots are trusted, and what a failed
//! handshake means in words an operator can act on.
//!
//! Trusted: the webpki roots compiled in (so a minimal container image with
//! no CA store still reaches Tailscale's hosted service), the system's
//! store when there is one (`SSL_CERT_FILE`/`SSL_CERT_DIR` or the
//! distribution's bundle), and every certificate of the optional `ca_file`
//! (a private CA of a self-hosted server, or the server's own self-signed
//! certificate).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{CertificateError, RootCertStore};
use tracing::debug;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read CA bundle {path}: {reason}")]
    CaBundle { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The client configuration every identity shares.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // A store with unreadable or odd entries must not keep the daemon from
    // starting: skip what does not parse.
    for cert in rustls_native_certs::load_native_certs().certs {
        if let Err(error) = roots.add(cert) {
            debug!(%error, "skipping a system CA certificate that does not parse");
        }
    }
    if let Some(path) = ca_file {
        add_bundle(&mut roots, path)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Adds every certificate of a PEM bundle; a bundle with none, or with one
/// that does not parse, is a configuration error rather than silently less
/// trust.
fn add_bundle(roots: &mut RootCertStore, path: &Path) -> Result<usize, TlsSetupError> {
    let bundle_error = |reason: String| TlsSetupError::CaBundle {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bundle_error(e.to_string()))?;
    let mut reader = &pem[..];
    let mut added = 0;
    for cert in rustls_pemfile::certs(&mut reader) {
        let cert = cert.map_err(|e| bundle_error(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| bundle_error(format!("certificate {}: {e}", added + 1)))?;
        added += 1;
    }
    if added == 0 {
        return Err(bundle_error("no PEM certificates".into()));
    }
    Ok(added)
}

/// Why a TLS handshake with `host` failed, naming the cause when it is a
/// certificate problem.
pub fn explain_handshake_error(error: &io::Error, host: &str, ca_file: Option<&Path>) -> String {
    let Some(rustls_error) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return error.to_string();
    };
    explain(rustls_error, host, ca_file)
}

fn explain(error: &rustls::Error, host: &str, ca_file: Option<&Path>) -> String {
    let rustls::Error::InvalidCertificate(cert_error) = error else {
        return error.to_string();
    };
    match cert_error {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            let trusted = match ca_file {
                Some(path) => format!("the system and webpki roots and {}", path.display()),
                None => "the system and webpki roots; no ca_file is configured".into(),
            };
            format!(
                "the server's certificate is signed by an unknown CA (trusted: {trusted}); \
                 set ca_file to the CA that signed it"
            )
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("the server's certificate is not valid for the name {host}")
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the server's certificate has expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet (check the clock)".into()
        }
        CertificateError::Revoked => "the server's certificate is revoked".into(),
        other => format!("the server's certificate was rejected: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed P-256 CA certificate (no key material needed here).
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBkjCCATegAwIBAgIUB3Tf8flQyJ2s1E5TX0ferISQAwQwCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTdGFpbG5ldC1jbmkgdGVzdCBDQTAeFw0yNjExMzAwMjE1MDNa
Fw0zNjExMjcwMjE1MDNaMB4xHDAaBgNVBAMME3RhaWxuZXQtY25pIHRlc3QgQ0Ew
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARqX0Ye6kEBlR7/aPduHv74Gpq8FwIu
NWI+BCRs6ufrUAS4XfaN4WJ6qmrdsZVsHajZWFdOUL+wwNyZ4nkqKYc7o1MwUTAd
BgNVHQ4EFgQUHjrpjX7NfEt495FXq0rA4RLFLLEwHwYDVR0jBBgwFoAUHjrpjX7N
fEt495FXq0rA4RLFLLEwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBG
AiEAzC7LeaoCgnSzQatJNJt0jKPSTJMmeg18SOQLSf22d1wCIQCrwuDz8B792NEe
I8PlBLLsonlG5HermbfHoSzWSqhr+Q==
-----END CERTIFICATE-----
";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_ca_file_adds_its_certificates_to_the_built_in_roots() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = write(dir.path(), "ca.pem", &format!("{TEST_CA}{TEST_CA}"));
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let built_in = roots.len();
        assert!(built_in > 100, "webpki roots missing");
        assert_eq!(add_bundle(&mut roots, &bundle).unwrap(), 2);
        assert_eq!(roots.len(), built_in + 2);
        assert!(client_config(Some(&bundle)).is_ok());
        assert!(client_config(None).is_ok());
    }

    #[test]
    fn unusable_ca_files_are_configuration_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let empty = write(dir.path(), "empty.pem", "not a certificate\n");
        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        for (path, why) in [
            (&missing, "No such file"),
            (&empty, "no PEM certificates"),
            (&broken, "certificate 1"),
        ] {
            let err = client_config(Some(path)).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn handshake_errors_name_their_cause() {
        let unknown = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let text = explain_handshake_error(&unknown, "ctl.example", None);
        assert!(
            text.contains("unknown CA") && text.contains("no ca_file"),
            "{text}"
        );
        let text = explain_handshake_error(&unknown, "ctl.example", Some(Path::new("/etc/ca.pem")));
        assert!(text.contains("/etc/ca.pem"), "{text}");

        let name = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
        );
        let text = explain_handshake_error(&name, "ctl.example", None);
        assert!(
            text.contains("not valid for the name ctl.example"),
            "{text}"
        );

        let plain = io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer");
        assert_eq!(explain_handshake_error(&plain, "x", None), "reset by peer");
    }
}
