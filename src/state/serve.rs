//! Serving one client connection as HTTP with the proxy's limits ([`serve`]), for listener
//! connections and for the decrypted side of intercepted CONNECTs alike, so the limits hold
//! by construction:
//! request-head size, header-read timeout, a keep-alive idle timeout, HTTP/2 stream and
//! header-list limits, graceful drain when shutdown starts and a hard stop after the grace.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use super::State;
use crate::http::body::{Body, BoxError};

/// The protocol spoken on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// The protocol of a TLS connection from the protocol ALPN agreed on. RFC 9113 §3.2:
/// "HTTP/2 over TLS uses the "h2" protocol identifier"; §3.3 (prior knowledge) is for
/// cleartext TCP only, so without "h2" negotiated the connection speaks HTTP/1.1.
pub fn protocol_from_alpn(alpn: Option<&[u8]>) -> Protocol {
    match alpn {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    }
}

/// Streams one client may have open at once on an HTTP/2 connection. RFC 9113 §6.5.2
/// recommends no fewer than 100, so that parallelism is not needlessly limited; each stream
/// may hold an upstream request, so not more either.
const H2_MAX_STREAMS: u32 = 100;
/// HTTP/2 PING interval and the time to answer one: a client that vanished while streams were
/// open (its flow-control window shut) is found and its connection closed.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves `handler` on `io` until the connection ends. The limits come from the
/// configuration: `max-header-size` bounds an HTTP/1.1 head and an HTTP/2 header list;
/// `header-read-timeout` bounds the wait for a complete head and the time a connection may
/// stay idle between requests (no request in flight); shutdown drains the connection
/// (in-flight requests finish, idle ones close) and the end of the grace period drops it.
pub async fn serve<I, F, Fut>(
    io: I,
    protocol: Protocol,
    state: &State,
    handler: F,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let act = activity.clone();
    let svc = service_fn(move |req| {
        let guard = InFlight::start(act.clone());
        let fut = handler(req);
        async move {
            let resp = fut.await;
            Ok::<_, std::convert::Infallible>(resp.map(|body| Guarded {
                body,
                _guard: guard,
            }))
        }
    });
    let limits = &state.config;
    let idle = limits.timeouts.header_read;
    match protocol {
        Protocol::Http1 => {
            let b = http1_builder(limits.max_header_size, limits.timeouts.header_read);
            let conn = b.serve_connection(io, svc).with_upgrades();
            drive(conn, |c| c.graceful_shutdown(), &activity, idle, state).await
        }
        Protocol::Http2 => {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_concurrent_streams(H2_MAX_STREAMS)
                .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
                .keep_alive_interval(H2_PING_INTERVAL)
                .keep_alive_timeout(H2_PING_TIMEOUT);
            let conn = b.serve_connection(io, svc);
            drive(conn, |c| c.graceful_shutdown(), &activity, idle, state).await
        }
    }
}

/// The HTTP/1.1 server every client connection is parsed with: heads bounded by
/// `max_header_size`, each awaited at most `header_read`.
pub fn http1_builder(
    max_header_size: usize,
    header_read: Duration,
) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        // Also the keep-alive idle timeout: hyper restarts it when it waits for the next
        // request head.
        .header_read_timeout(header_read)
        .max_buf_size(max_header_size)
        // max_buf_size alone is soft (a read may fill the buffer's spare capacity past it);
        // this is the exact limit on the parsed head.
        .max_header_size(max_header_size)
        .keep_alive(true);
    b
}

/// Polls `conn` to its end, starting a graceful shutdown when the proxy drains or the
/// connection has been idle for `idle`, and dropping it when the grace period is over.
async fn drive<C>(
    conn: C,
    graceful: fn(Pin<&mut C>),
    activity: &Activity,
    idle: Duration,
    state: &State,
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let wake = activity.idle_deadline(idle);
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = state.shutdown.cancelled(), if !closing => {
                closing = true;
                graceful(conn.as_mut());
            }
            _ = tokio::time::sleep_until(wake), if !closing => {
                if activity.is_idle_for(idle) {
                    closing = true;
                    graceful(conn.as_mut());
                }
            }
            _ = state.hard_stop.cancelled() => return Ok(()),
        }
    }
}

/// Requests in flight on a connection and when the last one ended.
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    last_end_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
        }
    }

    fn since_last_end(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_end_ms.load(Ordering::Relaxed)))
    }

    fn is_idle_for(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && self.since_last_end() >= idle
    }

    /// When to look again: `idle` after the last request ended (or a full period from now
    /// while requests are in flight).
    fn idle_deadline(&self, idle: Duration) -> Instant {
        let now = Instant::now();
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return now + idle;
        }
        now + idle
            .saturating_sub(self.since_last_end())
            .max(Duration::from_millis(10))
    }
}

/// Counts one request as in flight until its response body is done or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_end_ms
            .store(a.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight.
    struct Guarded {
        #[pin]
        body: Body,
        _guard: InFlight,
    }
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_h2_means_http2_anything_else_http1() {
        assert_eq!(protocol_from_alpn(Some(b"h2")), Protocol::Http2);
        assert_eq!(protocol_from_alpn(Some(b"http/1.1")), Protocol::Http1);
        assert_eq!(protocol_from_alpn(None), Protocol::Http1);
        assert_eq!(protocol_from_alpn(Some(b"h2c")), Protocol::Http1);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_only_without_requests_in_flight() {
        let a = Arc::new(Activity::new());
        let idle = Duration::from_secs(5);
        let req = InFlight::start(a.clone());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!a.is_idle_for(idle), "a request in flight is not idle");
        drop(req);
        assert!(!a.is_idle_for(idle), "the idle period starts when it ends");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(a.is_idle_for(idle));
    }
}
