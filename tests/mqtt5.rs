//! MQTT 5 on the endpoint, with Eclipse Paho's MQTT 5 client (Python): connect, the
//! CONNACK's announced limits, subscribe (granted, and refused with its reason code), a
//! round trip with the command's TTL as its message expiry, a PUBACK that says "not
//! authorized", a session resumed without subscribing again, a topic alias beyond the
//! limit answered with DISCONNECT 0x94, and a wrong password refused with its reason code.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

/// Steps through the cases in order, printing what the endpoint answered; the test reads
/// the lines and sends the commands at the right moments.
const PAHO_V5: &str = r#"
import json, sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
host, port, name, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ev = {k: threading.Event() for k in ("conn", "sub", "msg", "gone", "puback")}
box = {}
def on_connect(c, u, flags, rc, props):
    box["connack"] = (rc.value, flags.get("session present"), getattr(props, "TopicAliasMaximum", None))
    ev["conn"].set()
def on_subscribe(c, u, mid, codes, props):
    box["suback"] = [r.value for r in codes]
    ev["sub"].set()
def on_message(c, u, msg):
    cmd = json.loads(msg.payload)
    expiry = getattr(msg.properties, "MessageExpiryInterval", None)
    print("GOT", cmd["id"], "expiry", expiry, flush=True)
    c.publish(f"tether/{name}/result", json.dumps({"id": cmd["id"], "ok": True, "payload": {"v5": True}}), qos=1)
    ev["msg"].set()
def on_disconnect(c, u, rc, props=None):
    box["disconnect"] = rc.value if hasattr(rc, "value") else rc
    ev["gone"].set()
def on_publish(c, u, mid):
    ev["puback"].set()
def client(password):
    c = mqtt.Client(client_id=name, protocol=mqtt.MQTTv5)
    c.username_pw_set(name, password)
    c.on_connect, c.on_subscribe, c.on_message, c.on_disconnect, c.on_publish = on_connect, on_subscribe, on_message, on_disconnect, on_publish
    return c
def session(expiry):
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = expiry
    return p
def wait(k):
    if not ev[k].wait(20):
        print("TIMEOUT", k, flush=True); sys.exit(1)
    ev[k].clear()

c = client(pw)
c.connect(host, port, keepalive=10, clean_start=True, properties=session(3600))
c.loop_start()
wait("conn")
print("CONNACK", *box["connack"], flush=True)
c.subscribe([(f"tether/{name}/cmd", 1), ("tether/other/cmd", 1)])
wait("sub")
print("SUBACK", *box["suback"], flush=True)
wait("msg")
c.disconnect()
wait("gone")
c.loop_stop()

# The session outlives the connection: no SUBSCRIBE this time.
c = client(pw)
c.connect(host, port, keepalive=10, clean_start=False, properties=session(3600))
c.loop_start()
wait("conn")
print("RESUMED", *box["connack"], flush=True)
wait("msg")
# A publish outside its topics is acked with "not authorized" (seen in the daemon's log).
c.publish("tether/other/result", "{}", qos=1)
wait("puback")
print("DENIED_PUBLISHED", flush=True)
# A topic alias beyond the announced maximum ends the connection with 0x94.
p = Properties(PacketTypes.PUBLISH)
p.TopicAlias = 100
c.publish(f"tether/{name}/events", "{}", qos=0, properties=p)
wait("gone")
print("DISCONNECT", box["disconnect"], flush=True)
c.loop_stop()

c = client("wrong")
c.connect(host, port, keepalive=10, clean_start=True)
c.loop_start()
wait("conn")
print("REFUSED", box["connack"][0], flush=True)
c.loop_stop()
"#;

#[tokio::test]
async fn paho_mqtt5_session_reason_codes_aliases_and_expiry() {
    let dir = TempDir::new("mqtt5");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["v5-1"], "");
    let daemon = Tetherd::start(&cfg);
    let mut child = Command::new("/usr/bin/python3")
        .args([
            "-c",
            PAHO_V5,
            "127.0.0.1",
            &daemon.mqtt.port().to_string(),
            "v5-1",
        ])
        .arg(password("v5-1"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with paho-mqtt");
    let said = Lines::default();
    said.follow(child.stdout.take().unwrap(), "paho5");
    let _child = KillOnDrop(Some(child));

    // Success, no session yet, and the alias limit announced.
    assert_eq!(said.wait_for("CONNACK"), "CONNACK 0 0 16");
    // Its own topic granted at QoS 1; another's refused with 0x87 (not authorized).
    assert_eq!(said.wait_for("SUBACK"), "SUBACK 1 135");
    let id = cloud
        .enqueue(json!({"target": "v5-1", "payload": {"n": 1}, "ttl_ms": 600000}))
        .await;
    let r = cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"], json!({"v5": true}));
    // The command's TTL, as the message expiry interval (at most 600 s, at least 599).
    let got = said.wait_for(&format!("GOT {id}"));
    let expiry: u32 = got.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((590..=600).contains(&expiry), "{got}");

    // Resumed: the session is present and the subscription kept, so a command arrives
    // without a new SUBSCRIBE.
    assert_eq!(said.wait_for("RESUMED"), "RESUMED 0 1 16");
    let id = cloud
        .enqueue(json!({"target": "v5-1", "payload": {"n": 2}}))
        .await;
    let r = cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "ok", "{r}");
    assert!(said.wait_for(&format!("GOT {id}")).ends_with("expiry None"));

    said.wait_for("DENIED_PUBLISHED");
    daemon
        .log
        .wait_async("denied publish to \"tether/other/result\"")
        .await;
    assert_eq!(said.wait_for("DISCONNECT"), "DISCONNECT 148");
    daemon.log.wait_async("topic alias").await;
    // A wrong password: 0x87, not authorized.
    assert_eq!(said.wait_for("REFUSED"), "REFUSED 135");
}
