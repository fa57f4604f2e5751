//! Transports: how a command reaches an appliance and how its answer comes back.
//!
//! The router hands each (command, appliance) pair to [`Transports::execute`] and gets
//! one [`Outcome`]. Each transport owns its own connections and correlation; the router
//! knows nothing about MQTT topics or GATT characteristics. [`mqtt`] is the daemon's own
//! MQTT endpoint; [`ble`] reaches Bluetooth Low Energy appliances through BlueZ.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cloud::wire::Status;
use crate::config::{Offline, TransportKind};
use crate::journal::Journal;

pub mod ble;
pub mod mqtt;

/// What a command carries to its appliance.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A JSON payload (either encoding of the cloud link).
    Json(Value),
    /// Raw bytes (the protobuf encoding's `payload_raw`): a BLE appliance gets them as
    /// they are; an MQTT appliance, whose contract is JSON, cannot take them.
    Raw(Vec<u8>),
}

impl Payload {
    /// Its size as `router.max_command_bytes` counts it (JSON text, or the bytes).
    pub fn size(&self) -> usize {
        match self {
            Payload::Json(v) => serde_json::to_vec(v).map_or(usize::MAX, |b| b.len()),
            Payload::Raw(b) => b.len(),
        }
    }
}

/// One command for one appliance.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// Sent to the appliance so it can deduplicate too.
    pub command_id: String,
    pub payload: Payload,
    /// How long the appliance may take to answer.
    pub timeout: Duration,
    /// When the command's TTL runs out (`None`: no TTL). A transport that queues before
    /// sending (BLE waits for a link slot) must not send after it: `Outcome::Expired`.
    pub deadline: Option<Instant>,
    /// Passed (awaited) by the transport right before the command leaves: the PUBLISH
    /// handed to the connection, the GATT write. Nothing may be sent before it.
    pub gate: SendGate,
    /// Whether, and until when, the command may wait for an appliance that is away.
    pub hold: Hold,
}

/// How a command treats an appliance that is away (not connected, not subscribed, reported
/// offline; for BLE, not seen advertising): wait for it, or fail at once. While it waits,
/// the transport says so through [`Hold::waiting`], so the router can list the command as
/// waiting, time out what queues behind it, and not wait for it when stopping.
#[derive(Debug, Clone)]
pub struct Hold {
    pub offline: Offline,
    /// The last moment the command may still be sent: its TTL, or
    /// `router.max_offline_wait` after it was accepted, whichever is first.
    pub until: Instant,
    state: Arc<HoldState>,
    /// Also woken when the command starts or stops waiting (the router's stop waits on it).
    all: Option<Arc<Notify>>,
}

#[derive(Debug, Default)]
struct HoldState {
    waiting: AtomicBool,
    /// Bumped when the command starts or stops waiting, and by [`Hold::poke`].
    generation: AtomicU64,
    /// The one task that awaits [`Hold::changed`] (the appliance's worker). Lock-free:
    /// the worker polls it at every wake-up of the command it runs.
    waker: AtomicWaker,
}

impl Hold {
    pub fn new(offline: Offline, until: Instant, all: Arc<Notify>) -> Hold {
        Hold {
            offline,
            until,
            state: Arc::default(),
            all: Some(all),
        }
    }

    /// Never waits for an appliance (the fuzz harness).
    pub fn fail() -> Hold {
        Hold {
            offline: Offline::Fail,
            until: Instant::now(),
            state: Arc::default(),
            all: None,
        }
    }

    /// Marks the command as waiting for its appliance to come back, or as no longer
    /// waiting. A transport clears it before passing the send gate.
    pub fn waiting(&self, yes: bool) {
        if self.state.waiting.swap(yes, Ordering::SeqCst) != yes {
            self.bump();
            if let Some(all) = &self.all {
                all.notify_waiters();
            }
        }
    }

    pub fn is_waiting(&self) -> bool {
        self.state.waiting.load(Ordering::SeqCst)
    }

    /// Resolves at the first change of [`Hold::waiting`] or [`Hold::poke`] after this
    /// call (not after its first poll). For one task at a time.
    pub fn changed(&self) -> impl Future<Output = ()> + '_ {
        let seen = self.state.generation.load(Ordering::SeqCst);
        std::future::poll_fn(move |cx| {
            if self.state.generation.load(Ordering::SeqCst) != seen {
                return Poll::Ready(());
            }
            self.state.waker.register(cx.waker());
            if self.state.generation.load(Ordering::SeqCst) != seen {
                return Poll::Ready(());
            }
            Poll::Pending
        })
    }

    /// Wakes whoever awaits [`Hold::changed`] (a job queued behind a waiting command).
    pub fn poke(&self) {
        self.bump();
    }

    fn bump(&self) {
        self.state.generation.fetch_add(1, Ordering::SeqCst);
        self.state.waker.wake();
    }

    /// What a command that waited in vain gets: `expired` when its TTL bounded the wait,
    /// `unreachable` when `router.max_offline_wait` did.
    pub fn gave_up(&self, dispatch_ttl_passed: bool, why: &str) -> Outcome {
        if dispatch_ttl_passed {
            Outcome::Expired(format!("ttl ran out while {why}; not sent"))
        } else {
            Outcome::Unreachable(format!(
                "not sent: {why} for longer than router.max_offline_wait"
            ))
        }
    }
}

/// The last step before a command leaves for an appliance: the journal records, durably,
/// that it may have reached it. After a crash, a command that never passed its gate is run
/// again (it was never sent); one that did is `interrupted` (docs/durability.md).
#[derive(Clone)]
pub struct SendGate {
    journal: Option<Journal>,
    command_id: String,
    appliance: String,
}

impl SendGate {
    pub fn new(journal: Journal, command_id: &str, appliance: &str) -> SendGate {
        SendGate {
            journal: Some(journal),
            command_id: command_id.to_owned(),
            appliance: appliance.to_owned(),
        }
    }

    /// A gate that records nothing (the fuzz harness; a command that is never journalled).
    pub fn open() -> SendGate {
        SendGate {
            journal: None,
            command_id: String::new(),
            appliance: String::new(),
        }
    }

    pub async fn pass(&self) {
        let Some(journal) = &self.journal else { return };
        if let Err(e) = journal.record_sent(&self.command_id, &self.appliance).await {
            // Holding the command back would turn a disk problem into an outage; what is
            // lost is only the crash-time knowledge that it was sent.
            log::error!(command_id = self.command_id.as_str(), appliance = self.appliance.as_str();
                "cannot journal that the command is sent ({e}); sending it anyway");
        }
    }
}

impl std::fmt::Debug for SendGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendGate")
            .field("journalled", &self.journal.is_some())
            .finish_non_exhaustive()
    }
}

impl Dispatch {
    /// Whether the TTL has run out at `now`: what was not sent by then never is.
    pub fn ttl_passed(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|ttl| ttl <= now)
    }
}

/// How one appliance's part of a command ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The appliance answered ok, with an optional payload.
    Ok(Option<Value>),
    /// The appliance answered with an error, or the transport failed after sending.
    Error(String),
    /// No answer within the timeout.
    Timeout,
    /// The command was not sent: the appliance is not connected or reported offline.
    Unreachable(String),
    /// The link dropped after the command was sent: it may or may not have acted.
    Interrupted(String),
    /// The TTL ran out while the transport waited to send: never sent.
    Expired(String),
}

impl Outcome {
    pub fn status(&self) -> Status {
        match self {
            Outcome::Ok(_) => Status::Ok,
            Outcome::Error(_) => Status::Error,
            Outcome::Timeout => Status::Timeout,
            Outcome::Unreachable(_) => Status::Unreachable,
            Outcome::Interrupted(_) => Status::Interrupted,
            Outcome::Expired(_) => Status::Expired,
        }
    }

    /// Splits into the result's payload and error text.
    pub fn into_parts(self) -> (Option<Value>, Option<String>) {
        match self {
            Outcome::Ok(payload) => (payload, None),
            Outcome::Error(e)
            | Outcome::Unreachable(e)
            | Outcome::Interrupted(e)
            | Outcome::Expired(e) => (None, Some(e)),
            Outcome::Timeout => (None, Some("no answer before the timeout".into())),
        }
    }
}

/// Handles to every running transport; cheap to clone.
#[derive(Clone)]
pub struct Transports {
    pub mqtt: mqtt::MqttHandle,
    /// Running only when BLE appliances are configured.
    pub ble: Option<ble::BleHandle>,
}

impl Transports {
    pub async fn execute(
        &self,
        kind: TransportKind,
        appliance: &str,
        dispatch: Dispatch,
    ) -> Outcome {
        match kind {
            TransportKind::Mqtt => self.mqtt.execute(appliance, dispatch).await,
            TransportKind::Ble => match &self.ble {
                Some(ble) => ble.execute(appliance, dispatch).await,
                None => Outcome::Unreachable(
                    "the BLE transport is not running (no BLE appliance was configured at start)"
                        .into(),
                ),
            },
        }
    }
}
