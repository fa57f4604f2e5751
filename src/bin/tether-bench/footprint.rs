//! What tetherd costs when nothing happens: memory with N appliances connected, and, over
//! an idle period, connections, handshakes, bytes on the wire, CPU time and wakeups.
//!
//! Memory is read from `/proc/PID/status` (VmRSS now, VmHWM the peak since start) after a
//! settle pause, one fresh tetherd per step configured with exactly the appliances that
//! connect: that is how a gateway with N appliances runs. The idle figures come from the
//! devcloud's counters (below TLS: handshakes, records, HTTP/2 frames and PINGs count)
//! and from `/proc/PID/stat` (utime + stime) and the threads' context switches.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::Ctx;
use crate::admin::Stats;
use crate::appliance::Fleet;
use crate::probe::{self, binary_size};
use crate::procs::{Setup, Tetherd};
use crate::report::{Footprint, FootprintStep, Idle};

pub async fn footprint(
    ctx: &Ctx<'_>,
    steps: &[usize],
    settle: Duration,
    extra_sizes: &[PathBuf],
) -> Result<Footprint, String> {
    let mut out = Vec::new();
    for &n in steps {
        eprintln!("footprint: {n} appliances connected");
        let gw = format!("gw-footprint-{n}");
        let setup = Setup {
            gateway: &gw,
            appliances: n,
            linger: "0s",
            sync: "full",
            encoding: "json",
        };
        let tetherd = Tetherd::start(ctx, &setup).await?;
        let mut fleet = Fleet::new();
        let grown = fleet.grow(tetherd.mqtt, n, Duration::from_secs(60)).await;
        tokio::time::sleep(settle).await;
        let memory = probe::memory(tetherd.pid);
        drop(fleet);
        tetherd.stop().await;
        grown?;
        out.push(FootprintStep {
            appliances_configured: n,
            appliances_connected: n,
            memory,
        });
    }
    let binaries = std::iter::once(ctx.tetherd.to_path_buf())
        .chain(extra_sizes.iter().cloned())
        .map(|p| binary_size(&p, ctx.dir))
        .collect();
    Ok(Footprint {
        tetherd_env: ctx.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        steps: out,
        binaries,
    })
}

/// Idle cost over `period` with `appliances` connected (MQTT keep-alive `keep_alive`).
pub async fn idle(
    ctx: &Ctx<'_>,
    appliances: usize,
    keep_alive: Duration,
    period: Duration,
) -> Result<Idle, String> {
    eprintln!(
        "idle: {appliances} appliances, {} s (nothing is sent meanwhile)",
        period.as_secs_f64()
    );
    let before = ctx.admin.stats().await?;
    let setup = Setup {
        gateway: "gw-idle",
        appliances,
        linger: "0s",
        sync: "full",
        encoding: "json",
    };
    let tetherd = Tetherd::start(ctx, &setup).await?;
    let mut fleet = Fleet::new();
    let outcome = match fleet.grow(tetherd.mqtt, appliances, keep_alive).await {
        Ok(()) => window(ctx, tetherd.pid, period, &before).await,
        Err(e) => Err(e),
    };
    drop(fleet);
    tetherd.stop().await;
    let w = outcome?;
    let cpu_seconds = w.cpu_ticks as f64 / probe::clk_tck() as f64;
    let secs = w.elapsed.as_secs_f64();
    let bytes = w.window.bytes_in + w.window.bytes_out;
    Ok(Idle {
        seconds: secs,
        appliances,
        keep_alive_s: keep_alive.as_secs(),
        connections: w.since_start.connections,
        tls_handshakes: w.since_start.tls_handshakes,
        connections_in_window: w.window.connections,
        tls_handshakes_in_window: w.window.tls_handshakes,
        polls_in_window: w.window.polls,
        requests_in_window: w.window.requests_http1 + w.window.requests_http2,
        bytes_in_window: bytes,
        bytes_per_hour: bytes as f64 * 3600.0 / secs,
        cpu_seconds,
        cpu_percent_of_core: 100.0 * cpu_seconds / secs,
        context_switches: w.switches,
        wakeups_per_s: w.switches as f64 / secs,
        threads: w.threads,
    })
}

/// Counters sampled across the idle window.
struct Window {
    /// Devcloud counters from before tetherd started to the end of the window.
    since_start: Stats,
    /// Devcloud counters within the window.
    window: Stats,
    cpu_ticks: u64,
    switches: u64,
    elapsed: Duration,
    threads: u64,
}

/// Lets start-up settle, then samples the counters across `period`.
async fn window(
    ctx: &Ctx<'_>,
    pid: u32,
    period: Duration,
    before_start: &Stats,
) -> Result<Window, String> {
    // Connection bursts and the first polls are start-up, not idling.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s1 = ctx.admin.stats().await?;
    let (cpu1, sw1) = (probe::cpu_ticks(pid), probe::context_switches(pid));
    let t1 = Instant::now();
    tokio::time::sleep(period).await;
    let s2 = ctx.admin.stats().await?;
    let (cpu2, sw2) = (probe::cpu_ticks(pid), probe::context_switches(pid));
    Ok(Window {
        since_start: s2.since(before_start),
        window: s2.since(&s1),
        cpu_ticks: cpu2.saturating_sub(cpu1),
        switches: sw2.saturating_sub(sw1),
        elapsed: t1.elapsed(),
        threads: probe::memory(pid).threads,
    })
}
