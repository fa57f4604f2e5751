//! A good systemd citizen, with the real binary: sd_notify (READY, STATUS, WATCHDOG,
//! RELOADING, STOPPING) on a datagram NOTIFY_SOCKET, reload on SIGHUP, a graceful SIGTERM,
//! and journald fields through a private mount namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::process::{Command, Stdio};

use common::*;
use rumqttc::ConnectReturnCode;
use serde_json::json;

#[tokio::test]
async fn notify_ready_status_watchdog_reload_and_stopping() {
    let dir = TempDir::new("notify");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["n-1"], "");
    let sock = dir.path().join("notify.sock");
    let notes = Lines::from_datagrams(&sock);
    let mut daemon = Tetherd::start_with_env(
        &cfg,
        &[
            ("NOTIFY_SOCKET", sock.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let ready = notes.wait_for("READY=1");
    assert!(ready.contains("STATUS="), "{ready}");
    // Watchdog pings at half the period, while the loops turn.
    let first = notes.wait_for("WATCHDOG=1");
    let n = notes.len();
    notes.wait_from(n, "WATCHDOG=1");
    // STATUS follows the state: the cloud link comes up, an appliance connects.
    notes.wait_for("cloud online");
    let _app = Appliance::connect(daemon.mqtt, "n-1", Behaviour::Echo).await;
    notes.wait_for("1/1 appliances online");
    assert!(!first.is_empty());
    // SIGHUP: RELOADING=1 with a monotonic timestamp, then READY=1 again.
    let n = notes.len();
    daemon.signal("HUP");
    let reloading = notes.wait_from(n, "RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    notes.wait_from(n, "READY=1");
    // SIGTERM: STOPPING=1 and a clean exit.
    let n = notes.len();
    daemon.signal("TERM");
    notes.wait_from(n, "STOPPING=1");
    assert!(daemon.wait().success());
}

#[tokio::test]
async fn a_wedged_uplink_loop_stops_the_watchdog_pings() {
    let dir = TempDir::new("wedge");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["w-1"], "");
    let sock = dir.path().join("notify.sock");
    let notes = Lines::from_datagrams(&sock);
    let daemon = Tetherd::start_with_env(
        &cfg,
        &[
            ("NOTIFY_SOCKET", sock.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
            // Fault hook (src/fault.rs, only in the tests' build): the uplink loop stops
            // turning after a poll that brings commands.
            ("TETHER_FAULT", "wedge-uplink"),
        ],
    );
    notes.wait_for("WATCHDOG=1");
    cloud.enqueue(json!({"target": "w-1"})).await;
    daemon.log.wait_async("stops turning now").await;
    daemon.log.wait_async("withholding watchdog pings").await;
    let pings = |notes: &Lines| {
        notes
            .all()
            .iter()
            .filter(|n| n.contains("WATCHDOG=1"))
            .count()
    };
    let before = pings(&notes);
    // Two more supervisor turns (one per second): still no ping.
    let n = daemon.log.len();
    daemon.log.wait_from(n, "still withholding");
    let n = daemon.log.len();
    daemon.log.wait_from(n, "still withholding");
    assert_eq!(
        pings(&notes),
        before,
        "watchdog pinged while the uplink loop was wedged"
    );
}

#[tokio::test]
async fn sighup_applies_a_good_config_and_keeps_the_old_one_on_errors() {
    let dir = TempDir::new("reload");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(
        dir.path(),
        &cloud,
        &["old-1", "keep-1"],
        "[groups]\ng = [\"old-1\"]\n",
    );
    let daemon = Tetherd::start(&cfg);
    let _keep = Appliance::connect(daemon.mqtt, "keep-1", Behaviour::Echo).await;
    let mut old = Appliance::connect(daemon.mqtt, "old-1", Behaviour::Echo).await;
    // Once removed it must stay away, not retry until 127.0.0.1's connection rate runs out.
    old.received.close();
    let refused = Ok(ConnectReturnCode::NotAuthorized);
    assert_eq!(
        try_connect(daemon.mqtt, "new-1", "new-1", &password("new-1")).await,
        refused
    );

    // A good config: new-1 added, old-1 removed, the group now names new-1.
    config(
        dir.path(),
        &cloud,
        &["keep-1", "new-1"],
        "[groups]\ng = [\"new-1\", \"keep-1\"]\n",
    );
    daemon.signal("HUP");
    daemon
        .log
        .wait_async("configuration reloaded: 2 appliance(s), 1 group(s)")
        .await;
    daemon
        .log
        .wait_async("configuration changed: disconnecting the appliance APPLIANCE=old-1")
        .await;
    let _new = Appliance::connect(daemon.mqtt, "new-1", Behaviour::Echo).await;
    assert_eq!(
        try_connect(daemon.mqtt, "old-1", "old-1", &password("old-1")).await,
        refused
    );
    let id = cloud.enqueue(json!({"target": "group:g"})).await;
    let r = cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "ok", "{r}");
    let id = cloud.enqueue(json!({"target": "old-1"})).await;
    assert_eq!(cloud.result(&id).await["result"]["status"], "rejected");

    // A broken config is refused with its problem named, and the one in force stays.
    let path = dir.path().join("tetherd.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        good.replace("[groups]", "[groups]\nbad = [\"ghost\"]\n[mqtt2]"),
    )
    .unwrap();
    daemon.signal("HUP");
    daemon.log.wait_async("reload refused").await;
    daemon.log.wait_async("groups.bad").await;
    let id = cloud.enqueue(json!({"target": "group:g"})).await;
    assert_eq!(cloud.result(&id).await["result"]["status"], "ok");
    // What cannot change live is reported and kept.
    std::fs::write(&path, good.replace("127.0.0.1:0", "127.0.0.1:1")).unwrap();
    daemon.signal("HUP");
    daemon
        .log
        .wait_async("mqtt.listen changed; it takes effect at the next restart")
        .await;
}

// Multi-threaded: the appliance's MQTT loop must keep running while the test blocks on
// the daemon's exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_commands_finish_and_reports_the_rest_next_time() {
    let dir = TempDir::new("stop");
    let cloud = DevCloud::start(dir.path(), &[]);
    let port = free_port();
    // The appliance reconnects by itself after each restart; commands wait for it.
    let mqtt = mqtt_on(port, "10s");
    let cfg = config_with_mqtt(dir.path(), &cloud, &["s-1"], &mqtt, "");
    let mut daemon = Tetherd::start(&cfg);
    let mut app = Appliance::connect(daemon.mqtt, "s-1", Behaviour::Manual).await;
    // In flight at SIGTERM, answered during the grace period: its result reaches the cloud.
    let id = cloud
        .enqueue(json!({"target": "s-1", "timeout_ms": 60000}))
        .await;
    assert_eq!(app.next_command().await.0, id);
    daemon.signal("TERM");
    daemon.log.wait_async("waiting up to").await;
    app.answer(&id, true, json!("done in the grace period"))
        .await;
    assert!(daemon.wait().success());
    let r = cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "ok", "{r}");

    // Not answered within the grace period: the daemon still exits 0, and the next start
    // reports it interrupted.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("[gateway]\n", "[gateway]\nstop_grace = \"500ms\"\n"),
    )
    .unwrap();
    let mut daemon = Tetherd::start(&cfg);
    let id = cloud
        .enqueue(json!({"target": "s-1", "timeout_ms": 60000}))
        .await;
    assert_eq!(app.next_command().await.0, id);
    daemon.signal("TERM");
    assert!(daemon.wait().success());
    let _daemon = Tetherd::start(&cfg);
    let r = cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "interrupted", "{r}");
}

#[tokio::test]
async fn journald_gets_structured_fields() {
    let dir = TempDir::new("journald");
    let cloud = DevCloud::start(dir.path(), &[]);
    let port = free_port();
    let mqtt = mqtt_on(port, "0s");
    let cfg = config_with_mqtt(
        dir.path(),
        &cloud,
        &["j-1"],
        &mqtt,
        "[log]\ntarget = \"journal\"\n",
    );
    let sock = dir.path().join("journal.sock");
    let journal = Lines::from_journal(&sock);
    // A private mount namespace where /run/systemd/journal/socket is our socket.
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && touch /run/systemd/journal/socket \
         && mount --bind {} /run/systemd/journal/socket && exec \"$0\" \"$@\"",
        sock.display()
    );
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(env!("CARGO_BIN_EXE_tetherd"))
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare (util-linux) and root");
    // Killed on drop, so a failing assertion does not leave the daemon running.
    let _reaper = KillOnDrop(Some(child));
    journal.wait_for("mqtt endpoint listening");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let _app = Appliance::connect(addr, "j-1", Behaviour::Echo).await;
    let id = cloud
        .enqueue(json!({"target": "j-1", "payload": {"secret": "s3cr3t-payload"}}))
        .await;
    cloud.result(&id).await;
    journal.wait_for("appliance finished command");
    let record = journal.wait_for(&format!("COMMAND_ID={id}\n"));
    let record = journal
        .all()
        .into_iter()
        .find(|r| r.contains(&format!("COMMAND_ID={id}\n")) && r.contains("STATUS="))
        .unwrap_or(record);
    for field in [
        "APPLIANCE=j-1\n",
        "TRANSPORT=mqtt\n",
        "STATUS=ok\n",
        "DURATION_MS=",
        "PRIORITY=5\n",
        "SYSLOG_IDENTIFIER=tetherd\n",
    ] {
        assert!(record.contains(field), "{field:?} missing in {record:?}");
    }
    // No payloads at info level.
    assert!(journal.all().iter().all(|r| !r.contains("s3cr3t-payload")));
}
