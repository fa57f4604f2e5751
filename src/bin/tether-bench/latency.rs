//! Round-trip latency: one command at a time, enqueue at the cloud → result stored at the
//! cloud, for each setting that changes it.
//!
//! Every command is timed on the bench's clock at four points: t0 just before the
//! enqueue request, t1 when the appliance has it, t2 when the appliance has queued its
//! answer, t3 when the devcloud's long-poll `GET .../results/{id}?wait_ms=` returns
//! (it answers the moment the result is stored). rtt = t3 - t0, down = t1 - t0,
//! up = t3 - t2. The gateway's own `duration_ms` (receipt → answer, whole ms) comes from
//! the stored result. The same loop run against the stub gateway (no tetherd) gives the
//! baseline: what the devcloud, its admin API, TLS and HTTP/2 cost here.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::Ctx;
use crate::admin::{self, Admin, Stats};
use crate::appliance::Fleet;
use crate::probe;
use crate::procs::{Setup, Tetherd};
use crate::report::{Dist, Latency, LatencyRow};

/// Longest wait for one result; only reached when something is broken.
const RESULT_WAIT: Duration = Duration::from_secs(30);

/// The settings measured, one tetherd instance each: (label, result_linger, sync, gap).
/// The spaced row leaves the gateway idle between commands (idle vCPU wake-ups show);
/// the 20 ms linger row shows what the optional flush spacing costs a sequential client.
const ROWS: [(&str, &str, &str, u64); 4] = [
    ("default (sync full), back to back", "0s", "full", 0),
    ("default (sync full), lone (25 ms apart)", "0s", "full", 25),
    ("sync normal, back to back", "0s", "normal", 0),
    ("result_linger 20ms, back to back", "20ms", "full", 0),
];

#[derive(Default)]
pub struct Samples {
    pub rtt: Vec<f64>,
    pub down: Vec<f64>,
    pub up: Vec<f64>,
    in_gateway: Vec<f64>,
    pub counters: Stats,
    /// Context switches of tetherd's threads over the measured commands.
    switches: u64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `commands` back-to-back commands per row (fewer, `lone`, for the spaced row, which
/// costs 25 ms each), after `warmup` unmeasured ones.
pub async fn run(
    ctx: &Ctx<'_>,
    commands: usize,
    lone: usize,
    warmup: usize,
) -> Result<Latency, String> {
    eprintln!("latency: baseline (stub gateway, no tetherd), {commands} commands");
    let stub = admin::start_stub(ctx.cloud.https, &ctx.cloud.ca, "gw-stub").await?;
    let base = sequential(ctx.admin, "gw-stub", None, None, commands, warmup, 0).await;
    // The same, spaced like the lone row: what idle gaps alone cost on this machine
    // (threads parked between commands must be woken, and a VM's idle vCPU with them).
    let lone_base = match base {
        Ok(_) => sequential(ctx.admin, "gw-stub", None, None, lone, warmup, 25).await,
        Err(ref e) => Err(e.clone()),
    };
    stub.abort();
    let baseline = Dist::of(base?.rtt);
    let baseline_lone = Dist::of(lone_base?.rtt);

    let mut rows = Vec::new();
    for (k, (label, linger, sync, gap_ms)) in ROWS.into_iter().enumerate() {
        let n = if gap_ms > 0 { lone } else { commands };
        eprintln!("latency: {label}, {n} commands");
        let gw = format!("gw-latency-{k}");
        let setup = Setup {
            gateway: &gw,
            appliances: 1,
            linger,
            sync,
            encoding: "json",
        };
        let tetherd = Tetherd::start(ctx, &setup).await?;
        let mut fleet = Fleet::new();
        let samples = match fleet.grow(tetherd.mqtt, 1, Duration::from_secs(60)).await {
            Ok(()) => {
                let pid = Some(tetherd.pid);
                sequential(ctx.admin, &gw, Some(&mut fleet), pid, n, warmup, gap_ms).await
            }
            Err(e) => Err(e),
        };
        drop(fleet);
        tetherd.stop().await;
        let s = samples?;
        let rtt = Dist::of(s.rtt);
        rows.push(LatencyRow {
            label: label.to_owned(),
            result_linger: linger.to_owned(),
            sync: sync.to_owned(),
            gap_ms,
            added_over_stub_p50: rtt.p50
                - if gap_ms > 0 {
                    baseline_lone.p50
                } else {
                    baseline.p50
                },
            rtt,
            down: Dist::of(s.down),
            up: Dist::of(s.up),
            in_gateway: Dist::of(s.in_gateway),
            polls_per_command: s.counters.polls as f64 / n.max(1) as f64,
            flushes_per_command: s.counters.results_posts as f64 / n.max(1) as f64,
            switches_per_command: s.switches as f64 / n.max(1) as f64,
        });
    }
    Ok(Latency {
        baseline,
        baseline_lone,
        rows,
    })
}

/// One command at a time to appliance `a0` of gateway `gw`; the first `warmup` are not
/// recorded (first requests open the admin API's connections, fill caches).
pub async fn sequential(
    admin: &Admin,
    gw: &str,
    mut fleet: Option<&mut Fleet>,
    pid: Option<u32>,
    n: usize,
    warmup: usize,
    gap_ms: u64,
) -> Result<Samples, String> {
    let mut s = Samples::default();
    let mut before = Stats::default();
    let switches = || pid.map_or(0, probe::context_switches);
    let mut switches_before = 0;
    for i in 0..warmup + n {
        if i == warmup {
            before = admin.stats().await?;
            switches_before = switches();
        }
        let id = format!("{gw}-{gap_ms}-{i}");
        // The wait is asked for first, so t3 is the moment of storage plus one response,
        // not plus a request sent after the enqueue returned.
        let waiter = {
            let (admin, gw, id) = (admin.clone(), gw.to_owned(), id.clone());
            tokio::spawn(async move { admin.wait_result(&gw, &id, RESULT_WAIT).await })
        };
        let t0 = Instant::now();
        let cmd = json!({"id": id, "target": "a0", "payload": {"n": i}});
        admin.enqueue(gw, &cmd).await?;
        let stored = waiter.await.map_err(|e| e.to_string())??;
        let t3 = Instant::now();
        let status = stored["result"]["status"].as_str().unwrap_or("?");
        if status != "ok" {
            return Err(format!("command {id}: status {status}: {stored}"));
        }
        let seen = match fleet.as_deref_mut() {
            Some(f) => Some(f.wait_seen(&id).await?),
            None => None,
        };
        if i >= warmup {
            s.rtt.push(ms(t3 - t0));
            if let Some(seen) = seen {
                s.down.push(ms(seen.got.saturating_duration_since(t0)));
                s.up.push(ms(t3.saturating_duration_since(seen.answered)));
                let d = stored["result"]["duration_ms"].as_f64().unwrap_or(0.0);
                s.in_gateway.push(d);
            }
        }
        if gap_ms > 0 {
            tokio::time::sleep(Duration::from_millis(gap_ms)).await;
        }
    }
    s.switches = switches().saturating_sub(switches_before);
    s.counters = admin.stats().await?.since(&before);
    Ok(s)
}
