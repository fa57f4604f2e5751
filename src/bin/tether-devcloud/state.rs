//! The store: every gateway's state behind one std `Mutex`, and the operations the
//! handlers perform on it.
//!
//! The lock is held only for short synchronous sections and never across an `.await`;
//! waiting (held polls, admin result waits) happens on per-gateway `Notify`s outside it.
//! Changes that will be acknowledged bump a version that handlers commit to the
//! `--state` file (see `persist`) before answering.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde_json::{Map, Value};
use tether::cloud::proto::Encoding;
use tether::cloud::wire::{CommandResult, Event, PollRequest};
use tokio::sync::Notify;

use crate::gateway::{Gateway, Queued, StoredResult};
use crate::persist::{self, Persister};
use crate::snapshot;

struct Inner {
    /// Number of the last `cN` id handed out.
    last_id: u64,
    /// Bumped by every change that must reach the state file before it is acknowledged.
    version: u64,
    gateways: HashMap<String, Gateway>,
}

impl Inner {
    fn gateway(&mut self, name: &str) -> &mut Gateway {
        let name = match crate::breaks::on(crate::breaks::Break::SharedQueue) {
            true => "*",
            false => name,
        };
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
                let (last_id, gateways) =
                    snapshot::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                inner.last_id = last_id;
                inner.gateways = gateways;
            }
        }
        Ok(Store {
            inner: Mutex::new(inner),
            started: Instant::now(),
            persister: state_path.map(Persister::new),
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
        g.last_capacity = Some(req.capacity);
        g.last_waiting = req.waiting;
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
        let capacity = match crate::breaks::on(crate::breaks::Break::IgnoreCapacity) {
            true => usize::MAX,
            false => usize::try_from(capacity).unwrap_or(usize::MAX),
        };
        let commands = g.take(capacity);
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

    /// Fault switches of one gateway (see `Gateway::ignore_results`).
    pub fn set_faults(&self, gw: &str, ignore_results: bool) {
        self.lock().gateway(gw).set_ignore_results(ignore_results);
    }

    /// What the last poll of `gw` advertised as its capacity and listed as waiting, and
    /// the encodings its requests came in.
    pub fn last_poll(&self, gw: &str) -> LastPoll {
        let mut inner = self.lock();
        let g = inner.gateway(gw);
        LastPoll {
            capacity: g.last_capacity,
            waiting: g.last_waiting.clone(),
            encoding: g.last_encoding.map(Encoding::as_str),
            requests_by_encoding: g
                .requests_by_encoding
                .iter()
                .map(|(e, n)| (e.as_str(), *n))
                .collect(),
        }
    }

    /// A request of `gw` (poll or flush) came in `encoding`.
    pub fn note_encoding(&self, gw: &str, encoding: Encoding) {
        let mut inner = self.lock();
        let g = inner.gateway(gw);
        g.last_encoding = Some(encoding);
        *g.requests_by_encoding.entry(encoding).or_default() += 1;
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
            queued.push(Queued::new(id, Value::Object(obj)));
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
            .map(|g| g.results().to_vec())
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
        let bytes = snapshot::encode(inner.last_id, &inner.gateways)?;
        Ok((inner.version, bytes))
    }
}

/// What the admin API shows of a gateway's last poll.
pub struct LastPoll {
    pub capacity: Option<u32>,
    pub waiting: Vec<String>,
    pub encoding: Option<&'static str>,
    pub requests_by_encoding: std::collections::BTreeMap<&'static str, u64>,
}
