//! A stream that first replays bytes already read from it (a peeked ClientHello, or what
//! hyper had buffered past a CONNECT head), then reads on.

pin_project_lite::pin_project! {
    /// Replays `prefix` before reading from `inner` (the ClientHello already consumed).
    pub struct Rewind<T> {
        prefix: bytes::Bytes,
        #[pin]
        inner: T,
    }
}

impl<T> Rewind<T> {
    pub fn new(prefix: bytes::Bytes, inner: T) -> Self {
        Rewind { prefix, inner }
    }

    /// The bytes not replayed yet, and the stream.
    pub fn into_parts(self) -> (bytes::Bytes, T) {
        (self.prefix, self.inner)
    }
}

impl<T: tokio::io::AsyncRead> tokio::io::AsyncRead for Rewind<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Rewind<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
