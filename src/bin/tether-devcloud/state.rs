//! Per-gateway cloud state: command queues, delivery bookkeeping, stored results and
//! events, and the wake-ups that held polls and admin waits sleep on.
//!
//! All of it sits behind one std `Mutex`, held only for short synchronous sections and
//! never across an `.await`; the waiting happens on per-gateway `Notify`s outside it.
//! The snapshot format written for `--state` lives here too (see `persist` for how it
//! reaches the disk).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tether::cloud::wire::{CommandResult, Event, PollRequest};
use tokio::sync::Notify;

use crate::persist::{self, Persister};

/// Events kept per gateway; older ones are dropped first.
const MAX_EVENTS: usize = 100_000;

/// Version of the `--state` file layout.
const STATE_FORMAT: u32 = 1;

/// A result as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredResult {
    /// The first copy received; later copies only bump `deliveries`.
    pub result: CommandResult,
    /// How many times the gateway sent this result (more than 1 means a retransmission).
    pub deliveries: u64,
    /// Milliseconds since devcloud start when the first copy arrived.
    pub received_ms: u64,
}

/// A command waiting in a queue or delivered; `body` is what goes on the wire and
/// always carries `id` as a string.
struct Queued {
    id: String,
    body: Value,
}

#[derive(Default)]
struct Gateway {
    queue: VecDeque<Queued>,
    /// Sent to the gateway, in delivery order. Entries whose result has arrived are
    /// pruned lazily (at the next poll) and ignored everywhere until then.
    delivered: Vec<Queued>,
    results: Vec<StoredResult>,
    result_index: HashMap<String, usize>,
    events: VecDeque<Event>,
    /// Bumped by every poll; a held poll whose generation is stale has been replaced by a
    /// newer one (typically the gateway reconnected) and must not take commands.
    poll_generation: u64,
    /// Woken when commands are enqueued or a newer poll supersedes the held one.
    commands_changed: Arc<Notify>,
    /// Woken when results are stored.
    results_changed: Arc<Notify>,
}

impl Gateway {
    fn result(&self, id: &str) -> Option<&StoredResult> {
        self.result_index.get(id).map(|&i| &self.results[i])
    }

    /// Stores results (first copy wins) and returns the ids to acknowledge.
    fn store_results(&mut self, results: Vec<CommandResult>, now_ms: u64) -> Vec<String> {
        let mut acked = Vec::with_capacity(results.len());
        let mut seen = HashSet::with_capacity(results.len());
        for result in results {
            let id = result.command_id.clone();
            match self.result_index.get(&id) {
                Some(&i) => self.results[i].deliveries += 1,
                None => {
                    self.result_index.insert(id.clone(), self.results.len());
                    self.results.push(StoredResult {
                        result,
                        deliveries: 1,
                        received_ms: now_ms,
                    });
                }
            }
            if seen.insert(id.clone()) {
                acked.push(id);
            }
        }
        if !acked.is_empty() {
            self.results_changed.notify_waiters();
        }
        acked
    }

    fn push_events(&mut self, events: Vec<Event>) {
        self.events.extend(events);
        let excess = self.events.len().saturating_sub(MAX_EVENTS);
        self.events.drain(..excess);
    }

    /// Puts back at the front of the queue, in their original order, the delivered
    /// commands the gateway no longer knows about: no result and not in `pending`. That is
    /// how a response lost with its connection gets resent. Returns whether any moved.
    fn requeue_lost(&mut self, pending: &[String]) -> bool {
        let pending: HashSet<&str> = pending.iter().map(String::as_str).collect();
        let mut lost = Vec::new();
        let mut kept = Vec::new();
        for q in self.delivered.drain(..) {
            if self.result_index.contains_key(&q.id) {
                continue;
            }
            if pending.contains(q.id.as_str()) {
                kept.push(q);
            } else {
                lost.push(q);
            }
        }
        self.delivered = kept;
        let any = !lost.is_empty();
        for q in lost.into_iter().rev() {
            self.queue.push_front(q);
        }
        any
    }

    /// Moves up to `capacity` commands from the queue to `delivered`.
    fn take(&mut self, capacity: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < capacity {
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            // A result can overtake a requeued copy (it was in flight on /results).
            if self.result_index.contains_key(&q.id) {
                continue;
            }
            out.push(q.body.clone());
            self.delivered.push(q);
        }
        out
    }

    fn queued_ids(&self) -> Vec<String> {
        self.queue
            .iter()
            .filter(|q| !self.result_index.contains_key(&q.id))
            .map(|q| q.id.clone())
            .collect()
    }

    fn delivered_ids(&self) -> Vec<String> {
        self.delivered
            .iter()
            .filter(|q| !self.result_index.contains_key(&q.id))
            .map(|q| q.id.clone())
            .collect()
    }
}

struct Inner {
    /// Number of the last `cN` id handed out.
    last_id: u64,
    /// Bumped by every change that must reach the state file before it is acknowledged.
    version: u64,
    gateways: HashMap<String, Gateway>,
}

impl Inner {
    fn gateway(&mut self, name: &str) -> &mut Gateway {
        self.gateways.entry(name.to_owned()).or_default()
    }

    fn touch(&mut self) -> u64 {
        self.version += 1;
        self.version
    }
}

/// What a poll learns when it arrives.
pub struct PollStart {
    pub acked: Vec<String>,
    pub generation: u64,
    /// Notified when commands arrive or a newer poll replaces this one.
    pub wake: Arc<Notify>,
    /// State version to commit before answering, if this poll changed durable state.
    pub version: Option<u64>,
}

/// Outcome of trying to hand commands to a held poll.
pub enum Take {
    /// A newer poll from the same gateway arrived; answer this one empty.
    Superseded,
    Commands {
        commands: Vec<Value>,
        version: Option<u64>,
    },
}

pub struct Store {
    inner: Mutex<Inner>,
    started: Instant,
    persister: Option<Persister>,
}

impl Store {
    /// Creates the store, loading `state_path` when it exists.
    pub fn open(state_path: Option<PathBuf>) -> Result<Store, String> {
        let mut inner = Inner {
            last_id: 0,
            version: 0,
            gateways: HashMap::new(),
        };
        if let Some(path) = &state_path {
            let bytes = persist::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            if let Some(bytes) = bytes {
                load_snapshot(&mut inner, &bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        Ok(Store {
            inner: Mutex::new(inner),
            started: Instant::now(),
            persister: state_path.map(|p| Persister::new(p, 0)),
        })
    }

    /// A panic elsewhere must not wedge the server: the state it guards is updated in
    /// small self-consistent steps, so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// First half of a poll: store what it carries, requeue lost deliveries, and take over
    /// from any older poll of the same gateway still being held.
    pub fn begin_poll(&self, gw: &str, req: PollRequest) -> PollStart {
        let now_ms = self.now_ms();
        let mut inner = self.lock();
        let g = inner.gateway(gw);
        let acked = g.store_results(req.results, now_ms);
        g.push_events(req.events);
        let requeued = g.requeue_lost(&req.pending);
        g.poll_generation += 1;
        let generation = g.poll_generation;
        g.commands_changed.notify_waiters();
        let wake = g.commands_changed.clone();
        let version = (!acked.is_empty() || requeued).then(|| inner.touch());
        PollStart {
            acked,
            generation,
            wake,
            version,
        }
    }

    /// Hands up to `capacity` queued commands to the poll of `generation`.
    pub fn take_commands(&self, gw: &str, generation: u64, capacity: u32) -> Take {
        let mut inner = self.lock();
        let g = inner.gateway(gw);
        if g.poll_generation != generation {
            return Take::Superseded;
        }
        let commands = g.take(usize::try_from(capacity).unwrap_or(usize::MAX));
        let version = (!commands.is_empty()).then(|| inner.touch());
        Take::Commands { commands, version }
    }

    /// `POST /results`: store results and events; returns the acks and the version to
    /// commit first.
    pub fn post_results(
        &self,
        gw: &str,
        results: Vec<CommandResult>,
        events: Vec<Event>,
    ) -> (Vec<String>, Option<u64>) {
        let now_ms = self.now_ms();
        let mut inner = self.lock();
        let g = inner.gateway(gw);
        let acked = g.store_results(results, now_ms);
        g.push_events(events);
        let version = (!acked.is_empty()).then(|| inner.touch());
        (acked, version)
    }

    /// Appends commands to the queue, giving `cN` ids to those without one, and wakes a
    /// held poll. Every object's `id`, if present, must already be a string.
    pub fn enqueue(&self, gw: &str, commands: Vec<Map<String, Value>>) -> (Vec<String>, u64) {
        let mut inner = self.lock();
        let mut ids = Vec::with_capacity(commands.len());
        let mut queued = Vec::with_capacity(commands.len());
        for mut obj in commands {
            let id = match obj.get("id").and_then(Value::as_str) {
                Some(id) => {
                    // Keep generated ids from colliding with a caller's own `cN`.
                    if let Some(n) = id.strip_prefix('c').and_then(|n| n.parse::<u64>().ok()) {
                        inner.last_id = inner.last_id.max(n);
                    }
                    id.to_owned()
                }
                None => {
                    inner.last_id += 1;
                    format!("c{}", inner.last_id)
                }
            };
            obj.insert("id".to_owned(), Value::String(id.clone()));
            ids.push(id.clone());
            queued.push(Queued {
                id,
                body: Value::Object(obj),
            });
        }
        let g = inner.gateway(gw);
        g.queue.extend(queued);
        g.commands_changed.notify_waiters();
        (ids, inner.touch())
    }

    pub fn results(&self, gw: &str) -> Vec<StoredResult> {
        let inner = self.lock();
        inner
            .gateways
            .get(gw)
            .map(|g| g.results.clone())
            .unwrap_or_default()
    }

    pub fn result(&self, gw: &str, id: &str) -> Option<StoredResult> {
        let inner = self.lock();
        inner.gateways.get(gw)?.result(id).cloned()
    }

    /// Waits until the result of `id` is stored or `deadline` passes.
    pub async fn wait_result(
        &self,
        gw: &str,
        id: &str,
        deadline: tokio::time::Instant,
    ) -> Option<StoredResult> {
        loop {
            let notify = {
                let mut inner = self.lock();
                let g = inner.gateway(gw);
                if let Some(r) = g.result(id) {
                    return Some(r.clone());
                }
                g.results_changed.clone()
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Re-check now that the wake-up is registered, or a result stored between the
            // check above and `enable` would be missed until the deadline.
            if let Some(r) = self.result(gw, id) {
                return Some(r);
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => return self.result(gw, id),
            }
        }
    }

    pub fn events(&self, gw: &str) -> Vec<Event> {
        let inner = self.lock();
        inner
            .gateways
            .get(gw)
            .map(|g| g.events.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Ids queued, and ids delivered without a result yet.
    pub fn commands(&self, gw: &str) -> (Vec<String>, Vec<String>) {
        let inner = self.lock();
        inner
            .gateways
            .get(gw)
            .map(|g| (g.queued_ids(), g.delivered_ids()))
            .unwrap_or_default()
    }

    /// Makes state version `version` durable (no-op without `--state`).
    pub async fn commit(&self, version: Option<u64>) -> io::Result<()> {
        let (Some(persister), Some(version)) = (&self.persister, version) else {
            return Ok(());
        };
        persister
            .commit(version, || self.snapshot())
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", persister.path().display())))
    }

    fn snapshot(&self) -> io::Result<(u64, Vec<u8>)> {
        let inner = self.lock();
        let gateways = inner
            .gateways
            .iter()
            .map(|(name, g)| {
                let live = |q: &&Queued| !g.result_index.contains_key(&q.id);
                let out = GatewayOut {
                    queue: g.queue.iter().filter(live).map(|q| &q.body).collect(),
                    delivered: g.delivered.iter().filter(live).map(|q| &q.body).collect(),
                    results: &g.results,
                };
                (name.as_str(), out)
            })
            .filter(|(_, g)| {
                !(g.queue.is_empty() && g.delivered.is_empty() && g.results.is_empty())
            })
            .collect();
        let snapshot = SnapshotOut {
            format: STATE_FORMAT,
            last_id: inner.last_id,
            gateways,
        };
        let bytes = serde_json::to_vec(&snapshot).map_err(io::Error::other)?;
        Ok((inner.version, bytes))
    }
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    format: u32,
    last_id: u64,
    gateways: BTreeMap<&'a str, GatewayOut<'a>>,
}

#[derive(Serialize)]
struct GatewayOut<'a> {
    queue: Vec<&'a Value>,
    delivered: Vec<&'a Value>,
    results: &'a [StoredResult],
}

#[derive(Deserialize)]
struct SnapshotIn {
    format: u32,
    #[serde(default)]
    last_id: u64,
    #[serde(default)]
    gateways: HashMap<String, GatewayIn>,
}

#[derive(Deserialize)]
struct GatewayIn {
    #[serde(default)]
    queue: Vec<Value>,
    #[serde(default)]
    delivered: Vec<Value>,
    #[serde(default)]
    results: Vec<StoredResult>,
}

fn load_snapshot(inner: &mut Inner, bytes: &[u8]) -> Result<(), String> {
    let snap: SnapshotIn =
        serde_json::from_slice(bytes).map_err(|e| format!("corrupt state: {e}"))?;
    if snap.format != STATE_FORMAT {
        return Err(format!("unsupported state format {}", snap.format));
    }
    let queued = |body: Value| -> Result<Queued, String> {
        match body.get("id").and_then(Value::as_str) {
            Some(id) => Ok(Queued {
                id: id.to_owned(),
                body,
            }),
            None => Err("corrupt state: a stored command has no string id".to_owned()),
        }
    };
    inner.last_id = snap.last_id;
    for (name, gin) in snap.gateways {
        let g = inner.gateway(&name);
        g.queue = gin
            .queue
            .into_iter()
            .map(queued)
            .collect::<Result<_, _>>()?;
        g.delivered = gin
            .delivered
            .into_iter()
            .map(queued)
            .collect::<Result<_, _>>()?;
        for stored in gin.results {
            let id = stored.result.command_id.clone();
            if !g.result_index.contains_key(&id) {
                g.result_index.insert(id, g.results.len());
                g.results.push(stored);
            }
        }
    }
    Ok(())
}
