//! The cloud link in Protocol Buffers (`cloud.encoding = "protobuf"`), end to end: the
//! devcloud over TLS + HTTP/2 answering in the request's encoding, the real `tetherd`,
//! rumqttc appliances, and a BLE appliance on the fake BlueZ receiving raw bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

#[path = "common/ble_rig.rs"]
mod ble_rig;
#[path = "common/bluez.rs"]
mod bluez;
mod common;

use ble_rig::{BleRig, ble_appliance, hex};
use common::*;
use serde_json::json;

const PROTOBUF: &str = "encoding = \"protobuf\"\n";

fn protobuf_config(
    dir: &std::path::Path,
    cloud: &DevCloud,
    apps: &[&str],
    extra: &str,
) -> std::path::PathBuf {
    let cfg = config(dir, cloud, apps, extra);
    add_cloud_keys(&cfg, PROTOBUF);
    cfg
}

/// Every request the devcloud saw was protobuf, on one connection.
async fn only_protobuf_on_one_connection(cloud: &DevCloud) {
    let stats = cloud.stats().await;
    assert_eq!(stats["requests_json"], 0, "{stats}");
    assert!(stats["requests_protobuf"].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(stats["connections"], 1, "{stats}");
    assert_eq!(stats["tls_handshakes"], 1, "{stats}");
    let commands = cloud.commands().await;
    assert_eq!(commands["encoding"], "protobuf", "{commands}");
    assert!(
        commands["requests_by_encoding"].get("json").is_none(),
        "{commands}"
    );
}

#[tokio::test]
async fn two_hundred_commands_groups_and_events_in_protobuf_exactly_once() {
    let dir = TempDir::new("pb-load");
    let cloud = DevCloud::start(dir.path(), &[]);
    let ids: Vec<String> = (0..10).map(|i| format!("dev-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let cfg = protobuf_config(
        dir.path(),
        &cloud,
        &refs,
        "[groups]\npair = [\"dev-0\", \"dev-1\"]\n",
    );
    let daemon = Tetherd::start(&cfg);
    let mut apps = Vec::new();
    for id in &ids {
        apps.push(Appliance::connect(daemon.mqtt, id, Behaviour::Echo).await);
    }
    // Integers past 2^53 stay exact: payloads travel as JSON text.
    let big = 9_007_199_254_740_993_u64;
    let cmds = (0..200)
        .map(|n| json!({"target": ids[n % 10], "payload": {"n": n, "big": big}}))
        .collect();
    let cmd_ids = cloud.enqueue_many(cmds).await;
    for id in &cmd_ids {
        let r = &cloud.result(id).await["result"];
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["payload"]["echo"]["big"], big, "{r}");
    }
    assert_each_stored_once(&cloud, 200).await;
    assert_received_in_order(&mut apps, 200);

    // A group and a list: one result, with items.
    for target in [json!("group:pair"), json!(["dev-2", "dev-3"])] {
        let id = cloud
            .enqueue(json!({"target": target, "payload": {"x": 1}}))
            .await;
        let r = cloud.result(&id).await["result"].clone();
        let items = item_statuses(&r);
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(items.len(), 2, "{r}");
        assert!(items.values().all(|s| s == "ok"), "{r}");
    }

    // An appliance's event, with its JSON payload intact.
    apps[4]
        .client
        .publish(
            "tether/dev-4/events",
            rumqttc::QoS::AtLeastOnce,
            false,
            json!({"temp": 21.5, "tags": ["a", null]}).to_string(),
        )
        .await
        .unwrap();
    eventually("the event in the cloud", || async {
        cloud.events().await.into_iter().find(|e| {
            e["appliance"] == "dev-4"
                && e["kind"] == "event"
                && e["payload"] == json!({"temp": 21.5, "tags": ["a", null]})
        })
    })
    .await;
    only_protobuf_on_one_connection(&cloud).await;
}

#[tokio::test]
async fn results_flush_early_in_protobuf_while_a_poll_is_held() {
    let dir = TempDir::new("pb-flush");
    let cloud = DevCloud::start(dir.path(), &["--wait-s", "30"]);
    let cfg = protobuf_config(dir.path(), &cloud, &["valve"], "");
    let daemon = Tetherd::start(&cfg);
    let mut valve = Appliance::connect(daemon.mqtt, "valve", Behaviour::Manual).await;
    flush_rounds_during_held_polls(&cloud, &mut valve, 3).await;
    only_protobuf_on_one_connection(&cloud).await;
}

/// A body limit refuses a protobuf poll with 413: the gateway carries fewer results per
/// request until they fit, and every one arrives.
#[tokio::test]
async fn batch_narrowing_on_413_works_in_protobuf() {
    let dir = TempDir::new("pb-413");
    let cloud = DevCloud::start(dir.path(), &["--max-body-bytes", "6000", "--wait-s", "1"]);
    let cfg = protobuf_config(dir.path(), &cloud, &["big"], "");
    let daemon = Tetherd::start(&cfg);
    let mut big = Appliance::connect(daemon.mqtt, "big", Behaviour::Echo).await;
    // The cloud's result store is down: the results pile up in the gateway.
    cloud.ignore_results(true).await;
    // Each echoed answer is ~1.5 KB: ten owed at once do not fit in 6,000 bytes.
    let ids = cloud
        .enqueue_many(
            (0..10)
                .map(|n| json!({"target": "big", "payload": {"n": n, "pad": "x".repeat(1500)}}))
                .collect(),
        )
        .await;
    for _ in 0..10 {
        big.next_command().await;
    }
    cloud.ignore_results(false).await;
    for id in &ids {
        assert_eq!(cloud.result(id).await["result"]["status"], "ok", "{id}");
    }
    daemon.log.wait_async("cloud refused the request").await;
    let stats = cloud.stats().await;
    assert_eq!(stats["requests_json"], 0, "{stats}");
}

/// A cloud that speaks JSON only answers 415: the gateway says so once and speaks JSON
/// from then on, losing nothing.
#[tokio::test]
async fn a_json_only_cloud_gets_json_after_one_415() {
    json_only_cloud("415").await;
}

/// Many JSON-only servers answer a body they cannot parse with 400. Before protobuf has
/// worked once, that too means "no protobuf here", not "this result is bad": nothing is
/// quarantined or dropped.
#[tokio::test]
async fn a_json_only_cloud_answering_400_gets_json_and_loses_nothing() {
    json_only_cloud("400").await;
}

async fn json_only_cloud(status: &str) {
    let dir = TempDir::new(&format!("pb-{status}"));
    let cloud = DevCloud::start(dir.path(), &["--json-only", "--json-only-status", status]);
    let cfg = protobuf_config(dir.path(), &cloud, &["lamp"], "");
    let daemon = Tetherd::start(&cfg);
    let lamp = Appliance::connect(daemon.mqtt, "lamp", Behaviour::Echo).await;
    // An event owed before the first request, so a refusal could be blamed on it.
    lamp.client
        .publish(
            "tether/lamp/events",
            rumqttc::QoS::AtLeastOnce,
            false,
            r#"{"early":1}"#,
        )
        .await
        .unwrap();
    for n in 0..3 {
        let id = cloud
            .enqueue(json!({"target": "lamp", "payload": {"n": n}}))
            .await;
        assert_eq!(cloud.result(&id).await["result"]["status"], "ok");
    }
    eventually("the early event", || async {
        cloud
            .events()
            .await
            .into_iter()
            .find(|e| e["payload"] == json!({"early": 1}))
    })
    .await;
    let stats = cloud.stats().await;
    assert_eq!(stats["unsupported_media"], 1, "asked once: {stats}");
    assert_eq!(stats["requests_protobuf"], 0, "{stats}");
    assert!(stats["requests_json"].as_u64().unwrap() >= 3, "{stats}");
    assert_eq!(stats["connections"], 1, "{stats}");
    assert_eq!(
        daemon
            .log
            .count(&format!("does not take protobuf (HTTP {status})")),
        1
    );
    assert_eq!(daemon.log.count("quarantined"), 0);
    assert_eq!(daemon.log.count("refuses an event"), 0);
    assert_eq!(cloud.commands().await["encoding"], "json");
}

/// The cloud steers the HTTP/2 PING interval: with `cloud.ping_interval` at an hour, the
/// PINGs the devcloud counts can only come from its `ping_s = 10`.
#[tokio::test]
async fn the_cloud_steers_the_ping_interval() {
    let dir = TempDir::new("pb-ping");
    let cloud = DevCloud::start(
        dir.path(),
        &["--ping-s", "10", "--wait-s", "3600", "--max-wait-s", "3600"],
    );
    let cfg = protobuf_config(dir.path(), &cloud, &["lamp"], "");
    add_cloud_keys(&cfg, "ping_interval = \"1h\"\n");
    let daemon = Tetherd::start(&cfg);
    daemon
        .log
        .wait_async("cloud asks for an HTTP/2 PING every 10 s (was 3600 s)")
        .await;
    let stats = eventually("two PINGs on the held poll's connection", || async {
        let s = cloud.stats().await;
        (s["pings_received"].as_u64().unwrap() >= 2).then_some(s)
    })
    .await;
    // The first connection (1 h PINGs) was replaced once, for good.
    assert_eq!(stats["tls_handshakes"], 2, "{stats}");
    assert_eq!(daemon.log.count("cloud asks for an HTTP/2 PING"), 1);
    // The link still works.
    let _lamp = Appliance::connect(daemon.mqtt, "lamp", Behaviour::Echo).await;
    let id = cloud.enqueue(json!({"target": "lamp", "payload": 1})).await;
    assert_eq!(cloud.result(&id).await["result"]["status"], "ok");
}

/// In protobuf a command may carry raw bytes: a BLE appliance gets them written as they
/// are, whatever its `encoding`; an MQTT appliance (JSON only) gets an `error`, unsent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ble_appliance_receives_raw_bytes() {
    const LAMP: &str = "AA:BB:CC:DD:EE:31";
    let rig = BleRig::start_with(
        "pb-ble",
        &["mq"],
        &ble_appliance("lamp", LAMP, "encoding = \"hex\"\n"),
        PROTOBUF,
        |fake| BleRig::add_device(fake, LAMP, json!({"mode": "echo"})),
    );
    let bytes = [0x00, 0x01, 0xfe, 0xff, b'{'];
    // `payload_base64` is how the devcloud's admin API spells raw bytes.
    let r = rig
        .run(json!({"target": "lamp", "payload_base64": "AAH+/3s=", "timeout_ms": 5000}))
        .await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(rig.writes(LAMP).await, vec![hex(&bytes)]);
    // The answer follows the appliance's encoding.
    assert_eq!(r["payload"], hex(&bytes), "{r}");

    let _mq = Appliance::connect(rig.daemon.mqtt, "mq", Behaviour::Echo).await;
    let r = rig
        .run(json!({"target": "mq", "payload_base64": "AAE="}))
        .await;
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("raw bytes"), "{r}");
}

/// Plain polling (`interval_s`), the cadence for metered or battery links, works in
/// protobuf as in JSON: the cadence rides in every response and commands still arrive.
#[tokio::test]
async fn plain_polling_works_in_protobuf() {
    let dir = TempDir::new("pb-interval");
    let cloud = DevCloud::start(dir.path(), &["--wait-s", "0", "--interval-s", "1"]);
    let cfg = protobuf_config(dir.path(), &cloud, &["lamp"], "");
    let daemon = Tetherd::start(&cfg);
    let _lamp = Appliance::connect(daemon.mqtt, "lamp", Behaviour::Echo).await;
    for n in 0..2 {
        let id = cloud
            .enqueue(json!({"target": "lamp", "payload": {"n": n}}))
            .await;
        let r = cloud.result(&id).await;
        assert_eq!(r["result"]["payload"]["echo"], json!({"n": n}), "{r}");
    }
    let stats = cloud.stats().await;
    assert_eq!(stats["requests_json"], 0, "{stats}");
    assert_eq!(stats["connections"], 1, "{stats}");
}
