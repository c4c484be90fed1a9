//! The entry points of the fuzz targets in `fuzz/` (a separate crate) into parsers that are
//! not public: thin wrappers that call the real code and add no logic of their own. Not an
//! API; nothing in cuttle uses it. Parsers that are already public (targets, hop-by-hop
//! rules, `CACHE_PEER`, ranges, NTLM and SPNEGO messages, authentication offers) are called by
//! the targets directly.

use std::time::Duration;

use http::HeaderMap;

/// A parent's answer to cuttle's `CONNECT` (`connect`) or to a request on a connection to it,
/// read from `stream` after writing `head`: the status, the fields, the bytes past the head
/// that belong to a tunnel, and whether the connection could carry another request.
pub async fn parent_reply<S>(
    stream: &mut S,
    head: &[u8],
    connect: bool,
) -> Result<(u16, HeaderMap, bytes::Bytes, bool), crate::error::ProxyError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    crate::upstream::parent::exchange(stream, head, connect, "fuzz")
        .await
        .map(|r| (r.status, r.headers, r.rest, r.reusable))
}

/// The ClientHello peek of an intercepted `CONNECT` to an address: the bytes read (to be
/// replayed) and the server name, or why there is none.
pub async fn client_hello<IO>(
    io: &mut IO,
    limit: Duration,
) -> Result<(bytes::Bytes, Option<String>), &'static str>
where
    IO: tokio::io::AsyncRead + Unpin,
{
    crate::mitm::intercept::peek_client_hello(io, limit).await
}

/// The error a client's malformed request body becomes.
pub fn client_body_error(e: hyper::Error) -> crate::error::ProxyError {
    crate::forward::client_body_error(e)
}

/// The response `Cache-Control` directives as the cache policy reads them.
pub fn cache_control_directives(h: &HeaderMap) -> Vec<(String, Option<String>)> {
    crate::cache::policy::directives(h)
}

/// The `Age` value as the cache policy reads it.
pub fn age_value(h: &HeaderMap) -> Option<u64> {
    crate::cache::policy::age_value(h)
}

/// `Cache-Control`/`Pragma` with their directive names lower-cased, as a request is seen.
pub fn lowercase_directive_names(h: &mut HeaderMap, name: http::header::HeaderName) {
    crate::cache::policy::lowercase_directive_names(h, name)
}

/// The head of a stored cache file of `file_len` bytes: metadata, body offset, body length.
pub fn disk_entry_head(
    f: &mut impl std::io::Read,
    file_len: u64,
) -> std::io::Result<(crate::cache::meta::Meta, u64, u64)> {
    crate::cache::disk::decode_head(f, file_len).map(|(meta, offset, len, _)| (meta, offset, len))
}

/// A KDC's reply (AS-REP, TGS-REP or KRB-ERROR) parsed; `Err` says why it is refused.
pub fn kdc_reply(b: &[u8]) -> Result<(), String> {
    crate::upstream::auth::kerberos::parse_reply(b)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
