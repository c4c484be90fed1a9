//! cuttle's interception CA as a client gets it (`GET /ca.pem` on the admin port): as PEM, as
//! a file for real clients, and as rustls roots for in-test TLS clients.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::TestProxy;

/// The proxy's CA certificate, PEM.
pub async fn proxy_ca_pem(p: &TestProxy) -> String {
    let pem = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/ca.pem", p.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
    pem
}

/// The proxy's CA certificate written to `dir/cuttle-ca.pem`; its path.
pub async fn proxy_ca(p: &TestProxy, dir: &Path) -> PathBuf {
    let path = dir.join("cuttle-ca.pem");
    std::fs::write(&path, proxy_ca_pem(p).await).unwrap();
    path
}

/// The proxy's CA certificate as rustls roots.
pub async fn proxy_roots(p: &TestProxy) -> rustls::RootCertStore {
    let pem = proxy_ca_pem(p).await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

/// A TLS client configuration (ring, safe protocol versions) trusting only `roots`.
pub fn tls_client_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}
