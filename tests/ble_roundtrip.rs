//! BLE appliances end to end: the devcloud over TLS, the real `tetherd`, btleplug's real
//! Linux path (bluez-async, libdbus) against the fake BlueZ on a private bus.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

#[path = "common/ble_rig.rs"]
mod ble_rig;
#[path = "common/bluez.rs"]
mod bluez;
mod common;

use ble_rig::{BleRig, COMMAND, ble_appliance, hex};
use serde_json::json;

const LAMP: &str = "AA:BB:CC:DD:EE:01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_command_reaches_a_ble_appliance_and_its_answer_comes_back() {
    let rig = BleRig::start("ble-one", &[], &ble_appliance("lamp", LAMP, ""), |fake| {
        BleRig::add_device(fake, LAMP, json!({"mode": "echo"}));
    });
    let payload = json!({"power": "on", "level": 3});
    let r = rig
        .run(json!({"target": "lamp", "payload": payload, "timeout_ms": 5000}))
        .await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"], payload, "the echo, parsed as JSON: {r}");
    // Exactly the payload's JSON was written, once, with response.
    let stats = rig.stats().await;
    let writes = stats["writes"].as_array().unwrap();
    assert_eq!(writes.len(), 1, "{stats}");
    assert_eq!(writes[0]["char"], COMMAND);
    assert_eq!(writes[0]["type"], "request");
    assert_eq!(
        writes[0]["hex"],
        hex(&serde_json::to_vec(&payload).unwrap())
    );
    // The router's log names the transport; presence went upstream.
    rig.daemon.log.wait_async("TRANSPORT=ble STATUS=ok").await;
    let events = rig.cloud.events().await;
    assert!(
        events
            .iter()
            .any(|e| e["appliance"] == "lamp" && e["kind"] == "online"),
        "{events:?}"
    );
    // `tetherd status` shows it found, from the file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tetherd"))
        .args(["status", "--json", "--socket"])
        .arg(rig.dir.path().join("control.sock"))
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lamp = &status["appliances"][0];
    assert_eq!(lamp["id"], "lamp", "{status}");
    assert_eq!(lamp["transport"], "ble", "{status}");
    assert!(
        lamp["profile"].is_null(),
        "BLE has no MQTT profile: {status}"
    );
    assert_eq!(lamp["online"], true, "{status}");
    assert!(lamp["since"].is_string(), "{status}");
    assert_eq!(lamp["commands_done"], 1, "{status}");
    // A second command reuses the link: one connection for both.
    let r = rig.run(json!({"target": "lamp", "payload": [1, 2]})).await;
    assert_eq!(r["payload"], json!([1, 2]), "{r}");
    assert_eq!(rig.stats().await["connects"][LAMP], 1);
    // A clean stop disconnects what the daemon connected.
    let mut rig = rig;
    assert!(rig.daemon.terminate().success());
    assert_eq!(rig.stats().await["connected"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_encoding_round_trips_and_mismatched_payloads_are_refused_unsent() {
    let addr = |n: u8| format!("AA:BB:CC:DD:EE:{n:02X}");
    let extra = [
        ble_appliance("j", &addr(0x10), "encoding = \"json\"\n"),
        ble_appliance("u", &addr(0x11), "encoding = \"utf8\"\n"),
        ble_appliance("h", &addr(0x12), "encoding = \"hex\"\n"),
        ble_appliance("b", &addr(0x13), "encoding = \"base64\"\n"),
        ble_appliance("not-json", &addr(0x14), ""),
        ble_appliance("reads", &addr(0x15), ""),
    ]
    .concat();
    let rig = BleRig::start("ble-enc", &[], &extra, |fake| {
        for n in 0x10..=0x13 {
            BleRig::add_device(fake, &addr(n), json!({"mode": "echo"}));
        }
        BleRig::add_device(
            fake,
            &addr(0x14),
            json!({"mode": "reply", "reply_utf8": "OK!"}),
        );
        // No notify flag on the result characteristic: the answer is read after the write.
        BleRig::add_device(
            fake,
            &addr(0x15),
            json!({"mode": "silent", "read_value_utf8": "{\"temp\": 21.5}"}),
        );
    });
    let cases = [
        (
            "j",
            json!({"set": [1, 2, 3]}),
            b"{\"set\":[1,2,3]}".to_vec(),
            json!({"set": [1, 2, 3]}),
        ),
        (
            "u",
            json!("héllo"),
            "héllo".as_bytes().to_vec(),
            json!("héllo"),
        ),
        (
            "h",
            json!("00FF10ab"),
            vec![0x00, 0xff, 0x10, 0xab],
            json!("00ff10ab"),
        ),
        (
            "b",
            json!("Zm9vYmFy"),
            b"foobar".to_vec(),
            json!("Zm9vYmFy"),
        ),
    ];
    for (i, (target, payload, bytes, answer)) in cases.into_iter().enumerate() {
        let r = rig.run(json!({"target": target, "payload": payload})).await;
        assert_eq!(r["status"], "ok", "{target}: {r}");
        assert_eq!(r["payload"], answer, "{target}: {r}");
        assert_eq!(
            rig.writes(&addr(0x10 + i as u8)).await,
            vec![hex(&bytes)],
            "{target}"
        );
    }
    // A payload that does not fit the encoding is an error, and nothing is written.
    for (target, payload, why) in [
        ("u", json!({"not": "a string"}), "utf8"),
        ("h", json!("abc"), "hex"),
        ("b", json!("not base64!"), "base64"),
        ("h", json!(42), "hex"),
    ] {
        let r = rig.run(json!({"target": target, "payload": payload})).await;
        assert_eq!(r["status"], "error", "{target} {payload}: {r}");
        let error = r["error"].as_str().unwrap();
        assert!(error.contains(why) && error.contains("not sent"), "{r}");
    }
    assert_eq!(rig.stats().await["writes"].as_array().unwrap().len(), 4);
    // An answer that is not JSON, for a json appliance, is an error naming the bytes.
    let r = rig.run(json!({"target": "not-json", "payload": {}})).await;
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("not JSON"), "{r}");
    // Read fallback.
    let r = rig
        .run(json!({"target": "reads", "payload": {"get": "temp"}}))
        .await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"], json!({"temp": 21.5}), "{r}");
    assert_eq!(rig.stats().await["reads"], 1);
}
