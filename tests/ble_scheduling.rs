//! BLE links as a scheduled resource: never more than `ble.max_connections` links up, all
//! commands served in order per appliance, idle links closed, and a command whose TTL or
//! timeout runs out while it waits for a link is reported without being sent.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

#[path = "common/ble_rig.rs"]
mod ble_rig;
#[path = "common/bluez.rs"]
mod bluez;
mod common;

use std::collections::HashMap;

use ble_rig::{BleRig, ble_appliance, hex};
use serde_json::{Value, json};

fn address(n: usize) -> String {
    format!("AA:BB:CC:DD:EE:{:02X}", 0x30 + n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_commands_than_links_all_complete_in_order_within_the_cap() {
    const APPLIANCES: usize = 6;
    const PER_APPLIANCE: usize = 4;
    let mut extra: String = (0..APPLIANCES)
        .map(|i| ble_appliance(&format!("dev-{i}"), &address(i), ""))
        .collect();
    extra.push_str("\n[ble]\nmax_connections = 2\n");
    let rig = BleRig::start("ble-cap", &[], &extra, |fake| {
        for i in 0..APPLIANCES {
            // Answers take a moment, so links are held while others wait.
            BleRig::add_device(fake, &address(i), json!({"mode": "echo", "delay_ms": 30}));
        }
    });
    // Every device known to BlueZ before the burst, so the burst is about links only.
    for i in 0..APPLIANCES {
        rig.wait_fake(json!({"until": "exported", "address": address(i)}))
            .await;
    }
    let cmds: Vec<Value> = (0..PER_APPLIANCE)
        .flat_map(|n| {
            (0..APPLIANCES).map(move |i| {
                json!({"target": format!("dev-{i}"), "payload": {"n": n}, "timeout_ms": 30000})
            })
        })
        .collect();
    let ids = rig.cloud.enqueue_many(cmds).await;
    for id in &ids {
        let r = rig.cloud.result(id).await["result"].clone();
        assert_eq!(r["status"], "ok", "{id}: {r}");
    }
    let stats = rig.stats().await;
    assert!(
        stats["max_connected"].as_u64().unwrap() <= 2,
        "more links than ble.max_connections: {stats}"
    );
    assert_eq!(stats["max_connected"], 2, "the cap is used: {stats}");
    // Each appliance got its commands exactly once, in order.
    let mut written: HashMap<String, Vec<String>> = HashMap::new();
    for w in stats["writes"].as_array().unwrap() {
        written
            .entry(w["address"].as_str().unwrap().to_owned())
            .or_default()
            .push(w["hex"].as_str().unwrap().to_owned());
    }
    for i in 0..APPLIANCES {
        let want: Vec<String> = (0..PER_APPLIANCE)
            .map(|n| hex(json!({"n": n}).to_string().as_bytes()))
            .collect();
        assert_eq!(written[&address(i)], want, "dev-{i}");
    }
    // Dozens of links opened and closed: the daemon's D-Bus match rules stay bounded
    // (bluez-async adds one per stream; a leak would hit the bus limit of 512).
    let (bus, rules) = rig.fake.match_rules().await;
    assert!(
        rules.iter().all(|n| *n <= 16),
        "match rules per client: {bus}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_link_is_reused_then_closed_after_idle_disconnect() {
    let lamp = address(10);
    let mut extra = ble_appliance("lamp", &lamp, "");
    extra.push_str("\n[ble]\nidle_disconnect = \"1500ms\"\n");
    let rig = BleRig::start("ble-idle", &[], &extra, |fake| {
        BleRig::add_device(fake, &lamp, json!({}));
    });
    // One batch: the lane runs them back to back, so no gap between them can reach the
    // idle timeout however slow the machine.
    let ids = rig
        .cloud
        .enqueue_many(
            (0..3)
                .map(|n| json!({"target": "lamp", "payload": n}))
                .collect(),
        )
        .await;
    for id in &ids {
        let r = rig.cloud.result(id).await["result"].clone();
        assert_eq!(r["status"], "ok", "{r}");
    }
    assert_eq!(
        rig.stats().await["connects"][&lamp],
        1,
        "one link for the burst"
    );
    rig.wait_fake(json!({"until": "disconnected", "address": lamp}))
        .await;
    rig.daemon
        .log
        .wait_async("closing idle link APPLIANCE=lamp")
        .await;
    let r = rig.run(json!({"target": "lamp", "payload": 3})).await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(
        rig.stats().await["connects"][&lamp],
        2,
        "reconnected after idling"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_deadline_passes_while_waiting_for_a_link_is_never_sent() {
    let (busy, ttl, short) = (address(20), address(21), address(22));
    let extra = [
        ble_appliance("busy", &busy, ""),
        ble_appliance("ttl", &ttl, ""),
        ble_appliance("short", &short, ""),
        "\n[ble]\nmax_connections = 1\n".to_owned(),
    ]
    .concat();
    let rig = BleRig::start("ble-wait", &[], &extra, |fake| {
        BleRig::add_device(fake, &busy, json!({"mode": "silent"}));
        BleRig::add_device(fake, &ttl, json!({}));
        BleRig::add_device(fake, &short, json!({}));
    });
    // "busy" holds the only link until its command times out.
    let held = rig
        .cloud
        .enqueue(json!({"target": "busy", "payload": 0, "timeout_ms": 4000}))
        .await;
    rig.wait_fake(json!({"until": "writes", "address": busy}))
        .await;
    // TTL runs out while waiting: expired. Timeout runs out while waiting: unreachable.
    let expired = rig
        .cloud
        .enqueue(json!({"target": "ttl", "payload": 1, "ttl_ms": 300, "timeout_ms": 10000}))
        .await;
    let unsent = rig
        .cloud
        .enqueue(json!({"target": "short", "payload": 2, "timeout_ms": 300}))
        .await;
    let r = rig.cloud.result(&expired).await["result"].clone();
    assert_eq!(r["status"], "expired", "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("max_connections"),
        "{r}"
    );
    let r = rig.cloud.result(&unsent).await["result"].clone();
    assert_eq!(r["status"], "unreachable", "{r}");
    assert!(r["error"].as_str().unwrap().contains("not sent"), "{r}");
    let r = rig.cloud.result(&held).await["result"].clone();
    assert_eq!(r["status"], "timeout", "{r}");
    assert!(rig.writes(&ttl).await.is_empty() && rig.writes(&short).await.is_empty());
    // The link is free again: the same appliance now gets through (after busy's idle link
    // is closed for it).
    let r = rig.run(json!({"target": "short", "payload": 3})).await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(rig.stats().await["max_connected"], 1);
}
