//! The hub: what the endpoint knows about each configured MQTT appliance.
//!
//! Connection tasks (`conn.rs`) attach, report subscriptions, presence, results, events and
//! violations here; [`Hub::execute`] (called by the router through `MqttHandle`) looks an
//! appliance up, hands the command to its connection and waits for the correlated result.
//! All state sits behind one std `Mutex`, held only for map updates, never across `.await`.
//!
//! This file holds that state and the connections' life (authenticate, attach, detach,
//! subscribe, presence); `inbound.rs` handles what appliances publish (results, status,
//! events, and refusals, within the event budget); `dispatch.rs` sends a command and
//! waits for its answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{LastWill, Publish};
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::auth::{Secret, Verifier};
use super::limits::Bucket;
use super::profile::Contract;
use crate::cloud::wire::Event;
use crate::journal::Journal;
use crate::outbox::Outbox;
use crate::transport::Outcome;

mod dispatch;
mod inbound;

/// Counters of what the endpoint refused or could not use; each is also logged.
#[derive(Debug, Default)]
pub struct Stats {
    pub auth_failures: AtomicU64,
    pub denied: AtomicU64,
    pub malformed: AtomicU64,
    pub unknown_results: AtomicU64,
    pub connections_refused: AtomicU64,
    /// Connections closed unread: their source connected too often.
    pub connections_rate_limited: AtomicU64,
    /// Appliance events (and reports of refused or malformed messages) dropped over
    /// `mqtt.max_event_rate`.
    pub events_rate_limited: AtomicU64,
}

/// What the hub asks of a connection task.
#[derive(Debug)]
pub enum ToConn {
    /// A command. Boxed, deadline included: every connection's queue allocates room for
    /// a block of these up front, so a slot stays one pointer.
    Publish(Box<Outgoing>),
}

/// A command on its way to a connection.
#[derive(Debug)]
pub struct Outgoing {
    pub publish: Publish,
    /// When its TTL runs out (an MQTT 5 client gets what is left as the message expiry
    /// interval).
    pub expires: Option<Instant>,
}

/// Persistent sessions a previous run left (appliance, QoS of its cmd subscription), and
/// the journal that keeps them; none in the fuzz harness.
#[derive(Default)]
pub struct Sessions {
    pub journal: Option<Journal>,
    pub known: Vec<(String, u8)>,
}

/// A configured appliance as the endpoint knows it: how it authenticates, and its topics.
#[derive(Clone, PartialEq)]
pub struct Member {
    pub secret: Secret,
    pub contract: Arc<Contract>,
}

pub struct Hub {
    max_payload: usize,
    members: std::sync::RwLock<HashMap<String, Member>>,
    verifier: Verifier,
    slots: Mutex<HashMap<String, Slot>>,
    outbox: Arc<Outbox>,
    next_generation: AtomicU64,
    /// Until then, a command for an appliance that is not ready waits for it: after a
    /// gateway restart, appliances need a moment to reconnect.
    grace_until: Instant,
    /// `mqtt.max_event_rate`; the burst is twice this.
    event_rate: AtomicU32,
    /// Where persistent sessions are remembered across restarts.
    sessions: Option<Journal>,
    /// Request ids for firmwares that match answers by number (Shelly RPC).
    next_seq: AtomicU64,
    /// The appliances are at an external broker (`mqtt.mode = "external"`), reached over
    /// the daemon's one client connection to it.
    external: bool,
    pub stats: Stats,
    /// Woken when an appliance comes online or goes offline (the STATUS line follows).
    pub changed: Notify,
}

#[derive(Default)]
struct Slot {
    conn: Option<ConnRef>,
    /// The appliance said `offline` on its status topic (or its will did).
    reported_offline: bool,
    /// QoS granted on its `cmd` subscription.
    subscription: Option<QoS>,
    /// Keep the subscription across reconnects (clean_session = false), and across
    /// restarts of the gateway (the journal remembers it).
    persistent: bool,
    /// Commands sent and not answered, by command id.
    waiting: HashMap<String, oneshot::Sender<Outcome>>,
    /// Events this appliance may still raise; created at its first event.
    events: Option<Bucket>,
    /// Events dropped over the rate since the last one let through.
    events_dropped: u64,
    /// Woken when the appliance connects, subscribes, says `online`, or leaves the
    /// configuration: what a command waiting for it waits on. One per appliance, so a
    /// hundred sleeping appliances do not all re-check at every connect.
    ready: Arc<Notify>,
    /// When it last came online or went offline (connected or not, reported or not).
    since: Option<SystemTime>,
    /// When it last connected, published or left.
    last_seen: Option<SystemTime>,
}

/// One appliance's presence, for `tetherd status`.
#[derive(Debug, Clone, Copy)]
pub struct Presence {
    pub online: bool,
    pub since: Option<SystemTime>,
    pub last_seen: Option<SystemTime>,
}

struct ConnRef {
    tx: mpsc::Sender<ToConn>,
    kick: CancellationToken,
    generation: u64,
}

/// What `attach` tells the new connection.
pub struct Attached {
    pub generation: u64,
    pub session_present: bool,
}

impl Hub {
    pub fn new(
        max_payload: usize,
        members: HashMap<String, Member>,
        outbox: Arc<Outbox>,
        startup_grace: std::time::Duration,
        event_rate: u32,
        sessions: Sessions,
        external: bool,
    ) -> Hub {
        let mut slots: HashMap<String, Slot> = members
            .keys()
            .map(|id| (id.clone(), Slot::default()))
            .collect();
        for (id, qos) in sessions.known {
            match (slots.get_mut(&id), rumqttc::mqttbytes::qos(qos)) {
                (Some(slot), Ok(qos)) => {
                    slot.persistent = true;
                    slot.subscription = Some(qos);
                }
                _ => {
                    if let Some(journal) = &sessions.journal {
                        journal.note_session(&id, None);
                    }
                }
            }
        }
        Hub {
            max_payload,
            members: std::sync::RwLock::new(members),
            verifier: Verifier::default(),
            slots: Mutex::new(slots),
            outbox,
            next_generation: AtomicU64::new(1),
            grace_until: Instant::now() + startup_grace,
            event_rate: AtomicU32::new(event_rate.max(1)),
            sessions: sessions.journal,
            next_seq: AtomicU64::new(1),
            external,
            stats: Stats::default(),
            changed: Notify::new(),
        }
    }

    fn remember_session(&self, id: &str, qos: Option<QoS>) {
        if let Some(journal) = &self.sessions {
            journal.note_session(id, qos.map(|q| q as u8));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks a CONNECT's identity: username = client id = a configured appliance, and
    /// its password (hashes verified off the async threads, plain text in constant time).
    pub async fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&str>,
    ) -> bool {
        let (Some(user), Some(pass)) = (username, password) else {
            return false;
        };
        if user != client_id {
            return false;
        }
        let secret = self
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .map(|m| m.secret.clone());
        match secret {
            Some(secret) => self.verifier.verify(&secret, pass).await,
            None => false,
        }
    }

    /// The topics and message formats of appliance `id`.
    pub fn contract(&self, id: &str) -> Option<Arc<Contract>> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|m| m.contract.clone())
    }

    /// Applies a reloaded appliance list: new appliances may connect; a removed one, or one
    /// whose password or profile changed, is disconnected (it must authenticate and
    /// subscribe again).
    pub fn reconfigure(&self, members: HashMap<String, Member>, event_rate: u32) {
        self.event_rate.store(event_rate.max(1), Ordering::Relaxed);
        let old = std::mem::replace(
            &mut *self.members.write().unwrap_or_else(|e| e.into_inner()),
            members.clone(),
        );
        let mut slots = self.lock();
        for id in members.keys() {
            slots.entry(id.clone()).or_default();
        }
        for (id, member) in &old {
            let removed = !members.contains_key(id);
            if removed || members.get(id) != Some(member) {
                if let Some(conn) = slots.get(id).and_then(|s| s.conn.as_ref()) {
                    log::info!(appliance = id.as_str(); "configuration changed: disconnecting the appliance");
                    conn.kick.cancel();
                }
                let retopiced = members
                    .get(id)
                    .is_some_and(|m| m.contract != member.contract);
                if retopiced && let Some(slot) = slots.get_mut(id) {
                    // A session kept across reconnects subscribed to the old topics.
                    slot.subscription = None;
                    if std::mem::take(&mut slot.persistent) {
                        self.remember_session(id, None);
                    }
                }
                if removed && let Some(slot) = slots.remove(id) {
                    // A command waiting for it ends now (`unreachable`), not when its
                    // hold runs out.
                    slot.ready.notify_waiters();
                    if slot.persistent {
                        self.remember_session(id, None);
                    }
                }
            }
        }
    }

    /// Registers a new connection for `id`, kicking any older one (session takeover).
    /// `resume`: the client asks for its previous session (MQTT 3.1.1: clean session off;
    /// MQTT 5: clean start off); `persist`: this session outlives the connection (3.1.1:
    /// clean session off; 5: a session expiry interval above 0).
    pub fn attach(
        &self,
        id: &str,
        resume: bool,
        persist: bool,
        tx: mpsc::Sender<ToConn>,
        kick: CancellationToken,
    ) -> Attached {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let mut slots = self.lock();
        let slot = slots.entry(id.to_owned()).or_default();
        if let Some(old) = slot.conn.take() {
            log::info!(appliance = id; "new connection replaces the previous one");
            old.kick.cancel();
        }
        let session_present = resume && slot.persistent && slot.subscription.is_some();
        if !session_present {
            slot.subscription = None;
        }
        if slot.persistent && (!resume || !persist) {
            // A clean session ends the persistent one (MQTT-3.1.2-6), and so does a
            // session that will not outlive this connection.
            self.remember_session(id, None);
        }
        slot.persistent = persist;
        slot.reported_offline = false;
        let now = SystemTime::now();
        slot.since = Some(now);
        slot.last_seen = Some(now);
        slot.conn = Some(ConnRef {
            tx,
            kick,
            generation,
        });
        slot.ready.notify_waiters();
        drop(slots);
        self.presence(id, "online");
        Attached {
            generation,
            session_present,
        }
    }

    /// A connection ended. Its will is published if it ended without DISCONNECT; commands
    /// waiting on it are interrupted (they were sent; the appliance may have acted).
    pub fn detach(&self, id: &str, generation: u64, will: Option<LastWill>) {
        let waiting = {
            let mut slots = self.lock();
            let Some(slot) = slots.get_mut(id) else {
                return;
            };
            if slot.conn.as_ref().map(|c| c.generation) != Some(generation) {
                return; // already replaced by a newer connection
            }
            slot.conn = None;
            let now = SystemTime::now();
            slot.since = Some(now);
            slot.last_seen = Some(now);
            if !slot.persistent {
                slot.subscription = None;
            }
            std::mem::take(&mut slot.waiting)
        };
        if let Some(will) = will {
            self.publish(id, &will.topic, &will.message);
        }
        for (_, tx) in waiting {
            let _ = tx.send(Outcome::Interrupted(
                "appliance disconnected before answering".into(),
            ));
        }
        self.presence(id, "offline");
    }

    pub fn subscribed(&self, id: &str, qos: Option<QoS>) {
        let remember = match self.lock().get_mut(id) {
            Some(slot) => {
                let changed = slot.subscription != qos;
                slot.subscription = qos;
                slot.ready.notify_waiters();
                slot.persistent && changed
            }
            None => false,
        };
        if remember {
            self.remember_session(id, qos);
        }
    }

    /// External broker mode: the link to the broker is up, and every appliance is reached
    /// through it (its presence topic says when it is away). Appliances already linked
    /// keep their link; new ones (a reload added them) join it.
    pub fn link_up(&self, tx: &mpsc::Sender<ToConn>, kick: &CancellationToken) {
        let now = SystemTime::now();
        let mut slots = self.lock();
        for slot in slots.values_mut() {
            let mut woke = false;
            if slot.conn.is_none() {
                slot.conn = Some(ConnRef {
                    tx: tx.clone(),
                    kick: kick.clone(),
                    generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
                });
                slot.since = Some(now);
                woke = true;
            }
            // The broker holds each appliance's subscription (also after a reload changed
            // its topics); commands go at QoS 1.
            if slot.subscription.is_none() {
                slot.subscription = Some(QoS::AtLeastOnce);
                woke = true;
            }
            if woke {
                // Commands waiting for the link (or for this appliance) may go now.
                slot.ready.notify_waiters();
            }
        }
        drop(slots);
        self.changed.notify_one();
    }

    /// The link to the broker is down: commands sent and not answered are interrupted
    /// (the broker may have delivered them).
    pub fn link_down(&self) {
        let now = SystemTime::now();
        let waiting: Vec<_> = {
            let mut slots = self.lock();
            slots
                .values_mut()
                .flat_map(|s| {
                    if s.conn.take().is_some() {
                        s.since = Some(now);
                    }
                    std::mem::take(&mut s.waiting)
                })
                .collect()
        };
        for (_, tx) in waiting {
            let _ = tx.send(Outcome::Interrupted(
                "the connection to the MQTT broker dropped before the answer".into(),
            ));
        }
        self.changed.notify_one();
    }

    /// The appliance a message from the broker belongs to: the one whose profile reads its
    /// topic.
    pub fn route(&self, topic: &str) -> Option<String> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(_, m)| {
                m.contract
                    .classify(topic)
                    .is_some_and(|i| i != super::profile::Inbound::Ignored)
            })
            .map(|(id, _)| id.clone())
    }

    /// Every filter the gateway subscribes to at an external broker.
    pub fn inbound_filters(&self) -> std::collections::BTreeSet<String> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flat_map(|m| m.contract.inbound_filters())
            .collect()
    }

    /// What a command for `id` waits on until the appliance may take it; `None` for an
    /// appliance the endpoint does not know.
    fn ready(&self, id: &str) -> Option<Arc<Notify>> {
        self.lock().get(id).map(|s| s.ready.clone())
    }

    fn presence(&self, id: &str, kind: &str) {
        self.changed.notify_one();
        log::info!(appliance = id, transport = "mqtt"; "appliance {kind}");
        self.outbox.push_event(Event {
            appliance: Some(id.to_owned()),
            kind: kind.to_owned(),
            payload: Value::Null,
        });
    }

    /// Every configured appliance's presence.
    pub fn presence_map(&self) -> HashMap<String, Presence> {
        self.lock()
            .iter()
            .map(|(id, s)| {
                let p = Presence {
                    online: s.conn.is_some() && !s.reported_offline,
                    since: s.since,
                    last_seen: s.last_seen,
                };
                (id.clone(), p)
            })
            .collect()
    }

    /// Notes that appliance `id` was heard from.
    pub(super) fn seen(&self, id: &str) {
        if let Some(slot) = self.lock().get_mut(id) {
            slot.last_seen = Some(SystemTime::now());
        }
    }

    /// Appliances connected and not reporting offline.
    pub fn online(&self) -> usize {
        self.lock()
            .values()
            .filter(|s| s.conn.is_some() && !s.reported_offline)
            .count()
    }
}
