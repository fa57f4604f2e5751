//! Off-the-shelf firmware on the daemon's MQTT endpoint: a Shelly (Gen2 RPC over MQTT) and
//! a Tasmota, each played by a real MQTT client (Eclipse Paho) that behaves as the vendor's
//! public documentation describes: the topics it subscribes and publishes to, its will, its
//! request and answer frames, its errors. Commands round-trip through the real `tetherd`,
//! and each appliance is held to its own topics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::process::Command;

use common::firmware::{ESPHOME, SHELLY, TASMOTA, firmware};
use common::*;
use serde_json::{Value, json};

const PROFILES: &str = r#"
[[appliance]]
id = "plug"
transport = "mqtt"
password = "pw-plug"
profile = "shelly-rpc"
topic = "shellyplus1-a8032ab1"

[[appliance]]
id = "hall"
transport = "mqtt"
password = "pw-hall"
profile = "tasmota"
topic = "hall-light"

[[appliance]]
id = "porch"
transport = "mqtt"
password = "pw-porch"
profile = "tasmota"

[[appliance]]
id = "node"
transport = "mqtt"
password = "pw-node"
profile = "custom"
topic = "porch-node"
command_topic = "{topic}/{entity}/command"
answer_topic = "{topic}/{entity}/state"
presence_topic = "{topic}/status"
"#;

async fn run(cloud: &DevCloud, target: &str, payload: Value) -> Value {
    let id = cloud
        .enqueue(json!({"target": target, "payload": payload, "timeout_ms": 20000}))
        .await;
    cloud.result(&id).await["result"].clone()
}

#[tokio::test]
async fn a_shelly_and_a_tasmota_answer_commands_through_their_own_topics() {
    let dir = TempDir::new("profiles");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &[], PROFILES);
    let daemon = Tetherd::start(&cfg);

    let (_shelly, _, ready) = firmware(SHELLY, daemon.mqtt, "plug", "shellyplus1-a8032ab1");
    assert!(ready.starts_with("READY (1, 1)"), "shelly said {ready:?}");
    let r = run(
        &cloud,
        "plug",
        json!({"method": "Switch.Set", "params": {"id": 0, "on": true}}),
    )
    .await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"], json!({"was_on": false}));
    let r = run(
        &cloud,
        "plug",
        json!({"method": "Switch.GetStatus", "params": {"id": 0}}),
    )
    .await;
    assert_eq!(r["payload"]["output"], true, "{r}");
    // The firmware's own errors come back as `error` results with its code and message.
    let r = run(
        &cloud,
        "plug",
        json!({"method": "Switch.Set", "params": {"id": 3, "on": true}}),
    )
    .await;
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(
        r["error"],
        "shelly error -105: Argument 'id', value 3 not found!"
    );
    let r = run(&cloud, "plug", json!({"method": "Cover.Open"})).await;
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("404: No handler for Cover.Open"),
        "{r}"
    );
    // A command the profile cannot put on the wire is an error, and never sent.
    let r = run(&cloud, "plug", json!({"params": {"id": 0}})).await;
    assert_eq!(r["status"], "error", "{r}");
    assert!(
        r["error"].as_str().unwrap().starts_with("not sent: "),
        "{r}"
    );

    let (mut tasmota, _, ready) = firmware(TASMOTA, daemon.mqtt, "hall", "hall-light");
    // Its own command topic granted; the group and fallback topics refused.
    assert!(
        ready.starts_with("READY (0, 128, 128)"),
        "tasmota said {ready:?}"
    );
    let r = run(&cloud, "hall", json!({"command": "Power1", "value": "ON"})).await;
    assert_eq!(
        (r["status"].as_str(), &r["payload"]),
        (Some("ok"), &json!({"POWER1": "ON"})),
        "{r}"
    );
    let r = run(&cloud, "hall", json!({"command": "Dimmer", "value": 40})).await;
    assert_eq!(r["payload"], json!({"Dimmer": 40}), "{r}");
    let r = run(&cloud, "hall", json!({"command": "Dimmer"})).await;
    assert_eq!(r["payload"], json!({"Dimmer": 40}), "{r}");
    let r = run(&cloud, "hall", json!({"command": "Frobnicate", "value": 1})).await;
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("Unknown"), "{r}");
    // An answer that does not parse: the command gets an `error` naming why, and the
    // daemon counts it.
    let r = run(&cloud, "hall", json!({"command": "Garble"})).await;
    assert_eq!(r["status"], "error", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("tasmota answer is not JSON"),
        "{r}"
    );
    daemon
        .log
        .wait_async("malformed message: tasmota answer is not JSON")
        .await;

    // Notifications and telemetry reach the cloud as events, with their topic; the
    // firmware's discovery message and refused group subscription are no intrusion.
    let events = eventually("the firmwares' events at the cloud", || async {
        let ev = cloud.events().await;
        let shelly = ev.iter().any(|e| {
            e["appliance"] == "plug" && e["payload"]["topic"] == "shellyplus1-a8032ab1/events/rpc"
        });
        let tasmota = ev.iter().any(|e| {
            e["appliance"] == "hall"
                && e["payload"] == json!({"topic": "stat/hall-light/POWER1", "data": "ON"})
        });
        (shelly && tasmota).then_some(ev)
    })
    .await;
    assert!(
        events.iter().all(|e| e["kind"] != "denied"),
        "a firmware's usual subscriptions and publishes are not intrusions: {events:?}"
    );
    let online: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "online")
        .map(|e| e["appliance"].as_str().unwrap())
        .collect();
    assert!(
        online.contains(&"plug") && online.contains(&"hall"),
        "{events:?}"
    );

    // The Tasmota goes away: its will says Offline, and a command finds it unreachable.
    tasmota.0.as_mut().unwrap().kill().unwrap();
    daemon.log.wait_async("appliance offline").await;
    let r = run(&cloud, "hall", json!({"command": "Power1", "value": "OFF"})).await;
    assert_eq!(r["status"], "unreachable", "{r}");
}

#[tokio::test]
async fn a_tasmota_cannot_reach_another_appliances_topics() {
    let dir = TempDir::new("profiles-acl");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &[], PROFILES);
    let daemon = Tetherd::start(&cfg);
    let port = daemon.mqtt.port().to_string();
    let pw = password("hall");
    let hall = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-i",
        "hall",
        "-u",
        "hall",
        "-P",
        &pw,
    ];
    // Another Tasmota's command topic, the whole tree, and the Shelly's RPC channel.
    for filter in ["cmnd/porch/#", "cmnd/+/#", "#", "shellyplus1-a8032ab1/rpc"] {
        let out = Command::new("mosquitto_sub")
            .args(hall)
            .args(["-t", filter, "-C", "1", "-W", "30"])
            .output()
            .expect("mosquitto_sub (Debian: mosquitto-clients)");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            said.contains("All subscription requests were denied"),
            "{filter}: {said}"
        );
        daemon
            .log
            .wait_async(&format!("denied subscribe to \"{filter}\""))
            .await;
    }
    // The porch Tasmota waits for a command's answer; `hall` forges one on porch's topic.
    let (_porch, _, ready) = firmware(TASMOTA, daemon.mqtt, "porch", "porch");
    assert!(ready.starts_with("READY (0,"), "porch said {ready:?}");
    for topic in ["stat/porch/RESULT", "tele/porch/LWT", "tether/porch/rpc"] {
        let sent = Command::new("mosquitto_pub")
            .args(hall)
            .args(["-q", "1", "-t", topic, "-m", "Offline"])
            .status()
            .unwrap();
        assert!(sent.success(), "QoS 1 publish is acked even when dropped");
        daemon
            .log
            .wait_async(&format!("denied publish to \"{topic}\""))
            .await;
    }
    // Porch is untouched: still online, and its own answer is the one that counts.
    let r = run(
        &cloud,
        "porch",
        json!({"command": "Power", "value": "TOGGLE"}),
    )
    .await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"], json!({"POWER1": "ON"}));
}

#[tokio::test]
async fn an_esphome_node_answers_through_the_custom_profile() {
    let dir = TempDir::new("profiles-custom");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &[], PROFILES);
    let daemon = Tetherd::start(&cfg);
    let (_node, _, ready) = firmware(ESPHOME, daemon.mqtt, "node", "porch-node");
    assert!(ready.starts_with("READY (0, 0)"), "node said {ready:?}");

    // The light's answer is its own state topic: the sensor's state published just
    // before it is an event, not the answer.
    let r = run(
        &cloud,
        "node",
        json!({"entity": "light/porch_light", "value": {"state": "ON", "brightness": 128}}),
    )
    .await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(
        r["payload"],
        json!({"state": "ON", "brightness": 128, "color_mode": "brightness"})
    );
    let r = run(
        &cloud,
        "node",
        json!({"entity": "switch/relay", "value": "ON"}),
    )
    .await;
    assert_eq!(
        (r["status"].as_str(), &r["payload"]),
        (Some("ok"), &json!("ON")),
        "{r}"
    );
    // A command the templates cannot place is an error, never sent.
    let r = run(&cloud, "node", json!({"value": "ON"})).await;
    assert_eq!(r["status"], "error", "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("needs \"entity\""),
        "{r}"
    );
    let r = run(&cloud, "node", json!({"entity": "light/+", "value": "ON"})).await;
    assert_eq!(r["status"], "error", "{r}");

    let events = eventually("the sensor's state as an event", || async {
        let ev = cloud.events().await;
        ev.iter()
            .any(|e| {
                e["appliance"] == "node"
                    && e["payload"]
                        == json!({"topic": "porch-node/sensor/temperature/state", "data": 21.5})
            })
            .then_some(ev)
    })
    .await;
    assert!(events.iter().all(|e| e["kind"] != "denied"), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| e["appliance"] == "node" && e["kind"] == "online"),
        "{events:?}"
    );
}
