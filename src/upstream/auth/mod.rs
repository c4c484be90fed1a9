//! Authentication to parent proxies: Basic, NTLM (NTLMv2 only) and Negotiate (Kerberos in
//! SPNEGO), picked per parent from its `Proxy-Authenticate` challenge (or forced by
//! `--parent-auth`), remembered per parent, and driven one connection at a time by
//! [`Handshake`]: NTLM and Negotiate authenticate a connection, not a request.

pub mod kerberos;
pub mod krb5_files;
pub mod ntlm;
pub mod setup;
pub mod spnego;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use base64::Engine;
use http::{HeaderMap, HeaderValue, header};
use parking_lot::Mutex;
use zeroize::Zeroizing;

use crate::error::ProxyError;

/// Largest token accepted in a challenge (base64-decoded); far above any real NTLM or
/// SPNEGO answer, and it bounds what a hostile parent can make cuttle decode.
const MAX_TOKEN: usize = 12 * 1024;

/// A scheme cuttle can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Basic,
    Ntlm,
    Negotiate,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Basic => "Basic",
            Scheme::Ntlm => "NTLM",
            Scheme::Negotiate => "Negotiate",
        }
    }

    fn from_name(name: &str) -> Option<Scheme> {
        match name.to_ascii_lowercase().as_str() {
            "basic" => Some(Scheme::Basic),
            "ntlm" => Some(Scheme::Ntlm),
            "negotiate" => Some(Scheme::Negotiate),
            _ => None,
        }
    }
}

/// `--parent-auth`: which scheme to use with a parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Choice {
    /// Answer the parent's 407 with the strongest scheme it offers and cuttle can do.
    #[default]
    Auto,
    /// Basic, sent pre-emptively with every request.
    Basic,
    Ntlm,
    Negotiate,
}

impl FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> Result<Choice, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Choice::Auto),
            "basic" => Ok(Choice::Basic),
            "ntlm" => Ok(Choice::Ntlm),
            "negotiate" | "kerberos" => Ok(Choice::Negotiate),
            other => Err(format!(
                "`{other}` is not one of auto, basic, ntlm, negotiate"
            )),
        }
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Choice::Auto => "auto",
            Choice::Basic => "basic",
            Choice::Ntlm => "ntlm",
            Choice::Negotiate => "negotiate",
        })
    }
}

/// The user and password of a parent from `CACHE_PEER`, with what is derived from them once:
/// the Basic header value (marked sensitive) and the NT hash (zeroed on drop). Never printed.
pub struct Credentials {
    /// The user as given (percent-decoded): `DOMAIN\user`, `user@realm` or `user`.
    pub login: String,
    password: Zeroizing<String>,
    basic: HeaderValue,
    nt_hash: ntlm::NtHash,
}

impl Credentials {
    pub fn new(login: &str, password: &str) -> Result<Credentials, String> {
        if login.contains(':') {
            return Err("user must not contain ':' (Basic authentication cannot carry it)".into());
        }
        let raw = Zeroizing::new(format!("{login}:{password}"));
        let token = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*raw));
        let mut basic = HeaderValue::from_str(&format!("Basic {}", &*token))
            .map_err(|_| "credentials cannot be encoded")?;
        basic.set_sensitive(true);
        Ok(Credentials {
            login: login.to_string(),
            password: Zeroizing::new(password.to_string()),
            basic,
            nt_hash: ntlm::NtHash::from_password(password),
        })
    }

    pub fn basic(&self) -> &HeaderValue {
        &self.basic
    }

    pub fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}:****)", self.login)
    }
}

/// One challenge of a `Proxy-Authenticate` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The scheme as named by the parent, lower-cased.
    pub name: String,
    pub scheme: Option<Scheme>,
    /// A decoded token68 (NTLM and Negotiate continuation data), if any.
    pub token: Option<Vec<u8>>,
}

/// Splits a header value at commas outside quoted strings.
fn split_list(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in v.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&v[start..]);
    out
}

/// The challenges of every `Proxy-Authenticate` field (RFC 9110 §11.7.1, §11.3:
/// `challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`, several per field,
/// comma-separated). A list element that starts with a token and a space starts a new
/// challenge; a bare `name=value` element is a parameter of the one before. Tokens that are
/// not valid base64 or too large are dropped, not fatal: the scheme is still seen.
pub fn parse_offers(headers: &HeaderMap) -> Vec<Offer> {
    let mut out = Vec::new();
    for v in headers.get_all(header::PROXY_AUTHENTICATE) {
        let Ok(v) = v.to_str() else { continue };
        for element in split_list(v) {
            let element = element.trim();
            if element.is_empty() {
                continue;
            }
            let (first, rest) = match element.split_once([' ', '\t']) {
                Some((a, b)) => (a, b.trim()),
                None => (element, ""),
            };
            if first.contains('=') {
                // An auth-param of the previous challenge.
                continue;
            }
            let is_token68 = !rest.is_empty()
                && !rest.contains([' ', ',', '"'])
                && rest.trim_end_matches('=').bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
                });
            let token = if is_token68 && rest.len() <= MAX_TOKEN * 4 / 3 + 4 {
                base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .ok()
                    .filter(|t| t.len() <= MAX_TOKEN)
            } else {
                None
            };
            out.push(Offer {
                name: first.to_ascii_lowercase(),
                scheme: Scheme::from_name(first),
                token,
            });
        }
    }
    out
}

/// What this parent's configuration lets cuttle do.
#[derive(Debug, Clone, Copy)]
pub struct Abilities {
    pub basic: bool,
    pub ntlm: bool,
    pub negotiate: bool,
}

/// The strongest scheme both sides can do: Negotiate (Kerberos), then NTLM, then Basic.
pub fn strongest(offers: &[Offer], can: Abilities) -> Option<Scheme> {
    let offered = |s: Scheme| offers.iter().any(|o| o.scheme == Some(s));
    [
        (Scheme::Negotiate, can.negotiate),
        (Scheme::Ntlm, can.ntlm),
        (Scheme::Basic, can.basic),
    ]
    .into_iter()
    .find(|(s, able)| *able && offered(*s))
    .map(|(s, _)| s)
}

fn header_value(scheme: Scheme, token: &[u8]) -> Result<HeaderValue, ProxyError> {
    let text = format!(
        "{} {}",
        scheme.name(),
        base64::engine::general_purpose::STANDARD.encode(token)
    );
    let mut v = HeaderValue::from_str(&text).map_err(|_| ProxyError::ParentAuthFailed {
        peer: String::new(),
        reason: "token cannot be encoded".into(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// How authentication with a parent last went, for one log line per change.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AuthState {
    Unknown,
    Ok(Scheme),
    Failed(String),
}

/// Remembered scheme values (`AtomicU8`).
const LEARNED_UNKNOWN: u8 = 0;
const LEARNED_NONE: u8 = 1;

fn learned_code(s: Option<Scheme>) -> u8 {
    match s {
        None => LEARNED_NONE,
        Some(Scheme::Basic) => 2,
        Some(Scheme::Ntlm) => 3,
        Some(Scheme::Negotiate) => 4,
    }
}

/// The authentication state of one parent: configuration, the remembered scheme and the
/// Kerberos client (with its ticket cache).
pub struct ParentAuth {
    peer: String,
    /// The parent's host name, for the service principal `HTTP/<host>`.
    host: String,
    choice: Choice,
    credentials: Option<Arc<Credentials>>,
    workstation: String,
    kerberos: Option<Arc<kerberos::Client>>,
    learned: AtomicU8,
    state: Mutex<AuthState>,
}

impl fmt::Debug for ParentAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParentAuth({}, {})", self.peer, self.choice)
    }
}

impl ParentAuth {
    pub fn new(
        peer: String,
        host: String,
        choice: Choice,
        credentials: Option<Arc<Credentials>>,
        workstation: String,
        kerberos: Option<Arc<kerberos::Client>>,
    ) -> ParentAuth {
        ParentAuth {
            peer,
            host,
            choice,
            credentials,
            workstation,
            kerberos,
            learned: AtomicU8::new(LEARNED_UNKNOWN),
            state: Mutex::new(AuthState::Unknown),
        }
    }

    pub fn choice(&self) -> Choice {
        self.choice
    }

    fn abilities(&self) -> Abilities {
        let creds = self.credentials.is_some();
        Abilities {
            basic: creds,
            ntlm: creds,
            negotiate: self.kerberos.is_some(),
        }
    }

    /// The scheme to start a new connection with: forced by the configuration, or learned
    /// from this parent's earlier challenge. `Err(())` when nothing is known yet (`auto`
    /// before the first 407).
    fn initial(&self) -> Result<Option<Scheme>, ()> {
        match self.choice {
            Choice::Basic => Ok(self.credentials.as_ref().map(|_| Scheme::Basic)),
            Choice::Ntlm => Ok(Some(Scheme::Ntlm)),
            Choice::Negotiate => Ok(Some(Scheme::Negotiate)),
            Choice::Auto => match self.learned.load(Ordering::Relaxed) {
                LEARNED_UNKNOWN => Err(()),
                LEARNED_NONE => Ok(None),
                2 => Ok(Some(Scheme::Basic)),
                3 => Ok(Some(Scheme::Ntlm)),
                _ => Ok(Some(Scheme::Negotiate)),
            },
        }
    }

    /// Whether a request must be ready to be sent twice: in `auto` mode before this parent
    /// has shown whether (and how) it wants authentication.
    pub fn discovering(&self) -> bool {
        self.initial().is_err()
    }

    /// Whether requests on an authenticated connection carry a header each (Basic) rather
    /// than the connection being authenticated once.
    pub fn per_request_header(&self) -> Option<HeaderValue> {
        match self.initial() {
            Ok(Some(Scheme::Basic)) => self.credentials.as_ref().map(|c| c.basic().clone()),
            _ => None,
        }
    }

    /// Whether new connections need a multi-leg handshake before the real request (NTLM).
    pub fn connection_scheme(&self) -> Option<Scheme> {
        match self.initial() {
            Ok(Some(s @ (Scheme::Ntlm | Scheme::Negotiate))) => Some(s),
            _ => None,
        }
    }

    pub fn begin(self: &Arc<Self>) -> Handshake {
        Handshake {
            auth: self.clone(),
            stage: Stage::Fresh,
        }
    }

    fn learn(&self, s: Option<Scheme>) {
        let code = learned_code(s);
        let old = self.learned.swap(code, Ordering::Relaxed);
        if old != code && self.choice == Choice::Auto {
            match s {
                Some(s) => {
                    tracing::info!(peer = %self.peer, scheme = s.name(), "parent proxy asks for authentication; using this scheme")
                }
                None => tracing::debug!(peer = %self.peer, "parent proxy needs no authentication"),
            }
        }
    }

    /// Notes that the parent let a request through without authentication (while learning).
    pub fn note_no_auth(&self) {
        if self.discovering() {
            self.learn(None);
        }
    }

    /// Forgets the learned scheme (`auto` only) after the parent refused a connection it had
    /// accepted: the next connection learns again from its 407.
    pub fn forget(&self) {
        if self.choice == Choice::Auto {
            self.learned.store(LEARNED_UNKNOWN, Ordering::Relaxed);
        }
    }

    fn set_state(&self, new: AuthState) {
        let mut cur = self.state.lock();
        if *cur == new {
            return;
        }
        match &new {
            AuthState::Ok(s) => {
                tracing::info!(peer = %self.peer, scheme = s.name(), "authenticated to parent proxy")
            }
            AuthState::Failed(why) => {
                tracing::warn!(peer = %self.peer, problem = %why, "authentication to parent proxy failed")
            }
            AuthState::Unknown => {}
        }
        *cur = new;
    }

    /// Records a failure (one log line per change) and returns it as the error to send.
    pub fn fail(&self, e: ProxyError) -> ProxyError {
        if let ProxyError::ParentAuthRejected { .. } | ProxyError::ParentAuthFailed { .. } = e {
            self.set_state(AuthState::Failed(e.to_string()));
        }
        e
    }

    fn rejected(&self, scheme: Scheme) -> ProxyError {
        let reason = match scheme {
            // The message users and tests already know ("rejected cuttle's credentials").
            Scheme::Basic => {
                return self.fail(ProxyError::ParentAuthRejected {
                    peer: self.peer.clone(),
                });
            }
            Scheme::Ntlm => {
                "it rejected the NTLM credentials: check the user (DOMAIN\\user, written \
                 DOMAIN%5Cuser in CACHE_PEER) and the password; the account may also be locked \
                 or not allowed to use the proxy"
            }
            Scheme::Negotiate => {
                "it rejected the Kerberos ticket: check that the parent's keytab holds \
                 HTTP/<parent host> and that cuttle addresses the parent by that host name"
            }
        };
        self.fail(ProxyError::ParentAuthFailed {
            peer: self.peer.clone(),
            reason: reason.into(),
        })
    }

    fn failed(&self, reason: String) -> ProxyError {
        self.fail(ProxyError::ParentAuthFailed {
            peer: self.peer.clone(),
            reason,
        })
    }

    async fn first_message(
        &self,
        scheme: Option<Scheme>,
    ) -> Result<(Stage, Option<HeaderValue>), ProxyError> {
        Ok(match scheme {
            None => (Stage::SentNone, None),
            Some(Scheme::Basic) => match &self.credentials {
                Some(c) => (Stage::SentBasic, Some(c.basic().clone())),
                None => return Err(self.no_credentials(Scheme::Basic)),
            },
            Some(Scheme::Ntlm) => {
                if self.credentials.is_none() {
                    return Err(self.no_credentials(Scheme::Ntlm));
                }
                let msg = ntlm::negotiate();
                let h = header_value(Scheme::Ntlm, &msg)?;
                (Stage::SentNtlmNegotiate(msg), Some(h))
            }
            Some(Scheme::Negotiate) => {
                let Some(k) = &self.kerberos else {
                    return Err(self.failed(
                        "it asks for Negotiate (Kerberos) but cuttle has no Kerberos \
                         configuration: give --parent-keytab or a user@REALM in CACHE_PEER, \
                         and the realm's KDC with --krb5-conf or --krb5-kdc"
                            .into(),
                    ));
                };
                let token = k
                    .initiate(&self.host)
                    .await
                    .map_err(|e| self.failed(e.to_string()))?;
                (
                    Stage::SentNegotiate,
                    Some(header_value(Scheme::Negotiate, &token)?),
                )
            }
        })
    }

    fn no_credentials(&self, s: Scheme) -> ProxyError {
        self.failed(format!(
            "it asks for {} authentication but CACHE_PEER has no user and password for it",
            s.name()
        ))
    }
}

#[derive(Debug)]
enum Stage {
    Fresh,
    SentNone,
    SentBasic,
    SentNtlmNegotiate(Vec<u8>),
    SentNtlmAuthenticate,
    SentNegotiate,
}

/// What to do after a 407.
#[derive(Debug)]
pub enum Next {
    /// Send the request again with this header. `same_connection`: it continues a
    /// handshake that only this connection can finish (NTLM's AUTHENTICATE).
    Retry {
        header: Option<HeaderValue>,
        same_connection: bool,
    },
}

/// The authentication of one connection to a parent, leg by leg.
pub struct Handshake {
    auth: Arc<ParentAuth>,
    stage: Stage,
}

impl Handshake {
    /// The header for the first request on the connection (none when the scheme is not
    /// known yet, or the parent needs none).
    pub async fn start(&mut self) -> Result<Option<HeaderValue>, ProxyError> {
        let scheme = self.auth.initial().unwrap_or(None);
        let (stage, header) = self.auth.first_message(scheme).await?;
        self.stage = stage;
        Ok(header)
    }

    /// Whether the last header sent opened a multi-leg exchange whose next leg is still to
    /// come (so the request sent with it was only a carrier: NTLM's NEGOTIATE).
    pub fn is_carrier_leg(&self) -> bool {
        matches!(self.stage, Stage::SentNtlmNegotiate(_))
    }

    /// The answer to a 407 from the parent.
    pub async fn on_407(&mut self, headers: &HeaderMap) -> Result<Next, ProxyError> {
        let offers = parse_offers(headers);
        let auth = self.auth.clone();
        match std::mem::replace(&mut self.stage, Stage::Fresh) {
            Stage::Fresh | Stage::SentNone => {
                let Some(scheme) = strongest(&offers, auth.abilities()) else {
                    return Err(self.no_common_scheme(&offers));
                };
                auth.learn(Some(scheme));
                let (stage, header) = auth.first_message(Some(scheme)).await?;
                self.stage = stage;
                Ok(Next::Retry {
                    header,
                    same_connection: false,
                })
            }
            Stage::SentNtlmNegotiate(negotiate) => {
                let Some(token) = offers
                    .iter()
                    .find(|o| o.scheme == Some(Scheme::Ntlm))
                    .and_then(|o| o.token.as_deref())
                else {
                    return Err(auth.failed(
                        "it answered cuttle's NTLM negotiation without an NTLM challenge \
                         (is it configured for NTLM?)"
                            .into(),
                    ));
                };
                let challenge = ntlm::parse_challenge(token)
                    .map_err(|e| auth.failed(format!("it sent an invalid {e}")))?;
                let Some(creds) = &auth.credentials else {
                    return Err(auth.no_credentials(Scheme::Ntlm));
                };
                let entropy = ntlm::Entropy::fresh()
                    .map_err(|e| auth.failed(format!("no randomness for NTLM: {e}")))?;
                let identity = ntlm::Identity::parse(&creds.login, &auth.workstation);
                let msg =
                    ntlm::authenticate(&identity, &creds.nt_hash, &negotiate, &challenge, &entropy);
                self.stage = Stage::SentNtlmAuthenticate;
                Ok(Next::Retry {
                    header: Some(header_value(Scheme::Ntlm, &msg)?),
                    same_connection: true,
                })
            }
            Stage::SentBasic => Err(auth.rejected(Scheme::Basic)),
            Stage::SentNtlmAuthenticate => Err(auth.rejected(Scheme::Ntlm)),
            Stage::SentNegotiate => {
                // A 407 that carries a SPNEGO reject, or a bare challenge again. The cached
                // tickets may be what the parent no longer takes (its key changed): the next
                // connection starts from a new AS exchange.
                if let Some(k) = &auth.kerberos {
                    k.forget().await;
                }
                Err(auth.rejected(Scheme::Negotiate))
            }
        }
    }

    /// The request went through: the connection is authenticated (or needed nothing).
    pub fn succeeded(&self, headers: &HeaderMap) {
        let scheme = match self.stage {
            Stage::Fresh | Stage::SentNone => None,
            Stage::SentBasic => Some(Scheme::Basic),
            Stage::SentNtlmNegotiate(_) | Stage::SentNtlmAuthenticate => Some(Scheme::Ntlm),
            Stage::SentNegotiate => Some(Scheme::Negotiate),
        };
        if scheme == Some(Scheme::Negotiate) {
            // Mutual authentication is not required for a proxy; a parent's answer token is
            // still parsed, and a malformed one noted (no secret in it).
            for o in parse_offers(headers) {
                if let (Some(Scheme::Negotiate), Some(t)) = (o.scheme, o.token)
                    && let Err(e) = spnego::parse_response(&t)
                {
                    tracing::debug!(peer = %self.auth.peer, error = %e, "parent's Negotiate answer not understood");
                }
            }
        }
        if self.auth.choice == Choice::Auto
            && self.auth.learned.load(Ordering::Relaxed) == LEARNED_UNKNOWN
        {
            self.auth.learn(scheme);
        }
        if let Some(s) = scheme {
            self.auth.set_state(AuthState::Ok(s));
        }
    }

    fn no_common_scheme(&self, offers: &[Offer]) -> ProxyError {
        let names: Vec<&str> = offers.iter().map(|o| o.name.as_str()).collect();
        let can = self.auth.abilities();
        let mut able = Vec::new();
        if can.negotiate {
            able.push("Negotiate");
        }
        if can.ntlm {
            able.push("NTLM");
        }
        if can.basic {
            able.push("Basic");
        }
        let reason = if names.is_empty() {
            "it answered 407 without any Proxy-Authenticate challenge".to_string()
        } else if able.is_empty() {
            format!(
                "it asks for authentication ({}) but CACHE_PEER has no user and password",
                names.join(", ")
            )
        } else {
            format!(
                "it offers only {} and cuttle can do {} with this configuration",
                names.join(", "),
                able.join(", ")
            )
        };
        self.auth.failed(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::PROXY_AUTHENTICATE, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn offers_from_several_fields_and_lists() {
        let o = parse_offers(&hm(&[
            "Negotiate",
            "NTLM",
            "Basic realm=\"Squid, proxy\", charset=\"UTF-8\"",
        ]));
        let names: Vec<_> = o.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["negotiate", "ntlm", "basic"]);
        let o = parse_offers(&hm(&["Basic realm=\"a\", NTLM, Negotiate"]));
        assert_eq!(o.len(), 3);
        assert_eq!(o[1].scheme, Some(Scheme::Ntlm));
    }

    #[test]
    fn token68_is_decoded_with_padding() {
        let o = parse_offers(&hm(&["NTLM TlRMTVNTUAACAAAA"]));
        assert_eq!(o[0].token.as_deref(), Some(&b"NTLMSSP\0\x02\0\0\0"[..]));
        let o = parse_offers(&hm(&["Negotiate YQ=="]));
        assert_eq!(o[0].token.as_deref(), Some(&b"a"[..]));
        let o = parse_offers(&hm(&["NTLM !!notbase64"]));
        assert_eq!(o[0].token, None);
        assert_eq!(o[0].scheme, Some(Scheme::Ntlm));
    }

    #[test]
    fn strongest_prefers_negotiate_then_ntlm_then_basic() {
        let all = parse_offers(&hm(&["Basic realm=x", "NTLM", "Negotiate"]));
        let every = Abilities {
            basic: true,
            ntlm: true,
            negotiate: true,
        };
        assert_eq!(strongest(&all, every), Some(Scheme::Negotiate));
        let no_krb = Abilities {
            negotiate: false,
            ..every
        };
        assert_eq!(strongest(&all, no_krb), Some(Scheme::Ntlm));
        let basic_only = parse_offers(&hm(&["Basic realm=x"]));
        assert_eq!(strongest(&basic_only, no_krb), Some(Scheme::Basic));
        let nothing = Abilities {
            basic: false,
            ntlm: false,
            negotiate: false,
        };
        assert_eq!(strongest(&all, nothing), None);
        let unknown = parse_offers(&hm(&["Digest realm=x"]));
        assert_eq!(strongest(&unknown, every), None);
    }

    #[test]
    fn choices_parse() {
        assert_eq!("NTLM".parse::<Choice>(), Ok(Choice::Ntlm));
        assert_eq!("auto".parse::<Choice>(), Ok(Choice::Auto));
        assert_eq!("kerberos".parse::<Choice>(), Ok(Choice::Negotiate));
        assert!("digest".parse::<Choice>().is_err());
    }

    #[test]
    fn credentials_never_show_the_password() {
        let c = Credentials::new("CORP\\build", "hunter2").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(c.basic().is_sensitive());
        assert!(Credentials::new("a:b", "x").is_err());
    }

    proptest::proptest! {
        #[test]
        fn offer_parsing_never_panics(v in "[ -~]{0,200}") {
            if let Ok(value) = HeaderValue::from_str(&v) {
                let mut h = HeaderMap::new();
                h.insert(header::PROXY_AUTHENTICATE, value);
                let _ = parse_offers(&h);
            }
        }
    }
}
