//! CONNECT: checks the target, opens the upstream leg first (directly, or through a parent
//! with its own CONNECT) so that failures still get a proper status, answers 200, then
//! bridges the upgraded client connection with the upstream stream and logs the byte counts.

pub mod bridge;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::app::State;
use crate::error::ProxyError;
use crate::http::body::{Body, empty};
use crate::http::target;
use crate::server::dispatch::ConnCtx;
use crate::telemetry::AccessRecord;
use crate::upstream::Route;

/// Runs a tunnel-like task (a CONNECT tunnel, an upgraded or intercepted connection): it
/// counts against the connection limit and the tunnel gauge until it ends, is drained at
/// shutdown, and its access-log record is written when it ends.
pub fn spawn_logged<F>(state: &Arc<State>, ctx: &ConnCtx, work: F)
where
    F: std::future::Future<Output = AccessRecord> + Send + 'static,
{
    let permit = ctx.permit.clone();
    let open = state.metrics.tunnel();
    let log = state.log.clone();
    state.tracker.spawn(async move {
        let rec = work.await;
        // Released before the record is written: whoever reads the log line sees the
        // tunnel closed in the gauges too.
        drop(open);
        drop(permit);
        log.write(&rec);
    });
}

/// Opens the upstream leg of a blind tunnel: directly, or through the parents in order (a
/// parent that cannot be reached is marked down and the next one tried). Returns the stream
/// and any bytes a parent sent past its CONNECT answer.
pub async fn open_upstream(
    state: &State,
    dynamic: &crate::app::Dynamic,
    target: &crate::http::target::Target,
    rec: &mut AccessRecord,
) -> Result<(TcpStream, Bytes), ProxyError> {
    Ok(match dynamic.upstream.route(&target.host) {
        Route::Direct => {
            let (s, addr) = crate::upstream::connect_direct(
                target,
                &dynamic.policy,
                state.config.timeouts.connect,
            )
            .await?;
            rec.hierarchy = format!("HIER_DIRECT/{}", addr.ip());
            (s, Bytes::new())
        }
        Route::Parents(peers) => {
            let mut last = None;
            let mut opened = None;
            for peer in peers {
                rec.hierarchy = format!("FIRSTUP_PARENT/{}", peer.name);
                match peer.open_tunnel(target, &state.config.timeouts).await {
                    Ok(x) => {
                        peer.mark_up();
                        opened = Some(x);
                        break;
                    }
                    Err(e) if e.is_peer_unreachable() => {
                        peer.mark_down();
                        last = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            match (opened, last) {
                (Some(x), _) => x,
                (None, Some(e)) => return Err(e),
                (None, None) => {
                    return Err(ProxyError::UpstreamConnect {
                        host: target.authority(),
                        cause: "no parent configured".into(),
                    });
                }
            }
        }
    })
}

/// The client's own socket under an upgraded connection (and any bytes hyper read past the
/// request head), so that the tunnel can use [`bridge::run_tcp`] and drop hyper's buffers;
/// the upgraded connection back when it is not a plain TCP socket.
pub fn client_socket(
    upgraded: hyper::upgrade::Upgraded,
) -> Result<(TcpStream, Bytes), hyper::upgrade::Upgraded> {
    upgraded
        .downcast::<TokioIo<TcpStream>>()
        .map(|parts| (parts.io.into_inner(), parts.read_buf))
}

#[tracing::instrument(skip_all, fields(target = %req.uri()))]
pub async fn handle(
    state: Arc<State>,
    ctx: &Arc<ConnCtx>,
    mut req: Request<Incoming>,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    rec.result = "TCP_TUNNEL";
    let target = target::connect(req.uri())?;
    let dynamic = state.dynamic();
    dynamic.policy.check_destination(&target, true)?;
    if dynamic.intercepts(&target.host) && state.issuer.is_some() {
        return crate::mitm::intercept::handle(state.clone(), ctx.clone(), req, target, rec).await;
    }

    // A CONNECT to an address on the HTTPS port: the ClientHello's server name decides. (Only
    // port 443: protocols whose server speaks first would wait forever for a ClientHello.)
    if state.issuer.is_some()
        && !dynamic.intercept.is_empty()
        && target.ip().is_some()
        && target.port == 443
    {
        return crate::mitm::intercept::handle_by_sni(state.clone(), ctx.clone(), req, target, rec)
            .await;
    }
    let (upstream, early) = open_upstream(&state, &dynamic, &target, rec).await?;

    let on_upgrade = hyper::upgrade::on(&mut req);
    rec.head_ready();
    let mut rec = rec.clone();
    rec.status = 200;
    let idle = state.config.timeouts.tunnel_idle;
    let stop = state.hard_stop.clone();
    spawn_logged(&state, ctx, async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let stats = match client_socket(upgraded) {
                    Ok((mut client, pre)) => {
                        // Bytes the client sent past its CONNECT head, and the parent's past
                        // its answer, go first.
                        let mut upstream = upstream;
                        if upstream.write_all(&pre).await.is_err()
                            || client.write_all(&early).await.is_err()
                        {
                            rec.result = "TCP_TUNNEL_ABORTED";
                        }
                        rec.bytes_in += pre.len() as u64;
                        bridge::run_tcp(client, upstream, idle, stop).await
                    }
                    Err(upgraded) => {
                        let mut client = TokioIo::new(upgraded);
                        if client.write_all(&early).await.is_err() {
                            rec.result = "TCP_TUNNEL_ABORTED";
                        }
                        bridge::run(client, upstream, idle, stop).await
                    }
                };
                rec.bytes += stats.upstream_to_client + early.len() as u64;
                rec.bytes_in += stats.client_to_upstream;
                if stats.reason != bridge::CloseReason::Done {
                    tracing::debug!(reason = ?stats.reason, "tunnel closed");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "client connection was not upgraded");
                rec.result = "TCP_TUNNEL_ABORTED";
            }
        }
        rec
    });

    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}
