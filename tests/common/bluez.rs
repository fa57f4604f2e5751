//! A fake BlueZ on a private D-Bus bus, for BLE tests without a radio.
//!
//! `FakeBluez::start(dir)` runs `dbus-daemon` (config `tests/fake_bluez/allow-all.conf`, socket
//! `<dir>/bus`) and `tests/fake_bluez/fake_bluez.py`, which owns `org.bluez` on that bus and
//! serves adapter `hci0`, devices and their GATT databases. Tests steer it with JSON control
//! ops (see `tests/fake_bluez/README.md`); every answer is awaited with a deadline, so a hung
//! fake fails the test with the op and the fake's log instead of hanging it.
//!
//! Point the code under test at `bus_address()` through `DBUS_SYSTEM_BUS_ADDRESS`: in the
//! environment of a spawned `tetherd`, or (libdbus reads it once per process) with
//! `std::env::set_var` at the very start of a test binary that holds a single test.
//!
//! Self-contained (std, tokio, serde_json) so it can be included with
//! `#[path = "common/bluez.rs"] mod bluez;` or from `tests/common/mod.rs`.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// How long a control op may take beyond its own `timeout_ms`/`down_ms`.
pub const CONTROL_PATIENCE: Duration = Duration::from_secs(10);
/// How long the bus and the fake may take to start.
pub const START_PATIENCE: Duration = Duration::from_secs(20);

/// The Python the fake needs: Debian's, with python3-dbus and python3-gi (a pyenv `python3`
/// first on PATH lacks them).
pub const PYTHON: &str = "/usr/bin/python3";

/// The fake's GATT layout, as exported while a device is connected.
pub const SERVICE_HANDLE_PATH: &str = "service000a";
pub const COMMAND_CHAR_PATH: &str = "service000a/char000b";
pub const RESULT_CHAR_PATH: &str = "service000a/char000d";

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fake_bluez")
        .join(rel)
}

/// A running private bus with the fake BlueZ on it. Dropping it kills both processes.
pub struct FakeBluez {
    dir: PathBuf,
    bus_address: String,
    dbus_daemon: Child,
    fake: Child,
    control: Arc<Mutex<Control>>,
}

struct Control {
    stdin: ChildStdin,
    lines: Receiver<String>,
    log: PathBuf,
}

/// Forward a pipe's lines into a channel, from a thread that ends at EOF.
fn line_channel(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The last `max` bytes of a log file, for failure messages.
pub fn log_tail(path: &Path, max: usize) -> String {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

impl FakeBluez {
    /// The bus address `start(dir)` will listen on, known before anything is spawned (the
    /// address dbus-daemon prints adds only a `guid`, which clients need not give).
    pub fn planned_address(dir: &Path) -> String {
        format!("unix:path={}", dir.join("bus").display())
    }

    /// Start `dbus-daemon` on `<dir>/bus` and the fake on it; returns once the fake printed
    /// `{"ready": true}` (it owns `org.bluez` and exports `/org/bluez/hci0`). Logs go to
    /// `<dir>/dbus-daemon.log` and `<dir>/fake_bluez.log`. Panics with those logs on failure.
    pub fn start(dir: &Path) -> FakeBluez {
        std::fs::create_dir_all(dir).expect("create the fake BlueZ directory");
        let socket = dir.join("bus");
        assert!(
            socket.as_os_str().len() < 100,
            "socket path {} is too long for AF_UNIX (keep the test directory short)",
            socket.display()
        );
        let config = fixture("allow-all.conf");
        let daemon_log = dir.join("dbus-daemon.log");
        let mut dbus_daemon = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg(format!("--address=unix:path={}", socket.display()))
            .arg("--nofork")
            .arg("--print-address")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&daemon_log).expect("create dbus-daemon.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run dbus-daemon (Debian package `dbus`): {e}"));
        let daemon_out = line_channel(dbus_daemon.stdout.take().expect("dbus-daemon stdout"));
        let bus_address = match daemon_out.recv_timeout(START_PATIENCE) {
            Ok(line) if line.starts_with("unix:") => line.trim().to_string(),
            other => {
                let _ = dbus_daemon.kill();
                let _ = dbus_daemon.wait();
                panic!(
                    "dbus-daemon did not print its address ({other:?}); its log:\n{}",
                    log_tail(&daemon_log, 4000)
                );
            }
        };

        let fake_log = dir.join("fake_bluez.log");
        let spawned = Command::new(PYTHON)
            .arg(fixture("fake_bluez.py"))
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus_address)
            .env("PYTHONUNBUFFERED", "1")
            // If this test process dies without running Drop (SIGKILL, abort), the fake sees
            // EOF on stdin, exits, and stops this dbus-daemon too.
            .env("FAKE_BLUEZ_BUS_PID", dbus_daemon.id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&fake_log).expect("create fake_bluez.log"))
            .spawn();
        let mut fake = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = dbus_daemon.kill();
                let _ = dbus_daemon.wait();
                panic!("cannot run {PYTHON} (Debian python3 with python3-dbus, python3-gi): {e}");
            }
        };
        let lines = line_channel(fake.stdout.take().expect("fake stdout"));
        let stdin = fake.stdin.take().expect("fake stdin");
        let ready = lines.recv_timeout(START_PATIENCE);
        let ok = matches!(&ready, Ok(line)
            if serde_json::from_str::<Value>(line).ok().and_then(|v| v.get("ready").cloned()) == Some(json!(true)));
        if !ok {
            let _ = fake.kill();
            let _ = fake.wait();
            let _ = dbus_daemon.kill();
            let _ = dbus_daemon.wait();
            panic!(
                "the fake BlueZ did not get ready ({ready:?}); its log:\n{}",
                log_tail(&fake_log, 6000)
            );
        }
        FakeBluez {
            dir: dir.to_path_buf(),
            bus_address,
            dbus_daemon,
            fake,
            control: Arc::new(Mutex::new(Control {
                stdin,
                lines,
                log: fake_log,
            })),
        }
    }

    /// The private bus, as dbus-daemon printed it: give it to the code under test as
    /// `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn bus_address(&self) -> &str {
        &self.bus_address
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The fake's stderr so far (every D-Bus call when `FAKE_BLUEZ_DEBUG` is set in the test's
    /// environment, which the fake inherits).
    pub fn log(&self) -> String {
        log_tail(&self.dir.join("fake_bluez.log"), usize::MAX)
    }

    /// Send one control op and return its answer (`{"ok": true, ...}` or `{"ok": false,
    /// "error": ...}`). Blocks the calling thread: in async code prefer `control_async`, or
    /// use a multi-thread runtime. Panics if no answer comes within the op's own
    /// `timeout_ms`/`down_ms` plus `CONTROL_PATIENCE`, or if the fake died.
    pub fn control(&self, op: Value) -> Value {
        control_blocking(&self.control, op)
    }

    /// `control` on a blocking thread, for async tests.
    pub async fn control_async(&self, op: Value) -> Value {
        let control = self.control.clone();
        tokio::task::spawn_blocking(move || control_blocking(&control, op))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// `control`, panicking unless the answer is `{"ok": true, ...}`.
    pub fn expect_ok(&self, op: Value) -> Value {
        let answer = self.control(op.clone());
        assert_eq!(
            answer.get("ok"),
            Some(&json!(true)),
            "fake BlueZ refused {op}: {answer}"
        );
        answer
    }

    /// Add an appliance (advertising, not yet discovered). `behaviour` is a JSON object of
    /// behaviour fields (`mode`, `reply_hex`, `delay_ms`, `drop_on_write`, `read_value_hex`,
    /// ...), merged into the op; `json!({})` for the default (echo).
    pub fn add_device(
        &self,
        address: &str,
        name: &str,
        service: &str,
        command_char: &str,
        result_char: &str,
        behaviour: Value,
    ) -> Value {
        let mut op = json!({
            "op": "add_device",
            "address": address,
            "name": name,
            "service": service,
            "command_char": command_char,
            "result_char": result_char,
        });
        merge(&mut op, behaviour);
        self.expect_ok(op)
    }

    pub fn set_behaviour(&self, address: &str, behaviour: Value) -> Value {
        let mut op = json!({"op": "set_behaviour", "address": address});
        merge(&mut op, behaviour);
        self.expect_ok(op)
    }

    /// Drop the link now, as the peripheral going away. Returns whether it was connected.
    pub fn disconnect(&self, address: &str) -> bool {
        let answer = self.expect_ok(json!({"op": "disconnect", "address": address}));
        answer["was_connected"] == json!(true)
    }

    /// The next `count` Connect calls (to `address`, or to any device) fail.
    pub fn fail_connect(&self, address: Option<&str>, count: u32) {
        let mut op = json!({"op": "fail_connect", "count": count});
        if let Some(address) = address {
            op["address"] = json!(address);
        }
        self.expect_ok(op);
    }

    /// Simulate bluetoothd restarting; returns once the adapter is back.
    pub fn restart(&self, down_ms: u64, crash: bool) {
        self.expect_ok(json!({"op": "restart", "down_ms": down_ms, "crash": crash}));
    }

    pub fn discovery_stalls(&self, stalls: bool) {
        self.expect_ok(json!({"op": "discovery_stalls", "stalls": stalls}));
    }

    /// Wait inside the fake until a condition holds (`until`: connected, disconnected,
    /// exported, notifying, connects, writes, discovering, not_discovering). Returns the
    /// answer; `ok` is false on timeout.
    pub fn wait(&self, mut condition: Value, timeout: Duration) -> Value {
        condition["op"] = json!("wait");
        condition["timeout_ms"] = json!(timeout.as_millis() as u64);
        self.control(condition)
    }

    pub fn stats(&self) -> Value {
        self.expect_ok(json!({"op": "stats"}))
    }

    pub fn reset_stats(&self) {
        self.expect_ok(json!({"op": "reset_stats"}));
    }

    /// dbus-daemon's accounting: the bus's own answer, and the D-Bus match rules each
    /// client holds (bluez-async adds one per stream; a leak would hit the bus's 512).
    pub async fn match_rules(&self) -> (Value, Vec<u64>) {
        let bus = self.control_async(json!({"op": "bus_stats"})).await;
        let rules = bus["clients"]
            .as_object()
            .expect("bus_stats lists clients")
            .values()
            .map(|c| c["match_rules"].as_u64().expect("match_rules"))
            .collect();
        (bus, rules)
    }
}

fn merge(op: &mut Value, extra: Value) {
    match extra {
        Value::Object(map) => {
            for (k, v) in map {
                op[k] = v;
            }
        }
        Value::Null => {}
        other => panic!("behaviour must be a JSON object, not {other}"),
    }
}

fn control_blocking(control: &Mutex<Control>, op: Value) -> Value {
    let mut control = control.lock().unwrap_or_else(|e| e.into_inner());
    let extra_ms = ["timeout_ms", "down_ms"]
        .iter()
        .filter_map(|k| op.get(*k).and_then(Value::as_u64))
        .sum::<u64>();
    let patience = CONTROL_PATIENCE + Duration::from_millis(extra_ms);
    let line = format!("{op}\n");
    if let Err(e) = control
        .stdin
        .write_all(line.as_bytes())
        .and_then(|_| control.stdin.flush())
    {
        panic!(
            "fake BlueZ is gone (writing {op}: {e}); its log:\n{}",
            log_tail(&control.log, 6000)
        );
    }
    match control.lines.recv_timeout(patience) {
        Ok(answer) => serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("fake BlueZ answered {op} with non-JSON {answer:?}: {e}")),
        Err(RecvTimeoutError::Timeout) => panic!(
            "fake BlueZ did not answer {op} within {patience:?}; its log:\n{}",
            log_tail(&control.log, 6000)
        ),
        Err(RecvTimeoutError::Disconnected) => panic!(
            "fake BlueZ exited before answering {op}; its log:\n{}",
            log_tail(&control.log, 6000)
        ),
    }
}

impl Drop for FakeBluez {
    fn drop(&mut self) {
        // Kill by PID (Child::kill), then reap; nothing outside `dir` is touched.
        let _ = self.fake.kill();
        let _ = self.fake.wait();
        let _ = self.dbus_daemon.kill();
        let _ = self.dbus_daemon.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- fake BlueZ log ({}) ----\n{}",
                self.dir.join("fake_bluez.log").display(),
                log_tail(&self.dir.join("fake_bluez.log"), 8000)
            );
        }
    }
}
