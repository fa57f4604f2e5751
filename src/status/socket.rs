//! The control socket (`gateway.control_socket`, a Unix socket in the runtime directory)
//! and the optional loopback metrics listener (`metrics.listen`).
//!
//! The socket speaks one request per connection: the client writes a line (`status` or
//! `metrics`), the daemon writes the answer (the status snapshot as JSON, or the
//! Prometheus text) and closes. Who may ask is the file's business: mode 0660, group
//! `tether`, in a directory systemd makes (`RuntimeDirectory=`). `tetherd status` and
//! `tetherd metrics` are the clients ([`ask`]). The metrics listener is a minimal HTTP/1.1
//! responder for `GET /metrics`, on loopback only (the config refuses other addresses).
//! Both are bounded: a few connections at a time, a short request, a deadline.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Watched;

/// A connection must have said what it wants, and taken the answer, within this.
const DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed unanswered.
const AT_ONCE: usize = 4;
/// The longest request line (socket) or request head (HTTP).
const MAX_REQUEST: usize = 8 * 1024;
/// The longest answer a client reads.
const MAX_ANSWER: u64 = 64 * 1024 * 1024;

/// Binds the control socket. A socket file left by a daemon that is gone is replaced;
/// one that a running daemon answers on is not.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    // Under systemd the unit's RuntimeDirectory= made it; run by hand, it may be missing.
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another tetherd answers on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Answers on the control socket until `cancel`, then removes it.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    watched: Arc<Watched>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let accept = || async { listener.accept().await.map(|(s, _)| s) };
    accept_loop("control socket", accept, watched, tracker, cancel, answer).await;
    let _ = std::fs::remove_file(&path);
}

/// Accepts until `cancel`, and answers each connection with `handle` on its own task:
/// at most [`AT_ONCE`] at a time (more are closed unanswered), each within [`DEADLINE`].
async fn accept_loop<S, A, AF, H, HF>(
    what: &str,
    accept: A,
    watched: Arc<Watched>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    handle: H,
) where
    S: Send + 'static,
    A: Fn() -> AF,
    AF: Future<Output = std::io::Result<S>>,
    H: Fn(S, Arc<Watched>) -> HF,
    HF: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(AT_ONCE));
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = accept() => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    log::warn!("{what}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let answering = handle(stream, watched.clone());
        tracker.spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(DEADLINE, answering).await;
        });
    }
}

async fn answer(mut stream: tokio::net::UnixStream, watched: Arc<Watched>) {
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < MAX_REQUEST {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let body = match line.trim() {
        "status" => {
            let mut s = watched.snapshot_json().to_string();
            s.push('\n');
            s
        }
        "metrics" => super::metrics::render(&watched),
        other => format!(
            "error: unknown request {:?} (status, metrics)\n",
            other.chars().take(64).collect::<String>()
        ),
    };
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Why the daemon could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("tetherd is not running (nothing answers on {path})")]
    NotRunning { path: String },
    #[error("cannot open {path}: permission denied (run as root or as a member of group tether)")]
    Denied { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Asks the running daemon (`status` or `metrics`) and returns its answer.
pub fn ask(path: &Path, request: &str) -> Result<String, AskError> {
    let shown = path.display().to_string();
    let io = |source: std::io::Error| AskError::Io {
        path: shown.clone(),
        source,
    };
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => {
            return Err(match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    AskError::NotRunning { path: shown }
                }
                std::io::ErrorKind::PermissionDenied => AskError::Denied { path: shown },
                _ => io(e),
            });
        }
    };
    stream.set_read_timeout(Some(DEADLINE * 2)).map_err(io)?;
    stream.set_write_timeout(Some(DEADLINE)).map_err(io)?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(io)?;
    let mut out = String::new();
    stream
        .take(MAX_ANSWER)
        .read_to_string(&mut out)
        .map_err(io)?;
    if out.is_empty() {
        return Err(io(std::io::Error::other(
            "the daemon closed without answering",
        )));
    }
    Ok(out)
}

/// Serves `GET /metrics` on a loopback listener until `cancel`.
pub async fn serve_metrics(
    listener: TcpListener,
    watched: Arc<Watched>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let accept = || async { listener.accept().await.map(|(s, _)| s) };
    accept_loop("metrics listener", accept, watched, tracker, cancel, http).await;
}

async fn http(mut stream: tokio::net::TcpStream, watched: Arc<Watched>) {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() >= MAX_REQUEST {
            return respond(&mut stream, "431 Request Header Fields Too Large", "", "").await;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let body = super::metrics::render(&watched);
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
            .await;
        }
        (_, "/metrics") => respond(&mut stream, "405 Method Not Allowed", "", "").await,
        _ => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                "tetherd serves /metrics only\n",
            )
            .await
        }
    }
}

async fn respond(stream: &mut tokio::net::TcpStream, status: &str, kind: &str, body: &str) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !kind.is_empty() {
        head.push_str(&format!("Content-Type: {kind}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}
