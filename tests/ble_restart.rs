//! bluetoothd going away under the daemon: a graceful restart, a crash, no adapter at all
//! at start, and discovery that silently stops. The daemon carries on without a restart
//! of its own: later commands succeed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

#[path = "common/ble_rig.rs"]
mod ble_rig;
#[path = "common/bluez.rs"]
mod bluez;
mod common;

use ble_rig::{BleRig, ble_appliance};
use common::{Appliance, Behaviour, eventually};
use serde_json::{Value, json};

const LAMP: &str = "AA:BB:CC:DD:EE:41";
const LOCK: &str = "AA:BB:CC:DD:EE:42";

fn two_appliances() -> String {
    [
        ble_appliance("lamp", LAMP, ""),
        ble_appliance("lock", LOCK, ""),
    ]
    .concat()
}

fn setup(fake: &bluez::FakeBluez) {
    BleRig::add_device(fake, LAMP, json!({}));
    BleRig::add_device(fake, LOCK, json!({}));
}

async fn both_ok(rig: &BleRig, n: u64) {
    for target in ["lamp", "lock"] {
        let r = rig
            .run(json!({"target": target, "payload": {"n": n}, "timeout_ms": 10000}))
            .await;
        assert_eq!(r["status"], "ok", "{target} #{n}: {r}");
        assert_eq!(r["payload"], json!({"n": n}));
    }
}

/// Presence events for `appliance` at the devcloud, in order.
async fn presence(rig: &BleRig, appliance: &str) -> Vec<String> {
    rig.cloud
        .events()
        .await
        .iter()
        .filter(|e| e["appliance"] == appliance)
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .collect()
}

async fn restart(rig: &BleRig, crash: bool) {
    let op = json!({"op": "restart", "down_ms": 300, "crash": crash});
    let answer = rig.fake.control_async(op).await;
    assert_eq!(answer["ok"], json!(true), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_bluetoothd_restart_is_survived() {
    let rig = BleRig::start("ble-restart", &[], &two_appliances(), setup);
    both_ok(&rig, 1).await;
    restart(&rig, false).await;
    rig.daemon.log.wait_async("BLE adapter lost").await;
    both_ok(&rig, 2).await;
    let stats = rig.stats().await;
    assert_eq!(stats["restarts"], 1, "{stats}");
    // One link before the restart, one after (the fake's counters span restarts).
    assert_eq!(stats["connects"][LAMP], 2, "{stats}");
    assert_eq!(
        stats["writes"].as_array().unwrap().len(),
        4,
        "each command written once"
    );
    // Presence told the cloud: online, offline when the adapter went, online again.
    eventually("presence events", || async {
        (presence(&rig, "lamp").await == ["online", "offline", "online"]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bluetoothd_crash_is_survived() {
    let rig = BleRig::start("ble-crash", &[], &two_appliances(), setup);
    both_ok(&rig, 1).await;
    // A crash says nothing: no signal, the links and device objects just vanish. The kept
    // links are stale; the next commands find out, re-acquire, rediscover and reconnect.
    restart(&rig, true).await;
    both_ok(&rig, 2).await;
    both_ok(&rig, 3).await;
    let stats = rig.stats().await;
    assert_eq!(stats["restarts"], 1, "{stats}");
    assert_eq!(stats["connected"], json!([LAMP, LOCK]), "{stats}");
    // Each command was written exactly once in all that: 3 rounds, 2 appliances.
    let writes = stats["writes"].as_array().unwrap();
    assert_eq!(writes.len(), 6, "{stats}");
    // The stale links were noticed and replaced: one reconnect each.
    assert_eq!(stats["connects"][LAMP], 2, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_adapter_at_start_leaves_mqtt_working_and_ble_unreachable_until_it_appears() {
    let extra = format!(
        "{}\n[ble]\nscan_timeout = \"1s\"\n",
        ble_appliance("lamp", LAMP, "")
    );
    let rig = BleRig::start("ble-noadapter", &["mqtt-1"], &extra, |fake| {
        BleRig::add_device(fake, LAMP, json!({}));
        // bluetoothd is down when the daemon starts, and for a while after.
        let answer = fake
            .control(json!({"op": "restart", "down_ms": 8000, "crash": true, "answer": "down"}));
        assert_eq!(answer["ok"], json!(true), "{answer}");
    });
    let _mqtt = Appliance::connect(rig.daemon.mqtt, "mqtt-1", Behaviour::Echo).await;
    let r = rig.run(json!({"target": "mqtt-1", "payload": 1})).await;
    assert_eq!(r["status"], "ok", "the MQTT side works: {r}");
    let r = rig.run(json!({"target": "lamp", "payload": 2})).await;
    assert_eq!(r["status"], "unreachable", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("no Bluetooth adapter"),
        "{r}"
    );
    rig.daemon.log.wait_async("BLE adapter unavailable").await;
    let answer = rig
        .fake
        .control_async(json!({"op": "wait", "until": "up", "timeout_ms": 20000}))
        .await;
    assert_eq!(answer["ok"], json!(true), "{answer}");
    rig.daemon.log.wait_async("BLE adapter hci0").await;
    let r = rig.run(json!({"target": "lamp", "payload": 3})).await;
    assert_eq!(r["status"], "ok", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_that_silently_stopped_recovers_when_bluetoothd_restarts() {
    let extra = format!(
        "{}\n[ble]\nscan_timeout = \"1s\"\n",
        ble_appliance("late", LAMP, "")
    );
    let rig = BleRig::start("ble-stall", &[], &extra, |fake| {
        // Scanning runs (Discovering = true) but nothing new is ever seen.
        fake.discovery_stalls(true);
        BleRig::add_device(fake, LAMP, json!({}));
    });
    rig.wait_fake(json!({"until": "discovering"})).await;
    let r = rig.run(json!({"target": "late", "payload": 1})).await;
    assert_eq!(r["status"], "unreachable", "{r}");
    assert!(r["error"].as_str().unwrap().contains("scan_timeout"), "{r}");
    // The daemon cycles discovery (what helps in the field); the fake's stall lasts until
    // bluetoothd restarts, as the field quirk does.
    rig.daemon
        .log
        .wait_async("found nothing within ble.scan_timeout; restarting it")
        .await;
    restart(&rig, false).await;
    let r = rig
        .run(json!({"target": "late", "payload": 2, "timeout_ms": 10000}))
        .await;
    assert_eq!(r["status"], "ok", "{r}");
    let stats: Value = rig.stats().await;
    assert!(
        stats["start_discovery_calls"].as_u64().unwrap() >= 1,
        "{stats}"
    );
}
