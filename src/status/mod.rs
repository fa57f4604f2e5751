//! What the daemon can tell about itself: the STATUS line, `tetherd status` (and the
//! `status` gateway command), and the metrics.
//!
//! [`Watched`] gathers the running parts' handles; `app` builds it, the systemd
//! supervisor reads its [`Watched::status_line`], the fleet task updates which entries
//! are in force ([`Watched::set_fleet`]), and the control socket (`socket.rs`) serves its
//! [`Watched::snapshot_json`] and the Prometheus text (`metrics.rs`). A snapshot is JSON
//! so that `tetherd status` of one version can print what a daemon of another sent.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{Config, Profile, TransportKind};
use crate::health::Health;
use crate::journal::Journal;
use crate::outbox::Outbox;
use crate::router::Router;
use crate::transport::ble::BleHandle;
use crate::transport::mqtt::MqttHandle;

pub mod metrics;
pub mod socket;

/// What the watchdog, the STATUS line, `tetherd status` and the metrics look at.
pub struct Watched {
    pub health: Arc<Health>,
    pub router: Router,
    pub mqtt: MqttHandle,
    /// Running only when BLE appliances were configured at start.
    pub ble: Option<BleHandle>,
    pub outbox: Arc<Outbox>,
    pub journal: Journal,
    pub gateway: String,
    pub max_journal_bytes: u64,
    pub started: SystemTime,
    /// The appliances and groups in force and where each comes from (changed by reloads
    /// and gateway commands, through the fleet task).
    fleet: RwLock<Arc<Sources>>,
}

impl Watched {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        health: Arc<Health>,
        router: Router,
        mqtt: MqttHandle,
        ble: Option<BleHandle>,
        outbox: Arc<Outbox>,
        journal: Journal,
        config: &Config,
        sources: Sources,
    ) -> Watched {
        Watched {
            health,
            router,
            mqtt,
            ble,
            outbox,
            journal,
            gateway: config.gateway.id.clone(),
            max_journal_bytes: config.state.max_journal_bytes,
            started: SystemTime::now(),
            fleet: RwLock::new(Arc::new(sources)),
        }
    }

    /// The appliances and groups in force, and where each comes from.
    pub fn set_fleet(&self, sources: Sources) {
        *self.fleet.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(sources);
    }

    fn sources(&self) -> Arc<Sources> {
        self.fleet.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Which entries are in force and where each comes from, made when asked: the
    /// configurations it is made from are shared with the fleet task, not copied.
    pub fn fleet(&self) -> View {
        self.sources().view()
    }

    /// One line: cloud state, appliances online, results owed, commands running, and the
    /// runtime's live tasks (a number that must not creep up over weeks).
    pub fn status_line(&self) -> String {
        let tasks =
            tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks());
        // BLE appliances are linked per command: only MQTT ones count towards "online".
        let (mut mqtt, mut ble) = (0, 0);
        for a in &self.sources().running.appliances {
            match a.transport {
                TransportKind::Mqtt => mqtt += 1,
                TransportKind::Ble => ble += 1,
            }
        }
        let ble = match ble {
            0 => String::new(),
            n => format!(" (+{n} BLE, linked on demand)"),
        };
        format!(
            "{}; {}/{mqtt} appliances online{ble}; {} results owed; {} commands running; {tasks} tasks",
            self.health.link_summary(),
            self.mqtt.online(),
            self.outbox.owed(),
            self.router.pending_count(),
        )
    }

    /// Everything `tetherd status` shows, as JSON (docs/operations.md lists the fields).
    pub fn snapshot_json(&self) -> Value {
        let now = SystemTime::now();
        let fleet = self.fleet();
        let presence = self.mqtt.presence();
        let ble = self
            .ble
            .as_ref()
            .map(BleHandle::presence)
            .unwrap_or_default();
        let work = self.router.appliance_work();
        let appliances: Vec<Value> = fleet
            .appliances
            .iter()
            .map(|a| {
                let w = work.get(&a.id).copied().unwrap_or_default();
                // MQTT: connected and not reporting offline. BLE: found by a scan (BlueZ
                // knows it), whether or not a link is up: links are made per command.
                let (online, since, last_seen) = match a.transport {
                    "mqtt" => {
                        let p = presence.get(&a.id);
                        (
                            p.is_some_and(|p| p.online),
                            p.and_then(|p| p.since),
                            p.and_then(|p| p.last_seen),
                        )
                    }
                    _ => {
                        let p = ble.get(&a.id);
                        (p.is_some_and(|p| p.0), p.and_then(|p| p.1), None)
                    }
                };
                json!({
                    "id": a.id,
                    "transport": a.transport,
                    "profile": a.profile,
                    "source": a.source,
                    "online": online,
                    "since": since.map(rfc3339),
                    "last_seen": last_seen.map(rfc3339),
                    "commands_waiting": w.queued,
                    "commands_done": w.done,
                    "commands_failed": w.failed,
                })
            })
            .collect();
        let link = self.health.link();
        let waiting = self.router.waiting_ids().len();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "gateway": self.gateway,
            "started_at": rfc3339(self.started),
            "uptime_s": now.duration_since(self.started).unwrap_or(Duration::ZERO).as_secs(),
            "cloud": {
                "state": link.state.as_str(),
                "since": rfc3339(link.since),
                "last_error": link.last_error,
                "polls": self.health.polls(),
                "reconnects": self.health.reconnects(),
            },
            "appliances": appliances,
            "groups": fleet.groups,
            "ignored": fleet.ignored,
            "store_error": fleet.store_error,
            "journal": {
                "results_owed": self.outbox.owed(),
                "commands_running": self.router.pending_count().saturating_sub(waiting),
                "commands_waiting": waiting,
                "bytes": self.journal.bytes(),
                "max_bytes": self.max_journal_bytes,
            },
        })
    }
}

/// Which entries are in force and where each comes from: what `tetherd status` and the
/// `list` operation show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct View {
    pub appliances: Vec<EntryView>,
    pub groups: Vec<GroupView>,
    /// Stored cloud entries not in force.
    pub ignored: Vec<Ignored>,
    /// The store could not be read at start: gateway commands that change it are refused.
    pub store_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EntryView {
    pub id: String,
    pub transport: &'static str,
    /// MQTT appliances: how they are spoken to (docs/appliances.md); `null` for BLE.
    pub profile: Option<&'static str>,
    pub source: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    pub name: String,
    pub members: Vec<String>,
    pub source: &'static str,
}

/// The two sources of appliances and groups and what runs of them: the file's
/// configuration, and the configuration in force (the same `Arc` when the cloud put
/// nothing).
#[derive(Debug, Clone)]
pub struct Sources {
    pub file: Arc<Config>,
    pub running: Arc<Config>,
    /// Stored cloud entries not in force.
    pub ignored: Vec<Ignored>,
    /// The store could not be read at start.
    pub store_error: Option<String>,
}

impl Sources {
    /// Which entries of the configuration in force come from the file, and which from
    /// the cloud.
    pub fn view(&self) -> View {
        let source = |from_file: bool| if from_file { "file" } else { "cloud" };
        View {
            appliances: self
                .running
                .appliances
                .iter()
                .map(|a| EntryView {
                    id: a.id.clone(),
                    transport: transport_name(a.transport),
                    profile: (a.transport == TransportKind::Mqtt).then(|| a.profile.name()),
                    source: source(self.file.appliance(&a.id).is_some()),
                })
                .collect(),
            groups: self
                .running
                .groups
                .iter()
                .map(|(name, members)| GroupView {
                    name: name.clone(),
                    members: members.clone(),
                    source: source(self.file.groups.contains_key(name)),
                })
                .collect(),
            ignored: self.ignored.clone(),
            store_error: self.store_error.clone(),
        }
    }
}

/// An appliance's transport as the text views show it: with its profile where that is
/// another firmware's contract (`mqtt/tasmota`), plain for Tether's own and for BLE.
pub fn transport_label(transport: &str, profile: Option<&str>) -> String {
    match profile {
        Some(p) if p != Profile::Tether.name() => format!("{transport}/{p}"),
        _ => transport.to_owned(),
    }
}

pub fn transport_name(kind: TransportKind) -> &'static str {
    match kind {
        TransportKind::Mqtt => "mqtt",
        TransportKind::Ble => "ble",
    }
}

/// A stored cloud entry that is not in force, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Ignored {
    pub kind: &'static str,
    pub id: String,
    pub why: String,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `tetherd status` as text, from a snapshot (of this version or another: missing fields
/// show as "?").
pub fn render(s: &Value) -> String {
    use std::fmt::Write;
    let str_of = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tetherd {} (gateway {}), up {}",
        str_of(&s["version"]),
        str_of(&s["gateway"]),
        s["uptime_s"]
            .as_u64()
            .map_or("?".into(), |u| humantime::format_duration(
                Duration::from_secs(u)
            )
            .to_string())
    );
    let c = &s["cloud"];
    let _ = writeln!(
        out,
        "cloud: {} since {}; {} poll(s), {} reconnect(s){}",
        str_of(&c["state"]),
        str_of(&c["since"]),
        str_of(&c["polls"]),
        str_of(&c["reconnects"]),
        match &c["last_error"] {
            Value::String(e) => format!("; last error: {e}"),
            _ => String::new(),
        }
    );
    let j = &s["journal"];
    let _ = writeln!(
        out,
        "journal: {} result(s) owed, {} command(s) running, {} waiting; {} of {} bytes",
        str_of(&j["results_owed"]),
        str_of(&j["commands_running"]),
        str_of(&j["commands_waiting"]),
        str_of(&j["bytes"]),
        str_of(&j["max_bytes"]),
    );
    let empty = Vec::new();
    let list = s["appliances"].as_array().unwrap_or(&empty);
    let _ = writeln!(out, "appliances: {}", list.len());
    for a in list {
        let ble = a["transport"] == "ble";
        let state = match &a["online"] {
            Value::Bool(true) if ble => format!("found since {}", str_of(&a["since"])),
            Value::Bool(false) if ble => match &a["since"] {
                Value::Null => "not found yet".into(),
                since => format!("not found since {}", str_of(since)),
            },
            Value::Bool(true) => format!("online since {}", str_of(&a["since"])),
            Value::Bool(false) => match &a["since"] {
                Value::Null => "offline (not seen since the start)".into(),
                since => format!("offline since {}", str_of(since)),
            },
            _ => "?".into(),
        };
        let transport = transport_label(
            a["transport"].as_str().unwrap_or("?"),
            a["profile"].as_str(),
        );
        let _ = writeln!(
            out,
            "  {:<20} {:<4} {:<5} {}; last seen {}; {} waiting, {} done, {} failed",
            str_of(&a["id"]),
            transport,
            str_of(&a["source"]),
            state,
            str_of(&a["last_seen"]),
            str_of(&a["commands_waiting"]),
            str_of(&a["commands_done"]),
            str_of(&a["commands_failed"]),
        );
    }
    let groups = s["groups"].as_array().unwrap_or(&empty);
    if !groups.is_empty() {
        let _ = writeln!(out, "groups: {}", groups.len());
        for g in groups {
            let members: Vec<String> = g["members"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(str_of)
                .collect();
            let _ = writeln!(
                out,
                "  {:<20} {:<5} {}",
                str_of(&g["name"]),
                str_of(&g["source"]),
                members.join(", ")
            );
        }
    }
    for i in s["ignored"].as_array().unwrap_or(&empty) {
        let _ = writeln!(
            out,
            "not in force: cloud-managed {} {}: {}",
            str_of(&i["kind"]),
            str_of(&i["id"]),
            str_of(&i["why"])
        );
    }
    if let Value::String(e) = &s["store_error"] {
        let _ = writeln!(out, "cloud-managed entries unreadable: {e}");
    }
    out
}
