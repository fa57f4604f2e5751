//! Test harness: the real `tether-devcloud` and `tetherd` binaries, and real MQTT clients
//! (rumqttc) as appliances.
//!
//! Every wait here is on an event (a log line, an MQTT packet, the devcloud's long-poll
//! admin endpoint), bounded by a generous deadline that only matters when a test fails.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub mod firmware;

pub const GATEWAY: &str = "gw-test";
/// Upper bound for any single wait; reached only when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = fastrand::u64(..);
        let dir =
            std::env::temp_dir().join(format!("tether-test-{tag}-{}-{n:x}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lines a child process wrote to one of its pipes, with a way to wait for one.
#[derive(Clone, Default)]
pub struct Lines {
    inner: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Lines {
    /// Appends a line (for sources other than a pipe, such as datagrams).
    pub fn push(&self, line: String) {
        let (lock, cvar) = &*self.inner;
        lock.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        cvar.notify_all();
    }

    /// Collects journald native-protocol datagrams sent to a socket bound at `path`, each
    /// entry normalised to `KEY=value` lines (values sent length-encoded are decoded).
    pub fn from_journal(path: &Path) -> Lines {
        let socket = std::os::unix::net::UnixDatagram::bind(path).expect("bind journal socket");
        let lines = Lines::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            while let Ok(n) = socket.recv(&mut buf) {
                sink.push(parse_journal_datagram(&buf[..n]));
            }
        });
        lines
    }

    /// Collects every datagram received on a Unix socket bound at `path`, one entry each.
    pub fn from_datagrams(path: &Path) -> Lines {
        let socket = std::os::unix::net::UnixDatagram::bind(path).expect("bind datagram socket");
        let lines = Lines::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = socket.recv(&mut buf) {
                sink.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        lines
    }

    pub fn follow(&self, pipe: impl std::io::Read + Send + 'static, echo: &'static str) {
        let this = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("TETHER_TEST_ECHO").is_some() {
                    eprintln!("[{echo}] {line}");
                }
                let (lock, cvar) = &*this.inner;
                lock.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                cvar.notify_all();
            }
        });
    }

    /// Waits (blocking) for a line containing `needle` at index >= `from`; returns it.
    pub fn wait_from(&self, from: usize, needle: &str) -> String {
        self.wait_any_from(from, &[needle])
    }

    /// Waits (blocking) for a line containing any of `needles` at index >= `from`.
    pub fn wait_any_from(&self, from: usize, needles: &[&str]) -> String {
        let (lock, cvar) = &*self.inner;
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut lines = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let found = lines
                .iter()
                .skip(from)
                .find(|l| needles.iter().any(|n| l.contains(n)));
            if let Some(l) = found {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(
                !left.is_zero(),
                "no line containing {needles:?}; got:\n{}",
                lines.join("\n")
            );
            lines = cvar
                .wait_timeout(lines, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn wait_for(&self, needle: &str) -> String {
        self.wait_from(0, needle)
    }

    pub async fn wait_from_async(&self, from: usize, needle: &str) -> String {
        let this = self.clone();
        let needle = needle.to_owned();
        tokio::task::spawn_blocking(move || this.wait_from(from, &needle))
            .await
            .unwrap()
    }

    pub async fn wait_async(&self, needle: &str) -> String {
        let this = self.clone();
        let needle = needle.to_owned();
        tokio::task::spawn_blocking(move || this.wait_for(&needle))
            .await
            .unwrap()
    }

    pub fn len(&self) -> usize {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn all(&self) -> Vec<String> {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.all().iter().filter(|l| l.contains(needle)).count()
    }
}

/// The reference cloud, as a child process.
pub struct DevCloud {
    child: Child,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub cert_dir: PathBuf,
    args: Vec<String>,
    pub http: reqwest::Client,
}

impl DevCloud {
    pub fn start(dir: &Path, extra: &[&str]) -> DevCloud {
        let cert_dir = dir.join("devcloud-certs");
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, https, admin) = spawn_devcloud(&cert_dir, "127.0.0.1:0", "127.0.0.1:0", &args);
        tether::cloud::tls::install_crypto_provider();
        let ca = std::fs::read(cert_dir.join("ca.pem")).expect("devcloud CA");
        let http = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
            .build()
            .unwrap();
        DevCloud {
            child,
            https,
            admin,
            cert_dir,
            args,
            http,
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.cert_dir.join("ca.pem")
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.https.port())
    }

    /// SIGKILL, then start again on the same ports with the same CA and arguments.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.kill();
        let (child, https, admin) = spawn_devcloud(
            &self.cert_dir,
            &self.https.to_string(),
            &self.admin.to_string(),
            &self.args,
        );
        assert_eq!((https, admin), (self.https, self.admin));
        self.child = child;
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub async fn enqueue(&self, cmd: Value) -> String {
        let v = self
            .post(&format!("/admin/gateways/{GATEWAY}/commands"), cmd)
            .await;
        v["id"].as_str().expect("command id").to_owned()
    }

    pub async fn enqueue_many(&self, cmds: Vec<Value>) -> Vec<String> {
        let v = self
            .post(
                &format!("/admin/gateways/{GATEWAY}/commands"),
                Value::Array(cmds),
            )
            .await;
        v["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|i| i.as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits for the stored result of `id` (the devcloud holds the request until then).
    pub async fn result(&self, id: &str) -> Value {
        let url = self.admin_url(&format!(
            "/admin/gateways/{GATEWAY}/results/{id}?wait_ms={}",
            PATIENCE.as_millis()
        ));
        let resp = self.http.get(url).send().await.expect("admin request");
        assert!(
            resp.status().is_success(),
            "no result for {id}: HTTP {}",
            resp.status()
        );
        json_of(resp).await
    }

    pub async fn results(&self) -> Vec<Value> {
        let v = self
            .get(&format!("/admin/gateways/{GATEWAY}/results"))
            .await;
        v["results"].as_array().cloned().unwrap_or_default()
    }

    pub async fn events(&self) -> Vec<Value> {
        let v = self.get(&format!("/admin/gateways/{GATEWAY}/events")).await;
        v["events"].as_array().cloned().unwrap_or_default()
    }

    pub async fn stats(&self) -> Value {
        self.get("/admin/stats").await
    }

    /// The gateway's command queues at the devcloud and the capacity it last advertised.
    pub async fn commands(&self) -> Value {
        self.get(&format!("/admin/gateways/{GATEWAY}/commands"))
            .await
    }

    /// Fault: act as if result storage were down (no result stored or acked).
    pub async fn ignore_results(&self, on: bool) {
        self.post(
            &format!("/admin/gateways/{GATEWAY}/faults"),
            json!({"ignore_results": on}),
        )
        .await;
    }

    pub async fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(self.admin_url(path))
            .send()
            .await
            .expect("admin request");
        assert!(
            resp.status().is_success(),
            "GET {path}: HTTP {}",
            resp.status()
        );
        json_of(resp).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(self.admin_url(path))
            .body(body.to_string())
            .send()
            .await
            .expect("admin request");
        assert!(
            resp.status().is_success(),
            "POST {path}: HTTP {}",
            resp.status()
        );
        json_of(resp).await
    }
}

impl Drop for DevCloud {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_devcloud(
    cert_dir: &Path,
    listen: &str,
    admin: &str,
    extra: &[String],
) -> (Child, SocketAddr, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether-devcloud"))
        .args(["--listen", listen, "--admin", admin, "--cert-dir"])
        .arg(cert_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn tether-devcloud");
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).expect("devcloud READY line");
    // Keep draining so the devcloud never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    let field = |name: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_else(|| panic!("bad READY line: {line:?}"))
            .parse()
            .unwrap()
    };
    (child, field("https="), field("admin="))
}

/// One `[[appliance]]` in a test config.
pub fn mqtt_appliance(id: &str) -> String {
    format!(
        "[[appliance]]\nid = \"{id}\"\ntransport = \"mqtt\"\npassword = \"{}\"\n",
        password(id)
    )
}

pub fn password(id: &str) -> String {
    format!("pw-{id}")
}

/// A config for `tetherd` against `cloud`, with the given appliances and extra TOML.
pub fn config(dir: &Path, cloud: &DevCloud, appliances: &[&str], extra: &str) -> PathBuf {
    config_with_mqtt(
        dir,
        cloud,
        appliances,
        "listen = \"127.0.0.1:0\"\nstartup_grace = \"0s\"\n",
        extra,
    )
}

/// Like [`config`], with the body of the `[mqtt]` section given.
pub fn config_with_mqtt(
    dir: &Path,
    cloud: &DevCloud,
    appliances: &[&str],
    mqtt: &str,
    extra: &str,
) -> PathBuf {
    let mut text = format!(
        "[gateway]\nid = \"{GATEWAY}\"\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"\n\n[cloud]\nurl = \"{}\"\nca_file = \"{}\"\nbackoff_max = \"2s\"\n\n[mqtt]\n{mqtt}\n",
        dir.join("state").display(),
        dir.join("control.sock").display(),
        cloud.url(),
        cloud.ca_file().display()
    );
    for a in appliances {
        text.push_str(&mqtt_appliance(a));
    }
    text.push_str(extra);
    let path = dir.join("tetherd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The body of an `[mqtt]` section listening on a fixed loopback `port` (for a daemon that
/// must keep its port across restarts) with the given `startup_grace`.
pub fn mqtt_on(port: u16, grace: &str) -> String {
    format!("listen = \"127.0.0.1:{port}\"\nstartup_grace = \"{grace}\"\n")
}

/// Adds keys to the `[cloud]` section of a config written by [`config`].
pub fn add_cloud_keys(cfg: &Path, keys: &str) {
    let text = std::fs::read_to_string(cfg).unwrap();
    let anchor = "backoff_max = \"2s\"\n";
    assert!(text.contains(anchor), "not a config from common::config");
    std::fs::write(cfg, text.replacen(anchor, &format!("{anchor}{keys}"), 1)).unwrap();
}

/// Points the `[cloud]` section at a token file.
pub fn use_token_file(cfg: &Path, token: &Path) {
    add_cloud_keys(cfg, &format!("token_file = \"{}\"\n", token.display()));
}

/// A loopback port free right now (for a daemon that must keep its port across restarts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (and reaped) when this is dropped, so a failing test does not
/// leave it running; `.0.take()` keeps it alive after all.
pub struct KillOnDrop(pub Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The real daemon, as a child process.
pub struct Tetherd {
    child: Child,
    pub log: Lines,
    pub mqtt: SocketAddr,
}

impl Tetherd {
    pub fn start(config: &Path) -> Tetherd {
        Tetherd::start_with_env(config, &[])
    }

    /// Starts the daemon with extra environment variables.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Tetherd {
        Tetherd::start_wrapped(config, env, &[])
    }

    /// Starts the daemon under `wrapper` (a command line that ends by running the binary
    /// given as its last argument, e.g. `unshare ... sh -c '... exec "$0" "$@"'`).
    ///
    /// The daemon is this build's, unless `TETHER_TEST_TETHERD` names another binary (a
    /// cross build), run under `TETHER_TEST_EMULATOR` (e.g. `qemu-aarch64-static -L
    /// /usr/aarch64-linux-gnu`) when that is set too; `.ci/cross` runs tests so.
    pub fn start_wrapped(config: &Path, env: &[(&str, &str)], wrapper: &[&str]) -> Tetherd {
        let other = std::env::var("TETHER_TEST_TETHERD").ok();
        let emulator = std::env::var("TETHER_TEST_EMULATOR").unwrap_or_default();
        let bin = other.as_deref().unwrap_or(env!("CARGO_BIN_EXE_tetherd"));
        let emulator: Vec<&str> = emulator.split_whitespace().collect();
        assert!(
            emulator.is_empty() || wrapper.is_empty(),
            "a test that wraps tetherd itself cannot run under TETHER_TEST_EMULATOR"
        );
        let wrapper = if wrapper.is_empty() {
            &emulator[..]
        } else {
            wrapper
        };
        let mut cmd = match wrapper.split_first() {
            None => Command::new(bin),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
        };
        cmd.arg("--config")
            .arg(config)
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tetherd");
        let log = Lines::default();
        log.follow(child.stderr.take().unwrap(), "tetherd");
        // A daemon that never gets there is killed with the failing test, not left running.
        let mut guard = KillOnDrop(Some(child));
        // The endpoint's address; with an external broker (no endpoint), the broker's.
        let line = log.wait_any_from(
            0,
            &[
                "mqtt endpoint listening on ",
                "appliances are at the external broker",
            ],
        );
        let mqtt = line
            .split_whitespace()
            .find_map(|w| w.trim_start_matches("mqtt://").parse().ok())
            .unwrap_or_else(|| panic!("bad listening line: {line}"));
        // The endpoint listens before the rest is up (the control socket, recovery, the
        // uplink): a test starts once all of it is.
        log.wait_for(" started: gateway ");
        let child = guard.0.take().unwrap();
        Tetherd { child, log, mqtt }
    }

    /// Sends a signal (`kill -s NAME`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -s {name}");
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB (VmRSS) and its peak (VmHWM), from /proc.
    pub fn memory_kib(&self) -> (u64, u64) {
        let [rss, hwm] = proc_status(self.child.id(), ["VmRSS:", "VmHWM:"]);
        assert!(
            rss > 0,
            "tetherd {} has no VmRSS: not running",
            self.child.id()
        );
        (rss, hwm)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Tetherd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a simulated appliance answers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers every command at once with ok and `{"echo": payload}`.
    Echo,
    /// Answers like `Echo` after this many milliseconds of work, as a real appliance does.
    Slow(u64),
    /// Never answers.
    Silent,
    /// Answers when the test says so (`Appliance::answer`).
    Manual,
}

/// A simulated MQTT appliance (a real rumqttc client).
pub struct Appliance {
    pub id: String,
    pub client: AsyncClient,
    /// Every command as received: (command id, payload).
    pub received: mpsc::UnboundedReceiver<(String, Value)>,
}

impl Appliance {
    /// Connects, subscribes to its `cmd` topic, and returns once the SUBACK arrived. It
    /// reconnects and subscribes again by itself whenever the connection drops.
    pub async fn connect(mqtt: SocketAddr, id: &str, behaviour: Behaviour) -> Appliance {
        let mut opts = MqttOptions::new(id, mqtt.ip().to_string(), mqtt.port());
        opts.set_credentials(id, password(id));
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(opts, 256);
        events.network_options.set_tcp_nodelay(true);
        let (tx, received) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let responder = client.clone();
        let me = id.to_owned();
        tokio::spawn(async move {
            loop {
                let event = match events.poll().await {
                    Ok(e) => e,
                    Err(_) => {
                        if tx.is_closed() {
                            break;
                        }
                        // Reconnect pacing while the daemon is down, not synchronisation.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                match event {
                    Event::Incoming(Packet::ConnAck(_)) => {
                        let _ =
                            responder.try_subscribe(format!("tether/{me}/cmd"), QoS::AtLeastOnce);
                    }
                    Event::Incoming(Packet::SubAck(_)) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        let cmd: Value = serde_json::from_slice(&p.payload).unwrap();
                        let cid = cmd["id"].as_str().unwrap().to_owned();
                        let _ = tx.send((cid.clone(), cmd["payload"].clone()));
                        let work = match behaviour {
                            Behaviour::Echo => Some(0),
                            Behaviour::Slow(ms) => Some(ms),
                            Behaviour::Silent | Behaviour::Manual => None,
                        };
                        if let Some(work) = work {
                            let answer = json!({"id": cid, "ok": true, "payload": {"echo": cmd["payload"], "by": me}});
                            let topic = format!("tether/{me}/result");
                            // Never block the event loop on its own request queue.
                            let publisher = responder.clone();
                            tokio::spawn(async move {
                                if work > 0 {
                                    // The appliance's own work, not synchronisation.
                                    tokio::time::sleep(Duration::from_millis(work)).await;
                                }
                                let _ = publisher
                                    .publish(topic, QoS::AtLeastOnce, false, answer.to_string())
                                    .await;
                            });
                        }
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(PATIENCE, ready_rx)
            .await
            .expect("appliance SUBACK")
            .expect("appliance event loop");
        Appliance {
            id: id.to_owned(),
            client,
            received,
        }
    }

    /// Disconnects for good (no reconnect), as an appliance being switched off.
    pub async fn leave(mut self) {
        self.received.close();
        let _ = self.client.disconnect().await;
    }

    /// Every command received so far.
    pub fn drain(&mut self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        while let Ok(c) = self.received.try_recv() {
            out.push(c);
        }
        out
    }

    pub async fn next_command(&mut self) -> (String, Value) {
        tokio::time::timeout(PATIENCE, self.received.recv())
            .await
            .expect("a command for the appliance")
            .expect("appliance running")
    }

    pub async fn answer(&self, command_id: &str, ok: bool, payload: Value) {
        let body = if ok {
            json!({"id": command_id, "ok": true, "payload": payload})
        } else {
            json!({"id": command_id, "ok": false, "error": payload.to_string()})
        };
        self.client
            .publish(
                format!("tether/{}/result", self.id),
                QoS::AtLeastOnce,
                false,
                body.to_string(),
            )
            .await
            .unwrap();
    }
}

/// Tries a CONNECT and returns the CONNACK code (or the error text).
pub async fn try_connect(
    mqtt: SocketAddr,
    client_id: &str,
    user: &str,
    pass: &str,
) -> Result<ConnectReturnCode, String> {
    let mut opts = MqttOptions::new(client_id, mqtt.ip().to_string(), mqtt.port());
    opts.set_credentials(user, pass);
    let (_client, mut events) = AsyncClient::new(opts, 8);
    loop {
        match tokio::time::timeout(PATIENCE, events.poll())
            .await
            .expect("connect outcome")
        {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack.code),
            Ok(_) => continue,
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Ok(code),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Every one of `total` commands has exactly one stored result, delivered once.
pub async fn assert_each_stored_once(cloud: &DevCloud, total: usize) {
    let results = cloud.results().await;
    assert_eq!(results.len(), total, "one stored result per command");
    for (id, r) in &by_id(&results) {
        assert_eq!(
            r["deliveries"], 1,
            "result {id} delivered more than once: {r}"
        );
    }
}

/// Commands `{"n": 0..total}` went to `apps` in turn (`n % apps.len()`): each appliance
/// received each of its commands exactly once, in order.
pub fn assert_received_in_order(apps: &mut [Appliance], total: u64) {
    let count = apps.len() as u64;
    for (i, app) in apps.iter_mut().enumerate() {
        let got: Vec<u64> = app
            .drain()
            .iter()
            .map(|c| c.1["n"].as_u64().unwrap())
            .collect();
        let want: Vec<u64> = (0..total).filter(|n| n % count == i as u64).collect();
        assert_eq!(got, want, "appliance {i}");
    }
}

/// `rounds` commands to a `Behaviour::Manual` appliance `valve`, each answered while the
/// next poll is held: the result arrives at once (within 5 s of a 30 s wait), by an early
/// flush (`results_posts` grows) and not by a poll (one poll more: the one that brought
/// the command). The devcloud must run with `--wait-s 30`.
pub async fn flush_rounds_during_held_polls(cloud: &DevCloud, valve: &mut Appliance, rounds: u64) {
    let polls = || async { cloud.stats().await["polls"].as_u64().unwrap() };
    // The first poll is a short probe; the second is the one held.
    eventually("a held poll", || async {
        (polls().await >= 2).then_some(())
    })
    .await;
    for round in 0..rounds {
        let polls_before = polls().await;
        let id = cloud
            .enqueue(json!({"target": "valve", "payload": {"round": round}, "timeout_ms": 60000}))
            .await;
        let (got, _) = valve.next_command().await;
        assert_eq!(got, id);
        // The held poll returned the command and the daemon polled again at once; wait
        // until the devcloud holds that poll, so the result can only travel by early flush.
        eventually("the next poll to be held", || async {
            (polls().await > polls_before).then_some(())
        })
        .await;
        let posts_before = cloud.stats().await["results_posts"].as_u64().unwrap();
        let started = std::time::Instant::now();
        valve.answer(&id, true, json!({"open": round})).await;
        let stored = cloud.result(&id).await;
        let took = started.elapsed();
        assert_eq!(stored["result"]["status"], "ok", "{stored}");
        assert_eq!(
            stored["result"]["payload"],
            json!({"open": round}),
            "{stored}"
        );
        // With a 30 s poll wait, anything near linger + RTT proves the early flush.
        assert!(took < Duration::from_secs(5), "result took {took:?}");
        let stats = cloud.stats().await;
        assert!(
            stats["results_posts"].as_u64().unwrap() > posts_before,
            "{stats}"
        );
        assert_eq!(
            stats["polls"].as_u64().unwrap(),
            polls_before + 1,
            "{stats}"
        );
    }
}

/// A multi-target result's items: target -> status.
pub fn item_statuses(result: &Value) -> HashMap<String, String> {
    result["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["target"].as_str().unwrap().into(),
                i["status"].as_str().unwrap().into(),
            )
        })
        .collect()
}

/// Indexes the devcloud's stored results by command id.
pub fn by_id(results: &[Value]) -> HashMap<String, Value> {
    results
        .iter()
        .map(|r| {
            (
                r["result"]["command_id"].as_str().unwrap().to_owned(),
                r.clone(),
            )
        })
        .collect()
}

pub async fn json_of(resp: reqwest::Response) -> Value {
    let bytes = resp.bytes().await.expect("response body");
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"))
}

/// Re-checks `check` every 20 ms until it returns `Some`, for conditions only visible by
/// asking (a counter at the devcloud). Panics after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(what, PATIENCE, check).await
}

/// [`eventually`] with its own patience, for a test whose step is bulk work (thousands of
/// commands on a busy 2-core machine) rather than one exchange.
pub async fn eventually_within<T, F, Fut>(what: &str, patience: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Numeric fields of `/proc/PID/status` (`"VmRSS:"`, `"Threads:"`); 0 when absent or when
/// the process is gone.
pub fn proc_status<const N: usize>(pid: u32, names: [&str; N]) -> [u64; N] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    names.map(|name| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

/// A hand-driven MQTT client, for packets a well-behaved client library refuses to send
/// (wildcards or NUL in a PUBLISH topic, a second CONNECT, oversized lengths).
pub struct RawClient {
    pub stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
}

impl RawClient {
    /// Connects and authenticates; panics unless the CONNACK accepts.
    pub async fn connect(mqtt: SocketAddr, id: &str, pass: &str) -> RawClient {
        let stream = tokio::net::TcpStream::connect(mqtt).await.unwrap();
        RawClient::login(stream, id, pass).await
    }

    /// Like [`RawClient::connect`], from the loopback address `source` (127.0.0.0/8),
    /// so the endpoint sees another device.
    pub async fn connect_from(
        mqtt: SocketAddr,
        source: std::net::IpAddr,
        id: &str,
        pass: &str,
    ) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let stream = socket.connect(mqtt).await.unwrap();
        RawClient::login(stream, id, pass).await
    }

    async fn login(stream: tokio::net::TcpStream, id: &str, pass: &str) -> RawClient {
        use rumqttc::mqttbytes::v4::{Connect, Login};
        let mut raw = RawClient {
            stream,
            buf: bytes::BytesMut::new(),
        };
        let mut connect = Connect::new(id);
        connect.login = Some(Login::new(id, pass));
        raw.send(rumqttc::mqttbytes::v4::Packet::Connect(connect))
            .await;
        match raw.recv().await {
            Some(rumqttc::mqttbytes::v4::Packet::ConnAck(ack)) => {
                assert_eq!(ack.code, ConnectReturnCode::Success)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
    }

    pub async fn send(&mut self, packet: rumqttc::mqttbytes::v4::Packet) {
        let mut out = bytes::BytesMut::new();
        packet.write(&mut out, 1 << 20).unwrap();
        self.send_bytes(&out).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next packet, or `None` once the server closed the connection.
    pub async fn recv(&mut self) -> Option<rumqttc::mqttbytes::v4::Packet> {
        use tokio::io::AsyncReadExt;
        loop {
            match rumqttc::mqttbytes::v4::Packet::read(&mut self.buf, 1 << 20) {
                Ok(p) => return Some(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("bad packet from the server: {e}"),
            }
            let n = tokio::time::timeout(PATIENCE, self.stream.read_buf(&mut self.buf))
                .await
                .expect("server answer")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }
}

/// journald's native protocol: `KEY=value\n`, or `KEY\n` + 64-bit LE length + value + `\n`.
fn parse_journal_datagram(mut data: &[u8]) -> String {
    let mut out = String::new();
    while let Some(nl) = data.iter().position(|&b| b == b'\n') {
        let line = &data[..nl];
        data = &data[nl + 1..];
        if line.contains(&b'=') {
            out.push_str(&String::from_utf8_lossy(line));
        } else {
            if data.len() < 8 {
                break;
            }
            let len = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
            let value = &data[8..(8 + len).min(data.len())];
            out.push_str(&String::from_utf8_lossy(line));
            out.push('=');
            out.push_str(&String::from_utf8_lossy(value));
            data = data.get(8 + len + 1..).unwrap_or_default();
        }
        out.push('\n');
    }
    out
}

/// Runs `cmd` with `input` on its standard input, and waits for its output.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}
