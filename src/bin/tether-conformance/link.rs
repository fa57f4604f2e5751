//! One gateway's connection to the cloud under test: TCP, TLS (verified, like the
//! gateway's) and HTTP/2 straight on the `h2` crate, so a case controls what the gateway's
//! HTTP client hides: which requests share a connection, PINGs and their answers, bodies
//! sent while the server may already have refused them, and stream resets.
//!
//! Every wait here is bounded: a connect, a response, a body, a PING. A server that
//! stalls, resets or sends too much makes a request fail with a sentence saying which.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;

/// How the kit reaches the cloud: everything a connection needs, built once.
pub struct Target {
    pub host: String,
    pub port: u16,
    /// The URL's path without a trailing `/` (a cloud served under a prefix).
    pub base_path: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub token: Option<String>,
    /// Whether the kit presents a client certificate.
    pub client_cert: bool,
    /// Largest response body read; a gateway refuses larger ones (`cloud.max_response_bytes`).
    pub max_response: usize,
    pub connect_timeout: Duration,
}

/// What a request came back with.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// From sending the request to the end of the response body.
    pub elapsed: Duration,
}

impl Reply {
    pub fn content_type(&self) -> &str {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The start of the body as text, for failure messages.
    pub fn body_excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body[..self.body.len().min(160)]).into_owned();
        let text = text.replace(['\n', '\r'], " ");
        if self.body.len() > 160 {
            format!("{text}...")
        } else {
            text
        }
    }
}

/// How a request goes out: the `Authorization` it carries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Auth<'a> {
    /// The token the kit was given, if any.
    Token,
    None,
    Bearer(&'a str),
}

/// Why a connection could not be made.
#[derive(Debug)]
pub enum OpenError {
    /// The server speaks only HTTP/1.1 (the gateway copes; the kit does not test it).
    NotH2(String),
    Failed(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::NotH2(why) | OpenError::Failed(why) => f.write_str(why),
        }
    }
}

impl From<String> for OpenError {
    fn from(why: String) -> Self {
        OpenError::Failed(why)
    }
}

/// One TLS connection with HTTP/2 on it.
pub struct Link {
    send: SendRequest<Bytes>,
    /// h2 allows one PING of ours in flight at a time.
    ping: tokio::sync::Mutex<Option<h2::PingPong>>,
    driver: JoinHandle<Result<(), String>>,
    target: Arc<Target>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Link {
    /// Connects, verifies the certificate and speaks HTTP/2. `Err` says which step failed.
    pub async fn open(target: &Arc<Target>) -> Result<Link, OpenError> {
        Link::connect(target).await
    }

    async fn connect(target: &Arc<Target>) -> Result<Link, OpenError> {
        let tcp = timeout(
            target.connect_timeout,
            TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await
        .map_err(|_| {
            format!(
                "TCP connect to {}:{} took over {:?}",
                target.host, target.port, target.connect_timeout
            )
        })?
        .map_err(|e| format!("TCP connect to {}:{}: {e}", target.host, target.port))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(target.host.clone())
            .map_err(|e| format!("{}: not a valid server name: {e}", target.host))?;
        let tls = timeout(
            target.connect_timeout,
            TlsConnector::from(target.tls.clone()).connect(name, tcp),
        )
        .await
        .map_err(|_| format!("TLS handshake took over {:?}", target.connect_timeout))?
        .map_err(|e| format!("TLS handshake: {e}"))?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        match alpn.as_deref() {
            Some(b"h2") => {}
            Some(other) => {
                return Err(OpenError::NotH2(format!(
                    "the server chose {} by ALPN, not h2; the kit tests HTTP/2 servers",
                    String::from_utf8_lossy(other)
                )));
            }
            // Without ALPN a gateway speaks HTTP/1.1 (RFC 9113 §3.2).
            None => {
                return Err(OpenError::NotH2(
                    "the server negotiated no ALPN protocol, so gateways speak HTTP/1.1 to it; the kit tests HTTP/2 servers (ALPN h2)".into(),
                ));
            }
        }
        let (send, mut conn) = timeout(target.connect_timeout, h2::client::handshake(tls))
            .await
            .map_err(|_| "the HTTP/2 handshake did not finish".to_owned())?
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let ping = conn.ping_pong();
        let driver = tokio::spawn(async move { conn.await.map_err(|e| describe(&e)) });
        Ok(Link {
            send,
            ping: tokio::sync::Mutex::new(ping),
            driver,
            target: target.clone(),
        })
    }

    /// A PING and its answer: how long it took, or why none came within `within`.
    pub async fn ping(&self, within: Duration) -> Result<Duration, String> {
        let mut guard = self.ping.lock().await;
        let ping = guard.as_mut().ok_or("this connection cannot send PINGs")?;
        let start = Instant::now();
        match timeout(within, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => Ok(start.elapsed()),
            Ok(Err(e)) => Err(format!("PING failed: {}", describe(&e))),
            Err(_) => Err(format!("no answer to a PING within {within:?}")),
        }
    }

    /// `POST {base}{path}` with `body`, bounded by `within` from start to the end of the
    /// response body.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(HeaderName, String)],
        auth: Auth<'_>,
        body: Bytes,
        within: Duration,
    ) -> Result<Reply, String> {
        let uri = format!(
            "https://{}:{}{}{path}",
            self.target.host, self.target.port, self.target.base_path
        );
        let mut builder = Request::builder().method(Method::POST).uri(&uri);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let bearer = match auth {
            Auth::Token => self.target.token.as_deref(),
            Auth::None => None,
            Auth::Bearer(t) => Some(t),
        };
        if let Some(token) = bearer {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| "the token is not a valid header value".to_owned())?;
            builder = builder.header(AUTHORIZATION, value);
        }
        builder = builder.header("content-length", body.len());
        let request = builder.body(()).map_err(|e| e.to_string())?;
        let start = Instant::now();
        let max = self.target.max_response;
        let exchange = async {
            let mut send = self
                .send
                .clone()
                .ready()
                .await
                .map_err(|e| format!("cannot open a stream: {}", describe(&e)))?;
            let (response, stream) = send
                .send_request(request, body.is_empty())
                .map_err(|e| format!("cannot send the request: {}", describe(&e)))?;
            // The body goes out beside the wait for the answer: a server may refuse a
            // large body (413) before reading it all, and then stops taking it.
            let sender = (!body.is_empty()).then(|| tokio::spawn(send_body(stream, body)));
            let response = response
                .await
                .map_err(|e| format!("no response: {}", describe(&e)));
            if let Some(sender) = sender {
                match &response {
                    // Why the body could not go, too: it may be the better explanation.
                    Err(why) => {
                        if let Ok(Err(e)) = sender.await {
                            return Err(format!("{why} (sending the body: {e})"));
                        }
                    }
                    Ok(_) => sender.abort(),
                }
            }
            let response = response?;
            let (parts, mut recv) = response.into_parts();
            let mut buf = BytesMut::new();
            while let Some(chunk) = recv.data().await {
                let chunk = chunk.map_err(|e| {
                    format!(
                        "{} response: body broken after {} bytes: {}",
                        parts.status,
                        buf.len(),
                        describe(&e)
                    )
                })?;
                let _ = recv.flow_control().release_capacity(chunk.len());
                if buf.len() + chunk.len() > max {
                    return Err(format!(
                        "{} response: body over {max} bytes (a gateway refuses it)",
                        parts.status
                    ));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body: buf.freeze(),
                elapsed: start.elapsed(),
            })
        };
        match timeout(within, exchange).await {
            Ok(reply) => reply,
            Err(_) => Err(format!("no complete response within {within:?}")),
        }
    }
}

async fn send_body(mut stream: h2::SendStream<Bytes>, mut body: Bytes) -> Result<(), String> {
    while !body.is_empty() {
        stream.reserve_capacity(body.len());
        let granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(describe(&e)),
            None => return Err("the stream closed".to_owned()),
        };
        let chunk = body.split_to(granted.min(body.len()));
        stream
            .send_data(chunk, body.is_empty())
            .map_err(|e| describe(&e))?;
    }
    Ok(())
}

/// An h2 error in words a cloud developer recognises.
pub fn describe(e: &h2::Error) -> String {
    if e.is_go_away() {
        let reason = e.reason().map(|r| format!(" ({r:?})")).unwrap_or_default();
        format!("the server closed the connection (GOAWAY{reason})")
    } else if e.is_reset() {
        let reason = e.reason().map(|r| format!(" {r:?}")).unwrap_or_default();
        format!("the server reset the stream (RST_STREAM{reason})")
    } else if e.is_io() {
        format!("the connection broke: {e}")
    } else {
        e.to_string()
    }
}
