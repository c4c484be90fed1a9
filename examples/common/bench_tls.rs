//! The benchmark servers' TLS (examples/bench_origin.rs, examples/bench_registry.rs): an
//! acceptor whose certificate, for `localhost` and `127.0.0.1`, is issued by a CA made for
//! the run.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// The acceptor; the CA certificate (common name `ca_name`) is written to `ca_out` for clients
/// to trust. `tls13_only` refuses TLS 1.2 (the tunnel benchmark is specified as TLS 1.3 end
/// to end); otherwise rustls' safe defaults.
pub fn tls_acceptor(ca_out: &Path, ca_name: &str, tls13_only: bool) -> anyhow::Result<TlsAcceptor> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    std::fs::write(ca_out, ca_cert.pem())
        .with_context(|| format!("cannot write {}", ca_out.display()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ));
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])?
    } else {
        builder.with_safe_default_protocol_versions()?
    };
    let mut cfg = builder
        .with_no_client_auth()
        .with_single_cert(vec![leaf_cert.der().clone()], key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}
