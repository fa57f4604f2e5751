//! MQTT and BLE appliances in one daemon: a group spanning both transports, lists, and
//! per-appliance order kept on each side.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

#[path = "common/ble_rig.rs"]
mod ble_rig;
#[path = "common/bluez.rs"]
mod bluez;
mod common;

use ble_rig::{BleRig, ble_appliance, hex};
use common::{Appliance, Behaviour};
use serde_json::{Value, json};

const BULB: &str = "AA:BB:CC:DD:EE:51";
const STRIP: &str = "AA:BB:CC:DD:EE:52";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_spanning_mqtt_and_ble_appliances() {
    let extra = [
        ble_appliance("ble-bulb", BULB, ""),
        ble_appliance("ble-strip", STRIP, "encoding = \"utf8\"\n"),
        "\n[groups]\nall = [\"mqtt-lamp\", \"ble-bulb\", \"mqtt-plug\"]\nlights = [\"mqtt-lamp\", \"ble-bulb\"]\n"
            .to_owned(),
    ]
    .concat();
    let rig = BleRig::start("ble-mixed", &["mqtt-lamp", "mqtt-plug"], &extra, |fake| {
        BleRig::add_device(fake, BULB, json!({"mode": "echo", "delay_ms": 20}));
        BleRig::add_device(fake, STRIP, json!({"mode": "reply", "reply_utf8": "done"}));
    });
    let mut lamp = Appliance::connect(rig.daemon.mqtt, "mqtt-lamp", Behaviour::Echo).await;
    let _plug = Appliance::connect(rig.daemon.mqtt, "mqtt-plug", Behaviour::Echo).await;

    let r = rig
        .run(json!({"target": "group:all", "payload": {"power": "on"}, "timeout_ms": 10000}))
        .await;
    assert_eq!(r["status"], "ok", "{r}");
    let items: Vec<Value> = r["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 3, "{r}");
    let item = |t: &str| items.iter().find(|i| i["target"] == t).cloned().unwrap();
    assert_eq!(item("ble-bulb")["payload"], json!({"power": "on"}), "{r}");
    assert_eq!(
        item("mqtt-lamp")["payload"]["echo"],
        json!({"power": "on"}),
        "{r}"
    );
    assert_eq!(item("mqtt-plug")["status"], "ok", "{r}");

    // A list naming one appliance of each kind, with per-kind encodings.
    let r = rig
        .run(json!({"target": ["mqtt-plug", "ble-strip"], "payload": "go"}))
        .await;
    assert_eq!(r["status"], "ok", "{r}");
    let strip = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["target"] == "ble-strip")
        .cloned()
        .unwrap();
    assert_eq!(strip["payload"], "done", "{r}");

    // A burst to the lights group: both sides keep each appliance's order.
    let cmds = (0..5)
        .map(|n| json!({"target": "group:lights", "payload": {"n": n}, "timeout_ms": 10000}))
        .collect();
    let ids = rig.cloud.enqueue_many(cmds).await;
    for id in &ids {
        let r = rig.cloud.result(id).await["result"].clone();
        assert_eq!(r["status"], "ok", "{r}");
    }
    let ble_order: Vec<String> = rig.writes(BULB).await.into_iter().skip(1).collect();
    let want: Vec<String> = (0..5)
        .map(|n| hex(json!({"n": n}).to_string().as_bytes()))
        .collect();
    assert_eq!(ble_order, want);
    let mqtt_order: Vec<Value> = lamp.drain().into_iter().skip(1).map(|(_, p)| p).collect();
    let want: Vec<Value> = (0..5).map(|n| json!({"n": n})).collect();
    assert_eq!(mqtt_order, want);
    // The router's log names each transport.
    rig.daemon
        .log
        .wait_async("APPLIANCE=ble-bulb TRANSPORT=ble")
        .await;
    rig.daemon
        .log
        .wait_async("APPLIANCE=mqtt-lamp TRANSPORT=mqtt")
        .await;
}
