//! btleplug's real Linux path (bluez-async, libdbus) against the fake BlueZ on a private bus.
//!
//! ONE test in this binary: libdbus reads DBUS_SYSTEM_BUS_ADDRESS once per process, so every
//! BLE scenario that needs its own bus needs its own test binary (or cargo-nextest).
//!
//! Every wait is on a btleplug event stream or on a control answer, each with a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

#[path = "common/bluez.rs"]
mod bluez;

use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::time::{Duration, Instant};

use btleplug::api::{
    BDAddr, Central, CentralEvent, CentralState, CharPropFlags, Characteristic, Manager as _,
    Peripheral as _, ScanFilter, ValueNotification, WriteType,
};
use btleplug::platform::{Adapter, Manager, Peripheral};
use futures_util::{Stream, StreamExt};
use serde_json::json;
use uuid::Uuid;

use bluez::FakeBluez;

/// Deadline for any single wait; reached only when something is broken.
const PATIENCE: Duration = Duration::from_secs(20);

const LAMP: &str = "AA:BB:CC:DD:EE:01";
const LOCK: &str = "AA:BB:CC:DD:EE:02";
const LATE: &str = "AA:BB:CC:DD:EE:03";
const SERVICE: Uuid = Uuid::from_u128(0x7e7e0001_0000_4000_8000_00000000beef);
const COMMAND: Uuid = Uuid::from_u128(0x7e7e0002_0000_4000_8000_00000000beef);
const RESULT: Uuid = Uuid::from_u128(0x7e7e0003_0000_4000_8000_00000000beef);

type Events = Pin<Box<dyn Stream<Item = CentralEvent> + Send>>;
type Notifications = Pin<Box<dyn Stream<Item = ValueNotification> + Send>>;

/// Removes the test's scratch directory last (declared before the fake, so dropped after it).
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn btleplug_drives_the_fake_bluez() {
    let dir = std::env::temp_dir().join(format!(
        "tether-ble-{}-{:x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    // SAFETY: this is the first statement that touches the environment in a test binary that
    // holds this single test; no other thread exists yet that could read the environment
    // concurrently (the fake's helper threads and the tokio runtime are started below).
    // libdbus reads DBUS_SYSTEM_BUS_ADDRESS once per process, when btleplug first connects.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", FakeBluez::planned_address(&dir));
    }
    let _scratch = ScratchDir(dir.clone());
    let started = Instant::now();
    let fake = FakeBluez::start(&dir);
    assert!(
        fake.bus_address()
            .starts_with(&FakeBluez::planned_address(&dir)),
        "bus address {} is not the planned one",
        fake.bus_address()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(scenario(&fake));
    drop(runtime);
    eprintln!("ble_fake scenario took {:?}", started.elapsed());
}

async fn scenario(fake: &FakeBluez) {
    // Advertise every 100 ms, so discovery (and the one negative check) is quick.
    fake.expect_ok(json!({"op": "adv_interval_ms", "ms": 100}));
    let svc = SERVICE.to_string();
    let cmd = COMMAND.to_string();
    let res = RESULT.to_string();
    fake.add_device(LAMP, "lamp", &svc, &cmd, &res, json!({"mode": "echo"}));

    // --- Manager -> adapter hci0 -> scan -> the lamp, found through the event stream ---
    let manager = Manager::new()
        .await
        .expect("btleplug Manager on the private bus");
    let adapter = find_hci0(&manager).await;
    assert_eq!(
        adapter.adapter_state().await.unwrap(),
        CentralState::PoweredOn
    );
    let mut events = adapter.events().await.expect("central events");
    adapter
        .start_scan(ScanFilter::default())
        .await
        .expect("start_scan");
    // BlueZ allows one discovery session per D-Bus client: a second start_scan on the same
    // connection fails with org.bluez.Error.InProgress.
    let again = adapter.start_scan(ScanFilter::default()).await;
    assert!(
        again
            .as_ref()
            .is_err_and(|e| e.to_string().contains("progress")),
        "second start_scan: {again:?}"
    );
    let lamp = discover(&adapter, &mut events, LAMP).await;
    let props = lamp.properties().await.unwrap().expect("lamp properties");
    assert_eq!(props.local_name.as_deref(), Some("lamp"));
    assert!(
        props.services.contains(&SERVICE),
        "advertised services: {:?}",
        props.services
    );

    // --- connect, discover, subscribe, write with response, echo notification ---
    lamp.connect().await.expect("connect the lamp");
    assert!(lamp.is_connected().await.unwrap());
    let (command, result) = discover_chars(&lamp).await;
    assert!(
        command.properties.contains(CharPropFlags::WRITE),
        "{command:?}"
    );
    assert!(
        result.properties.contains(CharPropFlags::NOTIFY),
        "{result:?}"
    );
    let mut notes = lamp.notifications().await.expect("notifications");
    lamp.subscribe(&result).await.expect("subscribe");
    let answer = fake.wait(json!({"until": "notifying", "address": LAMP}), PATIENCE);
    assert_eq!(answer["ok"], json!(true), "{answer}");
    let payload = br#"{"id":"c1","payload":{"on":true}}"#;
    lamp.write(&command, payload, WriteType::WithResponse)
        .await
        .expect("write with response");
    let note = next_notification(&mut notes, RESULT).await;
    assert_eq!(note.value, payload.to_vec());
    let stats = fake.stats();
    assert_eq!(
        stats["writes"],
        json!([{"address": LAMP, "char": cmd, "hex": hex(payload), "type": "request"}])
    );

    // --- the peripheral drops the link: btleplug reports DeviceDisconnected ---
    assert!(fake.disconnect(LAMP));
    wait_event(
        &mut events,
        "lamp DeviceDisconnected",
        |e| matches!(e, CentralEvent::DeviceDisconnected(id) if *id == lamp.id()),
    )
    .await;
    assert!(!lamp.is_connected().await.unwrap());
    // The GATT objects went with the link: using the old characteristic fails.
    assert!(
        lamp.write(&command, b"x", WriteType::WithResponse)
            .await
            .is_err()
    );

    // --- fail_connect 1: one Connect fails, the next succeeds ---
    fake.fail_connect(Some(LAMP), 1);
    let err = lamp.connect().await.expect_err("the failing connect");
    eprintln!("failed connect reads: {err}");
    lamp.connect().await.expect("the connect after a failure");
    let (command, result) = discover_chars(&lamp).await;
    lamp.subscribe(&result)
        .await
        .expect("re-subscribe after reconnect");
    lamp.write(&command, b"again", WriteType::WithResponse)
        .await
        .expect("write after reconnect");
    let note = next_notification(&mut notes, RESULT).await;
    assert_eq!(note.value, b"again".to_vec());
    let stats = fake.stats();
    assert_eq!(stats["connects"][LAMP], json!(2), "{stats}");
    assert_eq!(stats["connect_attempts"][LAMP], json!(3), "{stats}");

    // --- read_value: a result characteristic without notify, read after reconnecting ---
    let read_bytes = br#"{"id":"c2","ok":true}"#;
    fake.set_behaviour(
        LAMP,
        json!({"read_value_hex": hex(read_bytes), "mode": "silent"}),
    );
    lamp.disconnect().await.expect("client disconnect");
    wait_event(
        &mut events,
        "lamp DeviceDisconnected (client)",
        |e| matches!(e, CentralEvent::DeviceDisconnected(id) if *id == lamp.id()),
    )
    .await;
    lamp.connect().await.expect("connect for read_value");
    let (_command, result) = discover_chars(&lamp).await;
    assert!(
        !result.properties.contains(CharPropFlags::NOTIFY),
        "{result:?}"
    );
    assert!(
        result.properties.contains(CharPropFlags::READ),
        "{result:?}"
    );
    assert!(
        lamp.subscribe(&result).await.is_err(),
        "subscribe without notify must fail"
    );
    assert_eq!(lamp.read(&result).await.expect("read"), read_bytes.to_vec());
    // BlueZ emits PropertiesChanged(Value) for every read: it shows up as a "notification".
    let note = next_notification(&mut notes, RESULT).await;
    assert_eq!(note.value, read_bytes.to_vec());
    assert_eq!(fake.stats()["reads"], json!(1));
    // Back to a notifying appliance (takes effect at the next connection).
    fake.set_behaviour(LAMP, json!({"read_value": null, "mode": "echo"}));

    // --- two links at once: max_connected; drop_on_write ---
    fake.add_device(
        LOCK,
        "lock",
        &svc,
        &cmd,
        &res,
        json!({"mode": "reply", "reply_utf8": "ok", "delay_ms": 20}),
    );
    let lock = discover(&adapter, &mut events, LOCK).await;
    lock.connect().await.expect("connect the lock");
    let stats = fake.stats();
    assert_eq!(stats["connected"], json!([LAMP, LOCK]), "{stats}");
    assert_eq!(stats["max_connected"], json!(2), "{stats}");
    let (lock_command, lock_result) = discover_chars(&lock).await;
    let mut lock_notes = lock.notifications().await.unwrap();
    lock.subscribe(&lock_result).await.unwrap();
    lock.write(&lock_command, b"unlock", WriteType::WithResponse)
        .await
        .unwrap();
    assert_eq!(
        next_notification(&mut lock_notes, RESULT).await.value,
        b"ok".to_vec()
    );
    fake.set_behaviour(LOCK, json!({"drop_on_write": true}));
    lock.write(&lock_command, b"reset", WriteType::WithResponse)
        .await
        .expect("the write is acknowledged before the link drops");
    wait_event(
        &mut events,
        "lock DeviceDisconnected (drop_on_write)",
        |e| matches!(e, CentralEvent::DeviceDisconnected(id) if *id == lock.id()),
    )
    .await;
    fake.reset_stats();
    assert_eq!(
        fake.stats()["max_connected"],
        json!(1),
        "only the lamp is connected now"
    );

    // --- discovery stalls: scanning on, nothing new appears ---
    fake.discovery_stalls(true);
    fake.add_device(LATE, "late", &svc, &cmd, &res, json!({}));
    assert_no_discovery(&adapter, &mut events, LATE, Duration::from_millis(600)).await;
    assert_eq!(fake.stats()["exported"], json!([LAMP, LOCK]));

    // --- bluetoothd restarts (gracefully) while the lamp is connected ---
    fake.expect_ok(json!({"op": "restart", "down_ms": 500, "answer": "down"}));
    // While it is down the adapter is gone: listing adapters fails (org.bluez has no owner).
    let down = manager.adapters().await;
    eprintln!("adapters() while bluetoothd is down: {down:?}");
    assert!(down.is_err(), "{down:?}");
    // What btleplug reports of the stop: the lamp disconnected, the adapter powered off.
    wait_event(
        &mut events,
        "lamp DeviceDisconnected (restart)",
        |e| matches!(e, CentralEvent::DeviceDisconnected(id) if *id == lamp.id()),
    )
    .await;
    wait_event(&mut events, "StateUpdate(PoweredOff)", |e| {
        matches!(e, CentralEvent::StateUpdate(CentralState::PoweredOff))
    })
    .await;
    let answer = fake.wait(json!({"until": "up"}), PATIENCE);
    assert_eq!(answer["ok"], json!(true), "{answer}");
    // The same Manager, Adapter and event stream survive: the stream's match rules name
    // org.bluez, not the old owner, and an Adapter is only an object path. The new bluetoothd
    // exports hci0 unpowered and powers it on: StateUpdate(PoweredOn) is the cue to rebuild.
    let again = find_hci0(&manager).await;
    assert_eq!(
        again.adapter_info().await.unwrap(),
        adapter.adapter_info().await.unwrap()
    );
    wait_event(&mut events, "StateUpdate(PoweredOn)", |e| {
        matches!(e, CentralEvent::StateUpdate(CentralState::PoweredOn))
    })
    .await;
    // Devices are forgotten and the scan is gone with the old bluetoothd.
    assert!(adapter.peripheral(&lamp.id()).await.is_err());
    assert!(adapter.peripherals().await.unwrap().is_empty());
    assert_eq!(fake.stats()["discovering"], json!(false));
    // Scan again on the same Adapter: every device is rediscovered (the stall was cleared).
    adapter
        .start_scan(ScanFilter::default())
        .await
        .expect("start_scan after restart");
    let mut found = discover_all(&adapter, &mut events, &[LAMP, LATE]).await;
    let late = found.pop().unwrap();
    let lamp = found.pop().unwrap();
    round_trip(fake, &lamp, &mut notes_for(&lamp).await, b"after restart").await;
    late.connect().await.expect("connect the late device");
    // Consume the stream up to here (the lamp's DeviceConnected came before this one).
    wait_event(
        &mut events,
        "late DeviceConnected",
        |e| matches!(e, CentralEvent::DeviceConnected(id) if *id == late.id()),
    )
    .await;
    let stats = fake.stats();
    assert_eq!(stats["connected"], json!([LAMP, LATE]), "{stats}");
    assert_eq!(stats["max_connected"], json!(2), "{stats}");

    // --- bluetoothd crashes: btleplug reports nothing at all; only calls fail ---
    fake.expect_ok(json!({"op": "restart", "crash": true, "down_ms": 1000, "answer": "down"}));
    let outage = lamp.is_connected().await;
    eprintln!("a call while bluetoothd is down: {outage:?}");
    assert!(outage.is_err(), "a call during the outage must fail");
    let answer = fake.wait(json!({"until": "up"}), PATIENCE);
    assert_eq!(answer["ok"], json!(true), "{answer}");
    // The new bluetoothd finds the controller still powered: no StateUpdate, no
    // DeviceDisconnected (bluez-async ignores InterfacesRemoved/InterfacesAdded of adapters).
    assert_quiet(&mut events, Duration::from_millis(300)).await;
    let gone = lamp.is_connected().await;
    eprintln!("a call on a device after the crash: {gone:?}");
    assert!(gone.is_err(), "the device object is gone");
    adapter
        .start_scan(ScanFilter::default())
        .await
        .expect("scan after the crash (the old discovery session died with bluetoothd)");
    let lamp = discover(&adapter, &mut events, LAMP).await;
    round_trip(fake, &lamp, &mut notes_for(&lamp).await, b"after crash").await;
    let stats = fake.stats();
    assert_eq!(stats["connected"], json!([LAMP]), "{stats}");
    assert_eq!(stats["restarts"], json!(2), "{stats}");

    // A second Manager (a second D-Bus connection) sees the same adapter. Note: dropping a
    // btleplug Manager does not close its D-Bus connection (bluez-async detaches the task that
    // owns it), so a daemon must keep ONE Manager for its lifetime, not make one per restart.
    let manager2 = Manager::new().await.expect("second Manager");
    let _ = find_hci0(&manager2).await;

    // dbus-daemon's accounting: the clients and their match rules. bluez-async leaks a bus
    // match rule when a signal races a dropped stream (the "No match with that id found"
    // panic in a spawned task); the system bus allows 512 per connection. Bounded here so a
    // gross leak fails the test; expected: 4 (events: 2, two notification streams: 1 each).
    let (bus, rules) = fake.match_rules().await;
    eprintln!("bus at the end: {bus}");
    assert!(
        rules.iter().all(|n| *n <= 16),
        "match rules per client: {bus}"
    );
}

async fn find_hci0(manager: &Manager) -> Adapter {
    let adapters = manager.adapters().await.expect("adapters");
    for adapter in adapters {
        let info = adapter.adapter_info().await.expect("adapter_info");
        if info.starts_with("hci0 ") {
            return adapter;
        }
    }
    panic!("no hci0 among the adapters");
}

/// Wait for `DeviceDiscovered` of `address` on the event stream.
async fn discover(adapter: &Adapter, events: &mut Events, address: &str) -> Peripheral {
    discover_all(adapter, events, &[address]).await.remove(0)
}

/// Wait until every address in `addresses` was reported by `DeviceDiscovered` (in any order);
/// returns their peripherals in the order asked.
async fn discover_all(
    adapter: &Adapter,
    events: &mut Events,
    addresses: &[&str],
) -> Vec<Peripheral> {
    let wanted: Vec<BDAddr> = addresses
        .iter()
        .map(|a| BDAddr::from_str(a).unwrap())
        .collect();
    let mut found: Vec<Option<Peripheral>> = vec![None; wanted.len()];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    while found.iter().any(Option::is_none) {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{addresses:?} not all discovered within {PATIENCE:?}; last events {:?}",
                    last(&seen)
                )
            })
            .expect("central event stream ended");
        if let CentralEvent::DeviceDiscovered(id) = &event
            && let Ok(p) = adapter.peripheral(id).await
            && let Some(i) = wanted.iter().position(|w| *w == p.address())
        {
            found[i] = Some(p);
        }
        seen.push(event);
    }
    found.into_iter().map(Option::unwrap).collect()
}

/// The last few events, for failure messages (RSSI updates arrive every 100 ms per device).
fn last(seen: &[CentralEvent]) -> &[CentralEvent] {
    &seen[seen.len().saturating_sub(12)..]
}

async fn assert_no_discovery(
    adapter: &Adapter,
    events: &mut Events,
    address: &str,
    window: Duration,
) {
    let want = BDAddr::from_str(address).unwrap();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(event) = tokio::time::timeout_at(deadline, events.next()).await {
        if let Some(CentralEvent::DeviceDiscovered(id)) = &event
            && let Ok(p) = adapter.peripheral(id).await
        {
            assert_ne!(
                p.address(),
                want,
                "{address} discovered while discovery stalls"
            );
        }
    }
}

/// No connection or adapter-state event for `window` (a bounded negative check).
async fn assert_quiet(events: &mut Events, window: Duration) {
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(event) = tokio::time::timeout_at(deadline, events.next()).await {
        assert!(
            !matches!(
                event,
                Some(
                    CentralEvent::DeviceDisconnected(_)
                        | CentralEvent::DeviceConnected(_)
                        | CentralEvent::StateUpdate(_)
                )
            ),
            "unexpected {event:?}"
        );
    }
}

/// Wait for an event matching `pred`; returns every event seen, the match last.
async fn wait_event(
    events: &mut Events,
    what: &str,
    pred: impl Fn(&CentralEvent) -> bool,
) -> Vec<CentralEvent> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {what} within {PATIENCE:?}; last events {:?}",
                    last(&seen)
                )
            })
            .expect("central event stream ended");
        let hit = pred(&event);
        seen.push(event);
        if hit {
            return seen;
        }
    }
}

async fn next_notification(notes: &mut Notifications, uuid: Uuid) -> ValueNotification {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let note = tokio::time::timeout_at(deadline, notes.next())
            .await
            .unwrap_or_else(|_| panic!("no notification on {uuid} within {PATIENCE:?}"))
            .expect("notification stream ended");
        if note.uuid == uuid {
            return note;
        }
    }
}

/// Service discovery, then the command and result characteristics by UUID.
async fn discover_chars(p: &Peripheral) -> (Characteristic, Characteristic) {
    p.discover_services().await.expect("discover_services");
    let chars = p.characteristics();
    let find = |uuid: Uuid| {
        chars
            .iter()
            .find(|c| c.uuid == uuid && c.service_uuid == SERVICE)
            .cloned()
            .unwrap_or_else(|| panic!("no characteristic {uuid} in {chars:?}"))
    };
    (find(COMMAND), find(RESULT))
}

async fn notes_for(p: &Peripheral) -> Notifications {
    p.notifications().await.expect("notifications")
}

/// Connect (if needed), discover, subscribe, write, and get the echo back.
async fn round_trip(fake: &FakeBluez, p: &Peripheral, notes: &mut Notifications, payload: &[u8]) {
    if !p.is_connected().await.unwrap() {
        p.connect().await.expect("connect");
    }
    let (command, result) = discover_chars(p).await;
    p.subscribe(&result).await.expect("subscribe");
    let address = p.address().to_string();
    let answer = fake.wait(json!({"until": "notifying", "address": address}), PATIENCE);
    assert_eq!(answer["ok"], json!(true), "{answer}");
    p.write(&command, payload, WriteType::WithResponse)
        .await
        .expect("write");
    assert_eq!(
        next_notification(notes, RESULT).await.value,
        payload.to_vec()
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
