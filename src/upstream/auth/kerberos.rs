//! A Kerberos V5 client for Negotiate to a parent proxy (RFC 4120 AS and TGS exchanges over
//! TCP, RFC 3962 AES keys, RFC 4121 AP-REQ tokens), with the ticket-granting ticket and the
//! `HTTP/<parent>` service tickets cached and fetched again before they expire. Keys come
//! from a keytab or from the password in `CACHE_PEER`. Messages and crypto are `picky-krb`'s
//! (pure Rust, so the static build stays static).

use std::collections::HashMap;
use std::time::Duration;

use picky_asn1::bit_string::BitString;
use picky_asn1::date::GeneralizedTime;
use picky_asn1::restricted_string::IA5String;
use picky_asn1::wrapper::{
    Asn1SequenceOf, BitStringAsn1, ExplicitContextTag0, ExplicitContextTag1, ExplicitContextTag2,
    ExplicitContextTag3, ExplicitContextTag4, ExplicitContextTag5, ExplicitContextTag7,
    ExplicitContextTag8, GeneralizedTimeAsn1, IntegerAsn1, OctetStringAsn1, Optional,
};
use picky_asn1_der::application_tag::ApplicationTag;
use picky_krb::crypto::{ChecksumSuite, CipherSuite};
use picky_krb::data_types::{
    Authenticator, AuthenticatorInner, Checksum, EncryptedData, EtypeInfo2, KerberosStringAsn1,
    PaData, PaEncTsEnc, PrincipalName, Ticket,
};
use picky_krb::messages::{
    ApReq, ApReqInner, AsRep, AsReq, EncKdcRepPart, KdcRep, KdcReq, KdcReqBody, KrbError, TgsRep,
    TgsReq,
};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use super::krb5_files::KeytabEntry;
use super::spnego;

/// Largest KDC reply read (real ones are a few KiB; PACs can reach tens).
const MAX_KDC_REPLY: usize = 1 << 20;
/// Kerberos' usual clock skew allowance (RFC 4120 §1.6, krb5.conf `clockskew`).
const MAX_SKEW: Duration = Duration::from_secs(300);
/// How long tickets are asked for; the KDC caps it at its own policy.
const TICKET_LIFE: Duration = Duration::from_secs(10 * 3600);

const AES256: i32 = 18;
const AES128: i32 = 17;

// RFC 4120 §7.5.9 error codes cuttle names.
const KDC_ERR_C_PRINCIPAL_UNKNOWN: u32 = 6;
const KDC_ERR_S_PRINCIPAL_UNKNOWN: u32 = 7;
const KDC_ERR_ETYPE_NOSUPP: u32 = 14;
const KDC_ERR_CLIENT_REVOKED: u32 = 18;
const KDC_ERR_KEY_EXPIRED: u32 = 23;
const KDC_ERR_PREAUTH_FAILED: u32 = 24;
const KDC_ERR_PREAUTH_REQUIRED: u32 = 25;
const KRB_AP_ERR_BAD_INTEGRITY: u32 = 31;
const KRB_AP_ERR_SKEW: u32 = 37;

/// Why a ticket could not be had; each message says what to fix and names no secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KerberosError {
    #[error(
        "the KDC ({kdcs}) cannot be reached: {cause}; check --krb5-conf / --krb5-kdc and the network path to port 88"
    )]
    KdcUnreachable { kdcs: String, cause: String },
    #[error("the KDC says the password of {principal} is wrong (or the keytab's key is outdated)")]
    WrongPassword { principal: String },
    #[error("the KDC says the account {principal} is locked or disabled")]
    Locked { principal: String },
    #[error("the KDC does not know the user {principal}; check the user and realm")]
    UnknownClient { principal: String },
    #[error(
        "the KDC does not know the service principal {spn}: the parent must have it in its keytab, and cuttle must address the parent by that host name"
    )]
    UnknownService { spn: String },
    #[error("the password of {principal} has expired")]
    PasswordExpired { principal: String },
    #[error(
        "clock skew: this machine's clock is {secs} s away from the KDC's (Kerberos allows 300 s); fix the time (NTP)"
    )]
    ClockSkew { secs: i64 },
    #[error("the KDC refused: Kerberos error {code}{text}")]
    Kdc { code: u32, text: String },
    #[error("keytab: {0}")]
    Keytab(String),
    #[error("Kerberos protocol error: {0}")]
    Protocol(String),
}

fn proto(what: impl std::fmt::Display) -> KerberosError {
    KerberosError::Protocol(what.to_string())
}

/// Where the client's long-term key comes from.
pub enum KeySource {
    Password(Zeroizing<String>),
    Keytab(Vec<KeytabEntry>),
}

/// The client's configuration, checked at start.
pub struct Settings {
    /// Name components of the client principal (`build`, or `svc`, `host`).
    pub principal: Vec<String>,
    pub realm: String,
    /// `host:port` of each KDC, tried in order.
    pub kdcs: Vec<String>,
    pub source: KeySource,
    pub timeout: Duration,
}

impl Settings {
    pub fn principal_name(&self) -> String {
        format!("{}@{}", self.principal.join("/"), self.realm)
    }
}

struct SessionKey {
    etype: i32,
    value: Zeroizing<Vec<u8>>,
}

struct Cached {
    ticket: Ticket,
    key: SessionKey,
    start: OffsetDateTime,
    end: OffsetDateTime,
}

impl Cached {
    /// Still good with a margin: a quarter of its life, at most five minutes, so a ticket is
    /// replaced before it can expire between cuttle sending it and the parent checking it.
    fn fresh(&self, now: OffsetDateTime) -> bool {
        let life: time::Duration = self.end - self.start;
        let quarter: time::Duration = life / 4;
        let margin = quarter.min(time::Duration::minutes(5));
        self.end - now > margin
    }
}

#[derive(Default)]
struct Cache {
    tgt: Option<Cached>,
    services: HashMap<String, Cached>,
    /// Counts AS exchanges that produced a ticket (for the status page and tests).
    issued: u64,
}

/// One parent's Kerberos client.
pub struct Client {
    settings: Settings,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kerberos::Client({})", self.settings.principal_name())
    }
}

fn suite(etype: i32) -> Result<CipherSuite, KerberosError> {
    match etype {
        AES256 => Ok(CipherSuite::Aes256CtsHmacSha196),
        AES128 => Ok(CipherSuite::Aes128CtsHmacSha196),
        other => Err(KerberosError::Protocol(format!(
            "encryption type {other} is not supported (cuttle does aes256-cts-hmac-sha1-96 and aes128-cts-hmac-sha1-96)"
        ))),
    }
}

fn checksum_suite(etype: i32) -> Result<ChecksumSuite, KerberosError> {
    match etype {
        AES256 => Ok(ChecksumSuite::HmacSha196Aes256),
        AES128 => Ok(ChecksumSuite::HmacSha196Aes128),
        other => Err(proto(format!("no checksum for encryption type {other}"))),
    }
}

fn int(v: i64) -> IntegerAsn1 {
    IntegerAsn1::from_bytes_be_signed(v.to_be_bytes().to_vec())
}

fn int_value(i: &IntegerAsn1) -> i64 {
    let b = i.as_signed_bytes_be();
    let neg = b.first().is_some_and(|x| x & 0x80 != 0);
    b.iter()
        .take(8)
        .fold(if neg { -1i64 } else { 0 }, |a, x| (a << 8) | i64::from(*x))
}

fn kstring(s: &str) -> Result<KerberosStringAsn1, KerberosError> {
    IA5String::from_string(s.to_string())
        .map(KerberosStringAsn1::from)
        .map_err(|_| proto(format!("`{s}` is not an ASCII Kerberos name")))
}

fn principal(name_type: i64, parts: &[String]) -> Result<PrincipalName, KerberosError> {
    let mut names = Vec::new();
    for p in parts {
        names.push(kstring(p)?);
    }
    Ok(PrincipalName {
        name_type: ExplicitContextTag0::from(int(name_type)),
        name_string: ExplicitContextTag1::from(Asn1SequenceOf::from(names)),
    })
}

fn ktime(t: OffsetDateTime) -> GeneralizedTimeAsn1 {
    GeneralizedTimeAsn1::from(GeneralizedTime::from(t))
}

fn from_ktime(t: &GeneralizedTimeAsn1) -> Result<OffsetDateTime, KerberosError> {
    OffsetDateTime::try_from(t.0.clone()).map_err(|_| proto("invalid time in a KDC reply"))
}

fn flags(bytes: [u8; 4]) -> BitStringAsn1 {
    BitStringAsn1::from(BitString::with_bytes(bytes.to_vec()))
}

fn nonce() -> Result<u32, KerberosError> {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| proto(format!("no randomness: {e}")))?;
    Ok(u32::from_be_bytes(b) & 0x7fff_ffff)
}

fn der<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, KerberosError> {
    picky_asn1_der::to_vec(v).map_err(|e| proto(format!("encoding: {e}")))
}

fn encrypt(key: &SessionKey, usage: i32, plain: &[u8]) -> Result<EncryptedData, KerberosError> {
    let cipher = suite(key.etype)?
        .cipher()
        .encrypt(&key.value, usage, plain)
        .map_err(|e| proto(format!("encryption: {e}")))?;
    Ok(EncryptedData {
        etype: ExplicitContextTag0::from(int(i64::from(key.etype))),
        kvno: Optional::from(None),
        cipher: ExplicitContextTag2::from(OctetStringAsn1::from(cipher)),
    })
}

fn decrypt(key: &[u8], etype: i32, usage: i32, data: &EncryptedData) -> Option<Zeroizing<Vec<u8>>> {
    suite(etype)
        .ok()?
        .cipher()
        .decrypt(key, usage, &data.cipher.0.0)
        .ok()
        .map(Zeroizing::new)
}

/// An `EncKDCRepPart`: MIT and Windows disagree on the application tag (25 or 26) of the AS
/// one, so both are taken.
fn enc_rep_part(plain: &[u8]) -> Result<EncKdcRepPart, KerberosError> {
    if let Ok(p) = picky_asn1_der::from_bytes::<ApplicationTag<EncKdcRepPart, 25>>(plain) {
        return Ok(p.0);
    }
    picky_asn1_der::from_bytes::<ApplicationTag<EncKdcRepPart, 26>>(plain)
        .map(|p| p.0)
        .map_err(|e| proto(format!("invalid encrypted reply part: {e}")))
}

/// A KDC's answer.
pub(crate) enum Reply {
    As(Box<KdcRep>),
    Tgs(Box<KdcRep>),
    Error(Box<KrbError>),
}

pub(crate) fn parse_reply(b: &[u8]) -> Result<Reply, KerberosError> {
    match b.first() {
        Some(0x6b) => picky_asn1_der::from_bytes::<AsRep>(b)
            .map(|r| Reply::As(Box::new(r.0)))
            .map_err(|e| proto(format!("invalid AS-REP: {e}"))),
        Some(0x6d) => picky_asn1_der::from_bytes::<TgsRep>(b)
            .map(|r| Reply::Tgs(Box::new(r.0)))
            .map_err(|e| proto(format!("invalid TGS-REP: {e}"))),
        Some(0x7e) => picky_asn1_der::from_bytes::<KrbError>(b)
            .map(|r| Reply::Error(Box::new(r)))
            .map_err(|e| proto(format!("invalid KRB-ERROR: {e}"))),
        _ => Err(proto("the KDC answered with an unknown message")),
    }
}

impl Client {
    pub fn new(settings: Settings) -> Client {
        Client {
            settings,
            cache: Mutex::new(Cache::default()),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// How many ticket-granting tickets have been obtained so far.
    pub async fn tickets_issued(&self) -> u64 {
        self.cache.lock().await.issued
    }

    /// The Negotiate token for `HTTP/<host>`: SPNEGO around a fresh AP-REQ, getting (or
    /// refreshing) the tickets it needs first.
    pub async fn initiate(&self, host: &str) -> Result<Vec<u8>, KerberosError> {
        let now = OffsetDateTime::now_utc();
        let mut cache = self.cache.lock().await;
        let service_ok = cache.services.get(host).is_some_and(|c| c.fresh(now));
        if !service_ok {
            if !cache.tgt.as_ref().is_some_and(|t| t.fresh(now)) {
                let tgt = self.as_exchange().await?;
                cache.tgt = Some(tgt);
                cache.issued += 1;
            }
            let Some(tgt) = cache.tgt.as_ref() else {
                return Err(proto("no ticket-granting ticket"));
            };
            let st = self.tgs_exchange(tgt, host).await?;
            cache.services.insert(host.to_string(), st);
        }
        let Some(st) = cache.services.get(host) else {
            return Err(proto("no service ticket"));
        };
        let ap_req = self.ap_req(st)?;
        let mut token = vec![0x01, 0x00];
        token.extend_from_slice(&ap_req);
        Ok(spnego::neg_token_init(&spnego::gss_frame(
            spnego::OID_KRB5,
            &token,
        )))
    }

    /// Drops the cached tickets (after the parent refused one).
    pub async fn forget(&self) {
        let mut c = self.cache.lock().await;
        c.tgt = None;
        c.services.clear();
    }

    async fn send(&self, msg: &[u8]) -> Result<Vec<u8>, KerberosError> {
        let mut causes = Vec::new();
        for kdc in &self.settings.kdcs {
            let addr = if kdc
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.ends_with(':') && p.parse::<u16>().is_ok())
            {
                kdc.clone()
            } else {
                format!("{kdc}:88")
            };
            let attempt = async {
                let mut s = TcpStream::connect(addr.as_str()).await?;
                let mut framed = (msg.len() as u32).to_be_bytes().to_vec();
                framed.extend_from_slice(msg);
                s.write_all(&framed).await?;
                let len = s.read_u32().await? as usize;
                if len > MAX_KDC_REPLY {
                    return Err(std::io::Error::other("reply too large"));
                }
                let mut buf = vec![0; len];
                s.read_exact(&mut buf).await?;
                Ok::<_, std::io::Error>(buf)
            };
            match tokio::time::timeout(self.settings.timeout, attempt).await {
                Ok(Ok(b)) => return Ok(b),
                Ok(Err(e)) => causes.push(format!("{addr}: {e}")),
                Err(_) => causes.push(format!(
                    "{addr}: no answer within {}s",
                    self.settings.timeout.as_secs()
                )),
            }
        }
        Err(KerberosError::KdcUnreachable {
            kdcs: self.settings.kdcs.join(", "),
            cause: causes.join("; "),
        })
    }

    fn kdc_error(&self, e: &KrbError, spn: Option<&str>) -> KerberosError {
        let code = e.0.error_code.0;
        let who = self.settings.principal_name();
        match code {
            KDC_ERR_C_PRINCIPAL_UNKNOWN => KerberosError::UnknownClient { principal: who },
            KDC_ERR_S_PRINCIPAL_UNKNOWN => KerberosError::UnknownService {
                spn: spn.unwrap_or("krbtgt").to_string(),
            },
            KDC_ERR_CLIENT_REVOKED => KerberosError::Locked { principal: who },
            KDC_ERR_KEY_EXPIRED => KerberosError::PasswordExpired { principal: who },
            KDC_ERR_PREAUTH_FAILED | KRB_AP_ERR_BAD_INTEGRITY => {
                KerberosError::WrongPassword { principal: who }
            }
            KRB_AP_ERR_SKEW => {
                let secs = from_ktime(&e.0.stime.0)
                    .map(|kdc| (OffsetDateTime::now_utc() - kdc).whole_seconds().abs())
                    .unwrap_or(0);
                KerberosError::ClockSkew { secs }
            }
            KDC_ERR_ETYPE_NOSUPP => KerberosError::Kdc {
                code,
                text: " (no common encryption type: the account needs AES keys)".into(),
            },
            _ => KerberosError::Kdc {
                code,
                text: e
                    .0
                    .e_text
                    .0
                    .as_ref()
                    .map(|t| {
                        format!(
                            ": {}",
                            t.0.to_string().chars().take(120).collect::<String>()
                        )
                    })
                    .unwrap_or_default(),
            },
        }
    }

    /// The long-term key for `etype`, from the keytab or derived from the password with the
    /// KDC's salt (RFC 3962 §4; the default salt is the realm then the name components).
    fn long_term_key(
        &self,
        etype: i32,
        salt: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, KerberosError> {
        match &self.settings.source {
            KeySource::Keytab(entries) => entries
                .iter()
                .filter(|e| e.enctype == etype)
                .max_by_key(|e| e.kvno)
                .map(|e| e.key.clone())
                .ok_or_else(|| {
                    KerberosError::Keytab(format!(
                        "no key of encryption type {etype} for {}",
                        self.settings.principal_name()
                    ))
                }),
            KeySource::Password(pw) => {
                let default_salt = format!(
                    "{}{}",
                    self.settings.realm,
                    self.settings.principal.concat()
                );
                let salt = salt.unwrap_or(&default_salt);
                suite(etype)?
                    .cipher()
                    .generate_key_from_password(pw.as_bytes(), salt.as_bytes())
                    .map(Zeroizing::new)
                    .map_err(|e| proto(format!("key derivation: {e}")))
            }
        }
    }

    /// The encryption types to offer: the keytab's, or both AES types for a password.
    fn etypes(&self) -> Vec<i32> {
        match &self.settings.source {
            KeySource::Keytab(entries) => [AES256, AES128]
                .into_iter()
                .filter(|t| entries.iter().any(|e| e.enctype == *t))
                .collect(),
            KeySource::Password(_) => vec![AES256, AES128],
        }
    }

    fn req_body(
        &self,
        cname: Option<&[String]>,
        sname: &[String],
        nonce: u32,
        options: [u8; 4],
    ) -> Result<KdcReqBody, KerberosError> {
        let till = OffsetDateTime::now_utc() + TICKET_LIFE;
        let etypes = self.etypes();
        if etypes.is_empty() {
            return Err(KerberosError::Keytab(format!(
                "no AES key for {} (cuttle needs aes256-cts-hmac-sha1-96 or aes128-cts-hmac-sha1-96)",
                self.settings.principal_name()
            )));
        }
        Ok(KdcReqBody {
            kdc_options: ExplicitContextTag0::from(flags(options)),
            cname: Optional::from(match cname {
                Some(c) => Some(ExplicitContextTag1::from(principal(1, c)?)),
                None => None,
            }),
            realm: ExplicitContextTag2::from(kstring(&self.settings.realm)?),
            sname: Optional::from(Some(ExplicitContextTag3::from(principal(2, sname)?))),
            from: Optional::from(None),
            till: ExplicitContextTag5::from(ktime(till)),
            rtime: Optional::from(None),
            nonce: ExplicitContextTag7::from(int(i64::from(nonce))),
            etype: ExplicitContextTag8::from(Asn1SequenceOf::from(
                etypes
                    .into_iter()
                    .map(|t| int(i64::from(t)))
                    .collect::<Vec<_>>(),
            )),
            addresses: Optional::from(None),
            enc_authorization_data: Optional::from(None),
            additional_tickets: Optional::from(None),
        })
    }

    fn pa_enc_timestamp(&self, etype: i32, key: &[u8]) -> Result<PaData, KerberosError> {
        let now = OffsetDateTime::now_utc();
        let ts = PaEncTsEnc {
            patimestamp: ExplicitContextTag0::from(ktime(now)),
            pausec: Optional::from(Some(ExplicitContextTag1::from(int(i64::from(
                now.microsecond(),
            ))))),
        };
        let enc = encrypt(
            &SessionKey {
                etype,
                value: Zeroizing::new(key.to_vec()),
            },
            1,
            &der(&ts)?,
        )?;
        Ok(PaData {
            padata_type: ExplicitContextTag1::from(int(2)),
            padata_data: ExplicitContextTag2::from(OctetStringAsn1::from(der(&enc)?)),
        })
    }

    /// The AS exchange for a ticket-granting ticket (RFC 4120 §3.1): first without
    /// pre-authentication for a password (the KDC then names the salt), with an encrypted
    /// timestamp when the KDC asks for one.
    async fn as_exchange(&self) -> Result<Cached, KerberosError> {
        let realm = self.settings.realm.clone();
        let krbtgt = vec!["krbtgt".to_string(), realm.clone()];
        let mut padata: Option<PaData> = match &self.settings.source {
            // A keytab key needs no salt: pre-authenticate at once.
            KeySource::Keytab(_) => {
                let etype = self.etypes().first().copied().unwrap_or(AES256);
                let key = self.long_term_key(etype, None)?;
                Some(self.pa_enc_timestamp(etype, &key)?)
            }
            KeySource::Password(_) => None,
        };
        let mut salt: Option<String> = None;
        for _ in 0..3 {
            let n = nonce()?;
            // forwardable, renewable-ok.
            let body = self.req_body(
                Some(&self.settings.principal),
                &krbtgt,
                n,
                [0x40, 0, 0, 0x10],
            )?;
            let req = AsReq::from(KdcReq {
                pvno: ExplicitContextTag1::from(int(5)),
                msg_type: ExplicitContextTag2::from(int(10)),
                padata: Optional::from(
                    padata
                        .clone()
                        .map(|p| ExplicitContextTag3::from(Asn1SequenceOf::from(vec![p]))),
                ),
                req_body: ExplicitContextTag4::from(body),
            });
            let reply = parse_reply(&self.send(&der(&req)?).await?)?;
            match reply {
                Reply::As(rep) => return self.finish_as(&rep, n, salt.as_deref()),
                Reply::Error(e)
                    if e.0.error_code.0 == KDC_ERR_PREAUTH_REQUIRED && padata.is_none() =>
                {
                    let (etype, s) = self.preauth_hint(&e)?;
                    let key = self.long_term_key(etype, s.as_deref())?;
                    padata = Some(self.pa_enc_timestamp(etype, &key)?);
                    salt = s;
                }
                Reply::Error(e) => return Err(self.kdc_error(&e, None)),
                Reply::Tgs(_) => return Err(proto("the KDC answered an AS-REQ with a TGS-REP")),
            }
        }
        Err(proto("the KDC kept asking for pre-authentication"))
    }

    /// The encryption type and salt the KDC names in ETYPE-INFO2 (RFC 4120 §5.2.7.5).
    fn preauth_hint(&self, e: &KrbError) -> Result<(i32, Option<String>), KerberosError> {
        let data =
            e.0.e_data
                .0
                .as_ref()
                .map(|d| d.0.0.clone())
                .unwrap_or_default();
        let methods: Asn1SequenceOf<PaData> = picky_asn1_der::from_bytes(&data)
            .map_err(|e| proto(format!("invalid METHOD-DATA: {e}")))?;
        for m in methods.0 {
            if int_value(&m.padata_type.0) != 19 {
                continue;
            }
            let info: EtypeInfo2 = picky_asn1_der::from_bytes(&m.padata_data.0.0)
                .map_err(|e| proto(format!("invalid ETYPE-INFO2: {e}")))?;
            for entry in info.0 {
                let etype = int_value(&entry.etype.0) as i32;
                if etype == AES256 || etype == AES128 {
                    let salt = entry.salt.0.as_ref().map(|s| s.0.to_string());
                    return Ok((etype, salt));
                }
            }
        }
        Ok((AES256, None))
    }

    fn salt_from_reply(rep: &KdcRep) -> Option<String> {
        let pas = rep.padata.0.as_ref()?;
        for p in &pas.0.0 {
            if int_value(&p.padata_type.0) == 19
                && let Ok(info) = picky_asn1_der::from_bytes::<EtypeInfo2>(&p.padata_data.0.0)
            {
                return info.0.first()?.salt.0.as_ref().map(|s| s.0.to_string());
            }
        }
        None
    }

    fn finish_as(&self, rep: &KdcRep, n: u32, salt: Option<&str>) -> Result<Cached, KerberosError> {
        let etype = int_value(&rep.enc_part.0.etype.0) as i32;
        let salt = salt
            .map(str::to_string)
            .or_else(|| Self::salt_from_reply(rep));
        let key = self.long_term_key(etype, salt.as_deref())?;
        let Some(plain) = decrypt(&key, etype, 3, &rep.enc_part.0) else {
            // The reply was encrypted with a key we could not reproduce.
            return Err(KerberosError::WrongPassword {
                principal: self.settings.principal_name(),
            });
        };
        self.cached_from(rep, &plain, n)
    }

    fn cached_from(&self, rep: &KdcRep, plain: &[u8], n: u32) -> Result<Cached, KerberosError> {
        let part = enc_rep_part(plain)?;
        if int_value(&part.nonce.0) != i64::from(n) {
            return Err(proto("the KDC's reply does not match the request (nonce)"));
        }
        let auth_time = from_ktime(&part.auth_time.0)?;
        let now = OffsetDateTime::now_utc();
        let skew = (now - auth_time).whole_seconds();
        if skew.unsigned_abs() > MAX_SKEW.as_secs() {
            return Err(KerberosError::ClockSkew { secs: skew.abs() });
        }
        let start = match part.start_time.0.as_ref() {
            Some(t) => from_ktime(&t.0)?,
            None => auth_time,
        };
        Ok(Cached {
            ticket: rep.ticket.0.clone(),
            key: SessionKey {
                etype: int_value(&part.key.0.key_type.0) as i32,
                value: Zeroizing::new(part.key.0.key_value.0.0.clone()),
            },
            start,
            end: from_ktime(&part.end_time.0)?,
        })
    }

    fn authenticator(
        &self,
        cksum: Option<Checksum>,
        key: &SessionKey,
        usage: i32,
        seq: bool,
    ) -> Result<EncryptedData, KerberosError> {
        let now = OffsetDateTime::now_utc();
        let a = Authenticator::from(AuthenticatorInner {
            authenticator_vno: ExplicitContextTag0::from(int(5)),
            crealm: ExplicitContextTag1::from(kstring(&self.settings.realm)?),
            cname: ExplicitContextTag2::from(principal(1, &self.settings.principal)?),
            cksum: Optional::from(cksum.map(ExplicitContextTag3::from)),
            cusec: ExplicitContextTag4::from(int(i64::from(now.microsecond()))),
            ctime: ExplicitContextTag5::from(ktime(now)),
            subkey: Optional::from(None),
            seq_number: Optional::from(if seq {
                Some(ExplicitContextTag7::from(int(i64::from(nonce()?))))
            } else {
                None
            }),
            authorization_data: Optional::from(None),
        });
        encrypt(key, usage, &der(&a)?)
    }

    fn ap_req_message(
        &self,
        ticket: &Ticket,
        authenticator: EncryptedData,
    ) -> Result<Vec<u8>, KerberosError> {
        der(&ApReq::from(ApReqInner {
            pvno: ExplicitContextTag0::from(int(5)),
            msg_type: ExplicitContextTag1::from(int(14)),
            ap_options: ExplicitContextTag2::from(flags([0; 4])),
            ticket: ExplicitContextTag3::from(ticket.clone()),
            authenticator: ExplicitContextTag4::from(authenticator),
        }))
    }

    /// The TGS exchange for `HTTP/<host>` (RFC 4120 §3.3), authenticated with the TGT.
    async fn tgs_exchange(&self, tgt: &Cached, host: &str) -> Result<Cached, KerberosError> {
        let sname = vec!["HTTP".to_string(), host.to_string()];
        let spn = format!("HTTP/{host}@{}", self.settings.realm);
        let n = nonce()?;
        // forwardable, renewable, canonicalize.
        let body = self.req_body(None, &sname, n, [0x40, 0x81, 0, 0])?;
        let sum = checksum_suite(tgt.key.etype)?
            .hasher()
            .checksum(&tgt.key.value, 6, &der(&body)?)
            .map_err(|e| proto(format!("checksum: {e}")))?;
        let cksum = Checksum {
            cksumtype: ExplicitContextTag0::from(int(i64::from(u32::from(checksum_suite(
                tgt.key.etype,
            )?)))),
            checksum: ExplicitContextTag1::from(OctetStringAsn1::from(sum)),
        };
        let auth = self.authenticator(Some(cksum), &tgt.key, 7, false)?;
        let ap_req = self.ap_req_message(&tgt.ticket, auth)?;
        let req = TgsReq::from(KdcReq {
            pvno: ExplicitContextTag1::from(int(5)),
            msg_type: ExplicitContextTag2::from(int(12)),
            padata: Optional::from(Some(ExplicitContextTag3::from(Asn1SequenceOf::from(vec![
                PaData {
                    padata_type: ExplicitContextTag1::from(int(1)),
                    padata_data: ExplicitContextTag2::from(OctetStringAsn1::from(ap_req)),
                },
            ])))),
            req_body: ExplicitContextTag4::from(body),
        });
        match parse_reply(&self.send(&der(&req)?).await?)? {
            Reply::Tgs(rep) => {
                let etype = int_value(&rep.enc_part.0.etype.0) as i32;
                let plain = decrypt(&tgt.key.value, etype, 8, &rep.enc_part.0)
                    .ok_or_else(|| proto("cannot decrypt the TGS-REP with the session key"))?;
                self.cached_from(&rep, &plain, n)
            }
            Reply::Error(e) => Err(self.kdc_error(&e, Some(&spn))),
            Reply::As(_) => Err(proto("the KDC answered a TGS-REQ with an AS-REP")),
        }
    }

    /// The AP-REQ for a service ticket, with the GSS-API checksum of RFC 4121 §4.1.1
    /// (no channel bindings, no delegation, no mutual authentication).
    fn ap_req(&self, st: &Cached) -> Result<Vec<u8>, KerberosError> {
        let mut gss = Vec::with_capacity(24);
        gss.extend_from_slice(&16u32.to_le_bytes());
        gss.extend_from_slice(&[0; 16]);
        gss.extend_from_slice(&0u32.to_le_bytes());
        let cksum = Checksum {
            cksumtype: ExplicitContextTag0::from(int(0x8003)),
            checksum: ExplicitContextTag1::from(OctetStringAsn1::from(gss)),
        };
        let auth = self.authenticator(Some(cksum), &st.key, 11, true)?;
        self.ap_req_message(&st.ticket, auth)
    }
}

/// The client principal's name components and realm from `user@REALM` (or `user` with the
/// default realm).
pub fn split_principal(
    name: &str,
    default_realm: Option<&str>,
) -> Result<(Vec<String>, String), String> {
    let (name, realm) = match name.rsplit_once('@') {
        Some((n, r)) if !r.is_empty() => (n, r.to_string()),
        _ => (
            name,
            default_realm
                .ok_or("no realm: write the user as user@REALM, or give --krb5-conf with default_realm or --krb5-realm")?
                .to_string(),
        ),
    };
    if name.is_empty() {
        return Err("the Kerberos user name is empty".into());
    }
    Ok((name.split('/').map(str::to_string).collect(), realm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip() {
        for v in [0i64, 5, 127, 128, 255, 0x8003, 0x7fff_ffff, -1] {
            assert_eq!(int_value(&int(v)), v, "{v}");
        }
    }

    #[test]
    fn principals_split() {
        assert_eq!(
            split_principal("build@CUTTLE.TEST", None).unwrap(),
            (vec!["build".to_string()], "CUTTLE.TEST".to_string())
        );
        assert_eq!(
            split_principal("svc/host", Some("R")).unwrap(),
            (vec!["svc".to_string(), "host".to_string()], "R".to_string())
        );
        assert!(split_principal("build", None).is_err());
    }

    #[test]
    fn freshness_margin_is_a_quarter_of_the_life_at_most_five_minutes() {
        let start = OffsetDateTime::UNIX_EPOCH;
        let c = |life: i64| Cached {
            ticket: Ticket::from(picky_krb::data_types::TicketInner {
                tkt_vno: ExplicitContextTag0::from(int(5)),
                realm: ExplicitContextTag1::from(kstring("R").unwrap()),
                sname: ExplicitContextTag2::from(principal(2, &["a".into()]).unwrap()),
                enc_part: ExplicitContextTag3::from(EncryptedData {
                    etype: ExplicitContextTag0::from(int(18)),
                    kvno: Optional::from(None),
                    cipher: ExplicitContextTag2::from(OctetStringAsn1::from(vec![])),
                }),
            }),
            key: SessionKey {
                etype: 18,
                value: Zeroizing::new(vec![]),
            },
            start,
            end: start + time::Duration::seconds(life),
        };
        let short = c(20);
        assert!(short.fresh(start + time::Duration::seconds(14)));
        assert!(!short.fresh(start + time::Duration::seconds(16)));
        let long = c(36000);
        assert!(long.fresh(start + time::Duration::seconds(36000 - 301)));
        assert!(!long.fresh(start + time::Duration::seconds(36000 - 299)));
    }

    #[test]
    fn kdc_replies_of_garbage_are_protocol_errors() {
        assert!(parse_reply(&[]).is_err());
        assert!(parse_reply(&[0x6b, 0x03, 0x30, 0x01, 0x00]).is_err());
        assert!(parse_reply(&[0x7e, 0x00]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn kdc_reply_parser_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), tag in proptest::sample::select(vec![0x6bu8, 0x6d, 0x7e])) {
            let mut b = vec![tag];
            b.extend(bytes);
            let _ = parse_reply(&b);
        }
    }
}
