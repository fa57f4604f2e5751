//! The router: turns cloud commands into per-appliance work and work back into results.
//!
//! The uplink driver calls [`Router::submit`] with a poll response's commands; the router
//! validates each one, resolves its targets (an id, a list, or `group:NAME`), and queues one
//! job per target on that appliance's lane. A lane's worker runs its jobs one at a time, in
//! order (appliances run concurrently), checking the TTL just before dispatch. Lanes and
//! workers exist only while an appliance has work: an idle fleet of a thousand appliances
//! costs no task and no queue per appliance.
//! An appliance that is away may keep its commands (`offline = "queue"`, or an MQTT
//! persistent session): its transport then holds the lane's head until the appliance is
//! back or the command's hold runs out ([`Hold`]), and the commands behind it wait in
//! order. The driver lists such commands as `waiting`; a stop does not wait for them
//! (they stay in the journal, never sent, and wait again after the restart).
//! When every target of a command has finished, the aggregated result goes to the
//! [`Outbox`]. The driver asks the router which commands are pending and how many more it
//! can take (the advertised capacity).
//!
//! Every command id is recorded in the [`Journal`] before anything is done with it; the
//! journal answers which ids are new, so a replayed id is never dispatched twice, even
//! across restarts. At start, [`Router::recover`] settles what a previous run left
//! running: `interrupted`, or run again when the command is idempotent.
//!
//! Where each part lives: `intake.rs` takes commands in (from a poll, or from the journal
//! at start) and queues their jobs; `targets.rs` resolves and checks a command's targets;
//! `worker.rs` runs one appliance's lane; `aggregate.rs` folds the targets' results into
//! the command's one result. This file holds the state they share, starting and
//! reconfiguring the router, and what the driver and a graceful stop ask of it (pending
//! ids, capacity, idle).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::cloud::wire::{ItemResult, Status};
use crate::config::{Config, Offline, RouterConfig, TransportKind};
use crate::journal::Journal;
use crate::outbox::Outbox;
use crate::transport::{Hold, Payload, Transports};

mod aggregate;
mod intake;
mod targets;
#[cfg(test)]
mod tests;
mod worker;

/// The target that addresses the gateway itself (the `fleet` module answers).
pub const GATEWAY_TARGET: &str = "$gateway";

/// How a gateway command ended.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayReply {
    pub status: Status,
    pub payload: Option<Value>,
    pub error: Option<String>,
}

/// What the router asks of the gateway itself for a command addressed to
/// [`GATEWAY_TARGET`]; the `fleet` module implements it, and `app` hands it over
/// ([`Router::set_gateway`]). Without one, such commands are rejected.
pub trait Gateway: Send + Sync {
    /// Runs the command's operation; `None` when it did not run (the gateway stops).
    fn call(&self, payload: Value) -> BoxFuture<'_, Option<GatewayReply>>;
    /// Replaces what must not reach the journal in clear (a password) in a command as
    /// received, before it is journalled.
    fn seal<'a>(&'a self, command: &'a mut Value) -> BoxFuture<'a, ()>;
}

/// Shared handle to the router.
#[derive(Clone)]
pub struct Router {
    shared: Arc<Shared>,
}

struct Shared {
    /// What the configuration says; replaced whole on reload.
    routing: RwLock<Arc<Routing>>,
    state: Mutex<State>,
    /// Woken when a pending command finishes and when a command starts or stops waiting
    /// for its appliance (a graceful stop waits for the others).
    changed: Arc<Notify>,
    outbox: Arc<Outbox>,
    journal: Journal,
    transports: Transports,
    gateway: OnceLock<Arc<dyn Gateway>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// Targets and limits from the configuration.
struct Routing {
    cfg: RouterConfig,
    appliances: HashMap<String, (TransportKind, Offline)>,
    groups: BTreeMap<String, Vec<String>>,
}

#[derive(Default)]
struct State {
    pending: HashMap<String, Pending>,
    /// Jobs not yet started, per appliance. An entry exists exactly while a worker runs
    /// for that appliance; the worker removes it when it finds the queue empty.
    lanes: HashMap<String, VecDeque<Job>>,
    /// The job each lane's worker runs now (taken off its lane).
    heads: HashMap<String, Head>,
    /// Each appliance's finished parts of commands since the start: (ok, not ok).
    tallies: HashMap<String, (u64, u64)>,
}

/// One appliance's work, for `tetherd status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplianceWork {
    /// Commands queued for it, the one it runs or holds included.
    pub queued: usize,
    /// Its parts of commands that ended `ok`, and otherwise, since the start.
    pub done: u64,
    pub failed: u64,
}

struct Head {
    command_id: String,
    hold: Hold,
}

/// A command some of whose targets have not finished.
struct Pending {
    received: Instant,
    /// Time it spent accepted before this run of the gateway (a restart).
    before: Duration,
    /// Sent to a list or a group: the result carries `items`.
    multi: bool,
    items: Vec<Option<ItemResult>>,
    remaining: usize,
}

struct Job {
    /// Fixed when queued: a reload that moves the appliance to another transport does
    /// not change where an already accepted job goes.
    kind: TransportKind,
    command_id: String,
    index: usize,
    payload: Arc<Payload>,
    deadline: Option<Instant>,
    timeout: Duration,
    offline: Offline,
    /// The last moment it may still be sent to an appliance that is away.
    hold_until: Instant,
}

impl Router {
    /// Workers run on `tracker` while appliances have work; they stop on `cancel`.
    pub fn start(
        config: &Config,
        transports: Transports,
        journal: Journal,
        outbox: Arc<Outbox>,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Router {
        let shared = Arc::new(Shared {
            routing: RwLock::new(Arc::new(Routing {
                cfg: config.router.clone(),
                appliances: HashMap::new(),
                groups: BTreeMap::new(),
            })),
            state: Mutex::new(State::default()),
            changed: Arc::new(Notify::new()),
            outbox,
            journal,
            transports,
            gateway: OnceLock::new(),
            tracker: tracker.clone(),
            cancel,
        });
        let router = Router { shared };
        router.reconfigure(config);
        router
    }

    /// Applies a (re)loaded configuration: appliances, groups and limits change at once
    /// for new commands. Jobs already queued keep their order and run where they were
    /// sent, also for an appliance the reload removed.
    pub fn reconfigure(&self, config: &Config) {
        let routing = Routing {
            cfg: config.router.clone(),
            appliances: config
                .appliances
                .iter()
                .map(|a| (a.id.clone(), (a.transport, a.offline)))
                .collect(),
            groups: config.groups.clone(),
        };
        *self
            .shared
            .routing
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(routing);
    }

    /// Who answers commands for the gateway itself; set once, before the first poll.
    pub fn set_gateway(&self, gateway: Arc<dyn Gateway>) {
        let _ = self.shared.gateway.set(gateway);
    }

    /// Commands accepted and not finished.
    pub fn pending_count(&self) -> usize {
        self.shared.lock().pending.len()
    }

    /// Commands accepted, not finished, and not waiting for an appliance that is away.
    pub fn busy_count(&self) -> usize {
        let state = self.shared.lock();
        state.pending.len() - state.waiting().len()
    }

    /// Waits until every pending command is finished or waiting for its appliance.
    pub async fn idle(&self) {
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.busy_count() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Returns once a quarter of `router.max_pending` is free again (at least one): worth
    /// a poll to fill, while the three quarters still pending keep the appliances busy.
    /// Woken as commands finish; a journal that stops being full does not wake it.
    pub async fn room(&self) {
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let worth = self.shared.routing().cfg.max_pending.div_ceil(4).max(1);
            if usize::try_from(self.capacity()).unwrap_or(usize::MAX) >= worth {
                return;
            }
            notified.await;
        }
    }

    /// Every appliance's queue and tallies (those with neither are left out).
    pub fn appliance_work(&self) -> HashMap<String, ApplianceWork> {
        let state = self.shared.lock();
        let mut out: HashMap<String, ApplianceWork> = HashMap::new();
        for (id, lane) in &state.lanes {
            out.entry(id.clone()).or_default().queued += lane.len();
        }
        for id in state.heads.keys() {
            out.entry(id.clone()).or_default().queued += 1;
        }
        for (id, (done, failed)) in &state.tallies {
            let w = out.entry(id.clone()).or_default();
            w.done = *done;
            w.failed = *failed;
        }
        out
    }

    /// Command ids received and not finished.
    pub fn pending_ids(&self) -> Vec<String> {
        self.shared.lock().pending.keys().cloned().collect()
    }

    /// Pending command ids that wait for an appliance that is away: the command its
    /// transport holds, and those queued behind it for that appliance.
    pub fn waiting_ids(&self) -> Vec<String> {
        self.shared.lock().waiting().into_iter().collect()
    }

    /// How many more commands may be accepted now: none while the journal is full or
    /// failing, so the cloud keeps them.
    pub fn capacity(&self) -> u32 {
        if self.shared.journal.is_full() {
            return 0;
        }
        let pending = self.shared.lock().pending.len();
        let max = self.shared.routing().cfg.max_pending;
        u32::try_from(max.saturating_sub(pending)).unwrap_or(u32::MAX)
    }
}

impl State {
    fn waiting(&self) -> std::collections::BTreeSet<String> {
        let mut ids = std::collections::BTreeSet::new();
        for (appliance, head) in &self.heads {
            if !head.hold.is_waiting() {
                continue;
            }
            ids.insert(head.command_id.clone());
            if let Some(lane) = self.lanes.get(appliance) {
                ids.extend(lane.iter().map(|j| j.command_id.clone()));
            }
        }
        // A command finished for the appliance that waits but not yet for another of its
        // targets is still pending; one whose result is being committed is not waiting.
        ids.retain(|id| self.pending.contains_key(id));
        ids
    }
}

impl Shared {
    fn routing(&self) -> Arc<Routing> {
        self.routing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
