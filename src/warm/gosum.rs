//! Go modules: `go.sum` lines, the module proxy's path escaping, and Go's "h1" directory hash
//! (golang.org/x/mod/sumdb/dirhash `Hash1`) over a module zip or a `go.mod` file, so a warmed
//! module is checked the way `go` itself checks it.

use std::io::{Read, Seek};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest as _, Sha256};

/// Which file of a module version a `go.sum` line covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GoFile {
    /// `<module> <version> h1:...`: the module zip.
    Zip,
    /// `<module> <version>/go.mod h1:...`: the go.mod file alone.
    Mod,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GoSumLine {
    pub module: String,
    pub version: String,
    pub file: GoFile,
    pub h1: String,
}

/// Parses `go.sum`: each line is `<module> <version>[/go.mod] <hash>`. Hashes other than
/// `h1:` (none exist today) are reported, not guessed at.
pub fn parse(text: &str) -> Result<Vec<GoSumLine>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        let [module, version, hash] = f[..] else {
            return Err(format!("line {}: expected `module version hash`", n + 1));
        };
        if !hash.starts_with("h1:") {
            return Err(format!("line {}: unsupported hash `{hash}`", n + 1));
        }
        let (version, file) = match version.strip_suffix("/go.mod") {
            Some(v) => (v, GoFile::Mod),
            None => (version, GoFile::Zip),
        };
        out.push(GoSumLine {
            module: module.to_string(),
            version: version.to_string(),
            file,
            h1: hash.to_string(),
        });
    }
    Ok(out)
}

/// The module proxy protocol's case encoding (`go help goproxy`, x/mod `module.EscapePath`):
/// every upper-case letter becomes `!` and its lower-case form, so paths survive
/// case-insensitive file systems. Applies to module paths and versions alike.
pub fn escape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '!' || c.is_control() || c == ' ' {
            return Err(format!("`{s}` is not a valid module path or version"));
        }
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// The URL path of a module file under a GOPROXY base: `<module>/@v/<version>.zip|.mod`.
pub fn proxy_path(line: &GoSumLine) -> Result<String, String> {
    let ext = match line.file {
        GoFile::Zip => "zip",
        GoFile::Mod => "mod",
    };
    Ok(format!(
        "{}/@v/{}.{ext}",
        escape(&line.module)?,
        escape(&line.version)?
    ))
}

/// dirhash `Hash1`: sha256 over the sorted lines `"<sha256 hex of file>  <name>\n"`,
/// base64-encoded with the `h1:` prefix.
fn hash1(mut files: Vec<(String, [u8; 32])>) -> Result<String, String> {
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (name, sum) in files {
        if name.contains('\n') {
            return Err("dirhash: file names with newlines are not supported".into());
        }
        h.update(format!("{}  {name}\n", hex::encode(sum)));
    }
    Ok(format!("h1:{}", STANDARD.encode(h.finalize())))
}

/// dirhash `HashZip` with `Hash1`: every entry of the module zip, by its name in the zip.
pub fn hash_zip<R: Read + Seek>(zip: R) -> Result<String, String> {
    let mut z = zip::ZipArchive::new(zip).map_err(|e| format!("not a zip file: {e}"))?;
    let mut files = Vec::with_capacity(z.len());
    for i in 0..z.len() {
        let mut f = z.by_index(i).map_err(|e| format!("zip entry {i}: {e}"))?;
        let mut h = Sha256::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| format!("zip entry {}: {e}", f.name()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        files.push((f.name().to_string(), h.finalize().into()));
    }
    hash1(files)
}

/// The `/go.mod` line's hash: `Hash1` over the single file named `go.mod`
/// (cmd/go/internal/modfetch `goModSum`).
pub fn hash_mod(data: &[u8]) -> String {
    hash1(vec![("go.mod".to_string(), Sha256::digest(data).into())])
        .unwrap_or_else(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn parses_go_sum() {
        let text = "example.org/a v1.2.3 h1:AAA=\nexample.org/a v1.2.3/go.mod h1:BBB=\n\n";
        let l = parse(text).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].file, GoFile::Zip);
        assert_eq!(l[1].file, GoFile::Mod);
        assert_eq!(l[1].version, "v1.2.3");
        assert!(parse("a v1").is_err());
        assert!(parse("a v1 h2:x").is_err());
    }

    #[test]
    fn escapes_upper_case() {
        assert_eq!(
            escape("example.org/BurntSushi/Toml").unwrap(),
            "example.org/!burnt!sushi/!toml"
        );
        assert_eq!(escape("v1.0.0-RC1").unwrap(), "v1.0.0-!r!c1");
        assert!(escape("a!b").is_err());
        let line = GoSumLine {
            module: "example.org/M".into(),
            version: "v1.0.0".into(),
            file: GoFile::Mod,
            h1: String::new(),
        };
        assert_eq!(proxy_path(&line).unwrap(), "example.org/!m/@v/v1.0.0.mod");
    }

    /// A value `go` itself wrote into many go.sum files: a module without its own go.mod
    /// gets the synthesized one-line file `module <path>\n`, and this is its `/go.mod` line.
    #[test]
    fn mod_hash_matches_go() {
        assert_eq!(
            hash_mod(b"module golang.org/x/text\n"),
            "h1:NqM8EUOU14njkJ3fqMW+pc6Ldnwhi/IjpwHt7yyuwOQ="
        );
    }

    #[test]
    fn zip_hash_sorts_names_and_hashes_contents() {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut buf);
            let o = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            w.start_file("m@v1.0.0/z.go", o).unwrap();
            w.write_all(b"package z\n").unwrap();
            w.start_file("m@v1.0.0/go.mod", o).unwrap();
            w.write_all(b"module m\n").unwrap();
            w.finish().unwrap();
        }
        let summary = format!(
            "{}  m@v1.0.0/go.mod\n{}  m@v1.0.0/z.go\n",
            hex::encode(Sha256::digest(b"module m\n")),
            hex::encode(Sha256::digest(b"package z\n"))
        );
        let want = format!("h1:{}", STANDARD.encode(Sha256::digest(summary.as_bytes())));
        buf.set_position(0);
        assert_eq!(hash_zip(buf).unwrap(), want);
        assert!(hash_zip(std::io::Cursor::new(b"not a zip".to_vec())).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, failure_persistence: None, ..Default::default() })]

        /// A module zip comes from the network: damaged ones are errors, not panics.
        #[test]
        fn no_zip_bytes_panic(junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
                              at in proptest::prelude::any::<usize>()) {
            let _ = hash_zip(std::io::Cursor::new(junk.clone()));
            // A real zip with bytes overwritten somewhere.
            let mut buf = std::io::Cursor::new(Vec::new());
            {
                let mut w = zip::ZipWriter::new(&mut buf);
                let o = zip::write::SimpleFileOptions::default();
                w.start_file("m@v1/a", o).unwrap();
                w.write_all(b"hello hello hello").unwrap();
                w.finish().unwrap();
            }
            let mut z = buf.into_inner();
            let start = at % z.len();
            for (i, b) in junk.iter().take(8).enumerate() {
                if let Some(x) = z.get_mut(start + i) {
                    *x = *b;
                }
            }
            let _ = hash_zip(std::io::Cursor::new(z));
        }
    }
}
