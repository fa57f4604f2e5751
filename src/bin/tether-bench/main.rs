//! `tether-bench`: measures tetherd from the outside and prints the figures (a table, or
//! JSON with `--json` to compare commits).
//!
//! It starts the reference cloud (`tether-devcloud`) and the real `tetherd` binary (both
//! found next to this executable unless `--devcloud`/`--tetherd` say otherwise) on
//! loopback, connects simulated MQTT appliances that answer at once, and measures:
//! round-trip latency (`latency`), pipelined throughput (`load`), memory with 0..1,000
//! appliances and binary size, the idle cost of the cloud link (`footprint`), the link's
//! bytes in JSON and in Protocol Buffers (`wire`), and the journal's fsync cost
//! (`journal`). docs/benchmarks.md describes each method.
//!
//! Every child is killed by pid when the bench ends, errors included; every wait is
//! bounded, and the whole run is under a watchdog.

mod admin;
mod appliance;
mod cli;
mod footprint;
mod journal;
mod latency;
mod load;
mod probe;
mod procs;
mod report;
mod table;
mod wire;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::admin::Admin;
use crate::cli::{Cli, pick};
use crate::procs::DevCloud;
use crate::report::Report;

/// What every section needs.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub tetherd: &'a Path,
    pub devcloud: &'a Path,
    pub dir: &'a Path,
    pub cloud: &'a DevCloud,
    pub admin: &'a Admin,
    pub env: &'a [(String, String)],
    pub logs: Option<&'a Path>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = std::env::temp_dir().join(format!("tether-bench-{}", std::process::id()));
    let outcome = runtime.block_on(async {
        let idle = pick(
            cli.idle,
            Duration::from_secs(3),
            Duration::from_secs(300),
            cli.smoke,
        );
        // Generous: only a wedged run reaches it; the children die with their handles.
        let watchdog = idle + Duration::from_secs(if cli.smoke { 120 } else { 1800 });
        tokio::time::timeout(watchdog, run(&cli, &dir))
            .await
            .unwrap_or_else(|_| Err(format!("gave up after {} s", watchdog.as_secs())))
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&dir);
    match outcome {
        Ok(report) => {
            if cli.json {
                eprint!("{}", table::render(&report));
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("tether-bench: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", table::render(&report));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tether-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli, dir: &Path) -> Result<Report, String> {
    let s = cli.smoke;
    let want = |section: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == section);
    let footprint_steps = if cli.footprint.is_empty() {
        if s {
            vec![0, 10, 100]
        } else {
            vec![0, 100, 1000]
        }
    } else {
        cli.footprint.clone()
    };
    let env = cli
        .tetherd_env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("--tetherd-env {kv}: expected KEY=VALUE"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tetherd = cli
        .tetherd
        .clone()
        .unwrap_or_else(|| procs::sibling("tetherd"));
    let devcloud = cli
        .devcloud
        .clone()
        .unwrap_or_else(|| procs::sibling("tether-devcloud"));
    for bin in [&tetherd, &devcloud] {
        if !bin.exists() {
            return Err(format!(
                "{} not found: cargo build --release --bin tetherd --bin tether-devcloud --bin tether-bench",
                bin.display()
            ));
        }
    }

    // Each appliance is one socket here and one in tetherd (which inherits the limit).
    let most = footprint_steps.iter().copied().max().unwrap_or(0);
    let need = most as u64 + 512;
    let limit = probe::raise_nofile(need);
    if limit < need {
        return Err(format!(
            "the open-file limit is {limit}, {most} appliances need about {need}: run `ulimit -n {need}` first"
        ));
    }

    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut report = Report {
        tool: "tether-bench",
        version: env!("CARGO_PKG_VERSION"),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        smoke: s,
        machine: probe::Machine::probe(),
        latency: None,
        throughput: Vec::new(),
        footprint: None,
        idle: None,
        wire: None,
        durability: Vec::new(),
        targets: Vec::new(),
    };
    tether::cloud::tls::install_crypto_provider();
    let cloud = DevCloud::start(&devcloud, dir).await?;
    let admin = Admin::new(cloud.admin)?;
    let ctx = Ctx {
        tetherd: &tetherd,
        devcloud: &devcloud,
        dir,
        cloud: &cloud,
        admin: &admin,
        env: &env,
        logs: cli.keep_logs.as_deref(),
    };
    let outcome = sections(cli, &ctx, &mut report, &footprint_steps).await;
    cloud.stop().await;
    outcome?;
    if want("durability") {
        let jdir = cli.journal_dir.clone().unwrap_or_else(|| dir.to_path_buf());
        let n = pick(cli.journal_results, 100, 2000, s).max(1);
        report.durability = journal::run(&jdir, n).await?;
    }
    report.machine.loadavg_end = probe::loadavg();
    report.check_targets();
    Ok(report)
}

async fn sections(
    cli: &Cli,
    ctx: &Ctx<'_>,
    report: &mut Report,
    footprint_steps: &[usize],
) -> Result<(), String> {
    let s = cli.smoke;
    let want = |section: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == section);
    if want("latency") {
        let n = pick(cli.commands, 40, 1000, s).max(1);
        let lone = pick(cli.lone, 10, 200, s).max(1);
        let warmup = pick(cli.warmup, 3, 20, s);
        report.latency = Some(latency::run(ctx, n, lone, warmup).await?);
    }
    if want("throughput") {
        // The smoke bulk stays under one request's `cloud.max_batch` (256) and far under
        // `router.max_pending`: larger bursts can hit tetherd's poll-wait stalls
        // (docs/benchmarks.md), which would make the smoke test slow, not wrong.
        let n = pick(cli.load_commands, 200, 20_000, s).max(1);
        let appliances = pick(cli.load_appliances, 20, 100, s).max(1);
        for sync in &cli.load_sync {
            report
                .throughput
                .push(load::run(ctx, sync, appliances, n).await?);
        }
    }
    if want("footprint") {
        let settle = pick(
            cli.settle,
            Duration::from_millis(300),
            Duration::from_secs(2),
            s,
        );
        report.footprint =
            Some(footprint::footprint(ctx, footprint_steps, settle, &cli.sizes).await?);
    }
    if want("idle") {
        let period = pick(
            cli.idle,
            Duration::from_secs(3),
            Duration::from_secs(300),
            s,
        );
        let appliances = pick(cli.idle_appliances, 10, 100, s);
        report.idle = Some(footprint::idle(ctx, appliances, cli.keep_alive, period).await?);
    }
    if want("wire") {
        report.wire = Some(wire::run(ctx, &cli.encodings, &cli.wire_sync, s).await?);
    }
    Ok(())
}
