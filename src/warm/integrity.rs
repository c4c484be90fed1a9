//! Artifact digests as lockfiles write them (W3C Subresource Integrity `sha512-<base64>`,
//! pip/uv/poetry `sha256:<hex>`, yarn's `#<sha1 hex>` fragment, Cargo's bare hex) and the
//! streaming check of a downloaded body against them.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha384, Sha512};

/// Hash algorithms lockfiles use, weakest first (the order SRI's "strongest" rule relies on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Alg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Alg {
    pub fn parse(name: &str) -> Option<Alg> {
        match name.to_ascii_lowercase().as_str() {
            "sha1" => Some(Alg::Sha1),
            "sha256" => Some(Alg::Sha256),
            "sha384" => Some(Alg::Sha384),
            "sha512" => Some(Alg::Sha512),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Sha1 => "sha1",
            Alg::Sha256 => "sha256",
            Alg::Sha384 => "sha384",
            Alg::Sha512 => "sha512",
        }
    }

    fn len(self) -> usize {
        match self {
            Alg::Sha1 => 20,
            Alg::Sha256 => 32,
            Alg::Sha384 => 48,
            Alg::Sha512 => 64,
        }
    }
}

/// One expected digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    pub alg: Alg,
    pub value: Vec<u8>,
}

impl Digest {
    fn new(alg: Alg, value: Vec<u8>) -> Result<Digest, String> {
        if value.len() != alg.len() {
            return Err(format!(
                "a {} digest is {} bytes, this one is {}",
                alg.name(),
                alg.len(),
                value.len()
            ));
        }
        Ok(Digest { alg, value })
    }

    /// `<alg>:<hex>` as pip's `--hash=`, uv and poetry write it.
    pub fn parse_prefixed_hex(s: &str) -> Result<Digest, String> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not <algorithm>:<hex>"))?;
        let alg = Alg::parse(alg).ok_or_else(|| format!("unknown hash algorithm `{alg}`"))?;
        Self::from_hex(alg, hex)
    }

    pub fn from_hex(alg: Alg, hex: &str) -> Result<Digest, String> {
        let v = hex::decode(hex.trim()).map_err(|e| format!("bad hex digest `{hex}`: {e}"))?;
        Self::new(alg, v)
    }

    /// Parses an SRI `integrity` value: W3C SRI §3.5, "metadata = hash-expression *( 1*WSP
    /// hash-expression )", each `hash-algo "-" base64-value` with optional `?options`, which
    /// are ignored. Unknown algorithms are skipped as §3.3.3 says; none known is an error.
    pub fn parse_sri(s: &str) -> Result<Vec<Digest>, String> {
        let mut out = Vec::new();
        for token in s.split_ascii_whitespace() {
            let token = token.split('?').next().unwrap_or(token);
            let Some((alg, b64)) = token.split_once('-') else {
                return Err(format!("`{token}` is not <algorithm>-<base64>"));
            };
            let Some(alg) = Alg::parse(alg) else {
                continue;
            };
            let v = STANDARD
                .decode(b64)
                .map_err(|e| format!("bad base64 in `{token}`: {e}"))?;
            out.push(Self::new(alg, v)?);
        }
        if out.is_empty() {
            return Err(format!("no supported hash in integrity `{s}`"));
        }
        Ok(out)
    }

    pub fn hex(&self) -> String {
        hex::encode(&self.value)
    }
}

impl fmt::Display for Digest {
    /// SRI form for the SRI algorithms' usual users, hex for sha256/sha1 as pip and cargo show.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.alg {
            Alg::Sha384 | Alg::Sha512 => {
                write!(f, "{}-{}", self.alg.name(), STANDARD.encode(&self.value))
            }
            Alg::Sha1 | Alg::Sha256 => write!(f, "{}:{}", self.alg.name(), self.hex()),
        }
    }
}

/// The digests an artifact must match. W3C SRI §3.3.4 "get the strongest metadata": only
/// digests of the strongest algorithm present count, and any one of them matching is enough.
pub fn strongest(set: &[Digest]) -> Option<(Alg, Vec<&Digest>)> {
    let alg = set.iter().map(|d| d.alg).max()?;
    Some((alg, set.iter().filter(|d| d.alg == alg).collect()))
}

/// A streaming hash of one algorithm.
pub enum Hasher {
    Sha1(Sha1),
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(alg: Alg) -> Hasher {
        match alg {
            Alg::Sha1 => Hasher::Sha1(Sha1::new()),
            Alg::Sha256 => Hasher::Sha256(Sha256::new()),
            Alg::Sha384 => Hasher::Sha384(Sha384::new()),
            Alg::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha384(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        let (alg, value) = match self {
            Hasher::Sha1(h) => (Alg::Sha1, h.finalize().to_vec()),
            Hasher::Sha256(h) => (Alg::Sha256, h.finalize().to_vec()),
            Hasher::Sha384(h) => (Alg::Sha384, h.finalize().to_vec()),
            Hasher::Sha512(h) => (Alg::Sha512, h.finalize().to_vec()),
        };
        Digest { alg, value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sri_parses_and_strongest_wins() {
        let s512 = STANDARD.encode(Sha512::digest(b"x"));
        let s1 = STANDARD.encode(Sha1::digest(b"x"));
        let set = Digest::parse_sri(&format!("sha1-{s1} sha512-{s512}?opt md5-AAAA")).unwrap();
        assert_eq!(set.len(), 2);
        let (alg, ds) = strongest(&set).unwrap();
        assert_eq!(alg, Alg::Sha512);
        assert_eq!(ds.len(), 1);
        assert_eq!(ds[0].value, Sha512::digest(b"x").to_vec());
        assert_eq!(ds[0].to_string(), format!("sha512-{s512}"));
    }

    #[test]
    fn sri_rejects_garbage_and_wrong_lengths() {
        assert!(Digest::parse_sri("").is_err());
        assert!(Digest::parse_sri("md5-AAAA").is_err());
        assert!(Digest::parse_sri("sha512-!!!").is_err());
        assert!(Digest::parse_sri("sha512-AAAA").is_err());
        assert!(Digest::parse_sri("nodash").is_err());
    }

    #[test]
    fn prefixed_hex() {
        let hex = hex::encode(Sha256::digest(b"y"));
        let d = Digest::parse_prefixed_hex(&format!("sha256:{hex}")).unwrap();
        assert_eq!(d.alg, Alg::Sha256);
        assert_eq!(d.to_string(), format!("sha256:{hex}"));
        assert!(Digest::parse_prefixed_hex("sha256:zz").is_err());
        assert!(Digest::parse_prefixed_hex("crc32:00").is_err());
        assert!(Digest::parse_prefixed_hex(&hex).is_err());
    }

    #[test]
    fn hasher_matches_one_shot() {
        for alg in [Alg::Sha1, Alg::Sha256, Alg::Sha384, Alg::Sha512] {
            let mut h = Hasher::new(alg);
            h.update(b"ab");
            h.update(b"c");
            let d = h.finish();
            let mut h2 = Hasher::new(alg);
            h2.update(b"abc");
            assert_eq!(d, h2.finish());
            assert_eq!(d.value.len(), alg.len());
        }
    }
}
