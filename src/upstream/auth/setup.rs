//! Checks the parent-authentication options once, at configuration time, and fills each
//! parent's scheme, NTLM workstation and Kerberos client: `--parent-auth`,
//! `--parent-workstation`, `--parent-keytab`, `--krb5-conf`, `--krb5-realm`, `--krb5-kdc`
//! and the per-parent `[[peer]]` tables of the config file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::Choice;
use super::kerberos::{self, KeySource, Settings};
use super::krb5_files::{self, Krb5Conf};
use crate::upstream::settings::PeerConfig;

/// A `[[peer]]` table: authentication settings for one parent of `CACHE_PEER`, named by its
/// `host:port`. Credentials stay in `CACHE_PEER` (a Secret), never in the config file.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct PeerAuthOptions {
    /// `host:port` as written in `CACHE_PEER`.
    pub name: String,
    pub auth: Option<String>,
    pub workstation: Option<String>,
    pub keytab: Option<PathBuf>,
}

/// The global options, as given.
pub struct AuthOptions<'a> {
    pub scheme: Option<&'a str>,
    pub workstation: Option<&'a str>,
    pub keytab: Option<&'a Path>,
    pub krb5_conf: Option<&'a Path>,
    pub realm: Option<&'a str>,
    pub kdcs: &'a [String],
    pub per_peer: &'a [PeerAuthOptions],
    /// Time for one KDC exchange.
    pub kdc_timeout: Duration,
}

/// Fills the authentication of every peer; every problem is returned, naming the option.
pub fn apply(peers: &mut [PeerConfig], o: &AuthOptions) -> Vec<String> {
    let mut errs = Vec::new();
    let global = match o.scheme.map(str::parse::<Choice>) {
        None => Choice::Auto,
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            errs.push(format!("parent-auth: {e}"));
            Choice::Auto
        }
    };
    let conf = match o.krb5_conf {
        None => Krb5Conf::default(),
        Some(p) => match std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|t| krb5_files::parse_krb5_conf(&t))
        {
            Ok(c) => c,
            Err(e) => {
                errs.push(format!("krb5-conf: {}: {e}", p.display()));
                Krb5Conf::default()
            }
        },
    };
    for table in o.per_peer {
        if !peers.iter().any(|p| p.name() == table.name) {
            errs.push(format!(
                "peer `{}`: no parent of CACHE_PEER is called that (write host:port)",
                table.name
            ));
        }
    }
    for peer in peers.iter_mut() {
        let name = peer.name();
        let table = o.per_peer.iter().find(|t| t.name == name);
        let scheme = match table
            .and_then(|t| t.auth.as_deref())
            .map(str::parse::<Choice>)
        {
            None => global,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                errs.push(format!("peer `{name}` auth: {e}"));
                global
            }
        };
        peer.scheme = scheme;
        peer.workstation = table
            .and_then(|t| t.workstation.clone())
            .or_else(|| o.workstation.map(str::to_string))
            .unwrap_or_default();
        if matches!(scheme, Choice::Basic | Choice::Ntlm) && peer.credentials.is_none() {
            errs.push(format!(
                "parent-auth: {scheme} for {name} needs a user and password in CACHE_PEER"
            ));
        }
        let keytab = table.and_then(|t| t.keytab.as_deref()).or(o.keytab);
        match kerberos_for(peer, keytab, &conf, o) {
            Ok(k) => peer.kerberos = k.map(|s| Arc::new(kerberos::Client::new(s))),
            Err(e) if scheme == Choice::Negotiate || keytab.is_some() => {
                errs.push(format!("parent-auth: Negotiate for {name}: {e}"));
            }
            // In `auto` a parent may never ask for Negotiate: no Kerberos is no error.
            Err(_) => {}
        }
    }
    errs
}

/// The Kerberos settings for `peer`, `Ok(None)` when there is nothing to authenticate with.
fn kerberos_for(
    peer: &PeerConfig,
    keytab: Option<&Path>,
    conf: &Krb5Conf,
    o: &AuthOptions,
) -> Result<Option<Settings>, String> {
    let default_realm = o.realm.or(conf.default_realm.as_deref());
    // `DOMAIN\user` names a Windows domain, not a realm: the user part is the principal.
    let login = peer.credentials.as_ref().map(|c| {
        c.login
            .rsplit_once('\\')
            .map_or(c.login.as_str(), |(_, u)| u)
            .to_string()
    });
    let (principal, realm, source) = match keytab {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("cannot read the keytab {}: {e}", path.display()))?;
            let entries =
                krb5_files::parse_keytab(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            let (principal, realm) = match &login {
                Some(l) => kerberos::split_principal(l, default_realm)?,
                None => {
                    let first = entries
                        .first()
                        .ok_or_else(|| format!("the keytab {} is empty", path.display()))?;
                    (first.components.clone(), first.realm.clone())
                }
            };
            let mine: Vec<_> = entries
                .into_iter()
                .filter(|e| e.components == principal && e.realm == realm)
                .collect();
            if mine.is_empty() {
                return Err(format!(
                    "the keytab {} has no key for {}@{realm}",
                    path.display(),
                    principal.join("/")
                ));
            }
            (principal, realm, KeySource::Keytab(mine))
        }
        None => {
            let (Some(login), Some(creds)) = (&login, &peer.credentials) else {
                return Err(
                    "give --parent-keytab, or a user and password in CACHE_PEER".to_string()
                );
            };
            let (principal, realm) = kerberos::split_principal(login, default_realm)?;
            (
                principal,
                realm,
                KeySource::Password(Zeroizing::new(creds.password().to_string())),
            )
        }
    };
    let kdcs: Vec<String> = if o.kdcs.is_empty() {
        conf.kdcs.get(&realm).cloned().unwrap_or_default()
    } else {
        o.kdcs.to_vec()
    };
    if kdcs.is_empty() {
        return Err(format!(
            "no KDC for the realm {realm}: give --krb5-conf (with a [realms] entry) or --krb5-kdc"
        ));
    }
    Ok(Some(Settings {
        principal,
        realm,
        kdcs,
        source,
        timeout: o.kdc_timeout,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(spec: &str) -> Vec<PeerConfig> {
        crate::config::peer::parse_cache_peer(spec).unwrap()
    }

    fn opts<'a>(scheme: Option<&'a str>, kdcs: &'a [String]) -> AuthOptions<'a> {
        AuthOptions {
            scheme,
            workstation: Some("WS1"),
            keytab: None,
            krb5_conf: None,
            realm: None,
            kdcs,
            per_peer: &[],
            kdc_timeout: Duration::from_secs(3),
        }
    }

    #[test]
    fn auto_without_realm_has_no_kerberos_and_no_error() {
        let mut p = peers("CORP%5Cbuild:pw:proxy:8080");
        assert!(apply(&mut p, &opts(None, &[])).is_empty());
        assert!(p[0].kerberos.is_none());
        assert_eq!(p[0].scheme, Choice::Auto);
        assert_eq!(p[0].workstation, "WS1");
    }

    #[test]
    fn negotiate_needs_a_realm_and_a_kdc() {
        let mut p = peers("build:pw:proxy:8080");
        let errs = apply(&mut p, &opts(Some("negotiate"), &[]));
        assert!(errs[0].contains("realm"), "{errs:?}");
        let mut p = peers("build%40CUTTLE.TEST:pw:proxy:8080");
        let errs = apply(&mut p, &opts(Some("negotiate"), &[]));
        assert!(errs[0].contains("no KDC"), "{errs:?}");
        assert!(!errs[0].contains("pw"));
        let kdcs = vec!["127.0.0.1:88".to_string()];
        let mut p = peers("build%40CUTTLE.TEST:pw:proxy:8080");
        assert!(apply(&mut p, &opts(Some("negotiate"), &kdcs)).is_empty());
        let k = p[0].kerberos.as_ref().unwrap();
        assert_eq!(k.settings().principal_name(), "build@CUTTLE.TEST");
    }

    #[test]
    fn ntlm_needs_credentials_and_unknown_schemes_are_named() {
        let mut p = peers("proxy:8080");
        let errs = apply(&mut p, &opts(Some("ntlm"), &[]));
        assert!(errs[0].contains("needs a user and password"), "{errs:?}");
        let errs = apply(&mut p, &opts(Some("digest"), &[]));
        assert!(errs[0].starts_with("parent-auth:"), "{errs:?}");
    }

    #[test]
    fn per_peer_tables_override_and_must_name_a_peer() {
        let mut p = peers("u:p:a:1,u:p:b:2");
        let tables = vec![PeerAuthOptions {
            name: "b:2".into(),
            auth: Some("basic".into()),
            workstation: Some("B".into()),
            keytab: None,
        }];
        let o = AuthOptions {
            per_peer: &tables,
            ..opts(Some("ntlm"), &[])
        };
        assert!(apply(&mut p, &o).is_empty());
        assert_eq!(p[0].scheme, Choice::Ntlm);
        assert_eq!(p[1].scheme, Choice::Basic);
        assert_eq!(p[1].workstation, "B");
        let tables = vec![PeerAuthOptions {
            name: "c:3".into(),
            ..Default::default()
        }];
        let o = AuthOptions {
            per_peer: &tables,
            ..opts(None, &[])
        };
        assert!(apply(&mut p, &o)[0].contains("`c:3`"));
    }
}
