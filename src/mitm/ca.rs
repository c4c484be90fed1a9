//! cuttle's interception CA: loaded from PEM files (`--ca-cert`/`--ca-key`, or the `*_FILE`
//! variables of a mounted Secret), created once by `cuttle ca init`, or generated for the
//! life of the process when interception is on and none is given. A CA made by cuttle carries
//! X.509 Name Constraints limited to the intercepted domains when they are all explicit
//! names, so a stolen key cannot mint certificates for anything else.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, GeneralSubtree, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls_pki_types::CertificateDer;

/// A CA able to sign leaf certificates.
pub struct Ca {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub issuer: Issuer<'static, KeyPair>,
    /// When the CA certificate expires (leaves never outlive it).
    pub not_after: time::OffsetDateTime,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca(..)")
    }
}

/// The permitted DNS subtrees for `patterns`, or `None` when some pattern is not an explicit
/// name (`*`, an IP, a CIDR): then no constraint can describe them.
pub fn name_constraints(patterns: &[String]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for p in patterns {
        let p = p.trim().to_ascii_lowercase();
        let name = p.strip_prefix("*.").unwrap_or(p.trim_start_matches('.'));
        let is_name = !name.is_empty()
            && name.parse::<std::net::IpAddr>().is_err()
            && !name.contains('/')
            && !name.contains('*')
            && name.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !is_name {
            return None;
        }
        out.push(name.to_string());
    }
    (!out.is_empty()).then_some(out)
}

impl Ca {
    /// A new CA (`days` of validity), name-constrained to `intercept` when possible.
    pub fn generate(intercept: &[String], days: i64) -> Result<Ca, String> {
        let key = KeyPair::generate().map_err(|e| format!("cannot generate the CA key: {e}"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "cuttle interception CA");
        dn.push(DnType::OrganizationName, "cuttle");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(days);
        if let Some(names) = name_constraints(intercept) {
            params.name_constraints = Some(NameConstraints {
                permitted_subtrees: names.into_iter().map(GeneralSubtree::DnsName).collect(),
                excluded_subtrees: Vec::new(),
            });
        }
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("cannot sign the CA certificate: {e}"))?;
        let not_after = params.not_after;
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        Ok(Ca {
            cert_pem,
            cert_der,
            issuer: Issuer::new(params, key),
            not_after,
        })
    }

    /// Loads a CA from PEM text (certificate and private key).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("CA key: {e}"))?;
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| format!("CA certificate: {e}"))?;
        let der: CertificateDer<'static> = der;
        let not_after = not_after(&der)?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| format!("CA certificate: {e}"))?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            cert_der: der,
            issuer,
            not_after,
        })
    }

    /// The intercept patterns this CA cannot serve because its Name Constraints do not permit
    /// them (clients reject such leaves: "permitted subtree violation"). Empty when the CA has
    /// no DNS name constraints. IP and CIDR patterns are not checked (DNS constraints do not
    /// bind IP addresses).
    pub fn outside_constraints(&self, patterns: &[String]) -> Vec<String> {
        use x509_parser::extensions::GeneralName;
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(&self.cert_der) else {
            return Vec::new();
        };
        let Ok(Some(nc)) = cert.name_constraints() else {
            return Vec::new();
        };
        let permitted: Vec<String> = nc
            .value
            .permitted_subtrees
            .iter()
            .flatten()
            .filter_map(|s| match &s.base {
                GeneralName::DNSName(d) => Some(d.trim_start_matches('.').to_ascii_lowercase()),
                _ => None,
            })
            .collect();
        if permitted.is_empty() {
            return Vec::new();
        }
        patterns
            .iter()
            .filter(|raw| {
                let p = raw.trim().to_ascii_lowercase();
                if p.parse::<std::net::IpAddr>().is_ok() || p.parse::<ipnet::IpNet>().is_ok() {
                    return false;
                }
                let name = p.strip_prefix("*.").unwrap_or(p.trim_start_matches('.'));
                !permitted
                    .iter()
                    .any(|d| name == d || name.ends_with(&format!(".{d}")))
            })
            .cloned()
            .collect()
    }

    /// Loads a CA from files.
    pub fn load(cert: &Path, key: &Path) -> Result<Ca, String> {
        let c = std::fs::read_to_string(cert)
            .map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
        let k = std::fs::read_to_string(key)
            .map_err(|e| format!("cannot read {}: {e}", key.display()))?;
        Ca::from_pem(&c, &k)
    }

    /// `cuttle ca init`: writes `ca.pem` (0644) and `ca-key.pem` (0600) into `dir`, refusing
    /// to overwrite an existing CA.
    pub fn init(dir: &Path, intercept: &[String], days: i64) -> Result<Ca, String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        if cert_path.exists() || key_path.exists() {
            return Err(format!(
                "{} already holds a CA; refusing to overwrite it",
                dir.display()
            ));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let ca = Ca::generate(intercept, days)?;
        let key_pem = ca.issuer.key().serialize_pem();
        let mut k = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(|e| format!("cannot write {}: {e}", key_path.display()))?;
        k.write_all(key_pem.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", key_path.display()))?;
        let mut c = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&cert_path)
            .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
        c.write_all(ca.cert_pem.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
        Ok(ca)
    }
}

/// The certificate's expiry (leaves must not outlive the CA).
fn not_after(der: &CertificateDer<'_>) -> Result<time::OffsetDateTime, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("CA certificate: {e}"))?;
    Ok(cert.validity().not_after.to_datetime())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_only_for_explicit_names() {
        let names =
            |v: &[&str]| name_constraints(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            names(&["registry.example.com", "*.files.example.org"]),
            Some(vec![
                "registry.example.com".into(),
                "files.example.org".into()
            ])
        );
        assert_eq!(names(&["*"]), None);
        assert_eq!(names(&["10.0.0.0/8"]), None);
        assert_eq!(names(&["1.2.3.4"]), None);
    }

    #[test]
    fn generate_init_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), &["registry.example".into()], 30).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("ca-key.pem"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            Ca::init(dir.path(), &[], 30)
                .unwrap_err()
                .contains("refusing")
        );
        let loaded = Ca::load(&dir.path().join("ca.pem"), &dir.path().join("ca-key.pem")).unwrap();
        assert_eq!(loaded.cert_der, ca.cert_der);
        let (_, x509) = x509_parser::parse_x509_certificate(&ca.cert_der).unwrap();
        let nc = x509.name_constraints().unwrap().unwrap();
        assert!(format!("{:?}", nc.value).contains("registry.example"));
        assert!(Ca::from_pem("junk", "junk").is_err());
    }

    #[test]
    fn patterns_outside_the_name_constraints() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ca = Ca::generate(&v(&["registry.example", "*.files.example.org"]), 30).unwrap();
        assert!(
            ca.outside_constraints(&v(&[
                "registry.example",
                "Mirror.Registry.Example",
                "*.files.example.org",
                "files.example.org",
                "10.0.0.0/8",
                "192.0.2.1",
            ]))
            .is_empty()
        );
        assert_eq!(
            ca.outside_constraints(&v(&["localhost", "*", "example.org", "xregistry.example"])),
            v(&["localhost", "*", "example.org", "xregistry.example"])
        );
        let open = Ca::generate(&v(&["*"]), 30).unwrap();
        assert!(
            open.outside_constraints(&v(&["anything.example", "*"]))
                .is_empty()
        );
    }
}
