//! Fuzzing entry points, shared by the cargo-fuzz targets in `fuzz/` and by the stable
//! regression test `tests/fuzz_regressions.rs`. Not part of the daemon's API.
//!
//! Each function takes arbitrary bytes, feeds them through the code the daemon runs on such
//! bytes, and must return normally for *every* input: a panic is a bug found. So is a hang,
//! which the harness turns into a panic (no input has a reason to wait for a timer: every
//! appliance used either is connected by the harness or answers `unreachable` at once).
//! Besides "does not panic", the harness checks two properties of the real code:
//! - every byte the MQTT endpoint writes back decodes as an MQTT packet;
//! - every result owed to the cloud can be read back from the journal (a result that
//!   cannot would never be delivered).
//!
//! The targets share one gateway per process, built from a small config (two MQTT
//! appliances with plain-text passwords, one BLE appliance, two groups, tight router
//! limits) by the same functions the daemon uses: [`Config::parse`], [`Journal::open`] (in
//! a scratch directory under `/dev/shm`), [`Outbox`], [`mqtt::start`] (listening on
//! 127.0.0.1, port chosen by the kernel) and [`Router::start`], on a current-thread tokio
//! runtime with real time. Command ids are forgotten between inputs, so every input is
//! handled as if the gateway saw it first. See `docs/fuzzing.md`.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use rumqttc::mqttbytes::v4::{ConnectReturnCode, LastWill, Packet, Subscribe};
use rumqttc::mqttbytes::{self, QoS};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cloud::client::{RequestError, parse_retry_after};
use crate::cloud::session::{Failure, Session};
use crate::cloud::wire::{
    CommandResult, ItemResult, PollRequest, PollResponse, ResultsResponse, Status,
};
use crate::config::{Config, ConfigError};
use crate::journal::Journal;
use crate::outbox::Outbox;
use crate::router::Router;
use crate::transport::ble::codec::{self, Encoding};
use crate::transport::mqtt;
use crate::transport::mqtt::hub::{Hub, ToConn};
use crate::transport::{Dispatch, Outcome, Transports};

/// A poll response, as the driver decodes and acts on it: `serde_json` into
/// [`PollResponse`] (a `BadJson` failure and its backoff otherwise), then the commands go to
/// [`Router::submit`] (per-command parsing and validation, `rejected`/`expired` results,
/// dispatch to the appliances), the acks to [`Outbox::settle`], the cadence to the
/// [`Session`]. The same response is then delivered a second time (the cloud resending it:
/// every id is now a replay) before everything owed is taken and acked. The bytes are also
/// tried as an early flush's response and as a `Retry-After` header value.
pub fn cloud_response(data: &[u8]) {
    with_harness(|h| h.enter("cloud_response", h.cloud_response(data)));
}

/// A byte stream from an appliance into the daemon's MQTT endpoint: the real accept loop and
/// connection handler (`transport::mqtt::conn`) over a loopback TCP connection. The first
/// byte chooses what the harness sends before the rest, so that the fuzzer also reaches
/// the states after authentication (`0`: nothing; `1`: CONNECT as `lamp-1`; `2`: CONNECT,
/// SUBSCRIBE to its command topic and a command `m1` from the router, in flight; `3`: the
/// same with a persistent session, a will and the command sent to `group:lights`). Then
/// the rest is written, the client's write half shut, and the endpoint must close the
/// connection promptly.
pub fn mqtt_stream(data: &[u8]) {
    with_harness(|h| h.enter("mqtt_stream", h.mqtt_stream(data)));
}

/// An appliance's message body, as the hub decodes it: a PUBLISH payload on its `result`
/// topic (answering command `c1`, which is waiting for it), `events` and `status` topics,
/// and in its will; the bytes as a topic name; and a BLE appliance's answer in each
/// `encoding`. Every result that comes of it goes through the journal and back.
pub fn appliance_message(data: &[u8]) {
    with_harness(|h| h.enter("appliance_message", h.appliance_message(data)));
}

/// A config file (bytes decoded as UTF-8, invalid sequences replaced): [`Config::parse`],
/// every problem formatted as `check-config` prints it; a valid config is formatted and
/// given to what the daemon builds from it without touching the network or other files:
/// the MQTT hub, and the cloud session's timing after each kind of failure.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text) {
        Ok(config) => {
            let _ = format!("{config:?}");
            with_harness(|h| {
                h.enter("config", async {
                    let _ = crate::transport::mqtt::new_hub(&config, h.outbox.clone()).online();
                    // The cloud session's timing under each kind of failure, then a success.
                    let now = Instant::now();
                    let mut session = Session::new(
                        crate::app::session_config(&config),
                        now,
                        fastrand::Rng::with_seed(7),
                    );
                    for failure in [
                        Failure::Transient,
                        Failure::Auth,
                        Failure::Busy(None),
                        Failure::Busy(Some(Duration::from_secs(120))),
                        Failure::Refused,
                    ] {
                        session.retry_now(now);
                        let _ = session.poll_action(now);
                        session.poll_done(now, Err(failure));
                        let _ = session.poll_timeout();
                    }
                    session.retry_now(now);
                    let _ = session.poll_action(now);
                    session.poll_done(now, Ok(None));
                    session.results_ready(now);
                    let _ = session.poll_timeout();
                })
            });
        }
        Err(problems) => {
            for p in &problems {
                let _ = p.to_string();
            }
            let e = ConfigError::Invalid {
                path: PathBuf::from("/etc/tether/config.toml"),
                problems,
            };
            let _ = e.to_string();
        }
    }
}

/// How long anything in one input may take before it counts as a hang. Everything here
/// happens on loopback or in memory; libFuzzer's own `-timeout` should be above this.
const HANG: Duration = Duration::from_secs(5);

/// Largest packet the harness's MQTT client accepts from the endpoint.
const CLIENT_MAX_PACKET: usize = 1 << 20;

/// The gateway the targets run against (`gateway.state_dir` is added in front).
const CONFIG: &str = r#"
[cloud]
url = "https://cloud.invalid"

[mqtt]
listen = "127.0.0.1:0"
max_payload = 2048
max_events = 256
connect_timeout = "5s"
idle_timeout = "30s"
# A command for an appliance that is not connected is unreachable at once, never waits.
startup_grace = "0s"
# The harness connects thousands of times a second from 127.0.0.1 and publishes as many
# events: rate limits would turn most inputs away unread.
max_connect_rate = 1000000000
max_event_rate = 1000000000

[router]
default_timeout = "2s"
max_timeout = "10s"
# Small, so that short inputs reach "at capacity", "queue is full" and "payload too large".
max_pending = 8
max_queue_per_appliance = 2
max_command_bytes = 1024

[state]
sync = "normal"

[log]
level = "trace"

[[appliance]]
id = "lamp-1"
transport = "mqtt"
password = "pw-lamp-1"

[[appliance]]
id = "lamp-2"
transport = "mqtt"
password = "pw-lamp-2"

# Never started here: its commands are unreachable at once.
[[appliance]]
id = "thermo-1"
transport = "ble"
address = "C4:7C:8D:6A:3E:21"
service = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
command_char = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"
result_char = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"

[groups]
lights = ["lamp-1", "lamp-2"]
all = ["lamp-1", "lamp-2", "thermo-1"]
"#;

/// The appliance the MQTT prefixes and `appliance_message` act as.
const APPLIANCE: &str = "lamp-1";

/// Runs one input on the process's gateway (built on first use), one input at a time.
/// After an input that panicked, the gateway is dropped and the next input gets a new one:
/// a panic can leave state behind (a command pending, a result owed) that would fail every
/// input after it. (Under libFuzzer the first panic ends the process anyway.)
fn with_harness(run: impl FnOnce(&Harness)) {
    static HARNESS: Mutex<Option<Harness>> = Mutex::new(None);
    let mut slot = HARNESS.lock().unwrap_or_else(|e| e.into_inner());
    let h = slot.get_or_insert_with(Harness::new);
    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| run(h))) {
        *slot = None;
        drop(slot);
        std::panic::resume_unwind(panic);
    }
}

/// One gateway. The runtime is only ever driven from inside `enter`, so every task runs on
/// the calling thread.
struct Harness {
    rt: Runtime,
    /// Its scratch directory, removed with it.
    dir: PathBuf,
    config: Config,
    /// A second connection to the journal's database, only to forget command ids.
    journal_db: Mutex<rusqlite::Connection>,
    outbox: Arc<Outbox>,
    router: Router,
    mqtt_addr: SocketAddr,
    /// A second hub (same config, same outbox), driven directly by `appliance_message`.
    hub: Arc<Hub>,
    /// Keeps the endpoint and the router's workers running (never cancelled).
    _cancel: CancellationToken,
}

impl Harness {
    fn new() -> Harness {
        count_panics();
        install_logger();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("harness: cannot build a tokio runtime");
        let dir = scratch_dir();
        let text = format!(
            "[gateway]\nid = \"gw-fuzz\"\nstate_dir = {}\n{CONFIG}",
            toml::Value::String(dir.display().to_string())
        );
        let config = Config::parse(&text)
            .unwrap_or_else(|problems| panic!("harness: its config is invalid: {problems:?}"));
        let (journal, _) = Journal::open(
            &config.gateway.state_dir,
            config.state.sync,
            config.state.max_journal_bytes,
        )
        .unwrap_or_else(|e| panic!("harness: cannot open the journal: {e}"));
        let journal_db = rusqlite::Connection::open(dir.join("journal.db"))
            .unwrap_or_else(|e| panic!("harness: cannot open the journal's database: {e}"));
        let outbox = Arc::new(Outbox::new(journal.clone(), config.mqtt.max_events));
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (mqtt_addr, router) = rt.block_on(async {
            let (mqtt, addr, _) =
                mqtt::start(&config, None, outbox.clone(), &tracker, cancel.clone())
                    .await
                    .unwrap_or_else(|e| panic!("harness: cannot start the MQTT endpoint: {e}"));
            let transports = Transports {
                mqtt: mqtt.clone(),
                ble: None,
            };
            let router = Router::start(
                &config,
                transports,
                journal.clone(),
                outbox.clone(),
                &tracker,
                cancel.clone(),
            );
            (addr, router)
        });
        let hub = Arc::new(crate::transport::mqtt::new_hub(&config, outbox.clone()));
        Harness {
            rt,
            dir,
            journal_db: Mutex::new(journal_db),
            config,
            outbox,
            router,
            mqtt_addr,
            hub,
            _cancel: cancel,
        }
    }

    /// Runs one input to completion. A panic in any task it started (they all run on this
    /// thread) is re-raised here: tokio would otherwise swallow it.
    fn enter(&self, target: &str, input: impl Future<Output = ()>) {
        let before = panics_on_this_thread();
        self.rt.block_on(input);
        if panics_on_this_thread() != before {
            panic!("{target}: a task panicked while handling this input (see the message above)");
        }
    }

    async fn cloud_response(&self, data: &[u8]) {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = parse_retry_after(text);
        }
        // As the response to an early flush.
        if let Ok(resp) = serde_json::from_slice::<ResultsResponse>(data) {
            let batch = self.outbox.take(self.config.cloud.max_batch, 0).await;
            self.outbox.settle(batch, &resp.acked, true).await;
        }
        // As the response to a poll (`Uplink::exchange`, then `Driver::run`).
        let now = Instant::now();
        let mut session = Session::new(
            crate::app::session_config(&self.config),
            now,
            fastrand::Rng::with_seed(7),
        );
        let _ = session.poll_action(now);
        let resp: PollResponse = match serde_json::from_slice(data) {
            Ok(resp) => resp,
            Err(e) => {
                let _ = RequestError::BadJson(e.to_string()).to_string();
                session.poll_done(now, Err(Failure::Transient));
                let _ = session.poll_timeout();
                return;
            }
        };
        for _ in 0..2 {
            let batch = self.take_for_request().await;
            self.router.submit(resp.commands.clone()).await;
            self.outbox.settle(batch, &resp.acked, true).await;
            let now = Instant::now();
            session.poll_done(now, Ok(resp.poll));
            for _ in 0..4 {
                if session.poll_action(now).is_none() {
                    break;
                }
            }
            session.results_ready(now);
            let _ = session.poll_timeout();
            self.settled("the poll response").await;
        }
        self.deliver_everything().await;
        if !resp.commands.is_empty() {
            self.forget_commands();
        }
    }

    async fn mqtt_stream(&self, data: &[u8]) {
        let (mode, rest) = match data.split_first() {
            Some((first, rest)) => (first % 4, rest),
            None => (0, data),
        };
        let mut client = Client::connect(self.mqtt_addr).await;
        let mut command = false;
        if mode > 0 {
            client.send(&self.prefix(mode)).await;
            let ok = |p: &Packet| matches!(p, Packet::ConnAck(a) if a.code == ConnectReturnCode::Success);
            client
                .expect("a CONNACK accepting the harness's CONNECT", ok)
                .await;
            if mode >= 2 {
                client
                    .expect("a SUBACK", |p| matches!(p, Packet::SubAck(_)))
                    .await;
                let target = if mode == 2 { APPLIANCE } else { "group:lights" };
                self.router
                    .submit(vec![json!({
                        "id": "m1",
                        "target": target,
                        "payload": {"power": "on"},
                        "timeout_ms": 10_000,
                    })])
                    .await;
                client
                    .expect("the command m1 on the appliance's cmd topic", |p| {
                        matches!(p, Packet::Publish(_))
                    })
                    .await;
                command = true;
            }
        }
        client.finish(rest).await;
        // The connection task detaches right after closing; let everything it woke run.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        if command {
            self.settled("the appliance's connection closed").await;
        }
        self.deliver_everything().await;
        if command {
            self.forget_commands();
        }
    }

    /// CONNECT (and SUBSCRIBE) packets for `mode` 1 to 3 of [`mqtt_stream`].
    fn prefix(&self, mode: u8) -> BytesMut {
        let prefix = &self.config.mqtt.topic_prefix;
        let password = self
            .config
            .appliance(APPLIANCE)
            .and_then(|a| a.password.clone())
            .unwrap_or_default();
        let mut connect = rumqttc::mqttbytes::v4::Connect::new(APPLIANCE);
        connect.set_login(APPLIANCE, password);
        connect.keep_alive = 30;
        if mode == 3 {
            connect.keep_alive = 0;
            connect.clean_session = false;
            connect.last_will = Some(LastWill::new(
                format!("{prefix}/{APPLIANCE}/status"),
                "offline",
                QoS::AtLeastOnce,
                false,
            ));
        }
        let mut out = BytesMut::new();
        let mut packets = vec![Packet::Connect(connect)];
        if mode >= 2 {
            let qos = if mode == 2 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            };
            let mut sub = Subscribe::new(format!("{prefix}/{APPLIANCE}/cmd"), qos);
            sub.pkid = 1;
            packets.push(Packet::Subscribe(sub));
        }
        for p in &packets {
            p.write(&mut out, CLIENT_MAX_PACKET)
                .expect("harness: cannot encode its own packet");
        }
        out
    }

    async fn appliance_message(&self, data: &[u8]) {
        let hub = &self.hub;
        let prefix = hub.prefix().to_owned();
        let topic = |kind: &str| format!("{prefix}/{APPLIANCE}/{kind}");
        let (tx, mut rx) = mpsc::channel(64);
        let attached = hub.attach(APPLIANCE, true, tx, CancellationToken::new());
        hub.subscribed(APPLIANCE, Some(QoS::AtLeastOnce));
        let mut results = Vec::new();
        {
            // A command waiting for its answer, as a router worker leaves it.
            let dispatch = Dispatch {
                command_id: "c1".into(),
                payload: json!({"power": "on"}),
                timeout: Duration::from_secs(10),
                deadline: None,
            };
            let mut execute = pin!(hub.execute(APPLIANCE, dispatch));
            if execute.as_mut().now_or_never().is_some() {
                panic!("harness: the command finished before the appliance answered");
            }
            if !matches!(rx.try_recv(), Ok(ToConn::Publish(_))) {
                panic!("harness: the command was not handed to the appliance's connection");
            }
            hub.publish(APPLIANCE, &topic("result"), data);
            if let Some(outcome) = execute.as_mut().now_or_never() {
                if outcome.status() == Status::Ok {
                    results.extend(results_of("c1", APPLIANCE, outcome));
                } else {
                    let _ = outcome.into_parts();
                }
            }
        }
        hub.publish(APPLIANCE, &topic("events"), data);
        hub.publish(APPLIANCE, &topic("status"), data);
        hub.publish(APPLIANCE, &String::from_utf8_lossy(data), b"{}");
        let will = LastWill::new(topic("status"), data.to_vec(), QoS::AtLeastOnce, false);
        hub.detach(APPLIANCE, attached.generation, Some(will));
        // A BLE appliance's answer, in every encoding (`command.rs` makes it the outcome).
        for encoding in [
            Encoding::Json,
            Encoding::Utf8,
            Encoding::Hex,
            Encoding::Base64,
        ] {
            let outcome = match codec::decode(data, encoding) {
                Ok(payload) => Outcome::Ok(Some(payload)),
                Err(e) => Outcome::Error(e.to_string()),
            };
            // Hex and base64 answers are plain ASCII strings: only the other two can hold
            // something the journal might not read back.
            if matches!(encoding, Encoding::Json | Encoding::Utf8) && outcome.status() == Status::Ok
            {
                let id = format!("ble-{}", encoding.as_str());
                results.extend(results_of(&id, "thermo-1", outcome));
            } else {
                let _ = outcome.into_parts();
            }
        }
        // The other way: the same bytes as a command's payload, made into what is written.
        if let Ok(payload) = serde_json::from_slice::<Value>(data) {
            for encoding in [
                Encoding::Json,
                Encoding::Utf8,
                Encoding::Hex,
                Encoding::Base64,
            ] {
                let _ = codec::encode(&payload, encoding).map_err(|e| e.to_string());
            }
        }
        // Every answer that came of it must survive the journal: written, read back, acked.
        let journalled = !results.is_empty();
        futures_util::future::join_all(results.into_iter().map(|r| self.outbox.push_result(r)))
            .await;
        self.deliver_everything().await;
        if journalled {
            self.forget_commands();
        }
    }

    /// Waits until the router has finished every command (each one ends at once here).
    async fn settled(&self, after: &str) {
        if timeout(HANG, self.router.idle()).await.is_err() {
            panic!(
                "hang: {} command(s) still pending {HANG:?} after {after}",
                self.router.pending_count()
            );
        }
    }

    /// What the driver does before a poll: take owed results and events and build the body.
    async fn take_for_request(&self) -> crate::outbox::Batch {
        let batch = self
            .outbox
            .take(self.config.cloud.max_batch, self.config.mqtt.max_events)
            .await;
        let mut pending = self.router.pending_ids();
        pending.extend(self.outbox.in_flight_ids());
        let body = PollRequest {
            results: batch.results.clone(),
            pending,
            events: batch.events.clone(),
            capacity: self.router.capacity(),
        };
        if let Err(e) = serde_json::to_vec(&body) {
            panic!("a poll request cannot be serialised: {e}");
        }
        batch
    }

    /// Sends everything owed to a cloud that acks all of it, until nothing is owed. A result
    /// left owed that cannot be taken is one the journal cannot read back: lost.
    async fn deliver_everything(&self) {
        loop {
            let batch = self.take_for_request().await;
            if batch.results.is_empty() && batch.events.is_empty() {
                self.outbox.settle(batch, &[], true).await;
                break;
            }
            let acked: Vec<String> = batch.results.iter().map(|r| r.command_id.clone()).collect();
            self.outbox.settle(batch, &acked, true).await;
        }
        let owed = self.outbox.owed();
        if owed != 0 {
            panic!(
                "{owed} result(s) stay owed to the cloud but cannot be taken: the journal cannot read them back, they would never be delivered"
            );
        }
    }

    /// Forgets every command id, so that the next input is new to the gateway again.
    /// (The journal remembers the last 65,536 ids to refuse replays; run after
    /// `deliver_everything`, when the journal thread is idle.)
    fn forget_commands(&self) {
        let db = self.journal_db.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = db.execute_batch("DELETE FROM commands; DELETE FROM results;") {
            panic!("harness: cannot reset the journal: {e}");
        }
    }
}

/// The harness's MQTT client: a TCP connection to the endpoint.
struct Client {
    stream: TcpStream,
    inbox: BytesMut,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = match timeout(HANG, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => panic!("harness: cannot connect to the MQTT endpoint: {e}"),
            Err(_) => panic!("hang: the MQTT endpoint accepts no connection"),
        };
        let _ = stream.set_nodelay(true);
        Client {
            stream,
            inbox: BytesMut::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes).await {
            panic!("harness: cannot write to the MQTT endpoint: {e}");
        }
    }

    /// Reads until a packet that `want` accepts.
    async fn expect(&mut self, what: &str, want: impl Fn(&Packet) -> bool) {
        let found = timeout(HANG, async {
            loop {
                while let Some(p) = next_packet(&mut self.inbox) {
                    if want(&p) {
                        return true;
                    }
                }
                match self.stream.read_buf(&mut self.inbox).await {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                }
            }
        })
        .await;
        match found {
            Ok(true) => {}
            Ok(false) => panic!("the MQTT endpoint closed the connection before {what}"),
            Err(_) => panic!("hang: no {what} from the MQTT endpoint within {HANG:?}"),
        }
    }

    /// Writes `rest`, shuts the write half, and reads until the endpoint closes.
    async fn finish(mut self, rest: &[u8]) {
        let (mut rd, mut wr) = self.stream.split();
        let inbox = &mut self.inbox;
        let write = async {
            // The endpoint may close early (a protocol violation): then writing fails.
            if wr.write_all(rest).await.is_ok() {
                let _ = wr.shutdown().await;
            }
        };
        let read = async {
            loop {
                while next_packet(inbox).is_some() {}
                match rd.read_buf(inbox).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        if timeout(HANG, async { tokio::join!(write, read) })
            .await
            .is_err()
        {
            panic!(
                "hang: the MQTT endpoint kept the connection open {HANG:?} after the client's last byte and EOF"
            );
        }
    }
}

/// The next complete packet the endpoint sent; every one must decode.
fn next_packet(inbox: &mut BytesMut) -> Option<Packet> {
    match Packet::read(inbox, CLIENT_MAX_PACKET) {
        Ok(p) => Some(p),
        Err(mqttbytes::Error::InsufficientBytes(_)) => None,
        Err(e) => panic!("the MQTT endpoint sent bytes that are not an MQTT 3.1.1 packet: {e}"),
    }
}

/// The results the router would make of one appliance's outcome: for a command to that
/// appliance alone, and as the one item of a command to a list or group.
fn results_of(command_id: &str, appliance: &str, outcome: Outcome) -> [CommandResult; 2] {
    let status = outcome.status();
    let (payload, error) = outcome.into_parts();
    let single = CommandResult {
        command_id: command_id.to_owned(),
        status,
        payload: payload.clone(),
        error: error.clone(),
        items: None,
        duration_ms: 1,
    };
    let multi = CommandResult {
        command_id: format!("{command_id}-multi"),
        status: if status == Status::Ok {
            Status::Ok
        } else {
            Status::Error
        },
        payload: None,
        error: (status != Status::Ok).then(|| "all 1 targets failed".to_owned()),
        items: Some(vec![ItemResult {
            target: appliance.to_owned(),
            status,
            payload,
            error,
            duration_ms: 1,
        }]),
        duration_ms: 1,
    };
    [single, multi]
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory for one gateway's journal, on tmpfs when there is one:
/// `tether-fuzz-PID-N`. Directories left by processes that are gone (a fuzz target that
/// crashed never cleans up) are removed first.
fn scratch_dir() -> PathBuf {
    const STEM: &str = "tether-fuzz-";
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{STEM}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    for base in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        if let Ok(entries) = std::fs::read_dir(&base) {
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(STEM)) else {
                    continue;
                };
                let pid = rest.split('-').next().unwrap_or_default();
                if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = base.join(&name);
        // Only a process that had this pid before can have left it.
        let _ = std::fs::remove_dir_all(&dir);
        if std::fs::create_dir_all(&dir).is_ok() {
            return dir;
        }
    }
    panic!("harness: cannot create a scratch directory in /dev/shm or the temp directory");
}

thread_local! {
    static PANICS: Cell<u64> = const { Cell::new(0) };
}

fn panics_on_this_thread() -> u64 {
    PANICS.try_with(Cell::get).unwrap_or(0)
}

/// Counts panics per thread (then does what the previous hook did: libFuzzer's aborts).
fn count_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = PANICS.try_with(|n| n.set(n.get() + 1));
            previous(info);
        }));
    });
}

/// Formats every log record, so that the log lines' arguments, which carry the inputs'
/// ids and topics, are exercised too: to nowhere, or to stderr with `TETHER_FUZZ_LOG=1`
/// (to see what an input does). Leaves an existing logger alone.
fn install_logger() {
    struct Sink {
        stderr: OnceLock<bool>,
    }
    struct Fields(String);
    impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
        fn visit_pair(
            &mut self,
            key: log::kv::Key<'kvs>,
            value: log::kv::Value<'kvs>,
        ) -> Result<(), log::kv::Error> {
            use std::fmt::Write;
            let _ = write!(self.0, " {key}={value}");
            Ok(())
        }
    }
    impl log::Log for Sink {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            let mut fields = Fields(String::new());
            let _ = record.key_values().visit(&mut fields);
            let line = format!("{} {}{}", record.level(), record.args(), fields.0);
            if *self
                .stderr
                .get_or_init(|| std::env::var_os("TETHER_FUZZ_LOG").is_some())
            {
                eprintln!("{line}");
            }
        }
        fn flush(&self) {}
    }
    static SINK: Sink = Sink {
        stderr: OnceLock::new(),
    };
    if log::set_logger(&SINK).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}
