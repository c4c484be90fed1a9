//! The `CACHE_PEER` grammar (the Squid image's parent-proxy variable: user, password, host
//! and port, several for failover) and reading secrets from `*_FILE` paths.

use percent_encoding::percent_decode_str;

use crate::upstream::auth::{Choice, Credentials};
use crate::upstream::parent::PeerConfig;

/// Parses `CACHE_PEER`: comma-separated peers, each either
/// `url_encoded_user:url_encoded_password:host:port` (Squid image form; user and password
/// percent-decoded like Squid's `login=`, both empty for no auth, IPv6 host in brackets),
/// `host:port`, or `http://user:pass@host:port`.
/// Errors name the peer (1-based) and the part that is wrong, but quote nothing of the
/// value: a mistyped entry (`user:secret` without a host) would otherwise echo the password.
pub fn parse_cache_peer(value: &str) -> Result<Vec<PeerConfig>, String> {
    let mut peers = Vec::new();
    for (i, entry) in value.split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let peer = parse_one(entry).map_err(|e| format!("peer {}: {e}", i + 1))?;
        peers.push(peer);
    }
    if peers.is_empty() {
        return Err("no peer given".into());
    }
    Ok(peers)
}

fn parse_one(entry: &str) -> Result<PeerConfig, String> {
    if let Some(rest) = entry.strip_prefix("http://") {
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (host, port) = split_host_port(hostport)?;
        let (user, pass) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((a, b)) => (a, b),
                None => (u, ""),
            },
            None => ("", ""),
        };
        return build(host, port, user, pass);
    }
    if entry.contains("://") {
        return Err("only http:// parent URLs are supported".into());
    }
    // user:pass:host:port. The host may be a bracketed IPv6 literal; the user and password
    // cannot contain a raw ':' (it must be written %3A), so the split is unambiguous.
    let (head, port) = entry
        .rsplit_once(':')
        .ok_or("expected url_encoded_user:url_encoded_password:host:port")?;
    let (creds, host) = if let Some(h) = head.strip_suffix(']') {
        let open = h.rfind('[').ok_or("unbalanced ']' in host")?;
        let creds = &h[..open];
        (creds.strip_suffix(':'), &head[open..])
    } else {
        // `[::1:3128` (no closing bracket) would otherwise split into host `1` with the
        // rest of the address taken as credentials.
        if let Some(open) = head.rfind('[') {
            let tail = &head[open + 1..];
            if !tail.is_empty()
                && tail
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return Err("unbalanced '[' in host (an IPv6 host is written [addr]:port)".into());
            }
        }
        match head.rsplit_once(':') {
            Some((c, h)) => (Some(c), h),
            None => (None, head),
        }
    };
    let hostport = format!("{host}:{port}");
    let (host, port) = split_host_port(&hostport)?;
    match creds {
        None | Some("") => build(host, port, "", ""),
        Some(c) => {
            let (user, pass) = c.split_once(':').ok_or(
                "expected url_encoded_user:url_encoded_password:host:port (user and password \
                 are separated by ':'; write a ':' inside them as %3A)",
            )?;
            build(host, port, user, pass)
        }
    }
}

fn split_host_port(hp: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = hp.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or("IPv6 host needs [addr]:port")?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("host in brackets is not a valid IPv6 address".into());
        }
        (h.to_string(), p)
    } else {
        let (h, p) = hp.rsplit_once(':').ok_or("missing :port")?;
        (h.to_string(), p)
    };
    if host.is_empty() {
        return Err("host is empty".into());
    }
    if host.contains(|c: char| c.is_whitespace() || c == '@' || c == '/' || c == ':')
        && !hp.starts_with('[')
    {
        return Err("host contains an invalid character".into());
    }
    let port = match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err("port is not a number from 1 to 65535".into()),
        Ok(p) => p,
    };
    Ok((host.to_ascii_lowercase(), port))
}

fn build(host: String, port: u16, user: &str, pass: &str) -> Result<PeerConfig, String> {
    let user = percent_decode_str(user).collect::<Vec<u8>>();
    let pass = percent_decode_str(pass).collect::<Vec<u8>>();
    let credentials = if user.is_empty() && pass.is_empty() {
        None
    } else {
        // NTLM and Kerberos need text; Basic alone could carry bytes, but a password that
        // is not UTF-8 is a typo far more often than a real credential.
        let user = String::from_utf8(user).map_err(|_| "user is not UTF-8 once decoded")?;
        let pass = zeroize::Zeroizing::new(
            String::from_utf8(pass).map_err(|_| "password is not UTF-8 once decoded")?,
        );
        Some(std::sync::Arc::new(Credentials::new(&user, &pass)?))
    };
    Ok(PeerConfig {
        host,
        port,
        user: credentials.as_ref().map(|c| c.login.clone()),
        auth: credentials.as_ref().map(|c| c.basic().clone()),
        credentials,
        scheme: Choice::Auto,
        workstation: String::new(),
        kerberos: None,
    })
}

/// Reads a secret from a file (Kubernetes Secret mounts end in a newline: trimmed).
pub fn read_secret_file(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn basic(p: &PeerConfig) -> String {
        let v = p.auth.as_ref().unwrap().to_str().unwrap();
        let b = base64::engine::general_purpose::STANDARD
            .decode(v.strip_prefix("Basic ").unwrap())
            .unwrap();
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn squid_image_form_is_percent_decoded() {
        let p = parse_cache_peer("corp%5Cbuild:p%40ss%3Aword:proxy.corp.example:8080").unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].host, "proxy.corp.example");
        assert_eq!(p[0].port, 8080);
        assert_eq!(basic(&p[0]), "corp\\build:p@ss:word");
        assert_eq!(p[0].user.as_deref(), Some("corp\\build"));
        assert!(p[0].auth.as_ref().unwrap().is_sensitive());
    }

    #[test]
    fn empty_credentials_mean_no_auth() {
        let p = parse_cache_peer("::proxy:3128").unwrap();
        assert!(p[0].auth.is_none());
        let p = parse_cache_peer("proxy:3128").unwrap();
        assert!(p[0].auth.is_none());
    }

    #[test]
    fn ipv6_and_url_forms_and_lists() {
        let p = parse_cache_peer("u:p:[2001:db8::1]:3128, http://a%40b:c%25d@[::1]:8080/").unwrap();
        assert_eq!(p[0].host, "2001:db8::1");
        assert_eq!(p[0].port, 3128);
        assert_eq!(p[1].host, "::1");
        assert_eq!(basic(&p[1]), "a@b:c%d");
    }

    #[test]
    fn errors_name_the_part_without_secrets() {
        let e = parse_cache_peer("user:s3cret:host:99999").unwrap_err();
        assert!(e.contains("port"), "{e}");
        assert!(!e.contains("s3cret"));
        let e = parse_cache_peer("user:s3cret::3128").unwrap_err();
        assert!(e.contains("host is empty"), "{e}");
        let e = parse_cache_peer("a:b:c:d:e").unwrap_err();
        assert!(e.contains("port") || e.contains("expected"), "{e}");
        let e = parse_cache_peer("socks5://h:1").unwrap_err();
        assert!(e.contains("http://"));
        assert!(parse_cache_peer(" , ").is_err());
        let e = parse_cache_peer("ok:1,bad").unwrap_err();
        assert!(e.starts_with("peer 2"), "{e}");
    }
}
