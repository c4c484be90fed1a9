//! The two Kerberos files cuttle reads: a keytab (MIT format 0x0502, as `ktutil` and
//! `kadmin ktadd` write it) and the realm and KDC lines of a `krb5.conf`.

use std::collections::HashMap;

use zeroize::Zeroizing;

/// Largest keytab read; real ones are a few hundred bytes.
const MAX_KEYTAB: usize = 1 << 20;

/// One key of a keytab.
pub struct KeytabEntry {
    pub realm: String,
    /// Name components (`HTTP`, `host`; or just `build`).
    pub components: Vec<String>,
    pub kvno: u32,
    pub enctype: i32,
    pub key: Zeroizing<Vec<u8>>,
}

impl KeytabEntry {
    /// `comp/comp@REALM`.
    pub fn principal(&self) -> String {
        format!("{}@{}", self.components.join("/"), self.realm)
    }
}

impl std::fmt::Debug for KeytabEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeytabEntry({} kvno {} enctype {})",
            self.principal(),
            self.kvno,
            self.enctype
        )
    }
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let (head, rest) = self
            .b
            .split_at_checked(n)
            .ok_or("keytab entry is truncated")?;
        self.b = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn data(&mut self) -> Result<&'a [u8], String> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
    fn text(&mut self) -> Result<String, String> {
        String::from_utf8(self.data()?.to_vec()).map_err(|_| "keytab name is not UTF-8".into())
    }
}

/// Parses a keytab (the MIT file format, version 0x0502; big-endian throughout). Holes
/// (negative record sizes) are skipped; a malformed record is an error naming no key.
pub fn parse_keytab(bytes: &[u8]) -> Result<Vec<KeytabEntry>, String> {
    if bytes.len() > MAX_KEYTAB {
        return Err("keytab is larger than 1 MiB".into());
    }
    let mut r = Reader { b: bytes };
    match r.u16() {
        Ok(0x0502) => {}
        Ok(0x0501) => return Err("keytab version 0x0501 is not supported (use 0x0502)".into()),
        _ => return Err("not a keytab file (no 0x0502 header)".into()),
    }
    let mut out = Vec::new();
    while !r.b.is_empty() {
        let size = r.u32()? as i32;
        if size < 0 {
            r.take(size.unsigned_abs() as usize)?;
            continue;
        }
        let record = r.take(size as usize)?;
        let mut e = Reader { b: record };
        let count = e.u16()?;
        let realm = e.text()?;
        let mut components = Vec::new();
        for _ in 0..count {
            components.push(e.text()?);
        }
        let _name_type = e.u32()?;
        let _timestamp = e.u32()?;
        let kvno8 = e.u8()?;
        let enctype = i32::from(e.u16()?);
        let key = Zeroizing::new(e.data()?.to_vec());
        // A 32-bit kvno follows when the record has room for it (krb5 1.3 and later).
        let kvno = if e.b.len() >= 4 {
            e.u32()?
        } else {
            u32::from(kvno8)
        };
        out.push(KeytabEntry {
            realm,
            components,
            kvno,
            enctype,
            key,
        });
    }
    Ok(out)
}

/// What cuttle takes from a `krb5.conf`: the default realm and each realm's KDCs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Krb5Conf {
    pub default_realm: Option<String>,
    pub kdcs: HashMap<String, Vec<String>>,
}

/// Reads the profile syntax of krb5.conf(5): `[section]`, `name = value`, `name = { ... }`
/// blocks, `#`/`;` comments. Only `[libdefaults] default_realm` and `[realms] R = { kdc }`
/// are kept; everything else is skipped, so a full corporate file is fine.
pub fn parse_krb5_conf(text: &str) -> Result<Krb5Conf, String> {
    let mut conf = Krb5Conf::default();
    let mut section = String::new();
    // Names of the open `{` blocks, outermost first.
    let mut blocks: Vec<String> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            let name = line
                .strip_prefix('[')
                .and_then(|l| l.split_once(']'))
                .map(|(s, _)| s.trim())
                .ok_or_else(|| format!("line {}: unclosed section header", n + 1))?;
            section = name.to_string();
            blocks.clear();
            continue;
        }
        if line == "}" {
            if blocks.pop().is_none() {
                return Err(format!("line {}: `}}` without a block", n + 1));
            }
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected `name = value`", n + 1));
        };
        let (name, value) = (name.trim(), value.trim());
        if value == "{" {
            blocks.push(name.to_string());
            continue;
        }
        // Values may carry a trailing comment after whitespace.
        let value = value
            .split_once(" #")
            .map_or(value, |(v, _)| v)
            .trim()
            .to_string();
        match (section.as_str(), blocks.as_slice()) {
            ("libdefaults", []) if name == "default_realm" => conf.default_realm = Some(value),
            ("realms", [realm]) if name == "kdc" => {
                conf.kdcs.entry(realm.clone()).or_default().push(value);
            }
            _ => {}
        }
    }
    if !blocks.is_empty() {
        return Err("a `{` block is not closed".into());
    }
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a keytab record as MIT writes it.
    fn record(realm: &str, comps: &[&str], kvno: u32, enctype: u16, key: &[u8]) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend((comps.len() as u16).to_be_bytes());
        r.extend((realm.len() as u16).to_be_bytes());
        r.extend(realm.as_bytes());
        for c in comps {
            r.extend((c.len() as u16).to_be_bytes());
            r.extend(c.as_bytes());
        }
        r.extend(1u32.to_be_bytes());
        r.extend(0x5f00_0000u32.to_be_bytes());
        r.push(kvno as u8);
        r.extend(enctype.to_be_bytes());
        r.extend((key.len() as u16).to_be_bytes());
        r.extend(key);
        r.extend(kvno.to_be_bytes());
        let mut out = (r.len() as u32).to_be_bytes().to_vec();
        out.extend(r);
        out
    }

    #[test]
    fn keytab_entries_and_holes() {
        let mut kt = vec![0x05, 0x02];
        kt.extend(record(
            "CUTTLE.TEST",
            &["HTTP", "localhost"],
            300,
            18,
            &[7; 32],
        ));
        kt.extend((-4i32).to_be_bytes());
        kt.extend([0; 4]);
        kt.extend(record("CUTTLE.TEST", &["build"], 2, 17, &[9; 16]));
        let e = parse_keytab(&kt).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].principal(), "HTTP/localhost@CUTTLE.TEST");
        assert_eq!(e[0].kvno, 300);
        assert_eq!(e[0].enctype, 18);
        assert_eq!(&e[1].key[..], &[9; 16]);
        assert!(!format!("{:?}", e[1]).contains("9, 9"));
    }

    #[test]
    fn bad_keytabs_are_refused() {
        assert!(parse_keytab(b"").is_err());
        assert!(parse_keytab(&[5, 1]).is_err());
        let mut kt = vec![0x05, 0x02];
        kt.extend(record("R", &["u"], 1, 18, &[1; 32]));
        kt.truncate(kt.len() - 3);
        assert!(parse_keytab(&kt).is_err());
    }

    #[test]
    fn krb5_conf_realms_and_kdcs() {
        let c = parse_krb5_conf(
            "# test\n[libdefaults]\n  default_realm = CUTTLE.TEST\n  rdns = false\n\
             [realms]\n  CUTTLE.TEST = {\n    kdc = 127.0.0.1:8888\n    kdc = kdc2.example:88 # backup\n\
             admin_server = x\n  }\n  OTHER = {\n kdc = o\n }\n[domain_realm]\n .example = OTHER\n",
        )
        .unwrap();
        assert_eq!(c.default_realm.as_deref(), Some("CUTTLE.TEST"));
        assert_eq!(
            c.kdcs["CUTTLE.TEST"],
            vec!["127.0.0.1:8888".to_string(), "kdc2.example:88".to_string()]
        );
        assert_eq!(c.kdcs["OTHER"], vec!["o".to_string()]);
        assert!(parse_krb5_conf("[realms]\nX = {\n kdc = a\n").is_err());
        assert!(parse_krb5_conf("[libdefaults\n").is_err());
    }

    proptest! {
        #[test]
        fn keytab_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut kt = vec![0x05, 0x02];
            kt.extend(bytes);
            let _ = parse_keytab(&kt);
        }

        #[test]
        fn krb5_conf_parser_never_panics(text in "[\\[\\]{}=a-z \n#;]{0,200}") {
            let _ = parse_krb5_conf(&text);
        }
    }
}
