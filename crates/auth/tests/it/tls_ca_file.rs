//! `ca_file` makes a self-hosted control server's private CA trusted, and without it the same
//! server is refused. Certificates come from the `openssl` CLI at test time; the test skips
//! when it is missing (fails under `CI=true` or `TAILNET_TEST_REQUIRE=1`).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use tailnet_auth::{AuthBackend, AuthConfig, AuthError, KeyRequest};
use tailnet_testbed::{require, Needs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::SecretDir;

fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false)
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn make_certificates(dir: &Path) -> bool {
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    ]);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    let sign = [
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
    ];
    openssl(dir, &ca) && openssl(dir, &csr) && openssl(dir, &sign)
}

/// Serves one canned rscale answer per TLS connection; returns the port.
async fn serve_tls(dir: &Path) -> u16 {
    let certs = rustls_pemfile::certs(&mut &std::fs::read(dir.join("leaf.pem")).unwrap()[..])
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut &std::fs::read(dir.join("leaf.key")).unwrap()[..])
        .unwrap()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers and the small JSON body arrive together or in a few reads.
                while !request.ends_with(b"}") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = r#"{"auth_key":{"id":"ak_tls"},"key":"rsk_over_tls"}"#;
                let response = format!(
                    "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                // A client that hung up early fails its own assertions.
                tls.write_all(response.as_bytes()).await.ok();
                tls.shutdown().await.ok();
            });
        }
    });
    port
}

fn backend(port: u16, token_file: &Path, ca_file: Option<&Path>) -> AuthBackend {
    let ca_line = ca_file
        .map(|path| format!("ca_file = \"{}\"\n", path.display()))
        .unwrap_or_default();
    let config: AuthConfig = toml::from_str(&format!(
        "kind = \"rscale\"\napi_url = \"https://127.0.0.1:{port}\"\ntoken_file = \"{}\"\n{ca_line}",
        token_file.display()
    ))
    .unwrap();
    let mut options = crate::common::fast_options();
    options.retry.max_attempts = 1;
    AuthBackend::with_options(&config, options).unwrap()
}

#[tokio::test]
async fn private_ca_is_trusted_only_when_configured() {
    require!(Needs::new().tools(&["openssl"]).met());
    let secrets = SecretDir::new();
    assert!(
        make_certificates(secrets.dir.path()),
        "openssl could not make the test certificates"
    );
    let token_file = secrets.write("token", "admin-token-over-tls-000000");
    let port = serve_tls(secrets.dir.path()).await;

    let trusted = backend(port, &token_file, Some(&secrets.dir.path().join("ca.pem")));
    let key = trusted
        .mint_key(&KeyRequest::for_hostname("tls"))
        .await
        .unwrap();
    assert_eq!(key.key.expose(), "rsk_over_tls");
    assert_eq!(key.id.as_deref(), Some("ak_tls"));

    let untrusted = backend(port, &token_file, None);
    let err = untrusted
        .mint_key(&KeyRequest::for_hostname("tls"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AuthError::Unreachable { backend: "rscale", reason, .. }
            if reason.to_lowercase().contains("certificate")),
        "{err}"
    );
}
