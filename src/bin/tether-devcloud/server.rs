//! Accept loops and per-connection tasks for both listeners.
//!
//! The HTTPS listener counts bytes below TLS, runs each handshake (bounded by a timeout)
//! in the connection's own task so a slow or hostile client never stalls `accept`, and
//! serves HTTP/2 or HTTP/1.1 on the result. The admin listener is plain HTTP/1.1.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tether::cloud::client::error_chain;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::App;
use crate::admin;
use crate::api::{self, ConnInfo};
use crate::http::Body;
use crate::stats::{Counted, bump};

/// How long a client gets to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an HTTP/1.1 connection may sit without a complete request head, idle time
/// between keep-alive requests included (hyper's header-read timeout). Like nginx's
/// default keep-alive timeout: long enough that a gateway polling every minute keeps its
/// connection, short enough that a client stalling mid-headers is dropped.
const HTTP1_IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// Pause after a failed `accept` (typically EMFILE) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts TCP connections forever and spawns one task per connection.
async fn accept_loop(listener: TcpListener, name: &str, mut on_conn: impl FnMut(TcpStream)) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                // Long-poll traffic is small request/response pairs: do not let Nagle
                // delay them.
                let _ = stream.set_nodelay(true);
                on_conn(stream);
            }
            Err(e) => {
                log::warn!("{name}: accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Serves protocol v1 over TLS on `listener`; never returns.
pub async fn serve_https(listener: TcpListener, tls: Arc<rustls::ServerConfig>, app: Arc<App>) {
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The timer drives hyper's HTTP/1 header-read timeout and HTTP/2 keep-alive.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP1_IDLE_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);

    accept_loop(listener, "https", |stream| {
        let open = app.stats.open_connection();
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _open = open;
            if let Err(e) = serve_tls_connection(stream, acceptor, &builder, app).await {
                log::warn!("{e}");
            }
        });
    })
    .await;
}

async fn serve_tls_connection(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    builder: &auto::Builder<TokioExecutor>,
    app: Arc<App>,
) -> Result<(), String> {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown peer".to_owned(), |a| a.to_string());
    match app.faults.take_connection().map(|f| f.mode) {
        Some(m) if m == "refuse" => return Ok(()),
        Some(m) if m == "tls_stall" => {
            // Hold the socket, say nothing: the client's handshake must time out.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Ok(());
        }
        _ => {}
    }
    let counted = Counted::new(stream, app.stats.clone());
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(counted)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            bump(&app.stats.tls_handshake_failures);
            return Err(format!("{peer}: TLS handshake failed: {e}"));
        }
        Err(_) => {
            bump(&app.stats.tls_handshake_failures);
            return Err(format!("{peer}: TLS handshake timed out"));
        }
    };
    bump(&app.stats.tls_handshakes);
    // With --client-ca the verifier already rejected unverifiable certificates, so any
    // certificate still present here is a verified one.
    let conn = ConnInfo {
        client_cert: tls.get_ref().1.peer_certificates().is_some(),
    };

    let app_stats = app.stats.clone();
    let mut goaway = app.faults.goaway();
    goaway.mark_unchanged();
    let service = service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        async move { Ok::<Response<Body>, Infallible>(api::handle(&app, conn, req).await) }
    });
    // Counting PINGs needs the HTTP/2 framing, so only a connection that negotiated h2.
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let stream = Counted::pings(tls, app_stats, h2);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    loop {
        tokio::select! {
            done = conn.as_mut() => return done.map_err(|e| format!("{peer}: {}", error_chain(&*e))),
            Ok(()) = goaway.changed() => {
                // Injected fault: close gracefully (HTTP/2 GOAWAY), finishing open streams.
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Serves the admin API on `listener`; never returns.
pub async fn serve_admin(listener: TcpListener, app: Arc<App>) {
    accept_loop(listener, "admin", |stream| {
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                async move { Ok::<Response<Body>, Infallible>(admin::handle(&app, req).await) }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                // Clients hanging up mid-request are routine for a test harness.
                log::info!("admin connection: {}", error_chain(&e));
            }
        });
    })
    .await;
}
