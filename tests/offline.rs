//! Appliances that are away keep their commands: a sleeping MQTT appliance on a persistent
//! session (Eclipse Paho, `clean_session=False`), across a `kill -9` of the gateway; the
//! per-appliance bound; and a clean-session appliance, which still fails at once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

/// A battery appliance as Paho users write one: a persistent session, its cmd topic
/// subscribed at QoS 1 only when the broker did not keep the session. It prints what it
/// gets and answers each command.
const SLEEPER: &str = r#"
import json, sys
import paho.mqtt.client as mqtt
host, port, name, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = mqtt.Client(client_id=name, clean_session=False)
c.username_pw_set(name, pw)
def on_connect(c, u, flags, rc):
    if flags.get("session present"):
        print("SESSION", flush=True)
    else:
        c.subscribe(f"tether/{name}/cmd", qos=1)
def on_subscribe(c, u, mid, granted):
    print("READY", granted, flush=True)
def on_message(c, u, msg):
    cmd = json.loads(msg.payload)
    print("GOT", cmd["id"], flush=True)
    c.publish(f"tether/{name}/result", json.dumps({"id": cmd["id"], "ok": True}), qos=1)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect(host, port, keepalive=10)
c.loop_forever()
"#;

fn sleeper(daemon: &Tetherd, id: &str) -> (KillOnDrop, Lines) {
    let mut child = Command::new("/usr/bin/python3")
        .args([
            "-c",
            SLEEPER,
            "127.0.0.1",
            &daemon.mqtt.port().to_string(),
            id,
        ])
        .arg(password(id))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with paho-mqtt (Debian: python3-paho-mqtt)");
    let lines = Lines::default();
    lines.follow(child.stdout.take().unwrap(), "paho");
    (KillOnDrop(Some(child)), lines)
}

/// What the devcloud's last poll from the gateway listed as waiting.
async fn waiting(cloud: &DevCloud) -> Vec<String> {
    let c = cloud.commands().await;
    c["waiting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

async fn until_waiting(cloud: &DevCloud, ids: &[String]) {
    eventually(&format!("{ids:?} listed as waiting"), || async {
        let w = waiting(cloud).await;
        ids.iter().all(|id| w.contains(id)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_paho_appliance_gets_its_commands_in_order_across_a_gateway_kill() {
    let dir = TempDir::new("sleeper");
    // Short holds, so each poll says what waits.
    let cloud = DevCloud::start(dir.path(), &["--max-wait-s", "1"]);
    let port = free_port();
    let mqtt = mqtt_on(port, "0s");
    let cfg = config_with_mqtt(dir.path(), &cloud, &["th-1"], &mqtt, "");
    let mut daemon = Tetherd::start(&cfg);
    let (paho, out) = sleeper(&daemon, "th-1");
    assert!(out.wait_for("READY").contains("(1,)"), "{:?}", out.all());
    drop(paho);
    daemon.log.wait_async("appliance offline").await;

    let long = |n: u32| json!({"target": "th-1", "payload": {"n": n}, "ttl_ms": 120_000});
    let ids = cloud
        .enqueue_many(vec![
            long(1),
            long(2),
            json!({"target": "th-1", "payload": {"n": 0}, "ttl_ms": 1500}),
            long(3),
        ])
        .await;
    let (short, mut kept) = (
        ids[2].clone(),
        vec![ids[0].clone(), ids[1].clone(), ids[3].clone()],
    );
    until_waiting(&cloud, &kept).await;
    // The short one runs out while it waits, on time, not when the appliance is back.
    let r = cloud.result(&short).await["result"].clone();
    assert_eq!(r["status"], "expired", "{r}");
    assert!(r["error"].as_str().unwrap().contains("not sent"), "{r}");

    daemon.kill();
    // Queued while the gateway is down: the first poll after the restart brings it, and
    // it must still queue behind what the last run left.
    kept.push(cloud.enqueue(long(4)).await);
    daemon = Tetherd::start_with_env(&cfg, &[("TETHER_FAULT", "slow-recovery")]);
    // The expired one's result may or may not have been committed before the kill; its
    // TTL is still out after the restart either way.
    daemon.log.wait_async("command(s) left unfinished").await;
    until_waiting(&cloud, &kept).await;

    // Back: the gateway kept its session (no new SUBSCRIBE), and what waited comes in order.
    let (_paho, out) = sleeper(&daemon, "th-1");
    out.wait_for("SESSION");
    let mut results = HashMap::new();
    for id in &kept {
        let r = cloud.result(id).await["result"].clone();
        assert_eq!(r["status"], "ok", "{id}: {r}");
        results.insert(id.clone(), r);
    }
    let got: Vec<String> = out
        .all()
        .iter()
        .filter_map(|l| l.strip_prefix("GOT ").map(str::to_owned))
        .collect();
    assert_eq!(got, kept, "in order, once each, never the expired one");
    // Its duration covers the wait, across the restart.
    let waited = results[&kept[0]]["duration_ms"].as_u64().unwrap();
    assert!(
        waited >= 1500,
        "duration_ms {waited} does not cover the wait"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_bounded_and_a_clean_session_appliance_still_fails_at_once() {
    let dir = TempDir::new("away-bound");
    let cloud = DevCloud::start(dir.path(), &["--max-wait-s", "1"]);
    let extra = format!(
        "[router]\nmax_queue_per_appliance = 3\n{}offline = \"queue\"\n{}",
        mqtt_appliance("q-1"),
        mqtt_appliance("c-1")
    );
    let cfg = config(dir.path(), &cloud, &[], &extra);
    let daemon = Tetherd::start(&cfg);
    // A clean-session appliance that was there and left: not held for.
    let clean = Appliance::connect(daemon.mqtt, "c-1", Behaviour::Echo).await;
    clean.leave().await;
    daemon.log.wait_async("appliance offline").await;

    let cmds = (0..4)
        .map(|n| json!({"target": "q-1", "payload": {"n": n}}))
        .collect();
    let ids = cloud.enqueue_many(cmds).await;
    let r = cloud.result(&ids[3]).await["result"].clone();
    assert_eq!(r["status"], "rejected", "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("queue is full"),
        "{r}"
    );
    until_waiting(&cloud, &ids[..3]).await;
    let c = cloud.enqueue(json!({"target": "c-1"})).await;
    let r = cloud.result(&c).await["result"].clone();
    assert_eq!(r["status"], "unreachable", "{r}");

    // Nothing else was lost: q-1 connects (it never had) and gets the three, in order.
    let mut q = Appliance::connect(daemon.mqtt, "q-1", Behaviour::Echo).await;
    for id in &ids[..3] {
        assert_eq!(cloud.result(id).await["result"]["status"], "ok");
    }
    let got: Vec<String> = q.drain().into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids[..3].to_vec());
}

/// A stop does not sit out its grace for commands that wait for an appliance: they were
/// never sent, stay in the journal, and wait again after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_leaves_waiting_commands_to_wait_after_the_restart() {
    let dir = TempDir::new("away-stop");
    let cloud = DevCloud::start(dir.path(), &["--max-wait-s", "1"]);
    let port = free_port();
    let mqtt = mqtt_on(port, "0s");
    let extra = format!("{}offline = \"queue\"\n", mqtt_appliance("q-1"));
    let cfg = config_with_mqtt(dir.path(), &cloud, &[], &mqtt, &extra);
    let mut daemon = Tetherd::start(&cfg);
    let ids = cloud
        .enqueue_many(vec![
            json!({"target": "q-1", "payload": {"n": 1}}),
            json!({"target": "q-1", "payload": {"n": 2}}),
        ])
        .await;
    until_waiting(&cloud, &ids).await;
    assert!(daemon.terminate().success());
    // Its last line: the reader has everything before it.
    daemon.log.wait_for("stopped; ");
    let log = daemon.log.all().join("\n");
    assert!(
        log.contains("2 command(s) wait for appliances that are away"),
        "{log}"
    );
    assert!(!log.contains("end of the stop grace"), "{log}");

    let daemon = Tetherd::start(&cfg);
    daemon.log.wait_async("2 command(s) left unfinished").await;
    until_waiting(&cloud, &ids).await;
    let mut q = Appliance::connect(daemon.mqtt, "q-1", Behaviour::Echo).await;
    for id in &ids {
        assert_eq!(cloud.result(id).await["result"]["status"], "ok");
    }
    let got: Vec<String> = q.drain().into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids);
}

/// A reload that removes an appliance ends the commands waiting for it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_the_appliance_ends_its_waiting_commands() {
    let dir = TempDir::new("away-reload");
    let cloud = DevCloud::start(dir.path(), &["--max-wait-s", "1"]);
    let extra = format!("{}offline = \"queue\"\n", mqtt_appliance("q-1"));
    let cfg = config(dir.path(), &cloud, &["keep-1"], &extra);
    let daemon = Tetherd::start(&cfg);
    let id = cloud
        .enqueue(json!({"target": "q-1", "ttl_ms": 600_000}))
        .await;
    until_waiting(&cloud, std::slice::from_ref(&id)).await;
    config(dir.path(), &cloud, &["keep-1"], "");
    daemon.signal("HUP");
    let r = cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "unreachable", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("not an MQTT appliance"),
        "{r}"
    );
}
