//! The command line: every count and period has a full-run default and a smoke value,
//! and an explicit flag wins over both.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Benchmarks tetherd: latency, throughput, footprint, idle cost, durability cost.
#[derive(Debug, Parser)]
#[command(name = "tether-bench", version)]
pub struct Cli {
    /// The tetherd binary [default: next to this executable].
    #[arg(long, value_name = "PATH")]
    pub tetherd: Option<PathBuf>,
    /// The tether-devcloud binary [default: next to this executable].
    #[arg(long, value_name = "PATH")]
    pub devcloud: Option<PathBuf>,
    /// Print the report as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Tiny counts and short periods (under ~30 s): checks the tool works, not the daemon.
    #[arg(long)]
    pub smoke: bool,
    /// Run only these sections (latency, throughput, footprint, idle, durability).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub only: Vec<String>,
    /// Sequential commands per latency row [default: 1000; smoke 40].
    #[arg(long, value_name = "N")]
    pub commands: Option<usize>,
    /// Commands in the lone-command row, 25 ms apart [default: 200; smoke 10].
    #[arg(long, value_name = "N")]
    pub lone: Option<usize>,
    /// Unrecorded commands before each latency row [default: 20; smoke 3].
    #[arg(long, value_name = "N")]
    pub warmup: Option<usize>,
    /// Commands in the bulk enqueue [default: 20000; smoke 200].
    #[arg(long, value_name = "N")]
    pub load_commands: Option<usize>,
    /// Appliances the bulk is spread over [default: 100; smoke 20].
    #[arg(long, value_name = "N")]
    pub load_appliances: Option<usize>,
    /// Connected appliances at each footprint step [default: 0,100,1000; smoke 0,10,100].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub footprint: Vec<usize>,
    /// Pause before reading memory at a footprint step [default: 2s; smoke 300ms].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub settle: Option<Duration>,
    /// Length of the idle window [default: 5m; smoke 3s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub idle: Option<Duration>,
    /// Appliances connected while idling [default: 100; smoke 10].
    #[arg(long, value_name = "N")]
    pub idle_appliances: Option<usize>,
    /// MQTT keep-alive of the simulated appliances (rumqttc's default).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "60s")]
    pub keep_alive: Duration,
    /// Results per journal run [default: 2000; smoke 100].
    #[arg(long, value_name = "N")]
    pub journal_results: Option<usize>,
    /// Where the journal runs write [default: the bench's scratch dir, in $TMPDIR].
    #[arg(long, value_name = "DIR")]
    pub journal_dir: Option<PathBuf>,
    /// Extra binaries to report the size of (e.g. an arm64 build).
    #[arg(long = "size", value_name = "PATH")]
    pub sizes: Vec<PathBuf>,
    /// Sync modes of the throughput runs (full, normal).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "LIST",
        default_value = "full,normal"
    )]
    pub load_sync: Vec<String>,
    /// Keep every tetherd's log (stderr) in DIR, one file per instance.
    #[arg(long, value_name = "DIR")]
    pub keep_logs: Option<PathBuf>,
    /// Extra environment for every tetherd started (e.g. MALLOC_ARENA_MAX=2).
    /// `wire`: the encodings measured, in this order (`json,protobuf`; reverse it to
    /// check that order does not decide the latency figures).
    #[arg(long, value_delimiter = ',', value_name = "LIST", default_values_t = ["json".to_owned(), "protobuf".to_owned()])]
    pub encodings: Vec<String>,

    /// `wire`: `state.sync` of the gateways it starts (`normal` takes the disk's fsync
    /// out of the latency comparison).
    #[arg(long, value_name = "MODE", default_value = "full")]
    pub wire_sync: String,

    #[arg(long = "tetherd-env", value_name = "KEY=VALUE")]
    pub tetherd_env: Vec<String>,
}

/// An explicit flag wins, then the smoke value, then the full-run default.
pub fn pick<T>(flag: Option<T>, smoke: T, full: T, is_smoke: bool) -> T {
    flag.unwrap_or(if is_smoke { smoke } else { full })
}
