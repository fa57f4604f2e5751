//! The router: turns cloud commands into per-appliance work and work back into results.
//!
//! The uplink driver calls [`Router::submit`] with a poll response's commands; the router
//! validates each one, resolves its targets (an id, a list, or `group:NAME`), and queues one
//! job per target on that appliance's worker. A worker runs its appliance's jobs one at a
//! time, in order (appliances run concurrently), checking the TTL just before dispatch.
//! When every target of a command has finished, the aggregated result goes to the
//! [`Outbox`]. The driver asks the router which commands are pending and how many more it
//! can take (the advertised capacity).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cloud::wire::{Command, CommandResult, Event, ItemResult, Status, Target};
use crate::config::{Config, RouterConfig, TransportKind};
use crate::outbox::Outbox;
use crate::transport::{Dispatch, Transports};

/// Finished command ids remembered to refuse replays; older ones are forgotten first.
pub const DONE_MEMORY: usize = 65_536;
/// Longest command id accepted.
pub const MAX_COMMAND_ID: usize = 128;

/// Shared handle to the router.
#[derive(Clone)]
pub struct Router {
    shared: Arc<Shared>,
}

struct Shared {
    cfg: RouterConfig,
    appliances: HashMap<String, TransportKind>,
    groups: BTreeMap<String, Vec<String>>,
    queues: HashMap<String, mpsc::Sender<Job>>,
    state: Mutex<State>,
    outbox: Arc<Outbox>,
}

#[derive(Default)]
struct State {
    pending: HashMap<String, Pending>,
    done: HashSet<String>,
    done_order: VecDeque<String>,
}

/// A command some of whose targets have not finished.
struct Pending {
    received: Instant,
    /// Sent to a list or a group: the result carries `items`.
    multi: bool,
    items: Vec<Option<ItemResult>>,
    remaining: usize,
}

struct Job {
    command_id: String,
    index: usize,
    payload: Arc<Value>,
    deadline: Option<Instant>,
    timeout: Duration,
}

impl Router {
    /// Starts one worker per configured appliance on `tracker`; they stop on `cancel`.
    pub fn start(
        config: &Config,
        transports: Transports,
        outbox: Arc<Outbox>,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Router {
        let mut queues = HashMap::new();
        let mut receivers = Vec::new();
        for a in &config.appliances {
            let (tx, rx) = mpsc::channel(config.router.max_queue_per_appliance);
            queues.insert(a.id.clone(), tx);
            receivers.push((a.id.clone(), a.transport, rx));
        }
        let shared = Arc::new(Shared {
            cfg: config.router.clone(),
            appliances: config
                .appliances
                .iter()
                .map(|a| (a.id.clone(), a.transport))
                .collect(),
            groups: config.groups.clone(),
            queues,
            state: Mutex::new(State::default()),
            outbox,
        });
        for (id, kind, rx) in receivers {
            let worker = Worker {
                appliance: id,
                kind,
                transports: transports.clone(),
                shared: shared.clone(),
            };
            tracker.spawn(worker.run(rx, cancel.clone()));
        }
        Router { shared }
    }

    /// Accepts the commands of one poll response. Every command either starts, or gets a
    /// `rejected`/`expired` result at once; a repeated id is ignored (its result, if any,
    /// is still owed and will be re-sent; if running, it is listed in `pending`).
    pub fn submit(&self, commands: Vec<Value>) {
        let now = Instant::now();
        for raw in commands {
            self.submit_one(raw, now);
        }
    }

    /// Command ids received and not finished.
    pub fn pending_ids(&self) -> Vec<String> {
        self.shared.lock().pending.keys().cloned().collect()
    }

    /// How many more commands may be accepted now.
    pub fn capacity(&self) -> u32 {
        let pending = self.shared.lock().pending.len();
        u32::try_from(self.shared.cfg.max_pending.saturating_sub(pending)).unwrap_or(u32::MAX)
    }

    fn submit_one(&self, raw: Value, now: Instant) {
        let cmd = match serde_json::from_value::<Command>(raw.clone()) {
            Ok(cmd) => cmd,
            Err(e) => return self.malformed(&raw, &format!("malformed command: {e}")),
        };
        if cmd.id.is_empty() || cmd.id.len() > MAX_COMMAND_ID {
            return self.malformed(&raw, "command id must be 1 to 128 characters");
        }
        {
            let state = self.shared.lock();
            if state.pending.contains_key(&cmd.id) || state.done.contains(&cmd.id) {
                log::debug!(command_id = cmd.id.as_str(); "repeated command id ignored");
                return;
            }
        }
        let targets = match self.validate(&cmd) {
            Ok(t) => t,
            Err(why) => return self.finish_now(&cmd.id, now, Status::Rejected, why),
        };
        if cmd.ttl_ms == Some(0) {
            return self.finish_now(&cmd.id, now, Status::Expired, "ttl was 0".into());
        }
        let multi = !matches!(&cmd.target, Target::One(t) if !t.starts_with("group:"));
        let deadline = cmd.ttl_ms.map(|ms| now + Duration::from_millis(ms));
        let timeout = cmd
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.shared.cfg.default_timeout);
        let payload = Arc::new(cmd.payload);
        let mut refused = Vec::new();
        {
            let mut state = self.shared.lock();
            state.pending.insert(
                cmd.id.clone(),
                Pending {
                    received: now,
                    multi,
                    items: vec![None; targets.len()],
                    remaining: targets.len(),
                },
            );
            for (index, target) in targets.iter().enumerate() {
                let job = Job {
                    command_id: cmd.id.clone(),
                    index,
                    payload: payload.clone(),
                    deadline,
                    timeout,
                };
                let sent = self.shared.queues.get(target).map(|q| q.try_send(job));
                if !matches!(sent, Some(Ok(()))) {
                    refused.push((index, target.clone()));
                }
            }
        }
        log::info!(command_id = cmd.id.as_str(), targets = targets.len(); "command accepted");
        for (index, target) in refused {
            let item = ItemResult {
                target,
                status: Status::Rejected,
                payload: None,
                error: Some("appliance queue is full".into()),
                duration_ms: 0,
            };
            self.shared.complete_item(&cmd.id, index, item);
        }
    }

    /// Resolves the targets and checks the bounds; the error is the `rejected` reason.
    fn validate(&self, cmd: &Command) -> Result<Vec<String>, String> {
        let cfg = &self.shared.cfg;
        if self.shared.lock().pending.len() >= cfg.max_pending {
            return Err("gateway at capacity; the cloud sent more commands than advertised".into());
        }
        let size = serde_json::to_vec(&cmd.payload).map_or(usize::MAX, |v| v.len());
        if size > cfg.max_command_bytes {
            return Err(format!(
                "payload is {size} bytes; the limit is {} (router.max_command_bytes)",
                cfg.max_command_bytes
            ));
        }
        match cmd.timeout_ms {
            Some(0) => return Err("timeout_ms must be greater than 0".into()),
            Some(ms) if Duration::from_millis(ms) > cfg.max_timeout => {
                return Err(format!(
                    "timeout_ms {ms} exceeds the gateway's limit of {} ms (router.max_timeout)",
                    cfg.max_timeout.as_millis()
                ));
            }
            _ => {}
        }
        let targets = self.resolve(&cmd.target)?;
        let unknown: Vec<&str> = targets
            .iter()
            .filter(|t| !self.shared.appliances.contains_key(*t))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(format!("unknown target(s): {}", unknown.join(", ")));
        }
        Ok(targets)
    }

    fn resolve(&self, target: &Target) -> Result<Vec<String>, String> {
        let list = match target {
            Target::One(t) => match t.strip_prefix("group:") {
                Some(name) => self
                    .shared
                    .groups
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("unknown group {name:?}"))?,
                None => vec![t.clone()],
            },
            Target::Many(list) => list.clone(),
        };
        if list.is_empty() {
            return Err("target list is empty".into());
        }
        if list.len() > self.shared.appliances.len().max(1) {
            return Err("more targets than configured appliances".into());
        }
        let mut seen = HashSet::new();
        Ok(list
            .into_iter()
            .filter(|t| seen.insert(t.clone()))
            .collect())
    }

    /// A command that cannot be parsed: answer it if it has an id, else report it.
    fn malformed(&self, raw: &Value, why: &str) {
        match raw.get("id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() && id.len() <= MAX_COMMAND_ID => {
                if !self.shared.lock().done.contains(id) {
                    self.finish_now(id, Instant::now(), Status::Rejected, why.to_owned());
                }
            }
            _ => {
                log::warn!("dropped a command without a usable id: {why}");
                self.shared.outbox.push_event(Event {
                    appliance: None,
                    kind: "malformed".into(),
                    payload: json!({ "what": "command", "error": why }),
                });
            }
        }
    }

    fn finish_now(&self, id: &str, received: Instant, status: Status, error: String) {
        log::warn!(command_id = id, status = status.as_str(); "command refused: {error}");
        let result = CommandResult {
            command_id: id.to_owned(),
            status,
            payload: None,
            error: Some(error),
            items: None,
            duration_ms: millis(received.elapsed()),
        };
        self.shared.lock().remember_done(id);
        self.shared.outbox.push_result(result);
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one target's result; the last one completes the command.
    fn complete_item(&self, command_id: &str, index: usize, item: ItemResult) {
        let finished = {
            let mut state = self.lock();
            let Some(p) = state.pending.get_mut(command_id) else {
                return;
            };
            if let Some(slot) = p.items.get_mut(index)
                && slot.is_none()
            {
                *slot = Some(item);
                p.remaining -= 1;
            }
            if p.remaining > 0 {
                return;
            }
            let p = state.pending.remove(command_id);
            state.remember_done(command_id);
            p
        };
        if let Some(p) = finished {
            self.outbox.push_result(aggregate(command_id, p));
        }
    }
}

impl State {
    fn remember_done(&mut self, id: &str) {
        if self.done.insert(id.to_owned()) {
            self.done_order.push_back(id.to_owned());
            if self.done_order.len() > DONE_MEMORY
                && let Some(old) = self.done_order.pop_front()
            {
                self.done.remove(&old);
            }
        }
    }
}

fn aggregate(command_id: &str, p: Pending) -> CommandResult {
    let duration_ms = millis(p.received.elapsed());
    let mut items: Vec<ItemResult> = p.items.into_iter().flatten().collect();
    if !p.multi && items.len() == 1 {
        let item = items.remove(0);
        return CommandResult {
            command_id: command_id.to_owned(),
            status: item.status,
            payload: item.payload,
            error: item.error,
            items: None,
            duration_ms,
        };
    }
    let ok = items.iter().filter(|i| i.status == Status::Ok).count();
    let (status, error) = if ok == items.len() {
        (Status::Ok, None)
    } else if ok > 0 {
        let failed = items.len() - ok;
        (
            Status::Partial,
            Some(format!("{failed} of {} targets failed", items.len())),
        )
    } else {
        (
            Status::Error,
            Some(format!("all {} targets failed", items.len())),
        )
    };
    CommandResult {
        command_id: command_id.to_owned(),
        status,
        payload: None,
        error,
        items: Some(items),
        duration_ms,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs one appliance's jobs in order.
struct Worker {
    appliance: String,
    kind: TransportKind,
    transports: Transports,
    shared: Arc<Shared>,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Job>, cancel: CancellationToken) {
        loop {
            let job = tokio::select! {
                _ = cancel.cancelled() => return,
                job = rx.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
            };
            let item = self.run_job(&job).await;
            self.shared.complete_item(&job.command_id, job.index, item);
        }
    }

    async fn run_job(&self, job: &Job) -> ItemResult {
        let start = Instant::now();
        let transport = match self.kind {
            TransportKind::Mqtt => "mqtt",
        };
        let outcome = if job.deadline.is_some_and(|d| d <= start) {
            None
        } else {
            let dispatch = Dispatch {
                command_id: job.command_id.clone(),
                payload: (*job.payload).clone(),
                timeout: job.timeout,
            };
            Some(
                self.transports
                    .execute(self.kind, &self.appliance, dispatch)
                    .await,
            )
        };
        let duration_ms = millis(start.elapsed());
        let (status, payload, error) = match outcome {
            None => (
                Status::Expired,
                None,
                Some("ttl ran out before dispatch".to_owned()),
            ),
            Some(o) => {
                let status = o.status();
                let (payload, error) = o.into_parts();
                (status, payload, error)
            }
        };
        log::info!(
            command_id = job.command_id.as_str(),
            appliance = self.appliance.as_str(),
            transport = transport,
            status = status.as_str(),
            duration_ms = duration_ms;
            "appliance finished command"
        );
        ItemResult {
            target: self.appliance.clone(),
            status,
            payload,
            error,
            duration_ms,
        }
    }
}
