//! Helpers shared by the fuzz targets: how bytes become header fields, and the runtime the
//! async parsers run on.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Header fields from lines `name: value` (lines that are not fields are skipped), so that a
/// seed reads like a message head and the fuzzer mutates names and values separately.
pub fn fields(text: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in text.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            h.append(n, v);
        }
    }
    h
}

/// `data` split at the first line `--` (the rest is empty when there is none).
pub fn two_parts(data: &[u8]) -> (&[u8], &[u8]) {
    match data.windows(4).position(|w| w == b"\n--\n") {
        Some(i) => (&data[..i + 1], &data[i + 4..]),
        None => (data, &[]),
    }
}

/// A current-thread runtime with timers, built once per process (AFL's persistent mode runs
/// many inputs in one process).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("no runtime: {e}"))
    })
}
