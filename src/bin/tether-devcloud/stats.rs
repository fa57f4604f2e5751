//! Server-wide counters reported by `GET /admin/stats`, and the byte-counting wrapper put
//! around every TCP stream of the HTTPS listener.
//!
//! Bytes are counted below TLS on purpose: benchmarks compare what actually crosses the
//! network (handshakes, TLS records, HTTP/2 framing and pings included). TLS records are
//! counted too (from their headers), and above TLS the HTTP/2 PINGs a client sends.

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
    /// TLS records each way (from their 5-byte headers), to estimate TCP/IP overhead.
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    /// Gateway requests by body encoding, and those refused with 415.
    pub requests_json: AtomicU64,
    pub requests_protobuf: AtomicU64,
    pub unsupported_media: AtomicU64,
    /// HTTP/2 PING frames the clients sent (not counting ACKs of the server's).
    pub pings_received: AtomicU64,
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
            "records_in": get(&self.records_in),
            "records_out": get(&self.records_out),
            "requests_json": get(&self.requests_json),
            "requests_protobuf": get(&self.requests_protobuf),
            "unsupported_media": get(&self.unsupported_media),
            "pings_received": get(&self.pings_received),
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

/// Follows a stream of length-prefixed frames (TLS records, HTTP/2 frames) as its bytes
/// pass, holding no more than one header.
#[derive(Default)]
struct Frames {
    header: [u8; 9],
    have: usize,
    /// Bytes still to pass before the next header (a payload, or HTTP/2's preface).
    skip: usize,
}

impl Frames {
    /// Feeds `data`; `on_header` sees each complete header of `n` bytes and says how long
    /// the payload that follows it is.
    fn feed(&mut self, mut data: &[u8], n: usize, mut on_header: impl FnMut(&[u8]) -> usize) {
        while !data.is_empty() {
            if self.skip > 0 {
                let k = self.skip.min(data.len());
                self.skip -= k;
                data = &data[k..];
                continue;
            }
            let k = (n - self.have).min(data.len());
            self.header[self.have..self.have + k].copy_from_slice(&data[..k]);
            self.have += k;
            data = &data[k..];
            if self.have == n {
                self.skip = on_header(&self.header[..n]);
                self.have = 0;
            }
        }
    }
}

/// A TLS record header: type, version, then the length.
fn tls_record(counter: &AtomicU64) -> impl FnMut(&[u8]) -> usize + '_ {
    move |h| {
        counter.fetch_add(1, Ordering::Relaxed);
        usize::from(u16::from_be_bytes([h[3], h[4]]))
    }
}

/// An HTTP/2 frame header: 24-bit length, type, flags, stream. Counts the PINGs that are
/// not ACKs (type 0x6, flag 0x1 unset).
fn h2_frame(pings: &AtomicU64) -> impl FnMut(&[u8]) -> usize + '_ {
    move |h| {
        if h[3] == 0x6 && h[4] & 0x1 == 0 {
            pings.fetch_add(1, Ordering::Relaxed);
        }
        (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2])
    }
}

/// An `AsyncRead + AsyncWrite` that counts what passes, at one of two layers.
pub struct Counted<S> {
    inner: S,
    stats: Arc<Stats>,
    layer: Layer,
}

enum Layer {
    /// Below TLS: the bytes each way (`bytes_in`/`bytes_out`) and the TLS records they
    /// hold (`records_in`/`records_out`).
    Tls {
        records_in: Frames,
        records_out: Frames,
    },
    /// Above TLS on an HTTP/2 connection: the PING frames the client sends
    /// (`pings_received`), what an idle gateway pays for besides its polls. `None` on an
    /// HTTP/1.1 connection, which has no frames to follow.
    H2(Option<Frames>),
}

impl<S> Counted<S> {
    /// Counts the bytes and TLS records of a TCP stream.
    pub fn new(inner: S, stats: Arc<Stats>) -> Self {
        Counted {
            inner,
            stats,
            layer: Layer::Tls {
                records_in: Frames::default(),
                records_out: Frames::default(),
            },
        }
    }

    /// Counts the PINGs on the decrypted side of a connection; `h2`: it speaks HTTP/2
    /// (else nothing is counted).
    pub fn pings(inner: S, stats: Arc<Stats>, h2: bool) -> Self {
        Counted {
            inner,
            stats,
            // The client's connection preface comes before the first frame.
            layer: Layer::H2(h2.then(|| Frames {
                skip: 24,
                ..Frames::default()
            })),
        }
    }

    fn read(&mut self, data: &[u8]) {
        let stats = &self.stats;
        match &mut self.layer {
            Layer::Tls { records_in, .. } => {
                stats
                    .bytes_in
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                records_in.feed(data, 5, tls_record(&stats.records_in));
            }
            Layer::H2(Some(frames)) => frames.feed(data, 9, h2_frame(&stats.pings_received)),
            Layer::H2(None) => {}
        }
    }

    fn wrote(&mut self, bufs: &[io::IoSlice<'_>], mut n: usize) {
        let Layer::Tls { records_out, .. } = &mut self.layer else {
            return;
        };
        self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        for buf in bufs {
            let part = &buf[..n.min(buf.len())];
            records_out.feed(part, 5, tls_record(&self.stats.records_out));
            n -= part.len();
            if n == 0 {
                break;
            }
        }
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
        self.read(&buf.filled()[before..]);
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
        self.wrote(&[io::IoSlice::new(buf)], n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.wrote(bufs, n);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut f = vec![
            (n >> 16) as u8,
            (n >> 8) as u8,
            n as u8,
            kind,
            flags,
            0,
            0,
            0,
            0,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_are_followed_across_any_split() {
        let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        stream.extend(frame(0x4, 0, &[0; 6])); // SETTINGS
        stream.extend(frame(0x6, 0, &[1; 8])); // PING
        stream.extend(frame(0x0, 0, &[0x06; 40])); // DATA that looks like a PING inside
        stream.extend(frame(0x6, 0x1, &[2; 8])); // PING ACK
        stream.extend(frame(0x6, 0, &[3; 8])); // PING
        stream.extend(frame(0x4, 0x1, &[])); // SETTINGS ACK, empty
        for chunk in [1, 2, 5, 9, 17, stream.len()] {
            let pings = AtomicU64::new(0);
            let mut frames = Frames {
                skip: 24,
                ..Frames::default()
            };
            for part in stream.chunks(chunk) {
                frames.feed(part, 9, h2_frame(&pings));
            }
            assert_eq!(pings.load(Ordering::Relaxed), 2, "chunks of {chunk}");
            assert_eq!((frames.have, frames.skip), (0, 0), "chunks of {chunk}");
        }
    }

    #[test]
    fn tls_records_are_counted_from_their_headers() {
        let record = |n: usize| {
            let mut r = vec![23, 3, 3, (n >> 8) as u8, n as u8];
            r.extend(std::iter::repeat_n(0x17, n));
            r
        };
        let stream: Vec<u8> = [record(0), record(300), record(5)].concat();
        for chunk in [1, 4, 5, 6, stream.len()] {
            let count = AtomicU64::new(0);
            let mut frames = Frames::default();
            for part in stream.chunks(chunk) {
                frames.feed(part, 5, tls_record(&count));
            }
            assert_eq!(count.load(Ordering::Relaxed), 3, "chunks of {chunk}");
        }
    }
}
