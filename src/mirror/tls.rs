//! The TLS server side of `--tls-listen`: the certificate chain and key an operator gives
//! (cert-manager, OpenShift's service-serving certificates), for clients that refuse plain-HTTP
//! repositories (Maven 3.8.1+ blocks them by default).

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The server configuration for the TLS listener: the chain in `cert` (leaf first), the key
/// in `key`, HTTP/2 and HTTP/1.1 offered by ALPN. Errors name the file.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls-cert: cannot read {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls-cert: {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("tls-cert: {} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("tls-key: {}: {e}", key.display()))?;
    let mut cfg =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls-listen: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("tls-cert/tls-key: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
