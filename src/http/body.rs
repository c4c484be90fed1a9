//! Body types: the boxed body every path returns, and wrappers that stream without buffering:
//! an idle timeout for upstream bodies, a take-once slot that lets a request be retried on
//! another parent when the first one could not even be connected, and a byte counter that
//! reports when the body ends (for the access log).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::Mutex;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response cuttle produces and every request it forwards.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// The body went quiet for longer than the configured read timeout.
#[derive(Debug, thiserror::Error)]
#[error("no data from upstream for {0:?}")]
pub struct IdleTimeout(pub Duration);

pin_project_lite::pin_project! {
    /// Fails the body when no frame arrives within `idle`.
    pub struct IdleTimeoutBody<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Sleep,
        idle: Duration,
    }
}

impl<B> IdleTimeoutBody<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            sleep: tokio::time::sleep(idle),
            idle,
        }
    }
}

impl<B> HttpBody for IdleTimeoutBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(r) => {
                let idle = *this.idle;
                this.sleep.as_mut().reset(Instant::now() + idle);
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(IdleTimeout(*this.idle))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Holds a request body until the first attempt polls it, so that an attempt that failed
/// before sending anything (the parent peer could not be connected) can hand the untouched
/// body to the next attempt. Nothing is buffered.
pub struct ReplaySlot {
    slot: Arc<Mutex<Option<Body>>>,
    hint: SizeHint,
    end: bool,
}

impl ReplaySlot {
    pub fn new(body: Body) -> Self {
        let hint = body.size_hint();
        let end = body.is_end_stream();
        Self {
            slot: Arc::new(Mutex::new(Some(body))),
            hint,
            end,
        }
    }

    /// A body for one attempt; it takes the real body out of the slot on first poll.
    pub fn attempt(&self) -> Body {
        TakeOnce {
            slot: self.slot.clone(),
            taken: None,
            hint: self.hint,
            end: self.end,
        }
        .boxed_unsync()
    }

    /// True while no attempt has started reading the body.
    pub fn is_untouched(&self) -> bool {
        self.slot.try_lock().map(|g| g.is_some()).unwrap_or(false)
    }
}

struct TakeOnce {
    slot: Arc<Mutex<Option<Body>>>,
    taken: Option<Body>,
    hint: SizeHint,
    end: bool,
}

/// The body was already consumed by an earlier attempt.
#[derive(Debug, thiserror::Error)]
#[error("request body already sent on an earlier attempt")]
struct BodyGone;

impl HttpBody for TakeOnce {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.taken.is_none() {
            let Ok(mut guard) = self.slot.try_lock() else {
                return Poll::Ready(Some(Err(Box::new(BodyGone))));
            };
            match guard.take() {
                Some(b) => {
                    drop(guard);
                    self.taken = Some(b);
                }
                None => return Poll::Ready(Some(Err(Box::new(BodyGone)))),
            }
        }
        match self.taken.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(b) => b.is_end_stream(),
            None => self.end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(b) => b.size_hint(),
            None => self.hint,
        }
    }
}

/// How a counted body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// All frames were delivered.
    Complete,
    /// The body failed (upstream reset, timeout).
    Error,
    /// The receiver went away before the end.
    Dropped,
}

pin_project_lite::pin_project! {
    /// Counts the bytes that pass and calls `on_end` exactly once when the body finishes,
    /// fails, or is dropped early.
    pub struct CountingBody<B: HttpBody, F: FnOnce(u64, BodyEnd)> {
        #[pin]
        inner: B,
        bytes: u64,
        expected: Option<u64>,
        on_end: Option<F>,
    }

    impl<B: HttpBody, F: FnOnce(u64, BodyEnd)> PinnedDrop for CountingBody<B, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(f) = this.on_end.take() {
                // hyper stops polling once `is_end_stream` says so: that is a complete body.
                // hyper stops polling once `Content-Length` bytes are out, too.
                let complete = this.inner.is_end_stream() || *this.expected == Some(*this.bytes);
                let end = if complete { BodyEnd::Complete } else { BodyEnd::Dropped };
                f(*this.bytes, end);
            }
        }
    }
}

impl<B: HttpBody, F: FnOnce(u64, BodyEnd)> CountingBody<B, F> {
    pub fn new(inner: B, on_end: F) -> Self {
        Self {
            inner,
            bytes: 0,
            expected: None,
            on_end: Some(on_end),
        }
    }

    /// Counts a body whose head announced `len` bytes.
    pub fn expecting(mut self, len: Option<u64>) -> Self {
        self.expected = len;
        self
    }
}

impl<B, F> HttpBody for CountingBody<B, F>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
    F: FnOnce(u64, BodyEnd),
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let r = match this.inner.as_mut().poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        match &r {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    *this.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    if let Some(f) = this.on_end.take() {
                        f(*this.bytes, BodyEnd::Complete);
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(f) = this.on_end.take() {
                    f(*this.bytes, BodyEnd::Error);
                }
            }
            None => {
                if let Some(f) = this.on_end.take() {
                    f(*this.bytes, BodyEnd::Complete);
                }
            }
        }
        Poll::Ready(r.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test]
    async fn counting_body_reports_once() {
        let seen = Arc::new(AtomicU64::new(u64::MAX));
        let s = seen.clone();
        let b = CountingBody::new(full("hello"), move |n, end| {
            assert_eq!(end, BodyEnd::Complete);
            s.store(n, Ordering::SeqCst);
        });
        let out = b.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"hello");
        assert_eq!(seen.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn replay_slot_hands_body_to_second_attempt() {
        let slot = ReplaySlot::new(full("abc"));
        let first = slot.attempt();
        drop(first); // never polled: the connect failed
        assert!(slot.is_untouched());
        let second = slot.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(&second[..], b"abc");
        assert!(!slot.is_untouched());
        assert!(slot.attempt().collect().await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fires() {
        let body = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >());
        let b = IdleTimeoutBody::new(body, Duration::from_secs(5));
        let r = b.collect().await;
        assert!(r.is_err());
    }
}
