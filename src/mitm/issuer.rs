//! Per-host leaf certificates for intercepted hosts, signed by cuttle's CA with one leaf key
//! pair generated at start (never the CA's own key), cached in memory and minted once per
//! host even when many CONNECTs for a new host arrive at once (`try_get_with`).

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use rustls::ServerConfig;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::ca::Ca;

/// Leaves live this long, at most (and never past the CA); the cache forgets them earlier.
const LEAF_DAYS: i64 = 30;

pub struct CertIssuer {
    ca: Arc<Ca>,
    leaf_key: KeyPair,
    cache: moka::future::Cache<String, Arc<ServerConfig>>,
    minted: prometheus_client::metrics::counter::Counter,
}

impl CertIssuer {
    pub fn new(
        ca: Arc<Ca>,
        minted: prometheus_client::metrics::counter::Counter,
    ) -> Result<CertIssuer, String> {
        let leaf_key =
            KeyPair::generate().map_err(|e| format!("cannot generate the leaf key: {e}"))?;
        Ok(CertIssuer {
            ca,
            leaf_key,
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs((LEAF_DAYS as u64 / 2) * 24 * 3600))
                .build(),
            minted,
        })
    }

    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    /// The TLS server configuration presenting a certificate for `host`.
    pub async fn config_for(&self, host: &str) -> Result<Arc<ServerConfig>, String> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.cache
            .try_get_with(host.clone(), async { self.mint(&host).map(Arc::new) })
            .await
            .map_err(|e: Arc<String>| e.to_string())
    }

    fn mint(&self, host: &str) -> Result<ServerConfig, String> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.subject_alt_names = vec![match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.try_into()
                    .map_err(|e| format!("invalid host name {host}: {e}"))?,
            ),
        }];
        let now = time::OffsetDateTime::now_utc();
        // Backdated a little for clients whose clocks run behind.
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = (now + time::Duration::days(LEAF_DAYS)).min(self.ca.not_after);
        let mut serial = [0u8; 16];
        serial.copy_from_slice(
            &sha2::Digest::finalize(sha2::Digest::chain_update(
                <sha2::Sha256 as sha2::Digest>::new(),
                format!("{host}{}", now.unix_timestamp_nanos()),
            ))[..16],
        );
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&self.leaf_key, &self.ca.issuer)
            .map_err(|e| format!("cannot sign a certificate for {host}: {e}"))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut cfg =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone(), self.ca.cert_der.clone()], key)
                .map_err(|e| format!("certificate for {host}: {e}"))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        self.minted.inc();
        tracing::debug!(host, "minted a leaf certificate");
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mints_once_per_host_under_concurrency() {
        let ca = Arc::new(Ca::generate(&["example.test".into()], 30).unwrap());
        let minted = prometheus_client::metrics::counter::Counter::default();
        let issuer = Arc::new(CertIssuer::new(ca, minted.clone()).unwrap());
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let i = issuer.clone();
            tasks.push(tokio::spawn(async move {
                i.config_for("Registry.Example.Test").await.unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(minted.get(), 1);
        issuer.config_for("other.example.test").await.unwrap();
        assert_eq!(minted.get(), 2);
    }
}
