//! A streaming HTML scanner that rewrites `href` attribute values through a [`UrlMap`] (the
//! links of a PEP 503 simple page, and a `<base href>` if one is there), copying every other
//! byte, including the other attributes (`data-requires-python`, `data-dist-info-metadata`,
//! `data-core-metadata`, `data-yanked`), as it came. It follows the HTML tokenizer only as
//! far as telling tags, attributes, quoted values and comments apart; the only buffer is the
//! attribute value being read, capped at [`MAX_TOKEN`].

use std::sync::Arc;

use super::{MAX_TOKEN, Rewrite, UrlMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Text,
    /// Just after `<`.
    TagOpen,
    TagName,
    /// Between attributes.
    Tag,
    AttrName,
    AfterName,
    BeforeValue,
    Quoted(u8),
    Unquoted,
    /// After `<!`, with the dashes seen so far (two make a comment).
    Bang(u8),
    /// `<!DOCTYPE ...>` and the like.
    Decl,
    /// Inside `<!-- -->`, with the dashes just seen.
    Comment(u8),
}

pub(super) struct HtmlRewriter {
    map: Arc<UrlMap>,
    base: Option<url::Url>,
    st: St,
    /// The attribute name being read, lower-cased (only its first bytes matter).
    name: Vec<u8>,
    /// Reading an `href` value into `value`.
    capture: bool,
    value: Vec<u8>,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
}

impl HtmlRewriter {
    pub(super) fn new(map: Arc<UrlMap>, base: Option<url::Url>) -> Self {
        HtmlRewriter {
            map,
            base,
            st: St::Text,
            name: Vec::new(),
            capture: false,
            value: Vec::new(),
        }
    }

    fn start_name(&mut self, b: u8) {
        self.name.clear();
        self.name.push(b.to_ascii_lowercase());
        self.st = St::AttrName;
    }

    fn start_value(&mut self) {
        self.capture = self.name == b"href";
        self.value.clear();
    }

    fn value_byte(&mut self, b: u8, out: &mut Vec<u8>) {
        if !self.capture {
            out.push(b);
            return;
        }
        self.value.push(b);
        if self.value.len() > MAX_TOKEN {
            out.append(&mut self.value);
            self.capture = false;
        }
    }

    fn end_value(&mut self, out: &mut Vec<u8>) {
        if !self.capture {
            return;
        }
        self.capture = false;
        let raw = std::mem::take(&mut self.value);
        let mapped = std::str::from_utf8(&raw)
            .ok()
            .and_then(|v| self.map.map_reference(v.trim(), self.base.as_ref()));
        match mapped {
            Some(m) => out.extend_from_slice(m.as_bytes()),
            None => out.extend_from_slice(&raw),
        }
    }
}

impl Rewrite for HtmlRewriter {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            match self.st {
                St::Quoted(q) if b != q => {
                    self.value_byte(b, out);
                    continue;
                }
                St::Quoted(_) => {
                    self.end_value(out);
                    self.st = St::Tag;
                }
                St::Unquoted if is_ws(b) || b == b'>' => {
                    self.end_value(out);
                    self.st = if b == b'>' { St::Text } else { St::Tag };
                }
                St::Unquoted => {
                    self.value_byte(b, out);
                    continue;
                }
                St::Text => {
                    if b == b'<' {
                        self.st = St::TagOpen;
                    }
                }
                St::TagOpen => {
                    self.st = match b {
                        b'!' => St::Bang(0),
                        b'/' => St::TagName,
                        b if b.is_ascii_alphabetic() => St::TagName,
                        b'<' => St::TagOpen,
                        _ => St::Text,
                    }
                }
                St::TagName => {
                    if b == b'>' {
                        self.st = St::Text;
                    } else if is_ws(b) || b == b'/' {
                        self.st = St::Tag;
                    }
                }
                St::Tag => {
                    if b == b'>' {
                        self.st = St::Text;
                    } else if !is_ws(b) && b != b'/' {
                        self.start_name(b);
                    }
                }
                St::AttrName => match b {
                    b'=' => self.st = St::BeforeValue,
                    b'>' => self.st = St::Text,
                    b'/' => self.st = St::Tag,
                    b if is_ws(b) => self.st = St::AfterName,
                    // Five bytes tell `href` from every longer name.
                    b if self.name.len() < 5 => self.name.push(b.to_ascii_lowercase()),
                    _ => {}
                },
                St::AfterName => match b {
                    b'=' => self.st = St::BeforeValue,
                    b'>' => self.st = St::Text,
                    b if is_ws(b) => {}
                    b => self.start_name(b),
                },
                St::BeforeValue => match b {
                    b'"' | b'\'' => {
                        self.start_value();
                        self.st = St::Quoted(b);
                    }
                    b'>' => self.st = St::Text,
                    b if is_ws(b) => {}
                    b => {
                        self.start_value();
                        self.st = St::Unquoted;
                        self.value_byte(b, out);
                        continue;
                    }
                },
                St::Bang(n) => {
                    self.st = match b {
                        b'-' if n == 1 => St::Comment(0),
                        b'-' => St::Bang(n + 1),
                        b'>' => St::Text,
                        _ => St::Decl,
                    }
                }
                St::Decl => {
                    if b == b'>' {
                        self.st = St::Text;
                    }
                }
                St::Comment(d) => {
                    self.st = match b {
                        b'-' => St::Comment(d.saturating_add(1).min(2)),
                        b'>' if d >= 2 => St::Text,
                        _ => St::Comment(0),
                    }
                }
            }
            out.push(b);
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.value);
        self.capture = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::rewrite::rewrite_all;

    fn rw(doc: &str, base: Option<&str>) -> String {
        let map = Arc::new(
            UrlMap::new([
                ("https://registry.example.org/", "http://m/pypi/"),
                ("https://files.example.org/", "http://m/files/"),
            ])
            .unwrap(),
        );
        let mut r = HtmlRewriter::new(map, base.and_then(|b| url::Url::parse(b).ok()));
        String::from_utf8(rewrite_all(&mut r, doc.as_bytes())).unwrap()
    }

    #[test]
    fn rewrites_hrefs_keeping_everything_else() {
        let doc = "<!DOCTYPE html><html><body>\n<a href=\"https://files.example.org/p/a-1.0.whl#sha256=00\" \
                   data-requires-python=\"&gt;=3.8\" data-dist-info-metadata=\"sha256=11\">a-1.0.whl</a>\n\
                   <A HREF='https://files.example.org/p/b.tar.gz'>b</A><a data-x=\"href=https://files.example.org/no\" \
                   href=https://files.example.org/u>u</a>\n</body></html>";
        let want = doc
            .replace("https://files.example.org/p/", "http://m/files/p/")
            .replace("href=https://files.example.org/u", "href=http://m/files/u");
        assert_eq!(rw(doc, None), want);
    }

    #[test]
    fn comments_and_text_are_left_alone() {
        let doc = "<!-- <a href=\"https://files.example.org/c\"> --> href=\"https://files.example.org/t\" \
                   <a hreflang=\"https://files.example.org/l\" href=\"https://elsewhere.example.org/x\">";
        assert_eq!(rw(doc, None), doc);
    }

    #[test]
    fn relative_links_resolve_against_the_upstream_page() {
        let doc =
            "<a href=\"/simple/foo/\">foo</a><a href=\"../../packages/f.whl#sha256=22\">f</a>";
        assert_eq!(
            rw(doc, Some("https://registry.example.org/simple/")),
            "<a href=\"http://m/pypi/simple/foo/\">foo</a><a href=\"http://m/pypi/packages/f.whl#sha256=22\">f</a>"
        );
        assert_eq!(rw(doc, None), doc);
    }

    #[test]
    fn unterminated_input_is_kept() {
        for doc in [
            "<a href=\"https://files.example.org/x",
            "<a href=",
            "<",
            "<!--",
            "<a href='",
        ] {
            assert_eq!(rw(doc, None), doc);
        }
    }
}
