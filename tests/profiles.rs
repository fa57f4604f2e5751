//! Off-the-shelf firmware on the daemon's MQTT endpoint: a Shelly (Gen2 RPC over MQTT) and
//! a Tasmota, each played by a real MQTT client (Eclipse Paho) that behaves as the vendor's
//! public documentation describes: the topics it subscribes and publishes to, its will, its
//! request and answer frames, its errors. Commands round-trip through the real `tetherd`,
//! and each appliance is held to its own topics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::{Value, json};

/// A Shelly Gen2 device: MQTT client id and user set to the appliance id, `topic_prefix`
/// set to its device id. It subscribes to `<prefix>/rpc` (its RPC channel) and
/// `<prefix>/command`, says `true` on `<prefix>/online` (its will says `false`), answers
/// each request frame `{id, src, method, params}` on `<src>/rpc` with `{id, src, dst,
/// result}` or `{..., error: {code, message}}`, and notifies changes on
/// `<prefix>/events/rpc` (NotifyStatus).
const SHELLY: &str = r#"
import json, sys, time
import paho.mqtt.client as mqtt
host, port, name, pw, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
state = {"output": False}
c = mqtt.Client(client_id=name, clean_session=True)
c.username_pw_set(name, pw)
c.will_set(f"{prefix}/online", "false", qos=1, retain=True)
def on_connect(c, u, flags, rc):
    c.publish(f"{prefix}/online", "true", qos=1, retain=True)
    c.subscribe([(f"{prefix}/rpc", 1), (f"{prefix}/command", 1)])
def on_subscribe(c, u, mid, granted):
    print("READY", granted, flush=True)
def on_message(c, u, msg):
    req = json.loads(msg.payload)
    out = {"id": req["id"], "src": prefix, "dst": req["src"]}
    m, p = req.get("method"), req.get("params", {})
    if m == "Switch.Set" and p.get("id") == 0:
        out["result"] = {"was_on": state["output"]}
        state["output"] = bool(p.get("on"))
        c.publish(f"{prefix}/events/rpc", json.dumps({"src": prefix, "dst": f"{prefix}/events",
            "method": "NotifyStatus", "params": {"ts": time.time(), "switch:0": {"id": 0, "output": state["output"]}}}), qos=1)
    elif m == "Switch.GetStatus" and p.get("id") == 0:
        out["result"] = {"id": 0, "source": "MQTT", "output": state["output"]}
    elif m == "Switch.Set":
        out["error"] = {"code": -105, "message": "Argument 'id', value %s not found!" % p.get("id")}
    else:
        out["error"] = {"code": 404, "message": "No handler for %s" % m}
    c.publish(f"{req['src']}/rpc", json.dumps(out), qos=1)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect(host, port, keepalive=10)
c.loop_forever()
"#;

/// A Tasmota device: MqttClient and MqttUser set to the appliance id, Topic to its topic,
/// FullTopic the default `%prefix%/%topic%/`. It says `Online` on `tele/<topic>/LWT` (its
/// will says `Offline`), subscribes to `cmnd/<topic>/#`, its group topic `cmnd/tasmotas/#`
/// and its fallback topic `cmnd/<client>_fb/#`, announces itself on
/// `tasmota/discovery/<mac>/config`, and answers each `cmnd/<topic>/<Command>` with JSON
/// on `stat/<topic>/RESULT` (an unknown command with `{"Command":"Unknown"}`), followed,
/// for power, by the bare state on `stat/<topic>/POWER1`.
const TASMOTA: &str = r#"
import json, sys
import paho.mqtt.client as mqtt
host, port, name, pw, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
state = {"POWER1": "OFF", "Dimmer": 0}
c = mqtt.Client(client_id=name, clean_session=True)
c.username_pw_set(name, pw)
c.will_set(f"tele/{topic}/LWT", "Offline", qos=1, retain=True)
def on_connect(c, u, flags, rc):
    c.publish(f"tele/{topic}/LWT", "Online", qos=1, retain=True)
    c.subscribe([(f"cmnd/{topic}/#", 0), ("cmnd/tasmotas/#", 0), (f"cmnd/{name}_fb/#", 0)])
    c.publish("tasmota/discovery/A4CF12345678/config", json.dumps({"t": topic}), qos=0, retain=True)
def on_subscribe(c, u, mid, granted):
    print("READY", granted, flush=True)
def on_message(c, u, msg):
    cmd = msg.topic.split("/")[-1].upper()
    val = msg.payload.decode()
    res = f"stat/{topic}/RESULT"
    if cmd in ("POWER", "POWER1"):
        if val.upper() in ("ON", "OFF"):
            state["POWER1"] = val.upper()
        elif val.upper() == "TOGGLE":
            state["POWER1"] = "OFF" if state["POWER1"] == "ON" else "ON"
        c.publish(res, json.dumps({"POWER1": state["POWER1"]}))
        c.publish(f"stat/{topic}/POWER1", state["POWER1"])
    elif cmd == "DIMMER":
        if val:
            state["Dimmer"] = max(0, min(100, int(val)))
        c.publish(res, json.dumps({"Dimmer": state["Dimmer"]}))
    elif cmd == "GARBLE":
        c.publish(res, "{not json")
    else:
        c.publish(res, json.dumps({"Command": "Unknown"}))
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect(host, port, keepalive=10)
c.loop_forever()
"#;

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
"#;

/// Starts one of the firmware scripts and waits until its subscriptions are answered.
fn firmware(script: &str, daemon: &Tetherd, id: &str, topic: &str) -> (KillOnDrop, String) {
    let mut child: Child = Command::new("/usr/bin/python3")
        .args([
            "-c",
            script,
            "127.0.0.1",
            &daemon.mqtt.port().to_string(),
            id,
        ])
        .arg(password(id))
        .arg(topic)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with paho-mqtt (Debian: python3-paho-mqtt)");
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    (KillOnDrop(Some(child)), ready)
}

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

    let (_shelly, ready) = firmware(SHELLY, &daemon, "plug", "shellyplus1-a8032ab1");
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

    let (mut tasmota, ready) = firmware(TASMOTA, &daemon, "hall", "hall-light");
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
            .args(["-t", filter, "-C", "1", "-W", "5"])
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
    let (_porch, ready) = firmware(TASMOTA, &daemon, "porch", "porch");
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
