//! Writes the seeds that are easier made by cuttle than by hand: stored cache files (as the
//! disk cache writes them) and NTLM/SPNEGO messages. `cargo run --release --example seeds`
//! in `fuzz/` rewrites `seeds/disk_entry/made_*`, `seeds/ntlm/*` and `seeds/spnego/made_*`.
use std::time::SystemTime;

use cuttle::cache::key::{PrimaryKey, Variant};
use cuttle::cache::meta::{Meta, encode_trailer};
use cuttle::cache::policy::{StoredPolicy, request_view};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

fn disk(name: &str, url: &str, fields: &[(&'static str, &str)], vary_req: &[(&'static str, &str)]) {
    let mut req_h = HeaderMap::new();
    for (k, v) in vary_req {
        req_h.append(
            *k,
            HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("x")),
        );
    }
    let uri: http::Uri = url.parse().unwrap_or_default();
    let req = request_view(&Method::GET, &uri, "registry.example.org", &req_h, None);
    let mut h = HeaderMap::new();
    for (k, v) in fields {
        h.append(
            *k,
            HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("x")),
        );
    }
    let Some(policy) = StoredPolicy::new(&req, StatusCode::OK, &h, SystemTime::now(), None) else {
        return;
    };
    let variant = Variant::of(&h, &req_h);
    let meta = Meta::new(
        &PrimaryKey::from_url(url.into()),
        variant,
        StatusCode::OK,
        h,
        policy,
    );
    let Ok(prefix) = meta.encode_prefix() else {
        return;
    };
    let body = b"0123456789";
    let file_len = (prefix.len() + body.len() + 40) as u64;
    let mut out = file_len.to_le_bytes().to_vec();
    out.extend(&prefix);
    out.extend(body);
    out.extend(encode_trailer(body.len() as u64, &[0; 32]));
    let _ = std::fs::write(format!("seeds/disk_entry/{name}"), out);
}

fn main() {
    let _ = std::fs::create_dir_all("seeds/disk_entry");
    let _ = std::fs::create_dir_all("seeds/ntlm");
    let _ = std::fs::create_dir_all("seeds/spnego");
    disk(
        "made_plain",
        "http://registry.example.org/pkg",
        &[
            ("cache-control", "max-age=60"),
            ("content-length", "10"),
            ("etag", "\"e\""),
        ],
        &[],
    );
    disk(
        "made_vary",
        "https://registry.example.org/pkg/-/pkg-1.0.0.tgz",
        &[
            ("cache-control", "public, s-maxage=600, stale-if-error=60"),
            ("vary", "Accept-Encoding, Authorization"),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ],
        &[("accept-encoding", "gzip"), ("authorization", "Bearer t")],
    );
    // MS-NLMP §4.2.4.3's CHALLENGE_MESSAGE, and one with a timestamp (a MIC is then sent).
    let utf16 = |s: &str| {
        s.encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect::<Vec<u8>>()
    };
    let mut m = b"NTLMSSP\0\x02\0\0\0\x0c\0\x0c\0\x38\0\0\0\x33\x82\x8a\xe2".to_vec();
    m.extend([
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    m.extend([
        0x24, 0, 0x24, 0, 0x44, 0, 0, 0, 6, 0, 0x70, 0x17, 0, 0, 0, 0x0f,
    ]);
    m.extend(utf16("Server"));
    m.extend([0x02, 0x00, 0x0c, 0x00]);
    m.extend(utf16("Domain"));
    m.extend([0x01, 0x00, 0x0c, 0x00]);
    m.extend(utf16("Server"));
    m.extend([0, 0, 0, 0]);
    let _ = std::fs::write("seeds/ntlm/ms_nlmp", &m);
    let mut t = m.clone();
    t.truncate(t.len() - 4);
    t.extend([0x07, 0x00, 0x08, 0x00, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0]);
    t[40] += 12; // target info length (u16 at 40 and 42)
    t[42] += 12;
    let _ = std::fs::write("seeds/ntlm/timestamp", &t);
    // SPNEGO: first byte 0 = NegTokenResp, 1 = KDC reply, 2 = Proxy-Authenticate fields.
    let tlv = |tag: u8, c: &[u8]| {
        let mut v = vec![tag, c.len() as u8];
        v.extend(c);
        v
    };
    let krb5 = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
    let mut f = tlv(0xa0, &tlv(0x0a, &[0]));
    f.extend(tlv(0xa1, &tlv(0x06, &krb5)));
    f.extend(tlv(0xa2, &tlv(0x04, b"aprep")));
    let resp = tlv(0xa1, &tlv(0x30, &f));
    let _ = std::fs::write("seeds/spnego/made_resp", [&[0u8][..], &resp].concat());
    let mut gss = tlv(0x06, &krb5);
    gss.extend([2, 0, 0x6f, 0]);
    let _ = std::fs::write(
        "seeds/spnego/made_gss",
        [&[0u8][..], &tlv(0x60, &gss)].concat(),
    );
}
