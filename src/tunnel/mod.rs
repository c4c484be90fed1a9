//! A blind `CONNECT` tunnel: opens the upstream leg first (directly, or through a parent with
//! its own `CONNECT`) so that failures still get a proper status, answers 200, then bridges
//! the client's socket with the upstream stream and logs the byte counts when it ends. The
//! target was checked and the interception decided by the dispatcher.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use crate::error::ProxyError;
use crate::http::body::{Body, empty};
use crate::http::target::Target;
use crate::io::bridge;
use crate::io::upgrade::client_socket;
use crate::state::Scope;
use crate::state::tasks::spawn_logged;
use crate::telemetry::record::AccessRecord;

#[tracing::instrument(skip_all, fields(target = %target))]
pub async fn handle(
    scope: &Scope,
    mut req: Request<Incoming>,
    target: Target,
    rec: &mut AccessRecord,
) -> Result<Response<Body>, ProxyError> {
    let (upstream, early) = scope
        .snap
        .upstream
        .open_tunnel(&target, &mut rec.hierarchy)
        .await?;

    let on_upgrade = hyper::upgrade::on(&mut req);
    rec.head_ready();
    let mut rec = rec.clone();
    rec.status = 200;
    let idle = scope.state.config.timeouts.tunnel_idle;
    let stop = scope.state.hard_stop.clone();
    spawn_logged(scope, async move {
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
                            rec.aborted = true;
                        }
                        rec.bytes_in += pre.len() as u64;
                        bridge::run_tcp(client, upstream, idle, stop).await
                    }
                    Err(upgraded) => {
                        let mut client = TokioIo::new(upgraded);
                        if client.write_all(&early).await.is_err() {
                            rec.aborted = true;
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
                rec.aborted = true;
            }
        }
        rec
    });

    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}
