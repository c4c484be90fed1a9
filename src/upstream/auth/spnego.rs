//! SPNEGO (RFC 4178) framing for HTTP Negotiate (RFC 4559): the client's NegTokenInit
//! wrapping a Kerberos AP-REQ, and a strict, bounded DER reader for the parent's NegTokenResp.

/// 1.3.6.1.5.5.2, SPNEGO.
const OID_SPNEGO: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
/// 1.2.840.113554.1.2.2, Kerberos V5 (RFC 4121).
pub const OID_KRB5: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
/// 1.2.840.48018.1.2.2, the Kerberos OID Windows used to send by mistake (accepted in answers).
const OID_MS_KRB5: &[u8] = &[0x2a, 0x86, 0x48, 0x82, 0xf7, 0x12, 0x01, 0x02, 0x02];

/// Largest token read (the same bound as the challenge header).
const MAX_TOKEN: usize = 12 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpnegoError {
    #[error("SPNEGO token is {0}")]
    Malformed(&'static str),
}

fn bad(what: &'static str) -> SpnegoError {
    SpnegoError::Malformed(what)
}

/// DER length octets (X.690 §8.1.3; definite form only, as DER requires).
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// The GSS-API framing of a mechanism token (RFC 2743 §3.1, RFC 4121 §4.1): `[APPLICATION 0]
/// { OID, token }`. For Kerberos, `inner` is the two-byte TOK_ID then the AP-REQ.
pub fn gss_frame(oid: &[u8], inner: &[u8]) -> Vec<u8> {
    let mut body = tlv(0x06, oid);
    body.extend_from_slice(inner);
    tlv(0x60, &body)
}

/// `NegTokenInit` offering Kerberos with its first token (RFC 4178 §4.2.1), in the GSS-API
/// framing a Negotiate header carries.
pub fn neg_token_init(krb5_token: &[u8]) -> Vec<u8> {
    let mech_types = tlv(0xa0, &tlv(0x30, &tlv(0x06, OID_KRB5)));
    let mech_token = tlv(0xa2, &tlv(0x04, krb5_token));
    let mut seq = mech_types;
    seq.extend_from_slice(&mech_token);
    let init = tlv(0xa0, &tlv(0x30, &seq));
    gss_frame(OID_SPNEGO, &init)
}

/// A strict DER reader over a byte slice.
struct Der<'a> {
    b: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(b: &'a [u8]) -> Self {
        Der { b }
    }

    fn is_empty(&self) -> bool {
        self.b.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.b.first().copied()
    }

    /// Reads one TLV, returning its tag and contents.
    fn read(&mut self) -> Result<(u8, &'a [u8]), SpnegoError> {
        let (&tag, rest) = self.b.split_first().ok_or(bad("truncated"))?;
        if tag & 0x1f == 0x1f {
            return Err(bad("using a high tag number"));
        }
        let (&first, mut rest) = rest.split_first().ok_or(bad("truncated"))?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 {
                return Err(bad("using an indefinite length"));
            }
            if n > 3 {
                return Err(bad("too large"));
            }
            let (digits, after) = rest.split_at_checked(n).ok_or(bad("truncated"))?;
            rest = after;
            digits
                .iter()
                .fold(0usize, |a, d| (a << 8) | usize::from(*d))
        };
        if len > MAX_TOKEN {
            return Err(bad("too large"));
        }
        let (content, after) = rest.split_at_checked(len).ok_or(bad("truncated"))?;
        self.b = after;
        Ok((tag, content))
    }

    fn expect(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], SpnegoError> {
        match self.read()? {
            (t, c) if t == tag => Ok(c),
            _ => Err(bad(what)),
        }
    }
}

/// `negState` (RFC 4178 §4.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NegState {
    AcceptCompleted,
    AcceptIncomplete,
    Reject,
    RequestMic,
}

/// The parts of a `NegTokenResp` cuttle looks at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NegTokenResp {
    pub state: Option<NegState>,
    pub kerberos: bool,
    pub response_token: Option<Vec<u8>>,
}

/// Parses the parent's Negotiate token: a `NegTokenResp` (`[1]`), bare as servers send it or
/// inside the GSS-API framing; or a bare Kerberos token (RFC 4559 allows raw mechanisms).
pub fn parse_response(token: &[u8]) -> Result<NegTokenResp, SpnegoError> {
    if token.len() > MAX_TOKEN {
        return Err(bad("too large"));
    }
    let mut outer = Der::new(token);
    let inner = match outer.peek_tag() {
        Some(0x60) => {
            let framed = outer.expect(0x60, "not GSS-API framed")?;
            let mut d = Der::new(framed);
            let oid = d.expect(0x06, "without a mechanism OID")?;
            if oid == OID_KRB5 || oid == OID_MS_KRB5 {
                return Ok(NegTokenResp {
                    state: Some(NegState::AcceptCompleted),
                    kerberos: true,
                    response_token: Some(d.b.to_vec()),
                });
            }
            if oid != OID_SPNEGO {
                return Err(bad("for an unknown mechanism"));
            }
            d.b
        }
        _ => token,
    };
    let mut d = Der::new(inner);
    let resp = d.expect(0xa1, "not a NegTokenResp")?;
    if !d.is_empty() {
        return Err(bad("followed by trailing bytes"));
    }
    let mut seq = Der::new(resp);
    let fields = seq.expect(0x30, "not a SEQUENCE")?;
    if !seq.is_empty() {
        return Err(bad("followed by trailing bytes"));
    }
    let mut f = Der::new(fields);
    let mut out = NegTokenResp::default();
    let mut last_tag = None;
    while !f.is_empty() {
        let (tag, content) = f.read()?;
        // Fields are context tags [0]..[3], in order, each at most once.
        if !(0xa0..=0xa3).contains(&tag) || last_tag.is_some_and(|t| t >= tag) {
            return Err(bad("with fields out of order"));
        }
        last_tag = Some(tag);
        let mut inner = Der::new(content);
        match tag {
            0xa0 => {
                let v = inner.expect(0x0a, "negState not ENUMERATED")?;
                out.state = Some(match v {
                    [0] => NegState::AcceptCompleted,
                    [1] => NegState::AcceptIncomplete,
                    [2] => NegState::Reject,
                    [3] => NegState::RequestMic,
                    _ => return Err(bad("with an unknown negState")),
                });
            }
            0xa1 => {
                let oid = inner.expect(0x06, "supportedMech not an OID")?;
                out.kerberos = oid == OID_KRB5 || oid == OID_MS_KRB5;
            }
            0xa2 => {
                out.response_token = Some(
                    inner
                        .expect(0x04, "responseToken not an OCTET STRING")?
                        .to_vec(),
                );
            }
            _ => {
                inner.expect(0x04, "mechListMIC not an OCTET STRING")?;
            }
        }
        if !inner.is_empty() {
            return Err(bad("with trailing bytes in a field"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn init_token_layout() {
        let t = neg_token_init(&[1, 2, 3]);
        assert_eq!(
            hex::encode(&t),
            "602206062b0601050502a0183016a00d300b06092a864886f712010202a2050403010203"
        );
    }

    #[test]
    fn long_lengths() {
        let t = neg_token_init(&[7u8; 300]);
        let mut d = Der::new(&t);
        let (tag, content) = d.read().unwrap();
        assert_eq!(tag, 0x60);
        assert!(d.is_empty());
        assert!(content.ends_with(&[7u8; 300]));
    }

    fn resp(state: u8, token: &[u8]) -> Vec<u8> {
        let mut f = tlv(0xa0, &tlv(0x0a, &[state]));
        f.extend(tlv(0xa1, &tlv(0x06, OID_KRB5)));
        f.extend(tlv(0xa2, &tlv(0x04, token)));
        tlv(0xa1, &tlv(0x30, &f))
    }

    #[test]
    fn responses_parse() {
        let r = parse_response(&resp(0, b"aprep")).unwrap();
        assert_eq!(r.state, Some(NegState::AcceptCompleted));
        assert!(r.kerberos);
        assert_eq!(r.response_token.as_deref(), Some(&b"aprep"[..]));
        let r = parse_response(&resp(2, b"")).unwrap();
        assert_eq!(r.state, Some(NegState::Reject));
        // A raw Kerberos answer (RFC 4559 §5 allows it).
        let raw = gss_frame(OID_KRB5, &[2, 0, 0x6f, 0]);
        assert!(parse_response(&raw).unwrap().kerberos);
    }

    #[test]
    fn malformed_responses_are_refused() {
        assert!(parse_response(&[]).is_err());
        assert!(parse_response(&[0xa1, 0x80]).is_err());
        assert!(parse_response(&[0xa1, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(parse_response(&[0xa1, 0x05, 0x30, 0x03, 0xa0, 0x01]).is_err());
        let mut r = resp(0, b"x");
        r.push(0);
        assert!(parse_response(&r).is_err());
        let mut f = tlv(0xa2, &tlv(0x04, b"x"));
        f.extend(tlv(0xa0, &tlv(0x0a, &[0])));
        assert!(parse_response(&tlv(0xa1, &tlv(0x30, &f))).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_response(&bytes);
        }

        #[test]
        fn mutated_responses_never_panic(
            edits in proptest::collection::vec((0usize..40, any::<u8>()), 0..6),
            cut in 0usize..40,
        ) {
            let mut m = resp(1, b"token-bytes");
            for (at, b) in edits {
                if at < m.len() {
                    m[at] = b;
                }
            }
            m.truncate(cut.min(m.len()));
            let _ = parse_response(&m);
        }

        #[test]
        fn init_round_trips_through_the_reader(token in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let t = neg_token_init(&token);
            let mut d = Der::new(&t);
            let framed = d.expect(0x60, "x").unwrap();
            prop_assert!(d.is_empty());
            let mut d = Der::new(framed);
            prop_assert_eq!(d.expect(0x06, "x").unwrap(), OID_SPNEGO);
            let mut d = Der::new(d.expect(0xa0, "x").unwrap());
            let mut d = Der::new(d.expect(0x30, "x").unwrap());
            d.expect(0xa0, "x").unwrap();
            let mut d = Der::new(d.expect(0xa2, "x").unwrap());
            prop_assert_eq!(d.expect(0x04, "x").unwrap(), &token[..]);
        }
    }
}
