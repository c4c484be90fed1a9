//! NTLM client messages (MS-NLMP): NEGOTIATE out, CHALLENGE in through a strict, bounded
//! parser, AUTHENTICATE out with NTLMv2 responses only. LM and NTLMv1 responses are never
//! computed, whatever the parent's flags say.

use std::fmt;

use hmac::{Hmac, Mac};
use md4::{Digest, Md4};
use md5::Md5;
use zeroize::Zeroize;

type HmacMd5 = Hmac<Md5>;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

// MS-NLMP §2.2.2.5 NEGOTIATE flags.
pub const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
pub const NEGOTIATE_OEM: u32 = 0x0000_0002;
pub const REQUEST_TARGET: u32 = 0x0000_0004;
pub const NEGOTIATE_NTLM: u32 = 0x0000_0200;
pub const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
pub const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
pub const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
pub const NEGOTIATE_VERSION: u32 = 0x0200_0000;
pub const NEGOTIATE_128: u32 = 0x2000_0000;
pub const NEGOTIATE_56: u32 = 0x8000_0000;

/// What cuttle asks for: Unicode, NTLM with extended session security, target info (which
/// NTLMv2 needs) and the version field (which makes room for the MIC). No signing, sealing
/// or key exchange: the connection is authenticated, never protected, by HTTP NTLM.
const CLIENT_FLAGS: u32 = NEGOTIATE_UNICODE
    | NEGOTIATE_OEM
    | REQUEST_TARGET
    | NEGOTIATE_NTLM
    | NEGOTIATE_ALWAYS_SIGN
    | NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NEGOTIATE_TARGET_INFO
    | NEGOTIATE_VERSION
    | NEGOTIATE_128
    | NEGOTIATE_56;

/// MS-NLMP §2.2.2.10 VERSION: 10.0 build 19041, NTLMSSP_REVISION_W2K3.
const VERSION: [u8; 8] = [10, 0, 0x61, 0x4a, 0, 0, 0, 0x0f];

/// Largest CHALLENGE accepted. A proxy header is capped well below this; the bound keeps a
/// hostile parent from making cuttle allocate for a made-up length.
pub const MAX_CHALLENGE: usize = 8 * 1024;
/// Most AV pairs read from a CHALLENGE's target information.
const MAX_AV_PAIRS: usize = 64;

// MS-NLMP §2.2.2.1 AV_PAIR ids.
const MSV_AV_EOL: u16 = 0;
const MSV_AV_FLAGS: u16 = 6;
const MSV_AV_TIMESTAMP: u16 = 7;
/// MsvAvFlags bit: "the client is providing message integrity in the MIC field".
const AV_FLAG_MIC: u32 = 0x0000_0002;

/// Offset of the MIC in an AUTHENTICATE message that carries the VERSION field (§2.2.1.3).
const MIC_OFFSET: usize = 72;
const AUTHENTICATE_HEADER: usize = MIC_OFFSET + 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NtlmError {
    #[error("NTLM challenge is {0}")]
    Malformed(&'static str),
}

fn bad(what: &'static str) -> NtlmError {
    NtlmError::Malformed(what)
}

/// The NT hash, MD4(UTF-16LE(password)) (MS-NLMP §3.3.2 NTOWFv2's input). Derived once from
/// the configured password; its bytes are zeroed when it is dropped and never printed.
#[derive(Clone)]
pub struct NtHash([u8; 16]);

impl NtHash {
    pub fn from_password(password: &str) -> NtHash {
        let mut utf16 = utf16le(password);
        let mut md4 = Md4::new();
        md4.update(&utf16);
        utf16.zeroize();
        NtHash(md4.finalize().into())
    }
}

impl Drop for NtHash {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for NtHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NtHash(****)")
    }
}

/// Who authenticates: the user and domain from `CACHE_PEER` and the workstation name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub domain: String,
    pub workstation: String,
}

impl Identity {
    /// `DOMAIN\user` splits at the backslash. `user@domain` (a UPN) is kept whole with an
    /// empty domain, as Windows and curl send it: the DC resolves the UPN itself.
    pub fn parse(login: &str, workstation: &str) -> Identity {
        let (domain, user) = match login.split_once('\\') {
            Some((d, u)) => (d.to_string(), u.to_string()),
            None => (String::new(), login.to_string()),
        };
        Identity {
            user,
            domain,
            workstation: workstation.to_string(),
        }
    }
}

/// A parsed CHALLENGE_MESSAGE (§2.2.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub flags: u32,
    pub server_challenge: [u8; 8],
    /// The AV pairs as sent, up to and including MsvAvEOL (empty when the parent sent none).
    pub target_info: Vec<u8>,
    /// MsvAvTimestamp, when present: the client must then use it and send a MIC (§3.1.5.1.2).
    pub timestamp: Option<u64>,
    /// The whole message, which the MIC covers.
    raw: Vec<u8>,
}

/// Per-exchange randomness and time, passed in so tests can fix them.
pub struct Entropy {
    pub client_challenge: [u8; 8],
    /// FILETIME: 100 ns intervals since 1601-01-01 UTC.
    pub time: u64,
}

impl Entropy {
    pub fn fresh() -> Result<Entropy, getrandom::Error> {
        let mut client_challenge = [0u8; 8];
        getrandom::fill(&mut client_challenge)?;
        // Seconds between 1601-01-01 and 1970-01-01.
        const EPOCH_DIFF: u64 = 11_644_473_600;
        let since_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let time = (since_unix.as_secs() + EPOCH_DIFF) * 10_000_000
            + u64::from(since_unix.subsec_nanos() / 100);
        Ok(Entropy {
            client_challenge,
            time,
        })
    }
}

/// The NEGOTIATE_MESSAGE (§2.2.1.1): flags only, no domain or workstation supplied.
pub fn negotiate() -> Vec<u8> {
    let mut m = Vec::with_capacity(40);
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&CLIENT_FLAGS.to_le_bytes());
    // DomainNameFields and WorkstationFields: empty, offset at the end of the header.
    for _ in 0..2 {
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&40u32.to_le_bytes());
    }
    m.extend_from_slice(&VERSION);
    m
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, NtlmError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(bad("truncated"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, NtlmError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(bad("truncated"))
}

/// A security buffer's (len, maxlen, offset) at `at`, checked to lie inside the message.
fn field<'a>(msg: &'a [u8], at: usize, what: &'static str) -> Result<&'a [u8], NtlmError> {
    let len = usize::from(u16_at(msg, at)?);
    let offset = u32_at(msg, at + 4)? as usize;
    if len == 0 {
        return Ok(&[]);
    }
    offset
        .checked_add(len)
        .and_then(|end| msg.get(offset..end))
        .ok_or(bad(what))
}

/// Parses a CHALLENGE_MESSAGE (§2.2.1.2) strictly: signature, type, size bound, the target
/// info inside the message, AV pairs well formed and ended by MsvAvEOL.
pub fn parse_challenge(msg: &[u8]) -> Result<Challenge, NtlmError> {
    if msg.len() > MAX_CHALLENGE {
        return Err(bad("too large"));
    }
    if msg.len() < 32 {
        return Err(bad("truncated"));
    }
    if &msg[..8] != SIGNATURE {
        return Err(bad("missing the NTLMSSP signature"));
    }
    if u32_at(msg, 8)? != 2 {
        return Err(bad("not a CHALLENGE message"));
    }
    // TargetNameFields (12..20) are not read: cuttle does not use the name, and Squid's
    // ntlm_fake_auth sends an uninitialised offset there.
    let flags = u32_at(msg, 20)?;
    if flags & (NEGOTIATE_UNICODE | NEGOTIATE_OEM) == 0 {
        return Err(bad("without a character set"));
    }
    let mut server_challenge = [0u8; 8];
    server_challenge.copy_from_slice(&msg[24..32]);
    // Old-style servers (Squid's ntlm_fake_auth among them) write a 40-byte header with the
    // payload right after it, even when echoing NEGOTIATE_TARGET_INFO: bytes 40..48 are then
    // payload, not fields. A TargetInfo field that does not lie inside the message is taken
    // as absent, and NTLMv2 runs with an empty AV list; one inside must be well formed.
    let raw_info = if msg.len() >= 48 && flags & NEGOTIATE_TARGET_INFO != 0 {
        field(msg, 40, "target info outside the message").unwrap_or(&[])
    } else {
        &[]
    };
    let (target_info, timestamp) = parse_av_pairs(raw_info)?;
    Ok(Challenge {
        flags,
        server_challenge,
        target_info,
        timestamp,
        raw: msg.to_vec(),
    })
}

/// Walks an AV_PAIR list (§2.2.2.1); returns it cut after MsvAvEOL, and the timestamp.
fn parse_av_pairs(info: &[u8]) -> Result<(Vec<u8>, Option<u64>), NtlmError> {
    if info.is_empty() {
        return Ok((Vec::new(), None));
    }
    let mut at = 0;
    let mut timestamp = None;
    for _ in 0..MAX_AV_PAIRS {
        let id = u16_at(info, at).map_err(|_| bad("target info without MsvAvEOL"))?;
        let len = usize::from(u16_at(info, at + 2).map_err(|_| bad("target info truncated"))?);
        let value = info
            .get(at + 4..at + 4 + len)
            .ok_or(bad("AV pair longer than the target info"))?;
        at += 4 + len;
        match id {
            MSV_AV_EOL => {
                if len != 0 {
                    return Err(bad("MsvAvEOL with a value"));
                }
                return Ok((info[..at].to_vec(), timestamp));
            }
            MSV_AV_TIMESTAMP => {
                let v: [u8; 8] = value
                    .try_into()
                    .map_err(|_| bad("MsvAvTimestamp not 8 bytes"))?;
                timestamp = Some(u64::from_le_bytes(v));
            }
            MSV_AV_FLAGS if len != 4 => return Err(bad("MsvAvFlags not 4 bytes")),
            _ => {}
        }
    }
    Err(bad("target info with too many AV pairs"))
}

/// The AV list the client returns in its NTLMv2 blob: the server's, with MsvAvFlags' MIC
/// bit set when a MIC will be sent (§3.1.5.1.2).
fn client_target_info(server: &[u8], mic: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(server.len() + 8);
    let mut at = 0;
    let mut flags_seen = false;
    // `server` was validated by parse_av_pairs; the reads below cannot fail, but stop
    // cleanly if they did.
    while let (Ok(id), Ok(len)) = (u16_at(server, at), u16_at(server, at + 2)) {
        let len = usize::from(len);
        let Some(value) = server.get(at + 4..at + 4 + len) else {
            break;
        };
        if id == MSV_AV_EOL {
            break;
        }
        if id == MSV_AV_FLAGS && mic {
            flags_seen = true;
            let old = u32_at(value, 0).unwrap_or(0);
            push_av(&mut out, MSV_AV_FLAGS, &(old | AV_FLAG_MIC).to_le_bytes());
        } else {
            push_av(&mut out, id, value);
        }
        at += 4 + len;
    }
    if mic && !flags_seen {
        push_av(&mut out, MSV_AV_FLAGS, &AV_FLAG_MIC.to_le_bytes());
    }
    push_av(&mut out, MSV_AV_EOL, &[]);
    out
}

fn push_av(out: &mut Vec<u8>, id: u16, value: &[u8]) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // HMAC accepts keys of any length; the error arm cannot happen.
    let Ok(mut mac) = HmacMd5::new_from_slice(key) else {
        return [0; 16];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// NTOWFv2 (§3.3.2): HMAC_MD5(NT hash, UTF-16LE(Uppercase(user) || domain)).
pub fn ntowf_v2(nt_hash: &NtHash, user: &str, domain: &str) -> [u8; 16] {
    let mut who = utf16le(&user.to_uppercase());
    who.extend_from_slice(&utf16le(domain));
    hmac_md5(&nt_hash.0, &[&who])
}

/// The NTLMv2 pieces of §3.3.2 for one challenge.
pub struct V2Responses {
    pub nt_response: Vec<u8>,
    pub lm_response: Vec<u8>,
    pub session_base_key: [u8; 16],
}

impl Drop for V2Responses {
    fn drop(&mut self) {
        self.session_base_key.zeroize();
    }
}

/// ComputeResponse for NTLMv2 (§3.3.2). `target_info` is the AV list the client sends back.
pub fn compute_v2(
    response_key: &[u8; 16],
    server_challenge: &[u8; 8],
    target_info: &[u8],
    entropy: &Entropy,
    with_lm: bool,
) -> V2Responses {
    // temp = Responserversion, HiResponserversion, Z(6), Time, ClientChallenge, Z(4),
    // ServerName (the AV list), Z(4).
    let mut temp = Vec::with_capacity(28 + target_info.len() + 4);
    temp.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0]);
    temp.extend_from_slice(&entropy.time.to_le_bytes());
    temp.extend_from_slice(&entropy.client_challenge);
    temp.extend_from_slice(&[0; 4]);
    temp.extend_from_slice(target_info);
    temp.extend_from_slice(&[0; 4]);
    let proof = hmac_md5(response_key, &[server_challenge, &temp]);
    let mut nt_response = proof.to_vec();
    nt_response.extend_from_slice(&temp);
    // With a server timestamp the LM response is Z(24) (§3.1.5.1.2): LMv2 adds nothing.
    let lm_response = if with_lm {
        let mut lm =
            hmac_md5(response_key, &[server_challenge, &entropy.client_challenge]).to_vec();
        lm.extend_from_slice(&entropy.client_challenge);
        lm
    } else {
        vec![0; 24]
    };
    V2Responses {
        nt_response,
        lm_response,
        session_base_key: hmac_md5(response_key, &[&proof]),
    }
}

/// The AUTHENTICATE_MESSAGE (§2.2.1.3) answering `challenge`, with NTLMv2 responses and,
/// when the parent sent a timestamp, a MIC over all three messages.
pub fn authenticate(
    identity: &Identity,
    nt_hash: &NtHash,
    negotiate_msg: &[u8],
    challenge: &Challenge,
    entropy: &Entropy,
) -> Vec<u8> {
    let mut response_key = ntowf_v2(nt_hash, &identity.user, &identity.domain);
    let mic = challenge.timestamp.is_some();
    let entropy = Entropy {
        client_challenge: entropy.client_challenge,
        time: challenge.timestamp.unwrap_or(entropy.time),
    };
    let info = client_target_info(&challenge.target_info, mic);
    let v2 = compute_v2(
        &response_key,
        &challenge.server_challenge,
        &info,
        &entropy,
        !mic,
    );
    response_key.zeroize();

    let unicode = challenge.flags & NEGOTIATE_UNICODE != 0;
    let text = |s: &str| -> Vec<u8> {
        if unicode {
            utf16le(s)
        } else {
            s.chars()
                .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
                .collect()
        }
    };
    let charset = if unicode {
        NEGOTIATE_UNICODE
    } else {
        NEGOTIATE_OEM
    };
    let flags = (CLIENT_FLAGS & challenge.flags & !(NEGOTIATE_UNICODE | NEGOTIATE_OEM))
        | charset
        | NEGOTIATE_NTLM
        | NEGOTIATE_VERSION;

    let domain = text(&identity.domain);
    let user = text(&identity.user);
    let workstation = text(&identity.workstation);
    // Payload order as Windows writes it: domain, user, workstation, LM, NT, session key.
    let payload: [&[u8]; 6] = [
        &domain,
        &user,
        &workstation,
        &v2.lm_response,
        &v2.nt_response,
        &[],
    ];
    let mut offsets = [0usize; 6];
    let mut at = AUTHENTICATE_HEADER;
    for (i, p) in payload.iter().enumerate() {
        offsets[i] = at;
        at += p.len();
    }
    let mut m = Vec::with_capacity(at);
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&3u32.to_le_bytes());
    // Header field order: LM, NT, domain, user, workstation, encrypted random session key.
    for i in [3usize, 4, 0, 1, 2, 5] {
        let len = payload[i].len() as u16;
        m.extend_from_slice(&len.to_le_bytes());
        m.extend_from_slice(&len.to_le_bytes());
        m.extend_from_slice(&(offsets[i] as u32).to_le_bytes());
    }
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&VERSION);
    m.extend_from_slice(&[0; 16]);
    for p in payload {
        m.extend_from_slice(p);
    }
    if mic {
        // Without key exchange, ExportedSessionKey = KeyExchangeKey = SessionBaseKey for
        // NTLMv2 (§3.4.5.1).
        let code = hmac_md5(&v2.session_base_key, &[negotiate_msg, &challenge.raw, &m]);
        m[MIC_OFFSET..MIC_OFFSET + 16].copy_from_slice(&code);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // MS-NLMP §4.2.1 common values.
    const SERVER_CHALLENGE: [u8; 8] = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];

    /// The CHALLENGE_MESSAGE of §4.2.4.3 (NTLMv2), byte for byte.
    fn ms_nlmp_challenge() -> Vec<u8> {
        let mut m = hex::decode(
            "4e544c4d53535000020000000c000c003800000033828ae2\
             0123456789abcdef0000000000000000240024004400000006007017000000 0f"
                .replace(' ', ""),
        )
        .unwrap();
        m.extend(utf16le("Server"));
        m.extend([0x02, 0x00, 0x0c, 0x00]);
        m.extend(utf16le("Domain"));
        m.extend([0x01, 0x00, 0x0c, 0x00]);
        m.extend(utf16le("Server"));
        m.extend([0, 0, 0, 0]);
        m
    }

    fn ms_nlmp_entropy() -> Entropy {
        Entropy {
            client_challenge: [0xaa; 8],
            time: 0,
        }
    }

    #[test]
    fn nt_hash_and_ntowfv2_match_ms_nlmp_4_2_4_1_1() {
        let h = NtHash::from_password("Password");
        assert_eq!(hex::encode(h.0), "a4f49c406510bdcab6824ee7c30fd852");
        let key = ntowf_v2(&h, "User", "Domain");
        assert_eq!(hex::encode(key), "0c868a403bfd7a93a3001ef22ef02e3f");
    }

    #[test]
    fn challenge_of_4_2_4_3_parses() {
        let c = parse_challenge(&ms_nlmp_challenge()).unwrap();
        assert_eq!(c.flags, 0xe28a_8233);
        assert_eq!(c.server_challenge, SERVER_CHALLENGE);
        assert_eq!(c.target_info.len(), 36);
        assert_eq!(c.timestamp, None);
    }

    #[test]
    fn ntlmv2_responses_match_ms_nlmp_4_2_4_2() {
        let c = parse_challenge(&ms_nlmp_challenge()).unwrap();
        let key = ntowf_v2(&NtHash::from_password("Password"), "User", "Domain");
        let v2 = compute_v2(
            &key,
            &c.server_challenge,
            &c.target_info,
            &ms_nlmp_entropy(),
            true,
        );
        // §4.2.4.2.1 LMv2 response.
        assert_eq!(
            hex::encode(&v2.lm_response),
            "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa"
        );
        // §4.2.4.2.2 NTLMv2 response: NTProofStr, then the blob (temp).
        assert_eq!(
            hex::encode(&v2.nt_response[..16]),
            "68cd0ab851e51c96aabc927bebef6a1c"
        );
        assert_eq!(
            hex::encode(&v2.nt_response[16..]),
            "01010000000000000000000000000000aaaaaaaaaaaaaaaa00000000\
             02000c0044006f006d00610069006e0001000c005300650072007600650072000000000000000000"
        );
        // §4.2.4.1.2 session base key.
        assert_eq!(
            hex::encode(v2.session_base_key),
            "8de40ccadbc14a82f15cb0ad0de95ca3"
        );
    }

    fn security_buffer(m: &[u8], at: usize) -> &[u8] {
        field(m, at, "x").unwrap()
    }

    #[test]
    fn authenticate_carries_the_4_2_4_3_responses_and_names() {
        let c = parse_challenge(&ms_nlmp_challenge()).unwrap();
        let id = Identity::parse("Domain\\User", "COMPUTER");
        let m = authenticate(
            &id,
            &NtHash::from_password("Password"),
            &negotiate(),
            &c,
            &ms_nlmp_entropy(),
        );
        assert_eq!(&m[..8], SIGNATURE);
        assert_eq!(u32_at(&m, 8).unwrap(), 3);
        assert_eq!(
            hex::encode(security_buffer(&m, 12)),
            "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa"
        );
        assert!(security_buffer(&m, 20).starts_with(&hex::decode("68cd0ab851e51c96").unwrap()));
        assert_eq!(security_buffer(&m, 28), utf16le("Domain"));
        assert_eq!(security_buffer(&m, 36), utf16le("User"));
        assert_eq!(security_buffer(&m, 44), utf16le("COMPUTER"));
        assert!(security_buffer(&m, 52).is_empty());
        let flags = u32_at(&m, 60).unwrap();
        assert_ne!(flags & NEGOTIATE_UNICODE, 0);
        assert_eq!(flags & NEGOTIATE_OEM, 0);
        // No timestamp in the challenge: no MIC.
        assert_eq!(&m[MIC_OFFSET..MIC_OFFSET + 16], &[0; 16]);
    }

    #[test]
    fn a_server_timestamp_is_used_and_a_mic_is_sent() {
        let mut info = Vec::new();
        push_av(&mut info, 2, &utf16le("Domain"));
        push_av(
            &mut info,
            MSV_AV_TIMESTAMP,
            &0x01d0_0000_0000_0000u64.to_le_bytes(),
        );
        push_av(&mut info, MSV_AV_EOL, &[]);
        let mut m = ms_nlmp_challenge()[..48].to_vec();
        m[40..42].copy_from_slice(&(info.len() as u16).to_le_bytes());
        m[42..44].copy_from_slice(&(info.len() as u16).to_le_bytes());
        m[44..48].copy_from_slice(&48u32.to_le_bytes());
        m[12..20].copy_from_slice(&[0, 0, 0, 0, 48, 0, 0, 0]);
        m.extend(&info);
        let c = parse_challenge(&m).unwrap();
        assert_eq!(c.timestamp, Some(0x01d0_0000_0000_0000));
        let neg = negotiate();
        let out = authenticate(
            &Identity::parse("D\\u", "W"),
            &NtHash::from_password("p"),
            &neg,
            &c,
            &ms_nlmp_entropy(),
        );
        assert_eq!(security_buffer(&out, 12), &[0; 24]);
        let nt = security_buffer(&out, 20);
        assert_eq!(&nt[24..32], &0x01d0_0000_0000_0000u64.to_le_bytes());
        // The MIC verifies: HMAC over the three messages with the MIC field zeroed.
        let key = ntowf_v2(&NtHash::from_password("p"), "u", "D");
        let base = hmac_md5(&key, &[&nt[..16]]);
        let mut zeroed = out.clone();
        zeroed[MIC_OFFSET..MIC_OFFSET + 16].fill(0);
        assert_eq!(
            &out[MIC_OFFSET..MIC_OFFSET + 16],
            &hmac_md5(&base, &[&neg, &m, &zeroed])
        );
        // The returned AV list says a MIC is present.
        let blob_info = &nt[44..];
        assert!(blob_info.windows(8).any(|w| w == [6, 0, 4, 0, 2, 0, 0, 0]));
    }

    /// The CHALLENGEs Squid's ntlm_fake_auth sends: a garbage offset for the (unused)
    /// target name, a 40-byte header, and (second one) NEGOTIATE_TARGET_INFO echoed over
    /// payload bytes.
    #[test]
    fn squid_fake_auth_challenge_is_answered() {
        use base64::Engine;
        let m = base64::engine::general_purpose::STANDARD
            .decode("TlRMTVNTUAACAAAACQAJAK6qqqoGgggAjnswEMPl2vsAAAAAAAA6AFdPUktHUk9VUA==")
            .unwrap();
        let c = parse_challenge(&m).unwrap();
        assert!(c.target_info.is_empty());
        let out = authenticate(
            &Identity::parse("CORP\\build", "WS"),
            &NtHash::from_password("pw"),
            &negotiate(),
            &c,
            &ms_nlmp_entropy(),
        );
        assert_eq!(security_buffer(&out, 36), b"build");
        assert_eq!(security_buffer(&out, 28), b"CORP");
        // The blob ends with an EOL-only AV list and the four reserved zero bytes.
        assert!(security_buffer(&out, 20).ends_with(&[0; 8]));
        assert_eq!(u32_at(&out, 60).unwrap() & NEGOTIATE_UNICODE, 0);
        let m = hex::decode(
            "4e544c4d535350000200000009000900aeaaaaaa078288a236efde1a211c2967\
             0000000000003a00574f524b47524f5550",
        )
        .unwrap();
        let c = parse_challenge(&m).unwrap();
        assert!(c.target_info.is_empty());
        assert_ne!(c.flags & NEGOTIATE_UNICODE, 0);
    }

    #[test]
    fn identities() {
        let i = Identity::parse("CORP\\build", "ws");
        assert_eq!((i.domain.as_str(), i.user.as_str()), ("CORP", "build"));
        let i = Identity::parse("build@corp.example", "");
        assert_eq!(
            (i.domain.as_str(), i.user.as_str()),
            ("", "build@corp.example")
        );
    }

    #[test]
    fn negotiate_message_layout() {
        let m = negotiate();
        assert_eq!(m.len(), 40);
        assert_eq!(&m[..8], SIGNATURE);
        assert_eq!(u32_at(&m, 8).unwrap(), 1);
        assert_eq!(u32_at(&m, 12).unwrap(), CLIENT_FLAGS);
    }

    #[test]
    fn hostile_challenges_are_refused() {
        let good = ms_nlmp_challenge();
        assert!(parse_challenge(&good[..31]).is_err());
        let mut m = good.clone();
        m[0] = b'X';
        assert!(parse_challenge(&m).is_err());
        let mut m = good.clone();
        m[8] = 3;
        assert!(parse_challenge(&m).is_err());
        // Target info pointing past the end, or an overflowing offset: taken as absent,
        // never read.
        let mut m = good.clone();
        m[40] = 0xff;
        assert!(parse_challenge(&m).unwrap().target_info.is_empty());
        let mut m = good.clone();
        m[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_challenge(&m).unwrap().target_info.is_empty());
        // An AV pair running past the target info.
        let mut m = good.clone();
        m[0x44 + 2] = 0x40;
        assert!(parse_challenge(&m).is_err());
        // AV list without EOL.
        let mut m = good.clone();
        let n = m.len();
        m.truncate(n - 4);
        m[40] -= 4;
        m[42] -= 4;
        assert!(parse_challenge(&m).is_err());
        assert!(parse_challenge(&vec![0u8; MAX_CHALLENGE + 1]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_challenge(&bytes);
        }

        #[test]
        fn parser_never_panics_on_mutated_challenges(
            edits in proptest::collection::vec((0usize..120, any::<u8>()), 0..8),
            cut in 0usize..130,
        ) {
            let mut m = ms_nlmp_challenge();
            for (at, b) in edits {
                if at < m.len() {
                    m[at] = b;
                }
            }
            m.truncate(cut.max(1).min(m.len()));
            if let Ok(c) = parse_challenge(&m) {
                // Whatever parses can be answered without panicking.
                let _ = authenticate(
                    &Identity::parse("D\\u", "w"),
                    &NtHash::from_password("p"),
                    &negotiate(),
                    &c,
                    &ms_nlmp_entropy(),
                );
            }
        }

        #[test]
        fn av_lists_round_trip(pairs in proptest::collection::vec((1u16..12, proptest::collection::vec(any::<u8>(), 0..20)), 0..10)) {
            let mut info = Vec::new();
            for (id, v) in &pairs {
                let v = if *id == MSV_AV_FLAGS || *id == MSV_AV_TIMESTAMP { vec![0; if *id == MSV_AV_FLAGS {4} else {8}] } else { v.clone() };
                push_av(&mut info, *id, &v);
            }
            push_av(&mut info, MSV_AV_EOL, &[]);
            let (parsed, _) = parse_av_pairs(&info).unwrap();
            prop_assert_eq!(&parsed, &info);
            let back = client_target_info(&parsed, true);
            let (reparsed, _) = parse_av_pairs(&back).unwrap();
            prop_assert_eq!(reparsed, back);
        }
    }
}
