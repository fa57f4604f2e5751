//! The cloud link: one connection for everything, early flush while a poll is held, and
//! recovery when the cloud dies and comes back.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_result_finishing_during_a_held_poll_is_flushed_on_the_same_connection() {
    let dir = TempDir::new("linger");
    let cloud = DevCloud::start(dir.path(), &["--wait-s", "30"]);
    let cfg = config(dir.path(), &cloud, &["valve"], "");
    let daemon = Tetherd::start(&cfg);
    let mut valve = Appliance::connect(daemon.mqtt, "valve", Behaviour::Manual).await;
    let polls = || async { cloud.stats().await["polls"].as_u64().unwrap() };
    eventually("the first poll", || async {
        (polls().await >= 1).then_some(())
    })
    .await;
    for round in 0..3 {
        let polls_before = polls().await;
        let id = cloud
            .enqueue(json!({"target": "valve", "payload": {"round": round}, "timeout_ms": 60000}))
            .await;
        let (got, _) = valve.next_command().await;
        assert_eq!(got, id);
        // The held poll returned the command and the daemon polled again at once; wait
        // until the devcloud holds that poll, so the result can only travel by early flush.
        eventually("the next poll to be held", || async {
            (polls().await > polls_before).then_some(())
        })
        .await;
        let started = Instant::now();
        valve.answer(&id, true, json!({"open": round})).await;
        let stored = cloud.result(&id).await;
        let took = started.elapsed();
        assert_eq!(stored["result"]["status"], "ok");
        // With a 30 s poll wait, anything near linger + RTT proves the early flush.
        assert!(took < Duration::from_secs(5), "result took {took:?}");
    }
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
        apps.push(Appliance::connect(daemon.mqtt, n, Behaviour::Echo).await);
    }
    let batch = |from: usize| -> Vec<serde_json::Value> {
        (from..from + 20)
            .map(|n| json!({"target": names[n % 3], "payload": {"n": n}}))
            .collect()
    };
    let mut ids = cloud.enqueue_many(batch(0)).await;
    for id in &ids {
        cloud.result(id).await;
    }
    // Commands in flight when the cloud dies.
    ids.extend(cloud.enqueue_many(batch(20)).await);
    cloud.restart();
    daemon.log.wait_async("cloud request failed").await;
    ids.extend(cloud.enqueue_many(batch(40)).await);
    for id in &ids {
        assert_eq!(cloud.result(id).await["result"]["status"], "ok", "{id}");
    }
    let stored = by_id(&cloud.results().await);
    assert_eq!(stored.len(), 60);
    // No appliance ran any command twice.
    let mut seen = HashSet::new();
    for app in &mut apps {
        while let Ok((cid, _)) = app.received.try_recv() {
            assert!(seen.insert(cid.clone()), "{cid} dispatched twice");
        }
    }
    assert_eq!(seen.len(), 60);
    let stats = cloud.stats().await;
    // After the restart the daemon reconnected: the new process saw exactly one connection.
    assert_eq!(stats["connections"], 1, "{stats}");
    assert_eq!(stats["tls_handshakes"], 1, "{stats}");
}
