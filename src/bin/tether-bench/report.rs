//! The figures a run produces, as one serialisable report (`--json` prints it as is, so
//! two commits can be compared field by field), and the targets they are held against.

use serde::Serialize;

use crate::probe::{BinarySize, Machine, Memory};

#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    /// The command line that produced it.
    pub command: String,
    pub smoke: bool,
    pub machine: Machine,
    pub latency: Option<Latency>,
    pub throughput: Vec<Throughput>,
    pub footprint: Option<Footprint>,
    pub idle: Option<Idle>,
    pub wire: Option<Wire>,
    pub durability: Vec<JournalRow>,
    pub targets: Vec<Target>,
}

/// A latency distribution in milliseconds (nearest-rank percentiles).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Dist {
    pub n: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    pub fn of(mut samples: Vec<f64>) -> Dist {
        if samples.is_empty() {
            return Dist::default();
        }
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let rank = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Dist {
            n,
            mean: samples.iter().sum::<f64>() / n as f64,
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: samples[n - 1],
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Latency {
    /// Round trip through the devcloud with the stub gateway instead of tetherd.
    pub baseline: Dist,
    /// The same with commands 25 ms apart, like the lone row.
    pub baseline_lone: Dist,
    pub rows: Vec<LatencyRow>,
}

#[derive(Debug, Serialize)]
pub struct LatencyRow {
    pub label: String,
    pub result_linger: String,
    pub sync: String,
    /// Pause between one result and the next enqueue (0: back to back).
    pub gap_ms: u64,
    /// Enqueue at the cloud → result stored at the cloud.
    pub rtt: Dist,
    /// Enqueue → the appliance has the command.
    pub down: Dist,
    /// The appliance answered → result stored at the cloud.
    pub up: Dist,
    /// `duration_ms` of the results: the gateway's own clock, receipt → answer (whole ms).
    pub in_gateway: Dist,
    /// `rtt.p50` minus the p50 of the baseline run the same way (back to back or spaced):
    /// what tetherd, two MQTT hops and the appliance add over the stub gateway.
    pub added_over_stub_p50: f64,
    pub polls_per_command: f64,
    pub flushes_per_command: f64,
    /// Context switches of tetherd's threads per command (each is a thread going to
    /// sleep or being preempted: a measure of hand-offs between threads).
    pub switches_per_command: f64,
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub sync: String,
    pub appliances: usize,
    pub commands: usize,
    /// Results that were not `ok` (should be 0).
    pub not_ok: usize,
    /// Bulk enqueue → last result stored.
    pub seconds: f64,
    pub commands_per_s: f64,
    /// Rate between the 10th and the 90th percentile of completion (ramp-up and tail off).
    pub steady_commands_per_s: f64,
    /// Longest time (ms) in which no result was stored: a stall shows here.
    pub longest_gap_ms: f64,
    /// Enqueue → stored per command; a burst queues, so this is mostly position / rate.
    pub burst: Dist,
    /// `duration_ms` (receipt at the gateway → answer), including the wait in the
    /// appliance's queue inside the gateway.
    pub in_gateway: Dist,
    pub polls: u64,
    pub flushes: u64,
}

#[derive(Debug, Serialize)]
pub struct Footprint {
    pub tetherd_env: Vec<String>,
    pub steps: Vec<FootprintStep>,
    pub binaries: Vec<BinarySize>,
}

#[derive(Debug, Serialize)]
pub struct FootprintStep {
    pub appliances_configured: usize,
    pub appliances_connected: usize,
    #[serde(flatten)]
    pub memory: Memory,
}

#[derive(Debug, Serialize)]
pub struct Idle {
    pub seconds: f64,
    pub appliances: usize,
    pub keep_alive_s: u64,
    /// Counted at the devcloud from before tetherd started to the end of the window.
    pub connections: u64,
    pub tls_handshakes: u64,
    pub connections_in_window: u64,
    pub tls_handshakes_in_window: u64,
    pub polls_in_window: u64,
    pub requests_in_window: u64,
    pub bytes_in_window: u64,
    pub bytes_per_hour: f64,
    pub cpu_seconds: f64,
    pub cpu_percent_of_core: f64,
    pub context_switches: u64,
    pub wakeups_per_s: f64,
    pub threads: u64,
}

#[derive(Debug, Serialize)]
pub struct JournalRow {
    pub sync: String,
    pub writers: usize,
    pub results: usize,
    pub results_per_s: f64,
}

/// Bytes on the cloud link per encoding (`wire`): TLS records and HTTP/2 frames as the
/// devcloud counts them, and with TCP/IP headers estimated (`tcp_ip_header` per record,
/// and as much again for its ACK).
#[derive(Debug, Serialize)]
pub struct Wire {
    pub rows: Vec<WireRow>,
    /// Body bytes of a poll carrying 10 results and 10 events.
    pub poll_10_results_10_events_json: usize,
    pub poll_10_results_10_events_protobuf: usize,
    /// CPU to encode and decode one round trip's four bodies, in this process.
    pub codec_us_per_round_trip_json: f64,
    pub codec_us_per_round_trip_protobuf: f64,
    pub tcp_ip_header: f64,
}

#[derive(Debug, Serialize)]
pub struct WireRow {
    pub encoding: String,
    pub idle_cycle_bytes: f64,
    pub idle_cycle_with_tcp_ip: f64,
    pub round_trip_bytes: f64,
    pub round_trip_with_tcp_ip: f64,
    /// One PING and its ACK (not measured in smoke runs).
    pub ping_bytes: Option<f64>,
    pub rtt: Dist,
    /// Enqueued at the cloud to received by the appliance; answered to stored.
    pub down: Dist,
    pub up: Dist,
    pub idle_hour_wait3600_ping20: Option<f64>,
    pub idle_hour_wait3600_ping20_with_tcp_ip: Option<f64>,
    pub idle_hour_wait3600_ping300: Option<f64>,
    pub idle_hour_wait3600_ping300_with_tcp_ip: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

impl Report {
    /// Holds the figures against the project's targets (for a 2-core x86 machine).
    pub fn check_targets(&mut self) {
        let mut t = Vec::new();
        let mut add = |what: &str, target: &str, measured: String, met: bool| {
            t.push(Target {
                what: what.to_owned(),
                target: target.to_owned(),
                measured,
                met,
            });
        };
        if let Some(l) = &self.latency {
            // The linger row measures an opt-in trade (fewer requests, later results).
            for row in l.rows.iter().filter(|r| r.result_linger == "0s") {
                add(
                    &format!("round trip, {}", row.label),
                    "p50 <= 1 ms, p99 <= 5 ms",
                    format!("p50 {:.2} ms, p99 {:.2} ms", row.rtt.p50, row.rtt.p99),
                    row.rtt.p50 <= 1.0 && row.rtt.p99 <= 5.0,
                );
            }
        }
        if let Some(w) = &self.wire {
            let (json, pb) = (
                w.poll_10_results_10_events_json as f64,
                w.poll_10_results_10_events_protobuf as f64,
            );
            add(
                "poll with 10 results and 10 events, protobuf against JSON",
                ">= 40 % smaller",
                format!(
                    "{pb:.0} bytes against {json:.0} ({:.0} % smaller)",
                    100.0 * (1.0 - pb / json)
                ),
                pb <= 0.6 * json,
            );
            if let Some(hour) = w
                .rows
                .iter()
                .find(|r| r.encoding == "protobuf")
                .and_then(|r| r.idle_hour_wait3600_ping300_with_tcp_ip)
            {
                add(
                    "idle hour, protobuf, wait_s 3600, ping_s 300, TCP/IP included",
                    "<= 5 KB",
                    format!("{:.0} bytes", hour),
                    hour <= 5000.0,
                );
            }
            let by = |e: &str| w.rows.iter().find(|r| r.encoding == e);
            if let (Some(j), Some(p)) = (by("json"), by("protobuf")) {
                add(
                    "round trip p50, protobuf against JSON",
                    "no worse",
                    format!("{:.2} ms against {:.2} ms", p.rtt.p50, j.rtt.p50),
                    // Within the noise of one run on a shared machine.
                    p.rtt.p50 <= j.rtt.p50 * 1.1,
                );
            }
        }
        for tp in &self.throughput {
            add(
                &format!("pipelined, sync {}", tp.sync),
                ">= 5000 commands/s",
                format!(
                    "{:.0} commands/s overall ({:.0}/s steady, longest stall {:.0} ms)",
                    tp.commands_per_s, tp.steady_commands_per_s, tp.longest_gap_ms
                ),
                tp.commands_per_s >= 5000.0,
            );
        }
        if let Some(f) = &self.footprint {
            for s in &f.steps {
                let limit = match s.appliances_connected {
                    100 => 10 * 1024,
                    1000 => 25 * 1024,
                    _ => continue,
                };
                add(
                    &format!("RSS idle, {} appliances", s.appliances_connected),
                    &format!("<= {} MB", limit / 1024),
                    format!("{:.1} MB", s.memory.vm_rss_kib as f64 / 1024.0),
                    s.memory.vm_rss_kib <= limit,
                );
            }
        }
        if let Some(i) = &self.idle {
            add(
                "idle connections / handshakes",
                "exactly 1 per idle hour",
                format!(
                    "{} / {} (in the {:.0} s window: {} / {})",
                    i.connections,
                    i.tls_handshakes,
                    i.seconds,
                    i.connections_in_window,
                    i.tls_handshakes_in_window
                ),
                i.connections == 1 && i.tls_handshakes == 1,
            );
            add(
                "idle CPU",
                "< 0.1 % of a core",
                format!("{:.3} %", i.cpu_percent_of_core),
                i.cpu_percent_of_core < 0.1,
            );
        }
        self.targets = t;
    }
}
