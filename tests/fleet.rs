//! Running a fleet without SSH, with the real binaries: appliances and groups put and
//! removed by gateway commands (`$gateway`), kept across a kill -9, with the file's entries
//! taking precedence; `tetherd status` and `tetherd metrics` over the control socket, and
//! the metrics listener, parsed by a real Prometheus text parser.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::process::Command;

use common::*;
use serde_json::{Value, json};

/// Sends a gateway command and returns its stored result.
async fn gateway(cloud: &DevCloud, payload: Value) -> Value {
    let id = cloud
        .enqueue(json!({"target": "$gateway", "payload": payload}))
        .await;
    cloud.result(&id).await["result"].clone()
}

fn tetherd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tetherd"))
        .args(args)
        .output()
        .unwrap()
}

/// Every file under `dir`, as bytes.
fn all_bytes(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn an_appliance_put_by_the_cloud_works_survives_kill_9_and_is_removed() {
    let dir = TempDir::new("fleet-put");
    let cloud = DevCloud::start(dir.path(), &[]);
    let port = free_port();
    let cfg = config_with_mqtt(
        dir.path(),
        &cloud,
        &["lamp-1"],
        // After the restart, a command waits for its appliance to reconnect.
        &mqtt_on(port, "30s"),
        "",
    );
    let mut daemon = Tetherd::start(&cfg);

    // The password goes in clear in the command; the gateway keeps only its hash.
    let r = gateway(
        &cloud,
        json!({"v": 1, "op": "put_appliance",
               "appliance": {"id": "lamp-9", "transport": "mqtt", "password": password("lamp-9")}}),
    )
    .await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"]["created"], true, "{r}");
    assert_eq!(r["payload"]["source"], "cloud", "{r}");
    let state = dir.path().join("state");
    let stored = std::fs::read_to_string(state.join("managed.toml")).unwrap();
    assert!(stored.contains("id = \"lamp-9\""), "{stored}");
    assert!(stored.contains("$argon2id$"), "{stored}");

    let mut app = Appliance::connect(daemon.mqtt, "lamp-9", Behaviour::Echo).await;
    let id = cloud
        .enqueue(json!({"target": "lamp-9", "payload": {"on": true}}))
        .await;
    let r = cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(app.next_command().await.0, id);

    // Putting the same entry again changes nothing and keeps the appliance connected.
    let r = gateway(
        &cloud,
        json!({"op": "put_appliance",
               "appliance": {"id": "lamp-9", "transport": "mqtt", "password": password("lamp-9")}}),
    )
    .await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"]["changed"], false, "{r}");

    // kill -9 and start again: the entry is still in force.
    daemon.kill();
    let daemon = Tetherd::start(&cfg);
    let id = cloud
        .enqueue(json!({"target": "lamp-9", "payload": {"after": "restart"}}))
        .await;
    let r = cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"]["echo"]["after"], "restart", "{r}");

    // The password never reached the state directory in clear (journal included).
    for (path, bytes) in all_bytes(&state) {
        assert!(
            !contains(&bytes, &password("lamp-9")),
            "{path} holds the password"
        );
    }

    // A group of a file appliance and a cloud one takes one command to both.
    let r = gateway(
        &cloud,
        json!({"op": "put_group", "name": "hall", "members": ["lamp-1", "lamp-9"]}),
    )
    .await;
    assert_eq!(r["status"], "ok", "{r}");
    let _lamp1 = Appliance::connect(daemon.mqtt, "lamp-1", Behaviour::Echo).await;
    let id = cloud.enqueue(json!({"target": "group:hall"})).await;
    let r = cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["items"].as_array().unwrap().len(), 2, "{r}");

    // Still in a group: not removed.
    let r = gateway(&cloud, json!({"op": "remove_appliance", "id": "lamp-9"})).await;
    assert_eq!(r["status"], "rejected", "{r}");
    assert!(r["error"].as_str().unwrap().contains("hall"), "{r}");
    let r = gateway(&cloud, json!({"op": "remove_group", "name": "hall"})).await;
    assert_eq!(r["status"], "ok", "{r}");

    // Removed: disconnected, and later commands rejected as unknown.
    let seen = daemon.log.len();
    let r = gateway(&cloud, json!({"op": "remove_appliance", "id": "lamp-9"})).await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"]["removed"], true, "{r}");
    daemon
        .log
        .wait_from_async(seen, "configuration changed: disconnecting the appliance")
        .await;
    let id = cloud.enqueue(json!({"target": "lamp-9"})).await;
    let r = cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "rejected", "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("unknown target"),
        "{r}"
    );
    app.drain();
    // Removing it again is no error: the cloud may resend.
    let r = gateway(&cloud, json!({"op": "remove_appliance", "id": "lamp-9"})).await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"]["removed"], false, "{r}");
    let stored = std::fs::read_to_string(state.join("managed.toml")).unwrap();
    assert!(!stored.contains("lamp-9"), "{stored}");
}

#[tokio::test]
async fn file_entries_win_and_bad_entries_are_rejected_by_field() {
    let dir = TempDir::new("fleet-rules");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(
        dir.path(),
        &cloud,
        &["lamp-1"],
        "[groups]\nlights = [\"lamp-1\"]\n",
    );
    let _daemon = Tetherd::start(&cfg);

    let cases = [
        (
            json!({"op": "put_appliance", "appliance": {"id": "lamp-1", "transport": "mqtt", "password": "x"}}),
            "configuration file",
        ),
        (
            json!({"op": "remove_appliance", "id": "lamp-1"}),
            "configuration file",
        ),
        (
            json!({"op": "put_group", "name": "lights", "members": ["lamp-1"]}),
            "configuration file",
        ),
        (
            json!({"op": "remove_group", "name": "lights"}),
            "configuration file",
        ),
        (
            json!({"op": "put_appliance", "appliance": {"id": "p", "transport": "mqtt"}}),
            "appliance.password: required for MQTT appliances",
        ),
        (
            json!({"op": "put_appliance", "appliance": {"id": "bad id!", "transport": "mqtt", "password": "x"}}),
            "appliance.id",
        ),
        (
            json!({"op": "put_appliance", "appliance": {"id": "b", "transport": "ble"}}),
            "appliance.address",
        ),
        (
            json!({"op": "put_appliance", "appliance": {"id": "c", "transport": "mqtt", "password": "x", "colour": "red"}}),
            "appliance.colour",
        ),
        (
            json!({"op": "put_appliance", "appliance": {"id": "d", "transport": "zigbee", "password": "x"}}),
            "appliance.transport",
        ),
        (
            json!({"op": "put_appliance", "appliance": {"id": "e", "transport": "mqtt", "password": "x", "profile": "tasmota", "topic": "cmnd/+"}}),
            "appliance.topic",
        ),
        (
            // Under the endpoint's prefix, inside lamp-1's own topics.
            json!({"op": "put_appliance", "appliance": {"id": "f", "transport": "mqtt", "password": "x", "profile": "shelly-rpc", "topic": "tether/lamp-1"}}),
            "appliance.topic: its topics overlap appliance \"lamp-1\"'s",
        ),
        (
            json!({"op": "put_group", "name": "g", "members": ["lamp-1", "nobody"]}),
            "members: unknown appliance(s) nobody",
        ),
        (json!({"op": "reboot"}), "unknown op \"reboot\""),
        (json!({"v": 2, "op": "list"}), "version 2"),
        (json!({"id": "x"}), "needs an op"),
    ];
    for (payload, why) in cases {
        let r = gateway(&cloud, payload.clone()).await;
        assert_eq!(r["status"], "rejected", "{payload}: {r}");
        let error = r["error"].as_str().unwrap();
        assert!(error.contains(why), "{payload}: {error}");
    }
    // Nothing was stored by any of them.
    assert!(!dir.path().join("state/managed.toml").exists());

    // A change that cannot be written is an `error`, not a refusal, and changes nothing
    // (the store is written beside and renamed: a directory in the way makes it fail,
    // even for root).
    let blocker = dir.path().join("state/managed.toml.new");
    std::fs::create_dir(&blocker).unwrap();
    let r = gateway(
        &cloud,
        json!({"op": "put_appliance", "appliance": {"id": "lamp-3", "transport": "mqtt", "password": "x"}}),
    )
    .await;
    assert_eq!(r["status"], "error", "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("nothing changed"),
        "{r}"
    );
    std::fs::remove_dir(&blocker).unwrap();
    let r = gateway(&cloud, json!({"op": "list"})).await;
    assert_eq!(
        r["payload"]["appliances"].as_array().unwrap().len(),
        1,
        "{r}"
    );

    // `list` shows where each entry comes from.
    let r = gateway(
        &cloud,
        json!({"op": "put_appliance", "appliance": {"id": "lamp-2", "transport": "mqtt", "password": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$0wdbiJsQxVnQh5KRR2kZ1Xbj/4ipK8ODOJmvvBmwK8M"}}),
    )
    .await;
    assert_eq!(r["status"], "ok", "{r}");
    let r = gateway(&cloud, json!({"op": "list"})).await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"]["appliances"][0]["profile"], "tether", "{r}");
    let sources: Vec<(String, String)> = r["payload"]["appliances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_owned(),
                a["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        [
            ("lamp-1".to_owned(), "file".to_owned()),
            ("lamp-2".to_owned(), "cloud".to_owned())
        ]
    );

    // check-config shows the same.
    let out = tetherd(&["check-config", "--config", cfg.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("lamp-2") && l.ends_with("cloud")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("lamp-1") && l.ends_with("file")),
        "{stdout}"
    );
}

/// The text a `tetherd metrics` scrape gave, parsed by Python's prometheus_client:
/// one line per sample, `name{labels} value`, labels sorted.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value!r}")
"#;
    let out = run_with_input(
        Command::new("/usr/bin/python3").args(["-c", script]),
        text.as_bytes(),
    );
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

fn sample(samples: &[(String, f64)], name: &str) -> f64 {
    samples
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no sample {name}: {samples:?}"))
        .1
}

#[tokio::test]
async fn status_and_metrics_answer_over_the_control_socket() {
    let dir = TempDir::new("fleet-status");
    let cloud = DevCloud::start(dir.path(), &[]);
    let metrics_port = free_port();
    let cfg = config(
        dir.path(),
        &cloud,
        &["lamp-1", "lamp-2"],
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    );
    let daemon = Tetherd::start(&cfg);
    let mut app = Appliance::connect(daemon.mqtt, "lamp-1", Behaviour::Manual).await;
    let mut done = Vec::new();
    for (i, ok) in [true, true, false].into_iter().enumerate() {
        let id = cloud
            .enqueue(json!({"target": "lamp-1", "payload": {"n": i}}))
            .await;
        assert_eq!(app.next_command().await.0, id);
        app.answer(&id, ok, json!("fine")).await;
        done.push(cloud.result(&id).await);
    }
    // One command that waits: lamp-1 holds it (the appliance does not answer yet).
    let running = cloud
        .enqueue(json!({"target": "lamp-1", "payload": {"n": "last"}}))
        .await;
    assert_eq!(app.next_command().await.0, running);

    let sock = dir.path().join("control.sock");
    let out = tetherd(&["status", "--json", "--config", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["gateway"], GATEWAY, "{s}");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"), "{s}");
    assert_eq!(s["cloud"]["state"], "online", "{s}");
    assert!(s["cloud"]["polls"].as_u64().unwrap() >= 3, "{s}");
    let lamp1 = &s["appliances"][0];
    assert_eq!(lamp1["id"], "lamp-1", "{s}");
    assert_eq!(lamp1["online"], true, "{s}");
    assert_eq!(lamp1["source"], "file", "{s}");
    assert_eq!(lamp1["commands_done"], 2, "{s}");
    assert_eq!(lamp1["commands_failed"], 1, "{s}");
    assert_eq!(lamp1["commands_waiting"], 1, "{s}");
    let lamp2 = &s["appliances"][1];
    assert_eq!(lamp2["online"], false, "{s}");
    assert_eq!(s["journal"]["commands_running"], 1, "{s}");

    // The same as text.
    let out = tetherd(&["status", "--socket", sock.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("cloud: online since"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("lamp-1") && l.contains("1 waiting, 2 done, 1 failed")),
        "{text}"
    );

    // The `status` gateway command gives the cloud the same facts.
    let r = gateway(&cloud, json!({"op": "status"})).await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"]["appliances"][0]["commands_done"], 2, "{r}");

    // Metrics: from the socket and from the listener, valid text, values as done.
    let out = tetherd(&["metrics", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success());
    let samples = parse_metrics(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        sample(&samples, "tether_commands_total{status=\"ok\"}"),
        3.0
    );
    assert_eq!(
        sample(&samples, "tether_commands_total{status=\"error\"}"),
        1.0
    );
    assert_eq!(
        sample(&samples, "tether_command_duration_seconds_count{}"),
        4.0
    );
    assert_eq!(sample(&samples, "tether_appliances_online{}"), 1.0);
    assert_eq!(sample(&samples, "tether_commands_running{}"), 1.0);
    assert_eq!(sample(&samples, "tether_cloud_up{}"), 1.0);
    assert!(
        sample(
            &samples,
            "tether_cloud_requests_total{outcome=\"ok\",request=\"poll\"}"
        ) >= 3.0
    );
    assert_eq!(
        sample(
            &samples,
            "tether_appliances{source=\"file\",transport=\"mqtt\"}"
        ),
        2.0
    );
    let body = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap();
    assert!(body.status().is_success());
    assert!(
        body.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let samples = parse_metrics(&body.text().await.unwrap());
    assert_eq!(
        sample(&samples, "tether_commands_total{status=\"ok\"}"),
        3.0
    );
    app.answer(&running, true, json!("late")).await;
    cloud.result(&running).await;
}

#[test]
fn status_without_a_daemon_says_so_in_one_line() {
    let dir = TempDir::new("fleet-nodaemon");
    let sock = dir.path().join("none.sock");
    let out = tetherd(&["status", "--socket", sock.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not running"), "{stderr}");
}

#[tokio::test]
async fn the_control_socket_admits_its_group_only() {
    let dir = TempDir::new("fleet-perm");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["lamp-1"], "");
    let daemon = Tetherd::start(&cfg);
    daemon.log.wait_async("control socket at").await;
    let sock = dir.path().join("control.sock");
    let meta = std::fs::metadata(&sock).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    // Another user in the socket's group may ask; one outside it may not. (The unit runs
    // the daemon as tether, so that group is tether.) Changing user takes root.
    let uid = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test runs the client as another user: run the tests as root"
    );
    let as_user = |groups: &str| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                groups,
                env!("CARGO_BIN_EXE_tetherd"),
                "status",
                "--socket",
                sock.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let member = as_user(&format!("--groups={}", meta.gid()));
    assert!(
        member.status.success(),
        "{}",
        String::from_utf8_lossy(&member.stderr)
    );
    assert!(String::from_utf8_lossy(&member.stdout).contains("lamp-1"));
    let stranger = as_user("--clear-groups");
    let stderr = String::from_utf8_lossy(&stranger.stderr);
    assert_eq!(stranger.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
}
