//! Server-wide counters reported by `GET /admin/stats`, and the byte-counting wrapper put
//! around every TCP stream of the HTTPS listener.
//!
//! Bytes are counted below TLS on purpose: benchmarks compare what actually crosses the
//! network (handshakes, TLS records, HTTP/2 framing and pings included).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Monotonic counters, except `open_connections` which is a gauge.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub open_connections: AtomicU64,
    pub tls_handshakes: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    pub polls: AtomicU64,
    pub results_posts: AtomicU64,
    pub requests_http1: AtomicU64,
    pub requests_http2: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// Increments a counter; counters are independent, so relaxed ordering is enough.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    pub fn to_json(&self) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "connections": get(&self.connections),
            "open_connections": get(&self.open_connections),
            "tls_handshakes": get(&self.tls_handshakes),
            "tls_handshake_failures": get(&self.tls_handshake_failures),
            "polls": get(&self.polls),
            "results_posts": get(&self.results_posts),
            "requests_http1": get(&self.requests_http1),
            "requests_http2": get(&self.requests_http2),
            "bytes_in": get(&self.bytes_in),
            "bytes_out": get(&self.bytes_out),
        })
    }

    /// Counts an accepted connection as open until the returned guard is dropped, which
    /// happens however the connection task ends (error, timeout, close).
    pub fn open_connection(self: &Arc<Self>) -> OpenConnection {
        bump(&self.connections);
        bump(&self.open_connections);
        OpenConnection(self.clone())
    }
}

/// Keeps `open_connections` accurate; see [`Stats::open_connection`].
pub struct OpenConnection(Arc<Stats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An `AsyncRead + AsyncWrite` that adds the bytes it moves to `bytes_in`/`bytes_out`.
pub struct Counted<S> {
    inner: S,
    stats: Arc<Stats>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, stats: Arc<Stats>) -> Self {
        Counted { inner, stats }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = buf.filled().len().saturating_sub(before);
        self.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
