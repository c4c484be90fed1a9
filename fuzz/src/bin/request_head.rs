//! A client connection to the proxy port: request heads and bodies as cuttle's HTTP/1.1
//! server parses them (hyper with the proxy's limits, `state::serve::http1_builder`), then the
//! checks cuttle makes itself before forwarding: the `Transfer-Encoding` rule, the
//! absolute-form or CONNECT target (numeric hosts, ports, userinfo), the loggable URL, the
//! cache key, hop-by-hop stripping with upgrades, `Via`; the body read to its end (chunk
//! framing, trailers) with its error mapped as the forwarder maps it. Input: the bytes a client
//! sends, then end of stream.
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use cuttle::http::{headers, target};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let status = check(req).await;
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    Ok(resp)
}

async fn check(req: Request<Incoming>) -> StatusCode {
    if req.method() == Method::CONNECT {
        return match target::connect(req.uri()) {
            Ok(t) => {
                let _ = (t.ip(), t.authority(), t.to_string());
                StatusCode::FORBIDDEN
            }
            Err(e) => e.status(),
        };
    }
    if !headers::request_transfer_coding_ok(req.headers()) {
        return StatusCode::BAD_REQUEST;
    }
    let t = match target::absolute(req.uri()) {
        Ok(t) => t,
        Err(e) => return e.status(),
    };
    let _ = (t.ip(), t.authority(), target::loggable(req.uri()));
    let _ = cuttle::cache::key::PrimaryKey::for_uri(req.uri(), &t);
    let (mut parts, body) = req.into_parts();
    let upgrade = headers::upgrade_protocol(&parts.headers);
    headers::strip_hop_by_hop(&mut parts.headers, upgrade.is_some());
    headers::append_via(&mut parts.headers, parts.version);
    let _ = headers::content_length(&parts.headers);
    // The body as the forwarder reads it, bounded here only to keep the fuzzer fast.
    match Limited::new(body, 1 << 20).collect().await {
        Ok(_) => StatusCode::OK,
        Err(e) => match e.downcast::<hyper::Error>() {
            Ok(e) => cuttle::fuzzing::client_body_error(*e).status(),
            Err(_) => StatusCode::PAYLOAD_TOO_LARGE,
        },
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let rt = cuttle_fuzz::runtime();
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let b = cuttle::state::serve::http1_builder(
                cuttle::config::options::defaults::MAX_HEADER_SIZE as usize,
                Duration::from_secs(5),
            );
            let conn = b
                .serve_connection(TokioIo::new(server), hyper::service::service_fn(handle))
                .with_upgrades();
            let talk = async {
                let _ = client.write_all(data).await;
                let _ = client.shutdown().await;
                let mut out = Vec::new();
                let _ = client.read_to_end(&mut out).await;
            };
            let (_served, ()) = tokio::join!(conn, talk);
        });
    });
}
