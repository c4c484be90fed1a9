//! A streaming JSON scanner that rewrites the string values found at chosen paths (e.g.
//! `versions.*.dist.tarball`) through a [`UrlMap`], copying every other byte as it came. It
//! keeps a stack of container names, not the document; the only buffer is the string being
//! read, capped at [`MAX_TOKEN`]. Malformed JSON is passed through, never an error: the
//! scanner only has to be right on documents that are right.

use std::sync::Arc;

use super::{MAX_TOKEN, Rewrite, UrlMap};

/// Containers nested deeper than this are passed through unexamined (no rule is that deep).
const MAX_DEPTH: usize = 64;

/// One step of a path from the document root.
#[derive(Debug, Clone, Copy)]
pub(super) enum Pat {
    /// An object member with this name.
    Key(&'static str),
    /// Any object member (a version string, a crate name...).
    AnyKey,
    /// Any array element.
    Item,
}

/// Rewrite the string value of member `key` in the object reached by `path`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rule {
    pub path: &'static [Pat],
    pub key: &'static str,
}

/// How a container was reached from its parent.
#[derive(Debug, Clone)]
enum Seg {
    /// As the value of this member (None: a name too long to hold, matching nothing).
    Key(Option<String>),
    Item,
}

#[derive(Debug)]
struct Frame {
    object: bool,
    seg: Seg,
}

pub(super) struct JsonRewriter {
    map: Arc<UrlMap>,
    base: Option<url::Url>,
    rules: &'static [Rule],
    stack: Vec<Frame>,
    /// Containers opened past MAX_DEPTH, counted so closing them keeps the stack right.
    deep: usize,
    /// In an object: the name of the member whose value comes next.
    key: Option<Option<String>>,
    /// In an object: the next string is a member name.
    expect_key: bool,
    in_string: bool,
    escaped: bool,
    /// The string being read, quotes included, while it may still matter.
    buf: Vec<u8>,
    /// The string outgrew MAX_TOKEN and is being copied through.
    passing: bool,
}

impl JsonRewriter {
    pub(super) fn new(map: Arc<UrlMap>, base: Option<url::Url>, rules: &'static [Rule]) -> Self {
        JsonRewriter {
            map,
            base,
            rules,
            stack: Vec::new(),
            deep: 0,
            key: None,
            expect_key: false,
            in_string: false,
            escaped: false,
            buf: Vec::new(),
            passing: false,
        }
    }

    /// How the value starting now is reached from its container.
    fn value_seg(&self) -> Seg {
        match self.stack.last() {
            Some(f) if f.object => Seg::Key(self.key.clone().flatten()),
            _ => Seg::Item,
        }
    }

    fn in_object(&self) -> bool {
        self.deep == 0 && self.stack.last().is_some_and(|f| f.object)
    }

    /// Whether a string value starting now is one a rule names.
    fn wanted(&self) -> bool {
        if self.deep > 0 || !self.in_object() {
            return false;
        }
        let Some(Some(key)) = &self.key else {
            return false;
        };
        let path = self.stack.get(1..).unwrap_or(&[]);
        self.rules.iter().any(|r| {
            r.key == key
                && r.path.len() == path.len()
                && r.path.iter().zip(path).all(|(p, f)| match (p, &f.seg) {
                    (Pat::Key(want), Seg::Key(Some(k))) => want == k,
                    (Pat::AnyKey, Seg::Key(Some(_))) => true,
                    (Pat::Item, Seg::Item) => true,
                    _ => false,
                })
        })
    }

    fn open(&mut self, object: bool) {
        if self.deep > 0 || self.stack.len() >= MAX_DEPTH {
            self.deep += 1;
        } else {
            let seg = self.value_seg();
            self.stack.push(Frame { object, seg });
        }
        self.expect_key = object;
        self.key = None;
    }

    fn close(&mut self) {
        if self.deep > 0 {
            self.deep -= 1;
        } else {
            self.stack.pop();
        }
        self.expect_key = false;
        self.key = None;
    }

    fn end_string(&mut self, out: &mut Vec<u8>) {
        let raw = std::mem::take(&mut self.buf);
        if self.in_object() && self.expect_key {
            self.key = Some(if self.passing { None } else { decode(&raw) });
            out.extend_from_slice(&raw);
            return;
        }
        if !self.passing && self.wanted() {
            let mapped = decode(&raw).and_then(|s| self.map.map_reference(&s, self.base.as_ref()));
            if let Some(m) = mapped {
                out.push(b'"');
                escape_into(&m, out);
                out.push(b'"');
                return;
            }
        }
        out.extend_from_slice(&raw);
    }
}

impl Rewrite for JsonRewriter {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if self.in_string {
                let end = if self.escaped {
                    self.escaped = false;
                    false
                } else if b == b'\\' {
                    self.escaped = true;
                    false
                } else {
                    b == b'"'
                };
                if self.passing {
                    out.push(b);
                } else {
                    self.buf.push(b);
                    if !end && self.buf.len() > MAX_TOKEN {
                        out.append(&mut self.buf);
                        self.passing = true;
                    }
                }
                if end {
                    self.in_string = false;
                    self.end_string(out);
                }
                continue;
            }
            match b {
                b'"' => {
                    self.in_string = true;
                    self.passing = false;
                    self.buf.push(b);
                    continue;
                }
                b'{' => self.open(true),
                b'[' => self.open(false),
                b'}' | b']' => self.close(),
                b':' => self.expect_key = false,
                b',' => {
                    self.expect_key = self.in_object();
                    self.key = None;
                }
                _ => {}
            }
            out.push(b);
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.buf);
    }
}

/// Decodes a JSON string token (quotes included), RFC 8259 §7; None if it is not valid.
fn decode(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?).ok()?;
    if !s.contains('\\') {
        return Some(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            '/' => out.push('/'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let hi = hex4(&mut chars)?;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    if chars.next()? != '\\' || chars.next()? != 'u' {
                        return None;
                    }
                    let lo = hex4(&mut chars)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                out.push(char::from_u32(code)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

fn hex4(chars: &mut std::str::Chars<'_>) -> Option<u32> {
    let h: String = chars.by_ref().take(4).collect();
    if h.len() != 4 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(&h, 16).ok()
}

/// Escapes a string for a JSON string token (RFC 8259 §7: quote, backslash, controls).
fn escape_into(s: &str, out: &mut Vec<u8>) {
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::rewrite::rewrite_all;

    const RULES: &[Rule] = &[
        Rule {
            path: &[Pat::Key("a"), Pat::AnyKey, Pat::Key("d")],
            key: "u",
        },
        Rule {
            path: &[Pat::Key("files"), Pat::Item],
            key: "url",
        },
    ];

    fn rw(doc: &str) -> String {
        let map = Arc::new(UrlMap::new([("http://up.example.org/", "http://m/x/")]).unwrap());
        let mut r = JsonRewriter::new(map, None, RULES);
        String::from_utf8(rewrite_all(&mut r, doc.as_bytes())).unwrap()
    }

    #[test]
    fn rewrites_only_at_the_path() {
        let doc = r#"{"u":"http://up.example.org/0","a":{"v1":{"d":{"u":"http://up.example.org/1","w":"http://up.example.org/2"},"u":"http://up.example.org/3"}},
            "files":[{"url":"http://up.example.org/4"},{"x":{"url":"http://up.example.org/5"}}],"d":{"u":"http://up.example.org/6"}}"#;
        let want = doc
            .replace("up.example.org/1", "m/x/1")
            .replace("up.example.org/4", "m/x/4");
        assert_eq!(rw(doc), want);
    }

    #[test]
    fn escaped_strings_and_keys() {
        let doc = r#"{"a":{"k\"}":{"d":{"\u0075":"http:\/\/up.example.org\/p\"q"}}}}"#;
        assert_eq!(
            rw(doc),
            r#"{"a":{"k\"}":{"d":{"\u0075":"http://m/x/p\"q"}}}}"#
        );
        // Braces and quotes inside strings do not move the scanner.
        let doc = r#"{"files":[{"x":"}]{[\"","url":"http://up.example.org/7"}]}"#;
        assert_eq!(rw(doc), doc.replace("up.example.org/7", "m/x/7"));
    }

    #[test]
    fn malformed_input_passes_through() {
        for doc in [
            "",
            "}}]]",
            "{\"a\":",
            "\"unterminated",
            "{\"files\":[{\"url\":\"\\u12\"}]}",
        ] {
            assert_eq!(rw(doc), doc);
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(rw(&deep), deep);
    }

    #[test]
    fn long_strings_pass_through() {
        let long = "y".repeat(MAX_TOKEN * 2);
        let doc = format!(
            r#"{{"files":[{{"url":"http://up.example.org/{long}"}},{{"url":"http://up.example.org/z"}}]}}"#
        );
        assert_eq!(rw(&doc), doc.replace("up.example.org/z", "m/x/z"));
    }

    #[test]
    fn decode_and_escape() {
        assert_eq!(
            decode(br#""a\u00e9\ud83d\ude00\n""#).as_deref(),
            Some("a\u{e9}\u{1f600}\n")
        );
        assert_eq!(decode(br#""\ud83d""#), None);
        assert_eq!(decode(br#""\x""#), None);
        let mut out = Vec::new();
        escape_into("a\"\\\u{1}", &mut out);
        assert_eq!(out, br#"a\"\\\u0001"#);
    }
}
