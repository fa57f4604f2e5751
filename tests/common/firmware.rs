//! Appliance firmware as the vendors document it, each played by a real MQTT client
//! (Eclipse Paho, Python): what it subscribes and publishes to, its will, its frames.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use super::{KillOnDrop, Lines, password};

/// A Shelly Gen2 device: MQTT client id and user set to the appliance id, `topic_prefix`
/// set to its device id. It subscribes to `<prefix>/rpc` (its RPC channel) and
/// `<prefix>/command`, says `true` on `<prefix>/online` (its will says `false`), answers
/// each request frame `{id, src, method, params}` on `<src>/rpc` with `{id, src, dst,
/// result}` or `{..., error: {code, message}}`, and notifies changes on
/// `<prefix>/events/rpc` (NotifyStatus).
pub const SHELLY: &str = r#"
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
pub const TASMOTA: &str = r#"
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

/// An ESPHome node with its `mqtt:` component: client id and user name set to the
/// appliance id, `topic_prefix` to its topic. Availability on `<prefix>/status` (`online`,
/// its will `offline`); a light taking JSON on `<prefix>/light/porch_light/command` and
/// a switch taking `ON`/`OFF` on `<prefix>/switch/relay/command`, each publishing its new
/// state on `.../state`; a temperature sensor publishing on
/// `<prefix>/sensor/temperature/state`, here just before each light's state, so that a
/// command waiting on the light must not take it for its answer.
pub const ESPHOME: &str = r#"
import json, sys
import paho.mqtt.client as mqtt
host, port, name, pw, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
light = {"state": "OFF", "brightness": 255, "color_mode": "brightness"}
c = mqtt.Client(client_id=name, clean_session=True)
c.username_pw_set(name, pw)
c.will_set(f"{prefix}/status", "offline", qos=1, retain=True)
def on_connect(c, u, flags, rc):
    c.publish(f"{prefix}/status", "online", qos=1, retain=True)
    c.subscribe([(f"{prefix}/light/porch_light/command", 0), (f"{prefix}/switch/relay/command", 0)])
def on_subscribe(c, u, mid, granted):
    print("READY", granted, flush=True)
def on_message(c, u, msg):
    if msg.topic.endswith("/light/porch_light/command"):
        light.update(json.loads(msg.payload))
        c.publish(f"{prefix}/sensor/temperature/state", "21.5", retain=True)
        c.publish(f"{prefix}/light/porch_light/state", json.dumps(light), retain=True)
    else:
        c.publish(f"{prefix}/switch/relay/state", msg.payload.decode(), retain=True)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect(host, port, keepalive=10)
c.loop_forever()
"#;

/// Firmware written for Tether's own contract that keeps a persistent session (clean
/// session off, its `cmd` topic at QoS 1), as an appliance that must not miss a command
/// does: prints `GOT <command id>` for each command it receives, and answers it.
pub const PERSISTENT: &str = r#"
import json, sys
import paho.mqtt.client as mqtt
host, port, name, pw, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
c = mqtt.Client(client_id=name, clean_session=False)
c.username_pw_set(name, pw)
c.reconnect_delay_set(min_delay=1, max_delay=2)
def on_connect(c, u, flags, rc):
    c.subscribe(f"{prefix}/{name}/cmd", qos=1)
def on_subscribe(c, u, mid, granted):
    print("READY", granted, flush=True)
def on_message(c, u, msg):
    cmd = json.loads(msg.payload)
    print("GOT", cmd["id"], flush=True)
    c.publish(f"{prefix}/{name}/result", json.dumps({"id": cmd["id"], "ok": True, "payload": {"got": cmd["payload"]}}), qos=1)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect(host, port, keepalive=10)
c.loop_forever()
"#;

/// Starts one of the firmware scripts against the broker or endpoint at `mqtt` and waits
/// until its first subscriptions are answered; returns the process, what it printed, and
/// its `READY` line (the granted QoS per filter).
pub fn firmware(
    script: &str,
    mqtt: SocketAddr,
    id: &str,
    topic: &str,
) -> (KillOnDrop, Lines, String) {
    let mut child = Command::new("/usr/bin/python3")
        .args([
            "-c",
            script,
            &mqtt.ip().to_string(),
            &mqtt.port().to_string(),
            id,
        ])
        .arg(password(id))
        .arg(topic)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with paho-mqtt (Debian: python3-paho-mqtt)");
    let lines = Lines::default();
    lines.follow(child.stdout.take().expect("stdout"), "firmware");
    let ready = lines.wait_for("READY");
    (KillOnDrop(Some(child)), lines, ready)
}
