//! The cloud link: one connection for everything, early flush while a poll is held, and
//! recovery when the cloud dies and comes back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_result_finishing_during_a_held_poll_is_flushed_on_the_same_connection() {
    let dir = TempDir::new("linger");
    let cloud = DevCloud::start(dir.path(), &["--wait-s", "30"]);
    let cfg = config(dir.path(), &cloud, &["valve"], "");
    let daemon = Tetherd::start(&cfg);
    let mut valve = Appliance::connect(daemon.mqtt, "valve", Behaviour::Manual).await;
    flush_rounds_during_held_polls(&cloud, &mut valve, 3).await;
    let stats = cloud.stats().await;
    assert!(stats["results_posts"].as_u64().unwrap() >= 3, "{stats}");
    assert_eq!(stats["connections"], 1, "{stats}");
    assert_eq!(stats["tls_handshakes"], 1, "{stats}");
    assert_eq!(stats["requests_http1"], 0, "{stats}");
    assert!(stats["requests_http2"].as_u64().unwrap() >= 6, "{stats}");
}

#[tokio::test]
async fn devcloud_killed_and_restarted_mid_run_loses_nothing() {
    let dir = TempDir::new("restart");
    let state = dir.path().join("devcloud-state.json");
    let mut cloud = DevCloud::start(dir.path(), &["--state", state.to_str().unwrap()]);
    let names = ["a-1", "a-2", "a-3"];
    let cfg = config(dir.path(), &cloud, &names, "");
    let daemon = Tetherd::start(&cfg);
    let mut apps = Vec::new();
    for n in names {
        apps.push(Appliance::connect(daemon.mqtt, n, Behaviour::Manual).await);
    }
    let batch = |from: usize| -> Vec<serde_json::Value> {
        (from..from + 20)
            .map(|n| json!({"target": names[n % 3], "payload": {"n": n}, "timeout_ms": 60000}))
            .collect()
    };
    // The appliances answer by hand, so the test decides which results exist while the
    // cloud is down. Every command id any appliance received lands in `seen`.
    let mut seen = HashSet::new();
    let mut ids = cloud.enqueue_many(batch(0)).await;
    answer_batch(&mut apps, 0, &mut seen).await;
    for id in &ids {
        cloud.result(id).await;
    }
    // Commands running when the cloud dies: each appliance holds its first one (a lane
    // runs one command at a time); every result of this batch is made while it is down.
    ids.extend(cloud.enqueue_many(batch(20)).await);
    let mut running = Vec::new();
    for app in &mut apps {
        running.push(app.next_command().await);
    }
    cloud.kill();
    // Down: the held poll breaks, or the next request finds nobody listening.
    daemon.log.wait_async("cloud request failed").await;
    for (i, (app, (cid, payload))) in apps.iter_mut().zip(running).enumerate() {
        assert!(seen.insert(cid.clone()), "{cid} dispatched twice");
        app.answer(&cid, true, json!({"echo": payload})).await;
        let rest = (20..40).filter(|n| n % 3 == i).count() - 1;
        for cid in std::iter::once(cid).chain(answer(app, rest, &mut seen).await) {
            daemon
                .log
                .wait_async(&format!("COMMAND_ID={cid} APPLIANCE"))
                .await;
        }
    }
    cloud.restart();
    ids.extend(cloud.enqueue_many(batch(40)).await);
    answer_batch(&mut apps, 40, &mut seen).await;
    for id in &ids {
        assert_eq!(cloud.result(id).await["result"]["status"], "ok", "{id}");
    }
    let stored = by_id(&cloud.results().await);
    assert_eq!(stored.len(), 60);
    // No appliance ran any command twice, and none got a command it was not sent.
    for app in &mut apps {
        if let Some((cid, _)) = app.drain().pop() {
            panic!("{cid} dispatched again");
        }
    }
    assert_eq!(seen.len(), 60);
    let stats = cloud.stats().await;
    // After the restart the daemon reconnected: the new process saw exactly one connection.
    assert_eq!(stats["connections"], 1, "{stats}");
    assert_eq!(stats["tls_handshakes"], 1, "{stats}");
}

/// Answers, with an echo, the commands numbered `from..from + 20` (spread over the
/// appliances by number), each as it arrives.
async fn answer_batch(apps: &mut [Appliance], from: usize, seen: &mut HashSet<String>) {
    for (i, app) in apps.iter_mut().enumerate() {
        let count = (from..from + 20).filter(|n| n % 3 == i).count();
        answer(app, count, seen).await;
    }
}

/// Answers the appliance's next `count` commands with an echo, each as it arrives (the
/// daemon sends an appliance its next command only once the last one finished).
async fn answer(app: &mut Appliance, count: usize, seen: &mut HashSet<String>) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let (cid, payload) = app.next_command().await;
        assert!(seen.insert(cid.clone()), "{cid} dispatched twice");
        app.answer(&cid, true, json!({"echo": payload})).await;
        ids.push(cid);
    }
    ids
}
