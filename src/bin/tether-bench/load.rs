//! Throughput: one bulk enqueue of N commands spread round robin over the appliances,
//! drained by tetherd as fast as it can (pipelined: up to `router.max_pending` commands
//! in flight, each appliance running its own in order).
//!
//! Timing comes from the devcloud's `received_ms` on every stored result (its clock, whole
//! ms), put on the bench's clock by probes first: for a probe, "the long-poll returned"
//! minus `received_ms` is the clock offset plus a little; the smallest over 20 probes is
//! the offset within about a millisecond. The probes also warm the path up.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Ctx;
use crate::appliance::Fleet;
use crate::procs::{Setup, Tetherd, appliance_id};
use crate::report::{Dist, Throughput};

const PROBES: usize = 20;

pub async fn run(
    ctx: &Ctx<'_>,
    sync: &str,
    appliances: usize,
    commands: usize,
) -> Result<Throughput, String> {
    eprintln!("throughput: sync {sync}, {commands} commands over {appliances} appliances");
    let gw = format!("gw-load-{sync}");
    let setup = Setup {
        gateway: &gw,
        appliances,
        linger: "0s",
        sync,
        encoding: "json",
    };
    let tetherd = Tetherd::start(ctx, &setup).await?;
    let mut fleet = Fleet::new();
    let outcome = match fleet
        .grow(tetherd.mqtt, appliances, Duration::from_secs(60))
        .await
    {
        Ok(()) => measure(ctx, &gw, sync, appliances, commands).await,
        Err(e) => Err(e),
    };
    drop(fleet);
    tetherd.stop().await;
    outcome
}

async fn measure(
    ctx: &Ctx<'_>,
    gw: &str,
    sync: &str,
    appliances: usize,
    n: usize,
) -> Result<Throughput, String> {
    let admin = ctx.admin;
    let epoch = Instant::now();
    let now_ms = || epoch.elapsed().as_secs_f64() * 1000.0;
    let mut offset = f64::MAX;
    for i in 0..PROBES {
        let id = format!("p{i}");
        admin
            .enqueue(gw, &json!({"id": id, "target": "a0"}))
            .await?;
        let stored = admin.wait_result(gw, &id, Duration::from_secs(30)).await?;
        let received = stored["received_ms"].as_f64().unwrap_or(0.0);
        offset = offset.min(now_ms() - received);
    }

    let body = Value::Array(
        (0..n)
            .map(|i| json!({"id": format!("t{i}"), "target": appliance_id(i % appliances), "payload": {"n": i}}))
            .collect(),
    );
    let before = admin.stats().await?;
    let t0 = now_ms();
    admin.enqueue(gw, &body).await?;

    // Done when the last command of every appliance is stored: each appliance runs its
    // commands in order, so by then the others are (nearly always) stored too.
    let patience = Duration::from_secs(60 + (n / 100) as u64);
    let waits: Vec<_> = (0..appliances.min(n))
        .map(|k| {
            let last = k + appliances * ((n - 1 - k) / appliances);
            let (admin, gw) = (admin.clone(), gw.to_owned());
            tokio::spawn(async move { admin.wait_result(&gw, &format!("t{last}"), patience).await })
        })
        .collect();
    for w in waits {
        w.await.map_err(|e| e.to_string())??;
    }
    // A few results may still ride in the last flush: look again, briefly and boundedly.
    let mut results = Vec::new();
    for _ in 0..100 {
        results = admin.results(gw).await?;
        results.retain(|r| {
            r["result"]["command_id"]
                .as_str()
                .is_some_and(|id| id.starts_with('t'))
        });
        if results.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if results.len() < n {
        return Err(format!("only {} of {n} results arrived", results.len()));
    }
    let counters = admin.stats().await?.since(&before);

    // Completion times on the bench's clock, relative to the enqueue.
    let mut done: Vec<f64> = results
        .iter()
        .map(|r| (r["received_ms"].as_f64().unwrap_or(0.0) + offset - t0).max(0.0))
        .collect();
    done.sort_by(f64::total_cmp);
    let seconds = done.last().copied().unwrap_or(0.0) / 1000.0;
    let (p10, p90) = (done[n / 10], done[(n * 9) / 10]);
    let steady = if p90 > p10 {
        (0.8 * n as f64) / ((p90 - p10) / 1000.0)
    } else {
        0.0
    };
    // From the enqueue to the first result, then between consecutive results.
    let longest_gap_ms = std::iter::once(0.0)
        .chain(done.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0, f64::max);
    let not_ok = results
        .iter()
        .filter(|r| r["result"]["status"] != "ok")
        .count();
    let in_gateway = results
        .iter()
        .map(|r| r["result"]["duration_ms"].as_f64().unwrap_or(0.0))
        .collect();
    Ok(Throughput {
        sync: sync.to_owned(),
        appliances,
        commands: n,
        not_ok,
        seconds,
        commands_per_s: if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        },
        steady_commands_per_s: steady,
        longest_gap_ms,
        burst: Dist::of(done),
        in_gateway: Dist::of(in_gateway),
        polls: counters.polls,
        flushes: counters.results_posts,
    })
}
