//! End to end: the devcloud over TLS + HTTP/2, the real `tetherd`, rumqttc appliances.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn one_command_round_trip() {
    let dir = TempDir::new("one");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["lamp-1"], "");
    let daemon = Tetherd::start(&cfg);
    let mut lamp = Appliance::connect(daemon.mqtt, "lamp-1", Behaviour::Echo).await;

    let id = cloud
        .enqueue(json!({"target": "lamp-1", "payload": {"power": "on"}}))
        .await;
    let stored = cloud.result(&id).await;
    let r = &stored["result"];
    assert_eq!(r["status"], "ok", "{stored}");
    assert_eq!(r["payload"]["echo"], json!({"power": "on"}));
    assert_eq!(r["payload"]["by"], "lamp-1");
    assert!(r.get("items").is_none(), "single target: no items: {r}");
    assert_eq!(stored["deliveries"], 1);
    // The appliance got the cloud's command id, so it can deduplicate too.
    assert_eq!(lamp.next_command().await.0, id);
    daemon.log.wait_for(&format!("COMMAND_ID={id}"));
}

#[tokio::test]
async fn two_hundred_commands_over_ten_appliances_answered_exactly_once() {
    let dir = TempDir::new("load");
    let cloud = DevCloud::start(dir.path(), &[]);
    let ids: Vec<String> = (0..10).map(|i| format!("dev-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let cfg = config(dir.path(), &cloud, &refs, "");
    let daemon = Tetherd::start(&cfg);
    let mut apps = Vec::new();
    for id in &ids {
        apps.push(Appliance::connect(daemon.mqtt, id, Behaviour::Echo).await);
    }
    let cmds = (0..200)
        .map(|n| json!({"target": ids[n % 10], "payload": {"n": n}}))
        .collect();
    let cmd_ids = cloud.enqueue_many(cmds).await;
    assert_eq!(cmd_ids.len(), 200);
    for id in &cmd_ids {
        assert_eq!(cloud.result(id).await["result"]["status"], "ok");
    }
    assert_each_stored_once(&cloud, 200).await;
    // Each appliance received each of its commands exactly once, in order.
    assert_received_in_order(&mut apps, 200);
}

#[tokio::test]
async fn per_appliance_order_is_kept_one_command_at_a_time() {
    let dir = TempDir::new("order");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["lock-1"], "");
    let daemon = Tetherd::start(&cfg);
    let mut lock = Appliance::connect(daemon.mqtt, "lock-1", Behaviour::Manual).await;
    let cmds = (0..5)
        .map(|n| json!({"target": "lock-1", "payload": {"step": n}}))
        .collect();
    let ids = cloud.enqueue_many(cmds).await;
    for (n, id) in ids.iter().enumerate() {
        let (got, payload) = lock.next_command().await;
        assert_eq!(&got, id);
        assert_eq!(payload["step"], n);
        // The next command is not sent before this one is answered.
        assert!(lock.received.try_recv().is_err(), "two commands in flight");
        lock.answer(&got, true, json!({"step": n})).await;
    }
    for id in &ids {
        assert_eq!(cloud.result(id).await["result"]["status"], "ok");
    }
}

#[tokio::test]
async fn group_with_one_offline_member_is_partial() {
    let dir = TempDir::new("group");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(
        dir.path(),
        &cloud,
        &["lamp-1", "lamp-2", "lamp-3"],
        "[groups]\nlights = [\"lamp-1\", \"lamp-2\", \"lamp-3\"]\n",
    );
    let daemon = Tetherd::start(&cfg);
    let _l1 = Appliance::connect(daemon.mqtt, "lamp-1", Behaviour::Echo).await;
    let _l2 = Appliance::connect(daemon.mqtt, "lamp-2", Behaviour::Echo).await;
    // lamp-3 never connects.
    let id = cloud
        .enqueue(
            json!({"target": "group:lights", "payload": {"power": "off"}, "timeout_ms": 20000}),
        )
        .await;
    let r = cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "partial", "{r}");
    let items = item_statuses(&r);
    assert_eq!(items["lamp-1"], "ok");
    assert_eq!(items["lamp-2"], "ok");
    // Unreachable at once, not after the 20 s timeout.
    assert_eq!(items["lamp-3"], "unreachable");
    assert!(r["duration_ms"].as_u64().unwrap() < 10_000, "{r}");

    // A list target behaves the same way.
    let id = cloud
        .enqueue(json!({"target": ["lamp-1", "lamp-2"], "payload": {}}))
        .await;
    let r = cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "ok");
    assert_eq!(r["items"].as_array().unwrap().len(), 2);
}

/// During `mqtt.startup_grace` a command for an appliance that has not connected yet waits
/// for it, but never past its TTL: it is `expired`, not sent late (nor `unreachable`).
#[tokio::test]
async fn the_startup_grace_never_carries_a_command_past_its_ttl() {
    let dir = TempDir::new("grace-ttl");
    let cloud = DevCloud::start(dir.path(), &[]);
    let mqtt = "listen = \"127.0.0.1:0\"\nstartup_grace = \"60s\"\n";
    let cfg = config_with_mqtt(dir.path(), &cloud, &["late-1"], mqtt, "");
    let _daemon = Tetherd::start(&cfg);
    let id = cloud
        .enqueue(json!({"target": "late-1", "ttl_ms": 300, "timeout_ms": 20000}))
        .await;
    let r = cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "expired", "{r}");
}

#[tokio::test]
async fn expired_commands_are_never_dispatched() {
    let dir = TempDir::new("ttl");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["slow-1"], "");
    let daemon = Tetherd::start(&cfg);
    let mut slow = Appliance::connect(daemon.mqtt, "slow-1", Behaviour::Silent).await;
    let zero = cloud
        .enqueue(json!({"target": "slow-1", "payload": "zero", "ttl_ms": 0}))
        .await;
    assert_eq!(cloud.result(&zero).await["result"]["status"], "expired");
    // The first command occupies the appliance for its whole 3 s timeout; the second
    // arrives meanwhile with a 50 ms TTL, which runs out while it waits in the queue.
    let first = cloud
        .enqueue(json!({"target": "slow-1", "payload": "first", "timeout_ms": 3000}))
        .await;
    let (got, _) = slow.next_command().await;
    assert_eq!(got, first);
    let second = cloud
        .enqueue(json!({"target": "slow-1", "payload": "second", "ttl_ms": 50}))
        .await;
    assert_eq!(cloud.result(&first).await["result"]["status"], "timeout");
    let r = cloud.result(&second).await["result"].clone();
    assert_eq!(r["status"], "expired", "{r}");
    assert!(
        slow.received.try_recv().is_err(),
        "expired command reached the appliance"
    );
    daemon.log.wait_async(&format!("COMMAND_ID={second}")).await;
}

#[tokio::test]
async fn unknown_target_and_malformed_commands_are_rejected() {
    let dir = TempDir::new("reject");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["lamp-1"], "");
    let daemon = Tetherd::start(&cfg);
    let mut lamp = Appliance::connect(daemon.mqtt, "lamp-1", Behaviour::Echo).await;
    let unknown = cloud
        .enqueue(json!({"target": "toaster", "payload": {}}))
        .await;
    let group = cloud
        .enqueue(json!({"target": "group:nope", "payload": {}}))
        .await;
    let mixed = cloud
        .enqueue(json!({"target": ["lamp-1", "toaster"], "payload": {}}))
        .await;
    let bad_timeout = cloud
        .enqueue(json!({"target": "lamp-1", "timeout_ms": 0}))
        .await;
    let good = cloud
        .enqueue(json!({"target": "lamp-1", "payload": 1}))
        .await;
    for id in [&unknown, &group, &mixed, &bad_timeout] {
        let r = cloud.result(id).await["result"].clone();
        assert_eq!(r["status"], "rejected", "{id}: {r}");
        assert!(r["error"].as_str().unwrap().len() > 5, "{r}");
    }
    assert!(
        cloud.result(&unknown).await["result"]["error"]
            .as_str()
            .unwrap()
            .contains("toaster")
    );
    assert_eq!(cloud.result(&good).await["result"]["status"], "ok");
    // Only the good command reached the appliance.
    assert_eq!(lamp.next_command().await.0, good);
    assert!(lamp.received.try_recv().is_err());
}

#[tokio::test]
async fn silent_appliance_times_out() {
    let dir = TempDir::new("timeout");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["mute-1"], "");
    let daemon = Tetherd::start(&cfg);
    let mut mute = Appliance::connect(daemon.mqtt, "mute-1", Behaviour::Silent).await;
    let id = cloud
        .enqueue(json!({"target": "mute-1", "timeout_ms": 300}))
        .await;
    let r = cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "timeout", "{r}");
    assert_eq!(mute.next_command().await.0, id);
    // A late answer is dropped and counted, not mistaken for another command's result.
    mute.answer(&id, true, json!("late")).await;
    daemon
        .log
        .wait_async("result for a command that is not waiting")
        .await;
    assert_eq!(cloud.result(&id).await["deliveries"], 1);
}
