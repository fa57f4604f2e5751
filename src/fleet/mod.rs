//! Gateway commands: the cloud manages this gateway's appliances and groups, and asks how
//! it is doing, with commands addressed to [`TARGET`] (`$gateway`, docs/protocol.md).
//!
//! One task owns the configuration's two sources: the file (the operator's, replaced on
//! reload by `app`) and the cloud-managed store (`store.rs`, `managed.toml` in the state
//! directory). It lays the store over the file ([`Store::overlay`]), applies what results
//! to the router, the MQTT endpoint and the BLE transport the way a reload does, and
//! answers gateway commands one at a time, in the order the router hands them over. The
//! router takes a gateway command like any other (journalled first, deduplicated by id)
//! and asks this task through a [`FleetHandle`]; the result goes out like any other.
//!
//! Precedence: the file is the operator's. A cloud entry cannot replace or remove a file
//! entry with the same id; one that a later file edit shadows stays stored, is not in
//! force, and is listed as ignored (`tetherd status`, the `list` operation).
//! A change is on disk before its result is `ok`; a crash before the result leaves the
//! command unanswered in the journal, and it runs again at the next start (every
//! operation gives the same outcome when repeated).
//! Passwords: a plain one is hashed (Argon2id) by the router before the command is
//! journalled ([`FleetHandle::seal`]), so it is never on disk in clear.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::cloud::wire::Status;
use crate::config::{Config, TransportKind, check_id, topic_clash};
use crate::router::{GATEWAY_TARGET, Gateway, GatewayReply};
use crate::status::{Ignored, Sources, Watched};

pub mod store;

pub use store::Store;

/// The target that addresses the gateway itself.
pub const TARGET: &str = GATEWAY_TARGET;

/// The version of the operation set this gateway speaks (`v` in a gateway command).
pub const VERSION: u64 = 1;

/// Most appliances and groups the cloud may put (the file's are not counted).
pub const MAX_APPLIANCES: usize = 512;
pub const MAX_GROUPS: usize = 128;
/// Most members of a cloud-managed group.
pub const MAX_MEMBERS: usize = 512;

const OPS: &str = "put_appliance, remove_appliance, put_group, remove_group, list, status";

type Reply = GatewayReply;

fn ok(payload: Value) -> Reply {
    Reply {
        status: Status::Ok,
        payload: Some(payload),
        error: None,
    }
}

fn rejected(why: impl Into<String>) -> Reply {
    Reply {
        status: Status::Rejected,
        payload: None,
        error: Some(why.into()),
    }
}

fn error(why: impl Into<String>) -> Reply {
    Reply {
        status: Status::Error,
        payload: None,
        error: Some(why.into()),
    }
}

enum Msg {
    Call {
        payload: Value,
        reply: oneshot::Sender<Reply>,
    },
    File {
        config: Arc<Config>,
        done: oneshot::Sender<()>,
    },
    StoredHash {
        id: String,
        reply: oneshot::Sender<Option<String>>,
    },
}

/// How the router and `app` reach the fleet task; cheap to clone.
#[derive(Clone)]
pub struct FleetHandle {
    tx: mpsc::Sender<Msg>,
}

impl Gateway for FleetHandle {
    fn call(&self, payload: Value) -> BoxFuture<'_, Option<Reply>> {
        Box::pin(FleetHandle::call(self, payload))
    }

    fn seal<'a>(&'a self, command: &'a mut Value) -> BoxFuture<'a, ()> {
        Box::pin(FleetHandle::seal(self, command))
    }
}

impl FleetHandle {
    /// Runs one gateway command's operation. `None`: the gateway is stopping and the
    /// operation did not run (the command stays unanswered in the journal and runs at
    /// the next start).
    pub async fn call(&self, payload: Value) -> Option<Reply> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Call { payload, reply }).await.ok()?;
        rx.await.ok()
    }

    /// Hands over the file's configuration after a reload; returns once it applies.
    pub async fn file_changed(&self, config: Arc<Config>) {
        let (done, rx) = oneshot::channel();
        let msg = Msg::File { config, done };
        if self.tx.send(msg).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Replaces a plain password in a `put_appliance` command (the whole command, as
    /// received) by its Argon2id hash, before the command is journalled. The same
    /// password as the stored entry's keeps the stored hash, so putting an entry again
    /// does not disconnect its appliance.
    pub async fn seal(&self, command: &mut Value) {
        if command.get("target").and_then(Value::as_str) != Some(TARGET) {
            return;
        }
        let Some(payload) = command.get_mut("payload") else {
            return;
        };
        if payload.get("op").and_then(Value::as_str) != Some("put_appliance") {
            return;
        }
        let Some(entry) = payload.get_mut("appliance").and_then(Value::as_object_mut) else {
            return;
        };
        let Some(password) = entry.get("password").and_then(Value::as_str) else {
            return;
        };
        if password.starts_with("$argon2") || password.is_empty() {
            return;
        }
        let password = password.to_owned();
        let stored = match entry.get("id").and_then(Value::as_str) {
            Some(id) => {
                let (reply, rx) = oneshot::channel();
                let msg = Msg::StoredHash {
                    id: id.to_owned(),
                    reply,
                };
                match self.tx.send(msg).await {
                    Ok(()) => rx.await.ok().flatten(),
                    Err(_) => None,
                }
            }
            None => None,
        };
        let hashed = tokio::task::spawn_blocking(move || {
            if let Some(stored) = stored
                && verify(&stored, &password)
            {
                return stored;
            }
            // A hash that cannot be made must not leave the password in clear: the
            // entry is then refused as malformed.
            crate::transport::mqtt::auth::hash(&password)
                .unwrap_or_else(|_| "$argon2-unavailable".to_owned())
        })
        .await
        .unwrap_or_else(|_| "$argon2-unavailable".to_owned());
        entry.insert("password".into(), Value::String(hashed));
    }
}

fn verify(hash: &str, password: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    argon2::password_hash::phc::PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Makes the channel: the handle for the router and `app`, and the receiver
/// [`Fleet::run`] takes.
pub fn channel() -> (FleetHandle, Inbox) {
    let (tx, rx) = mpsc::channel(16);
    (FleetHandle { tx }, Inbox(rx))
}

/// The receiving end, for [`Fleet::run`].
pub struct Inbox(mpsc::Receiver<Msg>);

/// What runs: `store` laid over `file`, and where each entry comes from.
pub fn sources(file: &Arc<Config>, store: &Store, store_error: Option<String>) -> Sources {
    let (running, ignored) = store.overlay(file);
    Sources {
        file: file.clone(),
        running,
        ignored,
        store_error,
    }
}

/// [`sources`], logging each stored entry that is not in force (at start, and when the
/// daemon applies a change).
pub fn lay_over(file: &Arc<Config>, store: &Store, store_error: Option<String>) -> Sources {
    let sources = sources(file, store, store_error);
    for i in &sources.ignored {
        log::warn!(
            "cloud-managed {} {:?} not in force: {}",
            i.kind,
            i.id,
            i.why
        );
    }
    sources
}

pub use crate::status::transport_name;

/// The fleet task's state.
pub struct Fleet {
    /// The file's configuration in force (`app` holds the same).
    pub file: Arc<Config>,
    pub store: Store,
    /// Why the store could not be read at start (it is then left as it is on disk).
    pub store_error: Option<String>,
    /// The running parts a change applies to (router, hub, BLE radio) and reports to.
    pub watched: Arc<Watched>,
}

impl Fleet {
    /// Answers gateway commands and reloads until `cancel`.
    pub async fn run(mut self, mut inbox: Inbox, cancel: CancellationToken) {
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return,
                msg = inbox.0.recv() => match msg {
                    Some(msg) => msg,
                    None => return,
                },
            };
            match msg {
                Msg::Call { payload, reply } => {
                    let r = self.call(payload).await;
                    let _ = reply.send(r);
                }
                Msg::File { config, done } => {
                    self.file = config;
                    self.apply();
                    let _ = done.send(());
                }
                Msg::StoredHash { id, reply } => {
                    let hash = self
                        .store
                        .appliances
                        .get(&id)
                        .and_then(|t| t.get("password"))
                        .and_then(toml::Value::as_str)
                        .map(str::to_owned);
                    let _ = reply.send(hash);
                }
            }
        }
    }

    /// What runs now: the store laid over the file.
    pub fn running(&self) -> (Arc<Config>, Vec<Ignored>) {
        self.store.overlay(&self.file)
    }

    /// Applies the store laid over the file the way a reload applies appliances and
    /// groups. Returns whether part of it waits for a restart (the first BLE appliances,
    /// when the BLE transport did not start).
    fn apply(&self) -> bool {
        let sources = lay_over(&self.file, &self.store, self.store_error.clone());
        let w = &self.watched;
        let running = &sources.running;
        let mut restart = false;
        match (&w.ble, running.has_ble()) {
            (Some(ble), _) => ble.reconfigure(running),
            (None, true) => {
                restart = true;
                log::warn!(
                    "the first BLE appliances take effect at the next restart (the BLE transport starts only then)"
                );
            }
            (None, false) => {}
        }
        w.router.reconfigure(running);
        w.mqtt.reconfigure(running);
        w.set_fleet(sources);
        restart
    }

    async fn call(&mut self, payload: Value) -> Reply {
        let op = match payload.get("op") {
            Some(Value::String(op)) => op.clone(),
            Some(_) => return rejected("op must be a string"),
            None => return rejected(format!("a gateway command needs an op ({OPS})")),
        };
        match payload.get("v") {
            None => {}
            Some(v) if v.as_u64() == Some(VERSION) => {}
            Some(v) => {
                return rejected(format!(
                    "gateway command version {v} is not supported (this gateway speaks {VERSION})"
                ));
            }
        }
        let changes = matches!(
            op.as_str(),
            "put_appliance" | "remove_appliance" | "put_group" | "remove_group"
        );
        if changes && let Some(e) = &self.store_error {
            return error(format!(
                "the cloud-managed entries could not be read at start ({e}); fix or remove the file and restart"
            ));
        }
        let reply = match op.as_str() {
            "put_appliance" => self.put_appliance(&payload).await,
            "remove_appliance" => self.remove_appliance(&payload).await,
            "put_group" => self.put_group(&payload).await,
            "remove_group" => self.remove_group(&payload).await,
            "list" => Ok(self.list()),
            "status" => Ok(ok(self.watched.snapshot_json())),
            other => no(format!("unknown op {other:?} (this gateway knows {OPS})")),
        };
        reply.unwrap_or_else(|r| r)
    }

    fn list(&self) -> Reply {
        let sources = sources(&self.file, &self.store, self.store_error.clone());
        ok(serde_json::to_value(sources.view()).unwrap_or(Value::Null))
    }

    /// Writes `next` and puts it in force; the store in force is unchanged if the write
    /// fails.
    async fn commit(&mut self, next: Store) -> Result<bool, Reply> {
        let to_save = next.clone();
        let saved = tokio::task::spawn_blocking(move || to_save.save())
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        if let Err(e) = saved {
            log::error!("cannot write {}: {e}", next.path().display());
            return Err(error(format!(
                "cannot store the change ({}: {e}); nothing changed",
                next.path().display()
            )));
        }
        self.store = next;
        Ok(self.apply())
    }

    async fn put_appliance(&mut self, payload: &Value) -> Result<Reply, Reply> {
        let Some(entry) = payload.get("appliance").and_then(Value::as_object) else {
            return no("appliance: required, an object with the keys of an [[appliance]] entry");
        };
        // JSON null stands for an absent key (TOML has no null).
        let entry: serde_json::Map<String, Value> = entry
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let table = match toml::Value::try_from(Value::Object(entry)) {
            Ok(toml::Value::Table(t)) => t,
            Ok(_) => return no("appliance: must be an object"),
            Err(e) => return no(format!("appliance: {e}")),
        };
        let parsed = store::parse_appliance(&table, &self.file.mqtt).map_err(|problems| {
            let why: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            rejected(why.join("; "))
        })?;
        let id = parsed.id.clone();
        if self.file.appliance(&id).is_some() {
            return no(file_wins("appliance", &id));
        }
        let existed = self.store.appliances.contains_key(&id);
        if !existed && self.store.appliances.len() >= MAX_APPLIANCES {
            return no(format!(
                "the gateway holds {MAX_APPLIANCES} cloud-managed appliances, its limit"
            ));
        }
        if parsed.transport == TransportKind::Mqtt
            && parsed
                .password
                .as_deref()
                .is_some_and(|p| !p.starts_with("$argon2"))
        {
            // `seal` hashes plain passwords before the command is journalled; one that got
            // here in clear must not be stored so.
            return no("appliance.password: must be hashed before it is stored");
        }
        let (running, _) = self.running();
        if let Some(other) = store::same_device(&running.appliances, &parsed) {
            return no(format!(
                "appliance.address: this BLE device is appliance {other:?}'s"
            ));
        }
        if let Some((other, topic)) =
            topic_clash(&running.mqtt.topic_prefix, &running.appliances, &parsed)
        {
            let key = if parsed.topic.is_some() {
                "topic"
            } else {
                "id"
            };
            return no(format!(
                "appliance.{key}: its topics overlap appliance {other:?}'s ({topic})"
            ));
        }
        let changed = self.store.appliances.get(&id) != Some(&table);
        let mut next = self.store.clone();
        next.appliances.insert(id.clone(), table);
        let restart = if changed {
            self.commit(next).await?
        } else {
            false
        };
        log::info!(appliance = id.as_str(), transport = transport_name(parsed.transport);
            "gateway command: appliance {}", if existed { "replaced" } else { "added" });
        Ok(ok(json!({
            "id": id,
            "source": "cloud",
            "created": !existed,
            "changed": changed,
            "restart_required": restart,
        })))
    }

    async fn remove_appliance(&mut self, payload: &Value) -> Result<Reply, Reply> {
        let id = string_field(payload, "id").map_err(rejected)?;
        if self.file.appliance(&id).is_some() {
            return no(file_wins("appliance", &id));
        }
        if !self.store.appliances.contains_key(&id) {
            return Ok(ok(json!({ "id": id, "removed": false })));
        }
        let groups: Vec<&str> = self
            .store
            .groups
            .iter()
            .filter(|(_, m)| m.contains(&id))
            .map(|(g, _)| g.as_str())
            .collect();
        if !groups.is_empty() {
            return no(format!(
                "appliance {id:?} is a member of group(s) {}; put those groups without it (or remove them) first",
                groups.join(", ")
            ));
        }
        let mut next = self.store.clone();
        next.appliances.remove(&id);
        self.commit(next).await?;
        log::info!(appliance = id.as_str(); "gateway command: appliance removed");
        Ok(ok(json!({ "id": id, "removed": true })))
    }

    async fn put_group(&mut self, payload: &Value) -> Result<Reply, Reply> {
        let name = string_field(payload, "name").map_err(rejected)?;
        check_id(&name).map_err(|e| rejected(format!("name: {e}")))?;
        if self.file.groups.contains_key(&name) {
            return no(file_wins("group", &name));
        }
        let members = match payload.get("members") {
            Some(Value::Array(list)) => list
                .iter()
                .map(|m| m.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| rejected("members: must be a list of appliance ids"))?,
            _ => return no("members: required, a list of appliance ids"),
        };
        if members.is_empty() {
            return no("members: a group needs at least one member");
        }
        if members.len() > MAX_MEMBERS {
            return no(format!("members: at most {MAX_MEMBERS}"));
        }
        let (running, _) = self.running();
        let unknown: Vec<&str> = members
            .iter()
            .filter(|m| running.appliance(m).is_none())
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return no(format!(
                "members: unknown appliance(s) {}",
                unknown.join(", ")
            ));
        }
        let existed = self.store.groups.contains_key(&name);
        if !existed && self.store.groups.len() >= MAX_GROUPS {
            return no(format!(
                "the gateway holds {MAX_GROUPS} cloud-managed groups, its limit"
            ));
        }
        let changed = self.store.groups.get(&name) != Some(&members);
        if changed {
            let mut next = self.store.clone();
            next.groups.insert(name.clone(), members);
            self.commit(next).await?;
        }
        log::info!(
            "gateway command: group {name:?} {}",
            if existed { "replaced" } else { "added" }
        );
        Ok(ok(json!({
            "name": name,
            "source": "cloud",
            "created": !existed,
            "changed": changed,
        })))
    }

    async fn remove_group(&mut self, payload: &Value) -> Result<Reply, Reply> {
        let name = string_field(payload, "name").map_err(rejected)?;
        if self.file.groups.contains_key(&name) {
            return no(file_wins("group", &name));
        }
        if !self.store.groups.contains_key(&name) {
            return Ok(ok(json!({ "name": name, "removed": false })));
        }
        let mut next = self.store.clone();
        next.groups.remove(&name);
        self.commit(next).await?;
        log::info!("gateway command: group {name:?} removed");
        Ok(ok(json!({ "name": name, "removed": true })))
    }
}

/// A gateway command refused, with why.
fn no<T>(why: impl Into<String>) -> Result<T, Reply> {
    Err(rejected(why))
}

fn file_wins(kind: &str, id: &str) -> String {
    format!(
        "{kind} {id:?} is in the configuration file, which takes precedence: a gateway command can neither replace nor remove it"
    )
}

fn string_field(payload: &Value, key: &str) -> Result<String, String> {
    match payload.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(format!("{key}: must be a non-empty string")),
        None => Err(format!("{key}: required")),
    }
}
