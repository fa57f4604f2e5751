//! BLE failures, each with its result status: slow appliance -> `timeout`, cannot connect ->
//! `unreachable` (a transient failure is retried), link dropped after the write ->
//! `interrupted` (and never written again), write refused -> `error`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

#[path = "common/ble_rig.rs"]
mod ble_rig;
#[path = "common/bluez.rs"]
mod bluez;
mod common;

use ble_rig::{BleRig, ble_appliance, hex};
use common::eventually;
use serde_json::json;

const SLOW: &str = "AA:BB:CC:DD:EE:21";
const FLAKY: &str = "AA:BB:CC:DD:EE:22";
const DEAD: &str = "AA:BB:CC:DD:EE:23";
const DROPS: &str = "AA:BB:CC:DD:EE:24";
const REFUSES: &str = "AA:BB:CC:DD:EE:25";
const ODD: &str = "AA:BB:CC:DD:EE:26";
const ABSENT: &str = "AA:BB:CC:DD:EE:27";
const SLEEPY: &str = "AA:BB:CC:DD:EE:28";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_appliance_times_out_and_its_late_answer_is_not_taken_for_the_next() {
    let rig = BleRig::start(
        "ble-slow",
        &[],
        &ble_appliance("slow", SLOW, "encoding = \"utf8\"\n"),
        |fake| {
            BleRig::add_device(fake, SLOW, json!({"mode": "echo", "delay_ms": 0}));
        },
    );
    // The link is set up first, so the 400 ms below time only the answer, not a
    // connection to a fake that a busy machine makes slow.
    let r = rig
        .run(json!({"target": "slow", "payload": "warm-up", "timeout_ms": 5000}))
        .await;
    assert_eq!(r["status"], "ok", "{r}");
    rig.fake.set_behaviour(SLOW, json!({"delay_ms": 1500}));
    let r = rig
        .run(json!({"target": "slow", "payload": "first", "timeout_ms": 400}))
        .await;
    assert_eq!(r["status"], "timeout", "{r}");
    // The late answer arrives on the kept link after the timeout...
    eventually("the late notification", || async {
        (rig.stats().await["notifications"] == 2).then_some(())
    })
    .await;
    rig.fake.set_behaviour(SLOW, json!({"delay_ms": 0}));
    // ...and the next command gets its own answer, not that one.
    let r = rig
        .run(json!({"target": "slow", "payload": "second", "timeout_ms": 3000}))
        .await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"], "second", "{r}");
    assert_eq!(rig.stats().await["connects"][SLOW], 1, "the link was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_a_few_times_then_unreachable() {
    let extra = [
        ble_appliance("flaky", FLAKY, ""),
        ble_appliance("dead", DEAD, ""),
        ble_appliance("odd", ODD, ""),
        ble_appliance("absent", ABSENT, ""),
        "\n[ble]\nscan_timeout = \"1s\"\n".to_owned(),
    ]
    .concat();
    let rig = BleRig::start("ble-connect", &[], &extra, |fake| {
        BleRig::add_device(fake, FLAKY, json!({}));
        BleRig::add_device(fake, DEAD, json!({}));
        // The wrong GATT layout: the configured command characteristic is missing.
        fake.add_device(
            ODD,
            "odd",
            ble_rig::SERVICE,
            "7e7e00ff-0000-4000-8000-00000000beef",
            ble_rig::RESULT,
            json!({}),
        );
    });
    // One failed Connect: the retry succeeds, the command goes through.
    rig.fake.fail_connect(Some(FLAKY), 1);
    let r = rig
        .run(json!({"target": "flaky", "payload": {"n": 1}}))
        .await;
    assert_eq!(r["status"], "ok", "{r}");
    let stats = rig.stats().await;
    assert_eq!(stats["connect_attempts"][FLAKY], 2, "{stats}");
    assert_eq!(stats["connects"][FLAKY], 1, "{stats}");

    // Every Connect fails: a bounded number of attempts, then unreachable, nothing sent.
    rig.fake.fail_connect(Some(DEAD), 100);
    let r = rig
        .run(json!({"target": "dead", "payload": {"n": 2}, "timeout_ms": 10000}))
        .await;
    assert_eq!(r["status"], "unreachable", "{r}");
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains("3 attempt(s)") && error.contains("le-connection-abort-by-local"),
        "{r}"
    );
    let stats = rig.stats().await;
    assert_eq!(stats["connect_attempts"][DEAD], 3, "{stats}");
    assert!(rig.writes(DEAD).await.is_empty());

    // Connected, but the appliance lacks the configured characteristic: not retried.
    let r = rig.run(json!({"target": "odd", "payload": 1})).await;
    assert_eq!(r["status"], "unreachable", "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("no characteristic"),
        "{r}"
    );
    assert_eq!(rig.stats().await["connect_attempts"][ODD], 1);

    // Never seen by scanning: unreachable after ble.scan_timeout, not the command timeout.
    let started = std::time::Instant::now();
    let r = rig
        .run(json!({"target": "absent", "payload": 1, "timeout_ms": 20000}))
        .await;
    assert_eq!(r["status"], "unreachable", "{r}");
    assert!(r["error"].as_str().unwrap().contains("scan_timeout"), "{r}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    // Not connected any more: the failed links do not hold slots.
    let stats = rig.stats().await;
    assert_eq!(stats["connected"], json!([FLAKY]), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_dropped_after_the_write_is_interrupted_and_never_written_again() {
    let rig = BleRig::start(
        "ble-drop",
        &[],
        &ble_appliance("drops", DROPS, ""),
        |fake| {
            BleRig::add_device(fake, DROPS, json!({"drop_on_write": true}));
        },
    );
    let r = rig
        .run(json!({"target": "drops", "payload": {"unlock": true}, "timeout_ms": 5000}))
        .await;
    assert_eq!(r["status"], "interrupted", "{r}");
    assert_eq!(rig.writes(DROPS).await.len(), 1, "written exactly once");

    // The peripheral goes away while the answer is awaited (a silent appliance).
    rig.fake
        .set_behaviour(DROPS, json!({"drop_on_write": false, "mode": "silent"}));
    let id = rig
        .cloud
        .enqueue(json!({"target": "drops", "payload": {"n": 2}, "timeout_ms": 20000}))
        .await;
    rig.wait_fake(json!({"until": "writes", "address": DROPS, "count": 2}))
        .await;
    assert!(rig.fake.disconnect(DROPS));
    let started = std::time::Instant::now();
    let r = rig.cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "interrupted", "{r}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "not the timeout"
    );
    assert_eq!(rig.writes(DROPS).await.len(), 2);

    // The next command reconnects (and discovers services again) and goes through.
    rig.fake.set_behaviour(DROPS, json!({"mode": "echo"}));
    let r = rig
        .run(json!({"target": "drops", "payload": {"n": 3}}))
        .await;
    assert_eq!(r["status"], "ok", "{r}");
    let stats = rig.stats().await;
    assert_eq!(stats["connects"][DROPS], 3, "{stats}");
    assert_eq!(
        rig.writes(DROPS).await.len(),
        3,
        "no command was written twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_is_an_error() {
    let rig = BleRig::start(
        "ble-refuse",
        &[],
        &ble_appliance("refuses", REFUSES, "encoding = \"hex\"\n"),
        |fake| {
            BleRig::add_device(
                fake,
                REFUSES,
                json!({"write_error": "org.bluez.Error.NotPermitted"}),
            );
        },
    );
    let r = rig
        .run(json!({"target": "refuses", "payload": "0102"}))
        .await;
    assert_eq!(r["status"], "error", "{r}");
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains("write refused") && error.contains("NotPermitted"),
        "{r}"
    );
    assert_eq!(rig.writes(REFUSES).await, vec![hex(&[1, 2])], "tried once");
    // The link is fine: once the appliance accepts writes, the next command works on it.
    rig.fake
        .expect_ok(json!({"op": "set_behaviour", "address": REFUSES, "write_error": null}));
    let r = rig
        .run(json!({"target": "refuses", "payload": "0304"}))
        .await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"], "0304");
    assert_eq!(rig.stats().await["connects"][REFUSES], 1);
}

/// `offline = "queue"`: a command for an appliance that no scan finds waits until it
/// advertises, then goes out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queueing_appliance_gets_its_command_once_it_advertises() {
    let extra = [
        ble_appliance(
            "sleepy",
            SLEEPY,
            "encoding = \"utf8\"\noffline = \"queue\"\n",
        ),
        "\n[ble]\nscan_timeout = \"1s\"\n".to_owned(),
    ]
    .concat();
    let rig = BleRig::start("ble-away", &[], &extra, |_| {});
    let id = rig
        .cloud
        .enqueue(
            json!({"target": "sleepy", "payload": "wake", "ttl_ms": 120_000, "timeout_ms": 3000}),
        )
        .await;
    rig.daemon
        .log
        .wait_async("the command waits for the appliance")
        .await;
    assert!(rig.writes(SLEEPY).await.is_empty());
    BleRig::add_device(&rig.fake, SLEEPY, json!({}));
    let r = rig.cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"], "wake", "{r}");
    assert_eq!(rig.writes(SLEEPY).await, vec![hex(b"wake")]);
}
