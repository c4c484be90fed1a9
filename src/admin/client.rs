//! A small HTTP client for the admin port, used by `cuttle status` and `cuttle cache ...`
//! against a running instance.

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Sends `method path` to the admin base URL; returns the status and the body text.
pub async fn call(
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> Result<(StatusCode, String), String> {
    let url = format!("{}{}", base.trim_end_matches('/'), path);
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid admin URL `{url}`: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("admin URL must start with http:// (got `{base}`)"));
    }
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| format!("{base} did not answer within 10s"))?
        .map_err(|e| {
            format!(
                "cannot reach the admin port at {base}: {}",
                crate::error::chain(&e)
            )
        })?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn num(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m {s}s")
    }
}

/// `cuttle status`: the status page's figures as a terminal table.
pub fn status_table(s: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let state = if s["draining"].as_bool() == Some(true) {
        "draining"
    } else if s["ready"].as_bool() == Some(true) {
        "ready"
    } else {
        "not ready"
    };
    let _ = writeln!(
        o,
        "cuttle {}  up {}  {state}",
        s["version"].as_str().unwrap_or("?"),
        duration(num(&s["uptime_seconds"]))
    );
    let ratio = s["hit_ratio_hour"]
        .as_f64()
        .map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0));
    let _ = writeln!(o, "{:<28}{}", "requests", num(&s["requests_total"]));
    let _ = writeln!(
        o,
        "{:<28}{:.1}",
        "requests/s (last 10 s)",
        s["requests_per_second"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(o, "{:<28}{ratio}", "hit ratio (last hour)");
    let _ = writeln!(
        o,
        "{:<28}{}",
        "bytes saved (last hour)",
        bytes(num(&s["bytes_saved_hour"]))
    );
    let _ = writeln!(
        o,
        "{:<28}{} ({} from cache)",
        "bytes served",
        bytes(num(&s["bytes_served_total"])),
        bytes(num(&s["bytes_from_cache_total"]))
    );
    let _ = writeln!(
        o,
        "{:<28}{} connections, {} tunnels",
        "open",
        num(&s["connections_active"]),
        num(&s["tunnels_active"])
    );
    o.push_str(&cache_tiers(&s["cache"]));
    match s["parents"].as_array() {
        Some(p) if !p.is_empty() => {
            for peer in p {
                let st = if peer["up"].as_bool() == Some(true) {
                    "up".to_string()
                } else {
                    format!("down ({}s left)", num(&peer["down_for_seconds"]))
                };
                let _ = writeln!(
                    o,
                    "{:<28}{} {st}",
                    "parent",
                    peer["name"].as_str().unwrap_or("?")
                );
            }
        }
        _ => {
            let _ = writeln!(o, "{:<28}direct (no parent proxy)", "parent");
        }
    }
    if let Some(hosts) = s["top_hosts_by_bytes"].as_array().filter(|h| !h.is_empty()) {
        let _ = writeln!(o, "\ntop hosts by bytes");
        for h in hosts {
            let _ = writeln!(
                o,
                "  {:<40}{:>12}{:>8} req",
                h["host"].as_str().unwrap_or("?"),
                bytes(num(&h["bytes"])),
                num(&h["requests"])
            );
        }
    }
    if let Some(errs) = s["errors"].as_array().filter(|e| !e.is_empty()) {
        let _ = writeln!(o, "\nlast errors");
        for e in errs.iter().take(5) {
            let _ = writeln!(
                o,
                "  {} {} {}",
                e["label"].as_str().unwrap_or("?"),
                e["url"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            );
        }
    }
    o
}

fn cache_tiers(c: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    if c["enabled"].as_bool() != Some(true) {
        let _ = writeln!(o, "{:<28}off", "cache");
        return o;
    }
    for tier in ["memory", "disk"] {
        let t = &c[tier];
        if tier == "disk" && t["enabled"].as_bool() == Some(false) {
            let _ = writeln!(o, "{:<28}off", "cache disk");
            continue;
        }
        let cap = num(&t["capacity"]).max(1);
        let _ = writeln!(
            o,
            "{:<28}{} objects, {} of {} ({:.0}%), {} evictions",
            format!("cache {tier}"),
            num(&t["objects"]),
            bytes(num(&t["bytes"])),
            bytes(num(&t["capacity"])),
            num(&t["bytes"]) as f64 * 100.0 / cap as f64,
            num(&t["evictions"])
        );
    }
    o
}

/// `cuttle cache stats`.
pub fn cache_table(c: &serde_json::Value) -> String {
    use std::fmt::Write;
    if c["enabled"].as_bool() != Some(true) {
        return "cache off\n".into();
    }
    let u = &c["usage"];
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<16}{} objects, {} of {}",
        "memory",
        num(&u["mem_objects"]),
        bytes(num(&u["mem_bytes"])),
        bytes(num(&u["mem_capacity"]))
    );
    let _ = writeln!(
        o,
        "{:<16}{} objects, {} of {}",
        "disk",
        num(&u["disk_objects"]),
        bytes(num(&u["disk_bytes"])),
        bytes(num(&u["disk_capacity"]))
    );
    for k in [
        "hits_memory",
        "hits_disk",
        "misses",
        "revalidated",
        "stale_served",
        "coalesced",
        "stored",
        "not_stored",
    ] {
        let _ = writeln!(o, "{:<16}{}", k.replace('_', " "), num(&c[k]));
    }
    let _ = writeln!(
        o,
        "{:<16}{} evicted (memory), {} evicted (disk), {} corrupt, {} write errors",
        "housekeeping",
        num(&u["mem_evictions"]),
        num(&u["disk_evictions"]),
        num(&u["disk_corrupt"]),
        num(&u["disk_write_errors"])
    );
    o
}
