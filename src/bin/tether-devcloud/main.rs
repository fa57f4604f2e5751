//! `tether-devcloud`: the reference cloud for tetherd, used by the end-to-end tests, the
//! demo and the benchmarks.
//!
//! It serves protocol v1 (`/v1/gateways/{gw}/poll` and `/results`) over HTTPS on one
//! listener, in JSON or Protocol Buffers as each request's `Content-Type` says, and a plain-HTTP admin API on another (meant for loopback) through which
//! tests enqueue commands and inspect results, events and counters.
//!
//! This file owns the command line, start-up (certificates, state, binding), the `READY`
//! line the tests parse, and shutdown on SIGTERM/SIGINT.

mod admin;
mod api;
mod breaks;
mod faults;
mod gateway;
mod http;
mod logger;
mod persist;
mod server;
mod snapshot;
mod state;
mod stats;
mod tls;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;

use crate::state::Store;
use crate::stats::Stats;

/// Reference cloud server for tetherd (protocol v1).
#[derive(Debug, Parser)]
#[command(name = "tether-devcloud", version, about)]
struct Cli {
    /// Address of the HTTPS listener gateways poll (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    listen: String,

    /// Address of the plain-HTTP admin API; keep it on loopback.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    admin: String,

    /// Directory holding ca.pem, ca-key.pem, server.pem and server-key.pem; created and
    /// filled with a fresh CA and server certificate when they are missing.
    #[arg(long, value_name = "DIR")]
    cert_dir: PathBuf,

    /// Require `Authorization: Bearer TOKEN` on every /v1 request (unless the client
    /// presented a verified certificate).
    #[arg(long, value_name = "T")]
    token: Option<String>,

    /// `wait_s` the server tells gateways to use for their next polls.
    #[arg(long, value_name = "N", default_value_t = 30)]
    wait_s: u64,

    /// `interval_s` the server tells gateways to pause between polls.
    #[arg(long, value_name = "N", default_value_t = 0)]
    interval_s: u64,

    /// `ping_s` the server tells gateways to use (their HTTP/2 PING interval); left out
    /// of `poll` when not given, so gateways use their own `cloud.ping_interval`.
    #[arg(long, value_name = "N")]
    ping_s: Option<u64>,

    /// Answer protobuf requests with 415, as a cloud that speaks only JSON does.
    #[arg(long)]
    json_only: bool,

    /// With --json-only: the status protobuf requests get instead of 415 (many JSON-only
    /// servers answer a body they cannot parse with 400).
    #[arg(long, value_name = "CODE", default_value_t = 415)]
    json_only_status: u16,

    /// Upper bound on how long a poll is held, whatever its `Prefer: wait`.
    #[arg(long, value_name = "N", default_value_t = 60)]
    max_wait_s: u64,

    /// Persist queues, deliveries and results to this JSON file, durably, before
    /// acknowledging anything; loaded at start when present.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,

    /// Require TLS client certificates chained to this CA (PEM).
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// Largest request body accepted on /v1 (413 beyond it), like a proxy's body limit.
    #[arg(long, value_name = "BYTES", default_value_t = api::MAX_BODY)]
    max_body_bytes: usize,

    /// Break one rule of the protocol on purpose, to show that tether-conformance
    /// catches it (docs/conformance.md). Never for anything else.
    #[arg(long = "break", value_name = "RULE", value_enum)]
    break_rule: Option<breaks::Break>,
}

/// What every request handler needs; shared by all connections.
pub struct App {
    pub store: Store,
    pub faults: faults::Faults,
    pub stats: Arc<Stats>,
    pub token: Option<String>,
    pub wait_s: u64,
    pub interval_s: u64,
    pub ping_s: Option<u64>,
    /// `--json-only`: the status a protobuf request gets.
    pub json_only: Option<hyper::StatusCode>,
    pub max_wait_s: u64,
    pub max_body_bytes: usize,
}

fn main() -> ExitCode {
    logger::init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether-devcloud: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-devcloud: {e}");
            ExitCode::FAILURE
        }
    };
    // Held polls and admin waits are parked tasks; there is nothing to drain, so do not
    // let them delay the exit.
    runtime.shutdown_background();
    code
}

async fn run(cli: Cli) -> Result<(), String> {
    if let Some(rule) = cli.break_rule {
        log::warn!("breaking the protocol on purpose: {rule:?}");
        breaks::set(rule);
    }
    let tls_config = tls::server_config(&cli.cert_dir, cli.client_ca.as_deref())
        .map_err(|e| format!("TLS setup: {e}"))?;
    let store = Store::open(cli.state.clone()).map_err(|e| format!("state: {e}"))?;

    let https = TcpListener::bind(&cli.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cli.listen))?;
    let admin = TcpListener::bind(&cli.admin)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cli.admin))?;
    let https_addr = https.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;

    let app = Arc::new(App {
        store,
        faults: faults::Faults::default(),
        stats: Arc::new(Stats::default()),
        token: cli.token.filter(|t| !t.is_empty()),
        wait_s: cli.wait_s,
        interval_s: cli.interval_s,
        ping_s: cli.ping_s,
        json_only: match cli.json_only {
            false => None,
            true => Some(
                hyper::StatusCode::from_u16(cli.json_only_status)
                    .map_err(|e| format!("--json-only-status: {e}"))?,
            ),
        },
        max_wait_s: cli.max_wait_s,
        max_body_bytes: cli.max_body_bytes,
    });

    let tls_task = tokio::spawn(server::serve_https(https, tls_config, app.clone()));
    let admin_task = tokio::spawn(server::serve_admin(admin, app));

    // Tests parse this exact line to learn the ports, so it goes out only once both
    // listeners are bound and their accept loops are running.
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY https={https_addr} admin={admin_addr}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write READY to stdout: {e}"))?;
    }

    tokio::select! {
        () = shutdown_signal() => Ok(()),
        r = tls_task => Err(format!("HTTPS listener stopped: {r:?}")),
        r = admin_task => Err(format!("admin listener stopped: {r:?}")),
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                log::warn!("cannot watch SIGTERM ({e}); only SIGINT stops the server");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
