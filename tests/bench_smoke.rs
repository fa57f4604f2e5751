//! Keeps `tether-bench` from rotting: runs it in `--smoke --json` mode against the debug
//! binaries and checks that every section is there with sane values. The figures
//! themselves are not judged (benchmarks print figures; tests do not pass or fail on
//! them, least of all on a shared machine).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The tool's own watchdog gives up well before this; it only guards against a hang.
const PATIENCE: Duration = Duration::from_secs(180);

fn positive(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x > 0.0, "{what} should be > 0, is {x}");
    x
}

#[test]
fn smoke_run_reports_every_section() {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether-bench"))
        .args(["--smoke", "--json"])
        .args(["--tetherd", env!("CARGO_BIN_EXE_tetherd")])
        .args(["--devcloud", env!("CARGO_BIN_EXE_tether-devcloud")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tether-bench");
    // Read both pipes on threads so neither can fill up and stall the bench.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tether-bench --smoke did not finish within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "tether-bench failed ({status}):\n{err}");
    let r: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}\nstderr:\n{err}"));

    assert!(!r["machine"]["cpu"].as_str().unwrap_or("").is_empty());
    positive(&r["machine"]["cores"], "machine.cores");

    let latency = &r["latency"];
    positive(&latency["baseline"]["p50"], "baseline p50");
    let rows = latency["rows"].as_array().expect("latency rows");
    assert!(rows.len() >= 3, "latency rows: {rows:?}");
    for row in rows {
        for field in ["p50", "p90", "p99", "max"] {
            positive(&row["rtt"][field], &format!("{} rtt {field}", row["label"]));
        }
        positive(&row["down"]["p50"], "down p50");
        positive(&row["up"]["p50"], "up p50");
    }

    let throughput = r["throughput"].as_array().expect("throughput rows");
    assert_eq!(throughput.len(), 2, "sync full and normal");
    for t in throughput {
        positive(&t["commands_per_s"], "commands_per_s");
        positive(&t["burst"]["p99"], "burst p99");
        assert_eq!(t["not_ok"], 0, "every pipelined command answered ok: {t}");
    }

    let steps = r["footprint"]["steps"].as_array().expect("footprint steps");
    assert!(!steps.is_empty());
    for s in steps {
        positive(&s["vm_rss_kib"], "vm_rss_kib");
        positive(&s["vm_hwm_kib"], "vm_hwm_kib");
    }
    positive(&r["footprint"]["binaries"][0]["bytes"], "binary size");

    let idle = &r["idle"];
    assert_eq!(idle["connections"], 1, "one TCP connection: {idle}");
    assert_eq!(idle["tls_handshakes"], 1, "one TLS handshake: {idle}");
    positive(&idle["seconds"], "idle seconds");
    assert!(idle["cpu_seconds"].as_f64().is_some_and(|c| c >= 0.0));

    let wire = &r["wire"];
    let rows = wire["rows"].as_array().expect("wire rows");
    assert_eq!(rows.len(), 2, "json and protobuf: {wire}");
    for row in rows {
        positive(&row["idle_cycle_bytes"], "idle cycle bytes");
        positive(&row["round_trip_bytes"], "round trip bytes");
        positive(&row["rtt"]["p50"], "wire rtt p50");
    }
    let (json, pb) = (
        wire["poll_10_results_10_events_json"].as_u64().unwrap(),
        wire["poll_10_results_10_events_protobuf"].as_u64().unwrap(),
    );
    assert!(pb > 0 && pb < json, "protobuf {pb} bytes, JSON {json}");

    let durability = r["durability"].as_array().expect("durability rows");
    assert_eq!(durability.len(), 4, "full/normal x 1/64 writers");
    for d in durability {
        positive(&d["results_per_s"], "results_per_s");
    }

    let targets = r["targets"].as_array().expect("targets");
    assert!(!targets.is_empty());
    eprintln!("tether-bench --smoke took {:?}", started.elapsed());
}
