//! Soak: steady commands with faults injected at random on both sides, then a check that
//! nothing was lost or run twice and that the daemon's memory, file descriptors and
//! threads show no upward trend.
//!
//! Short in CI (`TETHER_SOAK_SECS`, default 20). The long run:
//! `TETHER_SOAK_SECS=1800 cargo test --release --test soak -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use rumqttc::QoS;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: u64,
    rss_kib: u64,
    /// Of `rss_kib`: the heap and other private memory, and mapped files (the binary, the
    /// journal's shared-memory index).
    anon_kib: u64,
    file_kib: u64,
    fds: usize,
    threads: u64,
    /// Live tokio tasks, from the daemon's latest STATUS line.
    tasks: u64,
}

fn sample(pid: u32, start: Instant, notes: &Lines) -> Sample {
    let [rss_kib, anon_kib, file_kib, shmem_kib, threads] = proc_status(
        pid,
        ["VmRSS:", "RssAnon:", "RssFile:", "RssShmem:", "Threads:"],
    );
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let tasks = notes
        .all()
        .iter()
        .rev()
        .find_map(|datagram| {
            let status = datagram.lines().find_map(|l| l.strip_prefix("STATUS="))?;
            let head = status.strip_suffix(" tasks")?;
            head.rsplit(' ').next()?.parse().ok()
        })
        .unwrap_or(0);
    Sample {
        at_s: start.elapsed().as_secs(),
        rss_kib,
        anon_kib,
        file_kib: file_kib + shmem_kib,
        fds,
        threads,
        tasks,
    }
}

async fn fault(cloud: &DevCloud, f: Value) {
    let url = format!("http://{}/admin/faults", cloud.admin);
    let resp = cloud
        .http
        .post(url)
        .body(f.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_random_faults_loses_nothing_and_stays_flat() {
    let secs: u64 = std::env::var("TETHER_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = TempDir::new("soak");
    let cloud = DevCloud::start(dir.path(), &["--wait-s", "5"]);
    let names: Vec<String> = (0..8).map(|i| format!("soak-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let extra = "[state]\nsync = \"normal\"\n";
    let cfg = config(dir.path(), &cloud, &refs, extra);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "backoff_max = \"2s\"\n",
        "backoff_max = \"2s\"\nrequest_timeout = \"3s\"\n",
    );
    std::fs::write(&cfg, text).unwrap();
    // The daemon reports its live tasks on the STATUS line of systemd's notify protocol.
    let sock = dir.path().join("notify.sock");
    let notes = Lines::from_datagrams(&sock);
    let daemon = Tetherd::start_with_env(&cfg, &[("NOTIFY_SOCKET", sock.to_str().unwrap())]);
    let mut apps = Vec::new();
    for n in &names {
        apps.push(Some(
            Appliance::connect(daemon.mqtt, n, Behaviour::Echo).await,
        ));
    }
    let start = Instant::now();
    let mut sent = Vec::new();
    let mut received: HashMap<String, usize> = HashMap::new();
    let mut samples = vec![sample(daemon.pid(), start, &notes)];
    let mut faults_done: HashMap<&str, usize> = HashMap::new();
    let mut n = 0usize;
    while start.elapsed() < Duration::from_secs(secs) {
        let batch: Vec<Value> = (n..n + 10)
            .map(|i| json!({"target": names[i % names.len()], "payload": {"n": i}, "timeout_ms": 5000}))
            .collect();
        sent.extend(cloud.enqueue_many(batch).await);
        n += 10;
        // About one fault every second, cloud side or appliance side.
        if fastrand::u8(..4) == 0 {
            let which = fastrand::usize(..7);
            let what = match which {
                0 => {
                    fault(
                        &cloud,
                        json!({"mode": "status", "status": 503, "retry_after": "1", "count": 2}),
                    )
                    .await;
                    "503"
                }
                1 => {
                    fault(&cloud, json!({"mode": "reset", "count": 1})).await;
                    "reset"
                }
                2 => {
                    fault(&cloud, json!({"mode": "goaway"})).await;
                    "goaway"
                }
                3 => {
                    fault(&cloud, json!({"mode": "malformed", "count": 1})).await;
                    "malformed response"
                }
                4 => {
                    fault(&cloud, json!({"mode": "status", "status": 500, "count": 3})).await;
                    "500"
                }
                5 => {
                    // An appliance leaves and a fresh client comes back.
                    let i = fastrand::usize(..apps.len());
                    if let Some(mut a) = apps[i].take() {
                        for (id, _) in a.drain() {
                            *received.entry(id).or_default() += 1;
                        }
                        a.leave().await;
                    }
                    apps[i] =
                        Some(Appliance::connect(daemon.mqtt, &names[i], Behaviour::Echo).await);
                    "appliance reconnect"
                }
                _ => {
                    let i = fastrand::usize(..apps.len());
                    if let Some(a) = &apps[i] {
                        let topic = format!("tether/{}/result", names[i]);
                        a.client
                            .publish(topic, QoS::AtMostOnce, false, "garbage")
                            .await
                            .unwrap();
                    }
                    "malformed result"
                }
            };
            *faults_done.entry(what).or_default() += 1;
        }
        if samples
            .last()
            .is_none_or(|s| s.at_s + 2 <= start.elapsed().as_secs())
        {
            samples.push(sample(daemon.pid(), start, &notes));
        }
        // The load's pacing, not synchronisation.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    fault(&cloud, json!({"mode": "none"})).await;
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for id in &sent {
        let r = cloud.result(id).await["result"].clone();
        *statuses
            .entry(r["status"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    samples.push(sample(daemon.pid(), start, &notes));
    let stored = cloud.results().await;
    assert_eq!(stored.len(), sent.len(), "one stored result per command");
    let sent_ids: HashSet<&String> = sent.iter().collect();
    assert!(
        stored
            .iter()
            .all(|r| sent_ids.contains(&r["result"]["command_id"].as_str().unwrap().to_owned()))
    );
    for a in apps.iter_mut().flatten() {
        for (id, _) in a.drain() {
            *received.entry(id).or_default() += 1;
        }
    }
    let twice: Vec<_> = received.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "commands dispatched twice: {twice:?}");
    eprintln!(
        "soak {secs}s: {} commands, statuses {statuses:?}, faults {faults_done:?}",
        sent.len()
    );
    eprintln!("samples (s, VmRSS KiB = anon + file/shmem, fds, threads, tasks):");
    for s in &samples {
        eprintln!(
            "  {:>5} {:>8} = {:>8} + {:>6} {:>4} {:>3} {:>5}",
            s.at_s, s.rss_kib, s.anon_kib, s.file_kib, s.fds, s.threads, s.tasks
        );
    }
    // No upward trend: the last third against the second third (the first is warm-up).
    let third = samples.len() / 3;
    if third >= 1 {
        let peak = |s: &[Sample]| {
            (
                s.iter().map(|x| x.rss_kib).max().unwrap_or(0),
                s.iter().map(|x| x.fds).max().unwrap_or(0),
                s.iter().map(|x| x.threads).max().unwrap_or(0),
                s.iter().map(|x| x.tasks).max().unwrap_or(0),
            )
        };
        let (rss_mid, fds_mid, thr_mid, tasks_mid) = peak(&samples[third..2 * third]);
        let (rss_end, fds_end, thr_end, tasks_end) = peak(&samples[2 * third..]);
        assert!(
            rss_end <= rss_mid + rss_mid / 4 + 2048,
            "RSS grew: {rss_mid} -> {rss_end} KiB"
        );
        assert!(
            fds_end <= fds_mid + 8,
            "file descriptors grew: {fds_mid} -> {fds_end}"
        );
        assert!(
            thr_end <= thr_mid + 4,
            "threads grew: {thr_mid} -> {thr_end}"
        );
        // Tasks follow the load (a lane's worker per busy appliance, a few per request),
        // within a margin; a leak of one per command or per fault would pass it quickly.
        assert!(
            tasks_end <= tasks_mid + tasks_mid / 2 + 16,
            "tasks grew: {tasks_mid} -> {tasks_end}"
        );
        assert!(
            samples.iter().any(|s| s.tasks > 0),
            "no STATUS line with a task count"
        );
    }
}
