//! The gateway the targets run against, one per process, and the checks each input ends
//! with: every command settled, every result owed delivered, command ids forgotten. The
//! targets (the other files of `fuzzing`) run their inputs through [`with_harness`].

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::process::{count_panics, install_logger, panics_on_this_thread, scratch_dir};
use crate::cloud::wire::PollRequest;
use crate::config::Config;
use crate::journal::Journal;
use crate::outbox::Outbox;
use crate::router::Router;
use crate::transport::Transports;
use crate::transport::mqtt;
use crate::transport::mqtt::hub::Hub;

/// How long anything in one input may take before it counts as a hang. Everything here
/// happens on loopback or in memory; libFuzzer's own `-timeout` should be above this.
pub(super) const HANG: Duration = Duration::from_secs(5);

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

# Commands never wait for an appliance that is away (an input's persistent session would
# otherwise hold them for the next input): each input starts from the same state.
[[appliance]]
id = "lamp-1"
transport = "mqtt"
password = "pw-lamp-1"
offline = "fail"

[[appliance]]
id = "lamp-2"
transport = "mqtt"
password = "pw-lamp-2"
offline = "fail"

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
pub(super) const APPLIANCE: &str = "lamp-1";

/// Runs one input on the process's gateway (built on first use), one input at a time.
/// After an input that panicked, the gateway is dropped and the next input gets a new one:
/// a panic can leave state behind (a command pending, a result owed) that would fail every
/// input after it. (Under libFuzzer the first panic ends the process anyway.)
pub(super) fn with_harness(run: impl FnOnce(&Harness)) {
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
pub(super) struct Harness {
    rt: Runtime,
    /// Its scratch directory, removed with it.
    dir: PathBuf,
    pub(super) config: Config,
    /// A second connection to the journal's database, only to forget command ids.
    journal_db: Mutex<rusqlite::Connection>,
    pub(super) outbox: Arc<Outbox>,
    pub(super) router: Router,
    pub(super) mqtt_addr: SocketAddr,
    /// A second hub (same config, same outbox), driven directly by `appliance_message`.
    pub(super) hub: Arc<Hub>,
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
            .unwrap_or_else(|e| panic!("harness: cannot build a tokio runtime: {e}"));
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
            let (mqtt, addr, _) = mqtt::start(
                &config,
                None,
                outbox.clone(),
                mqtt::Sessions::default(),
                &tracker,
                cancel.clone(),
            )
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
        let hub = Arc::new(crate::transport::mqtt::new_hub(
            &config,
            outbox.clone(),
            Default::default(),
        ));
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
    pub(super) fn enter(&self, target: &str, input: impl Future<Output = ()>) {
        let before = panics_on_this_thread();
        self.rt.block_on(input);
        if panics_on_this_thread() != before {
            panic!("{target}: a task panicked while handling this input (see the message above)");
        }
    }

    /// Waits until the router has finished every command (each one ends at once here).
    pub(super) async fn settled(&self, after: &str) {
        if timeout(HANG, self.router.idle()).await.is_err() {
            panic!(
                "hang: {} command(s) still pending {HANG:?} after {after}",
                self.router.pending_count()
            );
        }
    }

    /// What the driver does before a poll: take owed results and events and build the body.
    pub(super) async fn take_for_request(&self) -> crate::outbox::Batch {
        let batch = self
            .outbox
            .take(self.config.cloud.max_batch, self.config.mqtt.max_events)
            .await;
        let mut pending = self.router.pending_ids();
        pending.extend(self.outbox.in_flight_ids());
        let body = PollRequest {
            results: batch.results.clone(),
            pending,
            waiting: self.router.waiting_ids(),
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
    pub(super) async fn deliver_everything(&self) {
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
    pub(super) fn forget_commands(&self) {
        let db = self.journal_db.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = db.execute_batch("DELETE FROM commands; DELETE FROM results;") {
            panic!("harness: cannot reset the journal: {e}");
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
