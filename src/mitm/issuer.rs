//! Per-host leaf certificates for intercepted hosts, signed by cuttle's CA with one leaf key
//! pair generated at start (never the CA's own key), cached in memory and minted once per
//! host even when many CONNECTs for a new host arrive at once (`try_get_with`). New hosts are
//! minted at a bounded rate (a token bucket): a client cycling through names under an
//! intercepted pattern (`*.example.org`) cannot make cuttle sign without end or churn the
//! cache; over the rate the handshake is refused, and that is logged once per interval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use rustls::ServerConfig;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::ca::Ca;

/// Leaves live this long, at most (and never past the CA); the cache forgets them earlier.
const LEAF_DAYS: i64 = 30;

/// Certificates minted at once before the rate applies: the hosts of a build's first
/// minutes (registries, their CDNs) come together.
pub const MINT_BURST: u32 = 50;
/// New certificates per second after the burst: far above the rate at which a build meets
/// new intercepted hosts, far below what signing costs a busy proxy.
pub const MINT_PER_SECOND: u32 = 5;
/// Refusals are logged at most once per this interval, with their count.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(burst: u32, per_second: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_second: f64::from(per_second),
            last: now,
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The bucket and the refusals not logged yet.
#[derive(Debug)]
struct MintLimit {
    bucket: TokenBucket,
    refused: u64,
    last_log: Option<Instant>,
}

impl MintLimit {
    /// Whether a new certificate may be minted now; a refusal is counted, and logged when
    /// none was logged within [`REFUSAL_LOG_INTERVAL`].
    fn allow(&mut self, now: Instant) -> bool {
        if self.bucket.take(now) {
            return true;
        }
        self.refused += 1;
        let due = self
            .last_log
            .is_none_or(|t| now.saturating_duration_since(t) >= REFUSAL_LOG_INTERVAL);
        if due {
            tracing::warn!(
                refused = self.refused,
                "certificate minting is over its rate ({MINT_BURST} at once, then \
                 {MINT_PER_SECOND}/s): TLS handshakes for new intercepted hosts are refused"
            );
            self.refused = 0;
            self.last_log = Some(now);
        }
        false
    }
}

pub struct CertIssuer {
    ca: Arc<Ca>,
    leaf_key: KeyPair,
    cache: moka::future::Cache<String, Arc<ServerConfig>>,
    minted: prometheus_client::metrics::counter::Counter,
    limit: parking_lot::Mutex<MintLimit>,
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
            limit: parking_lot::Mutex::new(MintLimit {
                bucket: TokenBucket::new(MINT_BURST, MINT_PER_SECOND, Instant::now()),
                refused: 0,
                last_log: None,
            }),
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
        if !self.limit.lock().allow(Instant::now()) {
            return Err(format!(
                "not minting a certificate for {host}: over the minting rate"
            ));
        }
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

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, 2, t0);
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        // Half a second at 2/s: one more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.take(t1));
        assert!(!b.take(t1));
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.take(t2)));
        assert!(!b.take(t2));
    }

    #[test]
    fn refusals_are_logged_once_per_interval() {
        let t0 = Instant::now();
        let mut l = MintLimit {
            bucket: TokenBucket::new(1, 1, t0),
            refused: 0,
            last_log: None,
        };
        assert!(l.allow(t0));
        assert!(!l.allow(t0));
        assert_eq!(l.last_log, Some(t0));
        let soon = t0 + Duration::from_millis(100);
        assert!(!l.allow(soon));
        assert!(!l.allow(soon));
        assert_eq!(
            (l.last_log, l.refused),
            (Some(t0), 2),
            "not logged again yet"
        );
        let later = t0 + REFUSAL_LOG_INTERVAL + Duration::from_millis(100);
        l.bucket.tokens = 0.0;
        l.bucket.last = later;
        assert!(!l.allow(later));
        assert_eq!((l.last_log, l.refused), (Some(later), 0));
    }

    #[tokio::test]
    async fn minting_over_the_rate_is_refused_but_cached_hosts_are_served() {
        let ca = Arc::new(Ca::generate(&["example.test".into()], 30).unwrap());
        let minted = prometheus_client::metrics::counter::Counter::default();
        let issuer = CertIssuer::new(ca, minted.clone()).unwrap();
        let mut refused = 0;
        for i in 0..(MINT_BURST + 20) {
            if issuer
                .config_for(&format!("h{i}.example.test"))
                .await
                .is_err()
            {
                refused += 1;
            }
        }
        assert!(refused >= 19, "{refused} refused");
        assert!(minted.get() <= u64::from(MINT_BURST) + 1);
        issuer.config_for("h0.example.test").await.unwrap();
    }
}
