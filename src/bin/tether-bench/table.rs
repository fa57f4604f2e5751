//! The human-readable form of a report: one table per section, then the targets.

use std::fmt::Write;

use crate::report::Report;

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let m = &r.machine;
    let _ = writeln!(
        o,
        "tether-bench {}{}",
        r.version,
        if r.smoke {
            " (smoke: tiny counts, figures only show that it runs)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "machine: {}, {} cores, {} MiB, kernel {}; load average {} at start, {} at end",
        m.cpu, m.cores, m.mem_total_mib, m.kernel, m.loadavg_start, m.loadavg_end
    );
    let _ = writeln!(o, "command: {}", r.command);

    if let Some(l) = &r.latency {
        let _ = writeln!(
            o,
            "\n1. Round trip, one command at a time: enqueue at the cloud -> result stored at the cloud (ms)"
        );
        let _ = writeln!(
            o,
            "{:<46} {:>5} {:>7} {:>7} {:>7} {:>7} | {:>6} {:>6} {:>6} {:>7} | {:>5} {:>7} {:>5}",
            "setting",
            "n",
            "p50",
            "p90",
            "p99",
            "max",
            "down",
            "up",
            "in-gw",
            "+stub",
            "polls",
            "flushes",
            "cswch"
        );
        for (label, b) in [
            ("baseline: stub gateway, no tetherd", &l.baseline),
            ("baseline: stub gateway, 25 ms apart", &l.baseline_lone),
        ] {
            let _ = writeln!(
                o,
                "{:<46} {:>5} {:>7.2} {:>7.2} {:>7.2} {:>7.2} |",
                label, b.n, b.p50, b.p90, b.p99, b.max
            );
        }
        for row in &l.rows {
            let d = &row.rtt;
            let _ = writeln!(
                o,
                "{:<46} {:>5} {:>7.2} {:>7.2} {:>7.2} {:>7.2} | {:>6.2} {:>6.2} {:>6.1} {:>7.2} | {:>5.2} {:>7.2} {:>5.1}",
                row.label,
                d.n,
                d.p50,
                d.p90,
                d.p99,
                d.max,
                row.down.p50,
                row.up.p50,
                row.in_gateway.p50,
                row.added_over_stub_p50,
                row.polls_per_command,
                row.flushes_per_command,
                row.switches_per_command
            );
        }
        let _ = writeln!(
            o,
            "  down/up/in-gw/+stub are p50s: down = enqueue -> appliance has it; up = appliance answered -> stored;\n  \
             in-gw = the result's duration_ms (gateway clock, whole ms); +stub = p50 minus the matching baseline's p50;\n  \
             polls, flushes = requests per command seen by the devcloud; cswch = tetherd context switches per command"
        );
    }

    if !r.throughput.is_empty() {
        let _ = writeln!(
            o,
            "\n2. Throughput: one bulk enqueue, pipelined over the appliances"
        );
        let _ = writeln!(
            o,
            "{:<7} {:>6} {:>8} {:>6} {:>8} {:>9} {:>9} {:>8} | {:>9} {:>9} | {:>8} {:>8} | {:>6} {:>7}",
            "sync",
            "appl.",
            "commands",
            "not ok",
            "seconds",
            "cmd/s",
            "steady/s",
            "stall ms",
            "burst p50",
            "burst p99",
            "gw p50",
            "gw p99",
            "polls",
            "flushes"
        );
        for t in &r.throughput {
            let _ = writeln!(
                o,
                "{:<7} {:>6} {:>8} {:>6} {:>8.2} {:>9.0} {:>9.0} {:>8.0} | {:>9.0} {:>9.0} | {:>8.0} {:>8.0} | {:>6} {:>7}",
                t.sync,
                t.appliances,
                t.commands,
                t.not_ok,
                t.seconds,
                t.commands_per_s,
                t.steady_commands_per_s,
                t.longest_gap_ms,
                t.burst.p50,
                t.burst.p99,
                t.in_gateway.p50,
                t.in_gateway.p99,
                t.polls,
                t.flushes
            );
        }
        let _ = writeln!(
            o,
            "  steady = rate between 10 % and 90 % of the results; stall = longest time with no result stored;\n  \
             burst = enqueue -> stored per command (ms; a burst queues, so ~ position / rate);\n  \
             gw = duration_ms inside the gateway (ms), including the wait in the appliance's queue"
        );
    }

    if let Some(f) = &r.footprint {
        let env = if f.tetherd_env.is_empty() {
            String::new()
        } else {
            format!(", tetherd env {}", f.tetherd_env.join(" "))
        };
        let _ = writeln!(o, "\n3. Footprint of tetherd, idle{env}");
        let _ = writeln!(
            o,
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "appliances connected", "VmRSS MB", "VmHWM MB", "anon MB", "file MB", "threads"
        );
        for s in &f.steps {
            let _ = writeln!(
                o,
                "{:<22} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8}",
                s.appliances_connected,
                mb(s.memory.vm_rss_kib),
                mb(s.memory.vm_hwm_kib),
                mb(s.memory.rss_anon_kib),
                mb(s.memory.rss_file_kib + s.memory.rss_shmem_kib),
                s.memory.threads
            );
        }
        for b in &f.binaries {
            let stripped = b.stripped_bytes.map_or("no strip for it".to_owned(), |s| {
                format!("{:.2} MB stripped", s as f64 / 1e6)
            });
            let _ = writeln!(
                o,
                "binary {} ({}): {:.2} MB, {stripped}",
                b.path,
                b.arch,
                b.bytes as f64 / 1e6
            );
        }
    }

    if let Some(i) = &r.idle {
        let _ = writeln!(
            o,
            "\n4. Idle cost over {:.0} s, {} appliances connected (MQTT keep-alive {} s)",
            i.seconds, i.appliances, i.keep_alive_s
        );
        let _ = writeln!(
            o,
            "TCP connections {} and TLS handshakes {} since start ({} / {} in the window)\n\
             polls {} and requests {} in the window; bytes on the wire {} ({:.0} per hour)\n\
             CPU {:.3} s = {:.4} % of a core; context switches {} = {:.2} wakeups/s; {} threads",
            i.connections,
            i.tls_handshakes,
            i.connections_in_window,
            i.tls_handshakes_in_window,
            i.polls_in_window,
            i.requests_in_window,
            i.bytes_in_window,
            i.bytes_per_hour,
            i.cpu_seconds,
            i.cpu_percent_of_core,
            i.context_switches,
            i.wakeups_per_s,
            i.threads
        );
    }

    if !r.durability.is_empty() {
        let _ = writeln!(
            o,
            "\n5. Durability: journal API in this process, results recorded per second"
        );
        let _ = writeln!(
            o,
            "{:<8} {:>8} {:>8} {:>12}",
            "sync", "writers", "results", "results/s"
        );
        for j in &r.durability {
            let _ = writeln!(
                o,
                "{:<8} {:>8} {:>8} {:>12.0}",
                j.sync, j.writers, j.results, j.results_per_s
            );
        }
        if r.throughput.len() > 1 {
            let _ = writeln!(
                o,
                "  end to end through tetherd: see section 2 (sync full vs normal)"
            );
        }
    }

    if let Some(w) = &r.wire {
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
        let _ = writeln!(
            o,
            "\n6. Cloud link bytes by encoding (TLS records + HTTP/2 frames; \"+tcp\": with {:.0} B TCP/IP per record and per ACK)",
            w.tcp_ip_header
        );
        let _ = writeln!(
            o,
            "{:<9} {:>11} {:>9} {:>11} {:>9} {:>7} {:>9} {:>12} {:>12} {:>13} {:>13}",
            "encoding",
            "idle cycle",
            "+tcp",
            "round trip",
            "+tcp",
            "PING",
            "rtt p50",
            "hour ping20",
            "+tcp",
            "hour ping300",
            "+tcp"
        );
        for row in &w.rows {
            let _ = writeln!(
                o,
                "{:<9} {:>11.0} {:>9.0} {:>11.0} {:>9.0} {:>7} {:>7.2}ms {:>12} {:>12} {:>13} {:>13}",
                row.encoding,
                row.idle_cycle_bytes,
                row.idle_cycle_with_tcp_ip,
                row.round_trip_bytes,
                row.round_trip_with_tcp_ip,
                opt(row.ping_bytes),
                row.rtt.p50,
                opt(row.idle_hour_wait3600_ping20),
                opt(row.idle_hour_wait3600_ping20_with_tcp_ip),
                opt(row.idle_hour_wait3600_ping300),
                opt(row.idle_hour_wait3600_ping300_with_tcp_ip),
            );
        }
        let _ = writeln!(
            o,
            "poll body with 10 results and 10 events: JSON {} bytes, protobuf {} bytes",
            w.poll_10_results_10_events_json, w.poll_10_results_10_events_protobuf
        );
        let _ = writeln!(
            o,
            "encoding + decoding one round trip's four bodies: JSON {:.1} us, protobuf {:.1} us",
            w.codec_us_per_round_trip_json, w.codec_us_per_round_trip_protobuf
        );
    }

    if !r.targets.is_empty() {
        let _ = writeln!(
            o,
            "\nTargets (2-core x86); figures from a shared machine are noisy"
        );
        for t in &r.targets {
            let _ = writeln!(
                o,
                "{:<6} {:<56} target {:<28} measured {}",
                if t.met { "met" } else { "MISSED" },
                t.what,
                t.target,
                t.measured
            );
        }
    }
    o
}
