//! Property tests for every parser of outside input (no panic, whatever the bytes), and a
//! live proxy fed random and mutated request bytes that must never panic and keep serving.
//! (cargo-fuzz needs a nightly toolchain, which this project's machines do not have; these
//! run on stable in every test run.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;
use cuttle::access::auth::Users;
use cuttle::access::hosts::{HostList, PortSet};
use cuttle::config::peer::parse_cache_peer;
use cuttle::http::target;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn cache_peer_never_panics(s in ".{0,80}") {
        let _ = parse_cache_peer(&s);
    }

    #[test]
    fn cache_peer_shaped_inputs(user in "[a-z%0-9:@\\[\\]]{0,12}", pass in "[a-z%0-9:@\\[\\]]{0,12}",
                                host in "[a-z0-9.:\\[\\]]{0,20}", port in "[0-9a-z]{0,6}") {
        // Every piece carries a marker no message contains, so any echo of the value shows.
        let marked = |tag: &str, v: &str| format!("{tag}{v}");
        let (user, pass, host, port) = (marked("Uq", &user), marked("Pq", &pass), marked("Hq", &host), marked("Nq", &port));
        let v = format!("{user}:{pass}:{host}:{port}");
        if let Err(e) = parse_cache_peer(&v) {
            // Errors never quote the value: not the password, nor any other part.
            for tag in ["Uq", "Pq", "Hq", "Nq"] {
                prop_assert!(!e.contains(tag), "{e}");
            }
        }
    }

    #[test]
    fn host_and_port_lists_never_panic(items in proptest::collection::vec(".{0,30}", 0..5), probe in ".{0,30}") {
        if let Ok(l) = HostList::parse(&items) {
            let _ = l.matching(&probe.to_ascii_lowercase());
        }
        let _ = PortSet::parse(&items);
    }

    #[test]
    fn htpasswd_never_panics(text in "(.{0,40}\n){0,5}") {
        let _ = Users::parse(&text);
    }

    #[test]
    fn targets_never_panic(s in "[ -~]{0,60}") {
        if let Ok(uri) = s.parse::<http::Uri>() {
            let _ = target::absolute(&uri);
            let _ = target::connect(&uri);
            let l = target::loggable(&uri);
            prop_assert!(!uri.authority().is_some_and(|a| a.as_str().contains('@')) || !l.contains('@')
                || l.split_once("://").is_some_and(|(_, rest)| rest.split('/').next().is_some_and(|h| !h.contains('@'))));
        }
    }
}

/// Random and mutated request heads against a live proxy: every connection gets an answer or
/// a close, no task panics, and a normal request still works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_proxy_survives_garbage() {
    let panics = Arc::new(AtomicUsize::new(0));
    let p2 = panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        p2.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));

    let origin = Origin::text("ok").await;
    let mut o = opts();
    o.header_read_timeout = Some("2s".into());
    o.read_timeout = Some("2s".into());
    o.connect_timeout = Some("2s".into());
    let proxy = TestProxy::start(o).await;

    let seeds: Vec<Vec<u8>> = vec![
        format!("GET {} HTTP/1.1\r\nHost: a\r\n\r\n", origin.url("/")).into_bytes(),
        format!("CONNECT {} HTTP/1.1\r\nHost: a\r\n\r\n", origin.addr).into_bytes(),
        format!("POST {} HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", origin.url("/p")).into_bytes(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
    ];
    let mut rng = proptest::test_runner::TestRng::deterministic_rng(
        proptest::test_runner::RngAlgorithm::ChaCha,
    );
    use rand_like::*;
    let mut cases = Vec::new();
    for i in 0..300 {
        let mut b = seeds[i % seeds.len()].clone();
        mutate(&mut b, &mut rng);
        cases.push(b);
    }
    let addr = proxy.addr;
    let mut handles = Vec::new();
    for chunk in cases.chunks(30) {
        let chunk = chunk.to_vec();
        handles.push(tokio::spawn(async move {
            for case in chunk {
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                    continue;
                };
                let _ = s.write_all(&case).await;
                let _ = s.shutdown().await;
                let mut out = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut out)).await;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let r = proxy
        .client()
        .get(origin.url("/after"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        panics.load(Ordering::SeqCst),
        0,
        "a task panicked on garbage input"
    );
}

mod rand_like {
    use proptest::prelude::RngCore;

    /// Byte-level mutations in the spirit of a fuzzer: flips, inserts, deletes, splices.
    pub fn mutate(b: &mut Vec<u8>, rng: &mut impl RngCore) {
        let n = 1 + (rng.next_u32() % 6) as usize;
        for _ in 0..n {
            let len = b.len().max(1);
            let at = (rng.next_u32() as usize) % len;
            match rng.next_u32() % 6 {
                0 if !b.is_empty() => {
                    let i = at.min(b.len() - 1);
                    b[i] ^= 1 << (rng.next_u32() % 8);
                }
                1 => b.insert(at.min(b.len()), (rng.next_u32() & 0xff) as u8),
                2 if !b.is_empty() => {
                    b.remove(at.min(b.len() - 1));
                }
                3 => {
                    let junk: &[u8] = [
                        &b"\r\n"[..],
                        b":",
                        b" ",
                        b"%00",
                        b"\xff\xfe",
                        b"HTTP/1.1",
                        b"Content-Length: 99999999999999999999\r\n",
                    ][(rng.next_u32() % 7) as usize];
                    let at = at.min(b.len());
                    b.splice(at..at, junk.iter().copied());
                }
                4 => b.truncate(at),
                _ => {
                    let at = at.min(b.len());
                    let dup: Vec<u8> = b[at..].iter().take(40).copied().collect();
                    b.extend_from_slice(&dup);
                }
            }
        }
    }
}
