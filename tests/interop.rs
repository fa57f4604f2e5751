//! Interoperability with MQTT clients nobody on this project wrote: Eclipse Paho (Python)
//! and Mosquitto's command-line clients.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

/// A Paho appliance: answers each command with a QoS 2 result, then its status with QoS 1.
const PAHO_APPLIANCE: &str = r#"
import json, sys
import paho.mqtt.client as mqtt
host, port, name, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = mqtt.Client(client_id=name, clean_session=True)
c.username_pw_set(name, pw)
c.will_set(f"tether/{name}/status", "offline", qos=1, retain=True)
def on_connect(c, u, flags, rc):
    c.publish(f"tether/{name}/status", "online", qos=1, retain=True)
    c.subscribe(f"tether/{name}/cmd", qos=1)
def on_subscribe(c, u, mid, granted):
    print("READY", granted, flush=True)
def on_message(c, u, msg):
    cmd = json.loads(msg.payload)
    out = {"id": cmd["id"], "ok": True, "payload": {"via": "paho", "got": cmd["payload"]}}
    c.publish(f"tether/{name}/result", json.dumps(out), qos=2)
    c.publish(f"tether/{name}/events", json.dumps({"handled": cmd["id"]}), qos=1)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect(host, port, keepalive=10)
c.loop_forever()
"#;

#[tokio::test]
async fn paho_appliance_round_trip_with_qos2_result() {
    let dir = TempDir::new("paho");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["paho-1"], "");
    let daemon = Tetherd::start(&cfg);
    let mut paho = Command::new("/usr/bin/python3")
        .args([
            "-c",
            PAHO_APPLIANCE,
            "127.0.0.1",
            &daemon.mqtt.port().to_string(),
            "paho-1",
        ])
        .arg(password("paho-1"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with paho-mqtt (Debian: python3-paho-mqtt)");
    let stdout = paho.stdout.take().unwrap();
    let mut paho = KillOnDrop(Some(paho));
    let mut ready = String::new();
    BufReader::new(stdout).read_line(&mut ready).unwrap();
    assert!(ready.starts_with("READY (1,)"), "paho said {ready:?}");
    for n in 0..3 {
        let id = cloud
            .enqueue(json!({"target": "paho-1", "payload": {"n": n}}))
            .await;
        let r = cloud.result(&id).await["result"].clone();
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["payload"], json!({"via": "paho", "got": {"n": n}}));
    }
    let mut paho = paho.0.take().unwrap();
    paho.kill().unwrap();
    paho.wait().unwrap();
    // The dropped TCP connection fires the will: the appliance is offline and a command
    // to it is unreachable at once.
    daemon.log.wait_async("appliance offline").await;
    let id = cloud
        .enqueue(json!({"target": "paho-1", "timeout_ms": 60000}))
        .await;
    assert_eq!(cloud.result(&id).await["result"]["status"], "unreachable");
    let events = cloud.events().await;
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "event" && e["appliance"] == "paho-1"),
        "{events:?}"
    );
}

#[tokio::test]
async fn mosquitto_clients_are_held_to_their_own_topics() {
    let dir = TempDir::new("mosq");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["m-1", "m-2"], "");
    let daemon = Tetherd::start(&cfg);
    let port = daemon.mqtt.port().to_string();
    let pw = password("m-1");
    let base = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-i",
        "m-1",
        "-u",
        "m-1",
        "-P",
        &pw,
    ];
    // Subscribing to everything is refused by the endpoint (SUBACK failure code).
    let out = Command::new("mosquitto_sub")
        .args(base)
        .args(["-t", "#", "-C", "1", "-W", "5"])
        .output()
        .expect("mosquitto_sub (Debian: mosquitto-clients)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("All subscription requests were denied"),
        "mosquitto_sub said: {said}"
    );
    // A wrong password is refused at CONNECT.
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-i",
            "m-1",
            "-u",
            "m-1",
            "-P",
            "nope",
        ])
        .args(["-t", "tether/m-1/events", "-m", "{}"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("not authori")
    );
    // Publishing an event to its own topic works; to another's topic is dropped and counted.
    let ok = Command::new("mosquitto_pub")
        .args(base)
        .args(["-q", "1", "-t", "tether/m-1/events", "-m", r#"{"t": 21.5}"#])
        .status()
        .unwrap();
    assert!(ok.success());
    let forged = Command::new("mosquitto_pub")
        .args(base)
        .args(["-q", "1", "-t", "tether/m-2/events", "-m", r#"{"t": 99}"#])
        .status()
        .unwrap();
    assert!(forged.success(), "QoS 1 publish is acked even when dropped");
    daemon
        .log
        .wait_async("denied publish to \"tether/m-2/events\"")
        .await;
    let events = eventually("the event at the cloud", || async {
        let ev = cloud.events().await;
        ev.iter().any(|e| e["kind"] == "event").then_some(ev)
    })
    .await;
    let forwarded: Vec<_> = events.iter().filter(|e| e["kind"] == "event").collect();
    assert_eq!(forwarded.len(), 1, "{events:?}");
    assert_eq!(forwarded[0]["appliance"], "m-1");
    assert_eq!(forwarded[0]["payload"], json!({"t": 21.5}));
}
