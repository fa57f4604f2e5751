//! The hub: what the endpoint knows about each configured MQTT appliance.
//!
//! Connection tasks (`conn.rs`) attach, report subscriptions, presence, results, events and
//! violations here; [`Hub::execute`] (called by the router through `MqttHandle`) looks an
//! appliance up, hands the command to its connection and waits for the correlated result.
//! All state sits behind one std `Mutex`, held only for map updates, never across `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{LastWill, Publish};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::auth::{Secret, Verifier};
use super::limits::{Bucket, Take};
use super::topic::{self, ResultMessage};
use crate::cloud::wire::{Event, MAX_COMMAND_ID, MAX_PAYLOAD_DEPTH, nesting_depth};
use crate::outbox::Outbox;
use crate::transport::{Dispatch, Outcome};

const EXPIRED_WAITING: &str = "TTL ran out while waiting for the appliance to connect; not sent";

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
    /// Boxed: every connection's queue allocates room for a block of these up front.
    Publish(Box<Publish>),
}

pub struct Hub {
    prefix: String,
    max_payload: usize,
    passwords: std::sync::RwLock<HashMap<String, Secret>>,
    verifier: Verifier,
    slots: Mutex<HashMap<String, Slot>>,
    outbox: Arc<Outbox>,
    next_generation: AtomicU64,
    /// Until then, a command for an appliance that is not ready waits for it: after a
    /// gateway restart, appliances need a moment to reconnect.
    grace_until: Instant,
    /// Woken when an appliance connects or subscribes.
    ready: Notify,
    /// `mqtt.max_event_rate`; the burst is twice this.
    event_rate: AtomicU32,
    pub stats: Stats,
}

#[derive(Default)]
struct Slot {
    conn: Option<ConnRef>,
    /// The appliance said `offline` on its status topic (or its will did).
    reported_offline: bool,
    /// QoS granted on its `cmd` subscription.
    subscription: Option<QoS>,
    /// Keep the subscription across reconnects (clean_session = false).
    persistent: bool,
    /// Commands sent and not answered, by command id.
    waiting: HashMap<String, oneshot::Sender<Outcome>>,
    /// Events this appliance may still raise; created at its first event.
    events: Option<Bucket>,
    /// Events dropped over the rate since the last one let through.
    events_dropped: u64,
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
        prefix: String,
        max_payload: usize,
        passwords: HashMap<String, Secret>,
        outbox: Arc<Outbox>,
        startup_grace: std::time::Duration,
        event_rate: u32,
    ) -> Hub {
        let slots = passwords
            .keys()
            .map(|id| (id.clone(), Slot::default()))
            .collect();
        Hub {
            prefix,
            max_payload,
            passwords: std::sync::RwLock::new(passwords),
            verifier: Verifier::default(),
            slots: Mutex::new(slots),
            outbox,
            next_generation: AtomicU64::new(1),
            grace_until: Instant::now() + startup_grace,
            ready: Notify::new(),
            event_rate: AtomicU32::new(event_rate.max(1)),
            stats: Stats::default(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
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
            .passwords
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .cloned();
        match secret {
            Some(secret) => self.verifier.verify(&secret, pass).await,
            None => false,
        }
    }

    /// Applies a reloaded appliance list: new appliances may connect; a removed one, or one
    /// whose password changed, is disconnected (it must authenticate again).
    pub fn reconfigure(&self, passwords: HashMap<String, Secret>, event_rate: u32) {
        self.event_rate.store(event_rate.max(1), Ordering::Relaxed);
        let old = std::mem::replace(
            &mut *self.passwords.write().unwrap_or_else(|e| e.into_inner()),
            passwords.clone(),
        );
        let mut slots = self.lock();
        for id in passwords.keys() {
            slots.entry(id.clone()).or_default();
        }
        for (id, password) in &old {
            let removed = !passwords.contains_key(id);
            if removed || passwords.get(id) != Some(password) {
                if let Some(conn) = slots.get(id).and_then(|s| s.conn.as_ref()) {
                    log::info!(appliance = id.as_str(); "configuration changed: disconnecting the appliance");
                    conn.kick.cancel();
                }
                if removed {
                    slots.remove(id);
                }
            }
        }
    }

    /// Registers a new connection for `id`, kicking any older one (session takeover).
    pub fn attach(
        &self,
        id: &str,
        clean_session: bool,
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
        let session_present = !clean_session && slot.persistent && slot.subscription.is_some();
        if !session_present {
            slot.subscription = None;
        }
        slot.persistent = !clean_session;
        slot.reported_offline = false;
        slot.conn = Some(ConnRef {
            tx,
            kick,
            generation,
        });
        drop(slots);
        self.ready.notify_waiters();
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
        if let Some(slot) = self.lock().get_mut(id) {
            slot.subscription = qos;
        }
        self.ready.notify_waiters();
    }

    /// An allowed or denied PUBLISH from appliance `id`.
    pub fn publish(&self, id: &str, topic_name: &str, payload: &[u8]) {
        match topic::classify_publish(&self.prefix, id, topic_name) {
            None => self.deny(id, &format!("publish to {topic_name:?}")),
            Some(topic::Inbound::Result) => self.result(id, payload),
            Some(topic::Inbound::Status) => match payload {
                b"online" => self.set_reported_offline(id, false),
                b"offline" => self.set_reported_offline(id, true),
                _ => self.malformed(id, "status must be \"online\" or \"offline\""),
            },
            Some(topic::Inbound::Events) => {
                if !self.admit_event(id) {
                    return;
                }
                match serde_json::from_slice::<Value>(payload) {
                    Ok(payload) if nesting_depth(&payload) > MAX_PAYLOAD_DEPTH => self
                        .report_malformed(
                            id,
                            &format!("event nests deeper than {MAX_PAYLOAD_DEPTH} levels"),
                        ),
                    Ok(payload) => self.outbox.push_event(Event {
                        appliance: Some(id.to_owned()),
                        kind: "event".into(),
                        payload,
                    }),
                    Err(e) => self.report_malformed(id, &format!("event is not JSON: {e}")),
                }
            }
        }
    }

    /// Whether appliance `id` may raise one more event now (`mqtt.max_event_rate`). A
    /// refused one is counted; the first of a spell is logged, and when events flow again
    /// the cloud gets one `rate_limited` event with the number dropped.
    fn admit_event(&self, id: &str) -> bool {
        let rate = f64::from(self.event_rate.load(Ordering::Relaxed));
        let burst = rate * 2.0;
        let now = Instant::now();
        let (take, dropped) = {
            let mut slots = self.lock();
            let Some(slot) = slots.get_mut(id) else {
                return true;
            };
            let take = slot
                .events
                .get_or_insert_with(|| Bucket::full(burst, now))
                .take(rate, burst, now);
            match take {
                Take::Granted => (take, std::mem::take(&mut slot.events_dropped)),
                Take::Refused { .. } => {
                    slot.events_dropped += 1;
                    (take, 0)
                }
            }
        };
        match take {
            Take::Granted => {
                if dropped > 0 {
                    log::info!(appliance = id, dropped = dropped; "appliance back under mqtt.max_event_rate; {dropped} event(s) were dropped");
                    self.outbox.push_event(Event {
                        appliance: Some(id.to_owned()),
                        kind: "rate_limited".into(),
                        payload: json!({ "dropped": dropped }),
                    });
                }
                true
            }
            Take::Refused { first } => {
                let n = self
                    .stats
                    .events_rate_limited
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                if first {
                    log::warn!(appliance = id, count = n; "appliance exceeds mqtt.max_event_rate; dropping its events until it slows down");
                }
                false
            }
        }
    }

    fn result(&self, id: &str, payload: &[u8]) {
        let msg: ResultMessage = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => return self.malformed(id, &format!("result is not valid: {e}")),
        };
        if msg.id.len() > MAX_COMMAND_ID {
            return self.malformed(id, "result id is longer than any command id");
        }
        let msg = match msg.payload.as_ref().map(nesting_depth) {
            Some(depth) if depth > MAX_PAYLOAD_DEPTH => ResultMessage {
                ok: false,
                payload: None,
                error: Some(format!(
                    "appliance answered with a payload nested {depth} levels deep; the limit is {MAX_PAYLOAD_DEPTH}"
                )),
                ..msg
            },
            _ => msg,
        };
        let waiter = self
            .lock()
            .get_mut(id)
            .and_then(|s| s.waiting.remove(&msg.id));
        let Some(tx) = waiter else {
            let n = self.stats.unknown_results.fetch_add(1, Ordering::Relaxed) + 1;
            // Counted always; logged within the appliance's event budget.
            if self.admit_event(id) {
                log::warn!(appliance = id, command_id = msg.id.as_str(), count = n;
                    "result for a command that is not waiting (late, repeated or unknown); dropped");
            }
            return;
        };
        let outcome = if msg.ok {
            Outcome::Ok(msg.payload)
        } else {
            Outcome::Error(
                msg.error
                    .unwrap_or_else(|| "appliance reported failure".into()),
            )
        };
        let _ = tx.send(outcome);
    }

    fn set_reported_offline(&self, id: &str, offline: bool) {
        let changed = match self.lock().get_mut(id) {
            Some(slot) if slot.reported_offline != offline => {
                slot.reported_offline = offline;
                slot.conn.is_some()
            }
            _ => false,
        };
        if changed && self.admit_event(id) {
            self.presence(id, if offline { "offline" } else { "online" });
        }
    }

    fn presence(&self, id: &str, kind: &str) {
        log::info!(appliance = id, transport = "mqtt"; "appliance {kind}");
        self.outbox.push_event(Event {
            appliance: Some(id.to_owned()),
            kind: kind.to_owned(),
            payload: Value::Null,
        });
    }

    /// An access-control refusal: counted, logged and reported upstream.
    pub fn deny(&self, id: &str, what: &str) {
        let n = self.stats.denied.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.admit_event(id) {
            return;
        }
        log::warn!(appliance = id, count = n; "denied {what}: outside the appliance's own topics");
        self.outbox.push_event(Event {
            appliance: Some(id.to_owned()),
            kind: "denied".into(),
            payload: json!({ "what": what }),
        });
    }

    pub fn malformed(&self, id: &str, what: &str) {
        if self.admit_event(id) {
            self.report_malformed(id, what);
        } else {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `malformed` once the event budget was already charged.
    fn report_malformed(&self, id: &str, what: &str) {
        let n = self.stats.malformed.fetch_add(1, Ordering::Relaxed) + 1;
        log::warn!(appliance = id, count = n; "malformed message: {what}");
        self.outbox.push_event(Event {
            appliance: Some(id.to_owned()),
            kind: "malformed".into(),
            payload: json!({ "error": what }),
        });
    }

    /// Sends one command to appliance `id` and waits for its result.
    pub async fn execute(&self, id: &str, dispatch: Dispatch) -> Outcome {
        let body = json!({ "id": dispatch.command_id, "payload": dispatch.payload });
        let body = match serde_json::to_vec(&body) {
            Ok(b) if b.len() <= self.max_payload => b,
            _ => {
                return Outcome::Error(format!(
                    "command does not fit the MQTT payload limit of {} bytes",
                    self.max_payload
                ));
            }
        };
        let (tx, rx) = oneshot::channel();
        let started = Instant::now();
        let mut tx = Some(tx);
        let conn = loop {
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let waiting = match self.claim(id, &dispatch.command_id, &mut tx) {
                // Woken just as the TTL ran out: not sent after all.
                Ok(_) if dispatch.ttl_passed(Instant::now()) => {
                    self.forget(id, &dispatch.command_id);
                    return Outcome::Expired(EXPIRED_WAITING.into());
                }
                Ok(conn) => break conn,
                Err(Claim::Unreachable(why)) => why,
                Err(Claim::NotReady(why)) => {
                    // Waiting out the start-up grace never carries a command past its TTL.
                    let mut until = self.grace_until.min(started + dispatch.timeout);
                    if let Some(ttl) = dispatch.deadline {
                        until = until.min(ttl);
                    }
                    let now = Instant::now();
                    if dispatch.ttl_passed(now) {
                        return Outcome::Expired(EXPIRED_WAITING.into());
                    }
                    if now >= until {
                        return Outcome::Unreachable(why.into());
                    }
                    tokio::select! {
                        _ = ready => continue,
                        _ = tokio::time::sleep_until(until) => continue,
                    }
                }
            };
            return Outcome::Unreachable(waiting.into());
        };
        let (conn_tx, qos) = conn;
        let publish = Publish::new(topic::cmd_topic(&self.prefix, id), qos, body);
        if let Err(e) = conn_tx.try_send(ToConn::Publish(Box::new(publish))) {
            self.forget(id, &dispatch.command_id);
            return match e {
                mpsc::error::TrySendError::Full(_) => {
                    Outcome::Unreachable("appliance is not reading its connection".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    Outcome::Unreachable("appliance disconnected".into())
                }
            };
        }
        match tokio::time::timeout(dispatch.timeout, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Outcome::Interrupted("endpoint shut down before the answer".into()),
            Err(_) => {
                self.forget(id, &dispatch.command_id);
                Outcome::Timeout
            }
        }
    }

    /// Registers `command_id` as waiting on appliance `id` if it can take a command now.
    fn claim(
        &self,
        id: &str,
        command_id: &str,
        tx: &mut Option<oneshot::Sender<Outcome>>,
    ) -> Result<(mpsc::Sender<ToConn>, QoS), Claim> {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(id) else {
            return Err(Claim::Unreachable("not an MQTT appliance"));
        };
        let Some(conn) = &slot.conn else {
            return Err(Claim::NotReady("appliance is not connected"));
        };
        if slot.reported_offline {
            return Err(Claim::Unreachable("appliance reported offline"));
        }
        let Some(qos) = slot.subscription else {
            return Err(Claim::NotReady(
                "appliance is not subscribed to its cmd topic",
            ));
        };
        let conn_tx = conn.tx.clone();
        if let Some(tx) = tx.take() {
            slot.waiting.insert(command_id.to_owned(), tx);
        }
        Ok((conn_tx, qos))
    }

    fn forget(&self, id: &str, command_id: &str) {
        if let Some(slot) = self.lock().get_mut(id) {
            slot.waiting.remove(command_id);
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

enum Claim {
    /// Will not change by waiting.
    Unreachable(&'static str),
    /// May change once the appliance (re)connects and subscribes.
    NotReady(&'static str),
}
