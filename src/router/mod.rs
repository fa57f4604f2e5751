//! The router: turns cloud commands into per-appliance work and work back into results.
//!
//! The uplink driver calls [`Router::submit`] with a poll response's commands; the router
//! validates each one, resolves its targets (an id, a list, or `group:NAME`), and queues one
//! job per target on that appliance's lane. A lane's worker runs its jobs one at a time, in
//! order (appliances run concurrently), checking the TTL just before dispatch. Lanes and
//! workers exist only while an appliance has work: an idle fleet of a thousand appliances
//! costs no task and no queue per appliance.
//! When every target of a command has finished, the aggregated result goes to the
//! [`Outbox`]. The driver asks the router which commands are pending and how many more it
//! can take (the advertised capacity).
//!
//! Every command id is recorded in the [`Journal`] before anything is done with it; the
//! journal answers which ids are new, so a replayed id is never dispatched twice, even
//! across restarts. At start, [`Router::recover`] settles what a previous run left
//! running: `interrupted`, or run again when the command is idempotent.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cloud::wire::{
    Command, CommandResult, Event, ItemResult, MAX_COMMAND_ID, Status, Target,
};
use crate::config::{Config, RouterConfig, TransportKind};
use crate::journal::{Interrupted, Journal, NewCommand, now_ms};
use crate::outbox::Outbox;
use crate::transport::{Dispatch, Transports};

/// Shared handle to the router.
#[derive(Clone)]
pub struct Router {
    shared: Arc<Shared>,
}

struct Shared {
    /// What the configuration says; replaced whole on reload.
    routing: RwLock<Arc<Routing>>,
    state: Mutex<State>,
    /// Woken when the last pending command finishes (graceful stop waits for it).
    idle: Notify,
    outbox: Arc<Outbox>,
    journal: Journal,
    transports: Transports,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// Targets and limits from the configuration.
struct Routing {
    cfg: RouterConfig,
    appliances: HashMap<String, TransportKind>,
    groups: BTreeMap<String, Vec<String>>,
}

#[derive(Default)]
struct State {
    pending: HashMap<String, Pending>,
    /// Jobs not yet started, per appliance. An entry exists exactly while a worker runs
    /// for that appliance; the worker removes it when it finds the queue empty.
    lanes: HashMap<String, VecDeque<Job>>,
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
    /// Fixed when queued: a reload that moves the appliance to another transport does
    /// not change where an already accepted job goes.
    kind: TransportKind,
    command_id: String,
    index: usize,
    payload: Arc<Value>,
    deadline: Option<Instant>,
    timeout: Duration,
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
            idle: Notify::new(),
            outbox,
            journal,
            transports,
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
                .map(|a| (a.id.clone(), a.transport))
                .collect(),
            groups: config.groups.clone(),
        };
        *self
            .shared
            .routing
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(routing);
    }

    /// Commands accepted and not finished.
    pub fn pending_count(&self) -> usize {
        self.shared.lock().pending.len()
    }

    /// Waits until no command is pending.
    pub async fn idle(&self) {
        loop {
            let notified = self.shared.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending_count() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Accepts the commands of one poll response. Every new command either starts, or
    /// gets a `rejected`/`expired` result at once; a repeated id is ignored (its result,
    /// if any, is still owed and will be re-sent; if running, it is listed in `pending`).
    /// If the journal cannot record them, none is accepted: the cloud keeps them.
    pub async fn submit(&self, commands: Vec<Value>) {
        let now = Instant::now();
        let mut entries = Vec::with_capacity(commands.len());
        for raw in commands {
            let id = raw
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty() && id.len() <= MAX_COMMAND_ID)
                .map(str::to_owned);
            let Some(id) = id else {
                self.unanswerable();
                continue;
            };
            let parsed = serde_json::from_value::<Command>(raw.clone())
                .map_err(|e| format!("malformed command: {e}"));
            entries.push((id, raw, parsed));
        }
        let records = entries
            .iter()
            .map(|(id, raw, parsed)| {
                let idempotent = parsed.as_ref().is_ok_and(|c| c.idempotent);
                NewCommand {
                    id: id.clone(),
                    // Only an idempotent command is ever run again from its record.
                    body: if idempotent {
                        raw.to_string()
                    } else {
                        String::new()
                    },
                    idempotent,
                }
            })
            .collect();
        let fresh = match self.shared.journal.record_commands(records).await {
            Ok(fresh) => fresh,
            Err(e) => {
                log::error!(
                    "cannot journal {} command(s), leaving them with the cloud: {e}",
                    entries.len()
                );
                return;
            }
        };
        let mut repeated = Vec::new();
        for ((id, _, parsed), fresh) in entries.into_iter().zip(fresh) {
            if !fresh {
                log::debug!(command_id = id.as_str(); "repeated command id ignored");
                repeated.push(id);
                continue;
            }
            match parsed {
                Ok(cmd) => {
                    let deadline = cmd.ttl_ms.map(|ms| now + Duration::from_millis(ms));
                    self.begin(cmd, now, deadline).await;
                }
                Err(why) => self.finish_now(&id, now, Status::Rejected, why).await,
            }
        }
        // The cloud resent these: it lacks their results. Any still owed go out first.
        self.shared.outbox.want(repeated);
    }

    /// Settles the commands a previous run left running: an idempotent one runs again
    /// (with what is left of its TTL), any other becomes `interrupted`.
    pub async fn recover(&self, running: Vec<Interrupted>) {
        let now = Instant::now();
        for c in running {
            let cmd = serde_json::from_str::<Command>(&c.body)
                .ok()
                .filter(|_| c.idempotent);
            let Some(cmd) = cmd else {
                let why = "the gateway restarted while the command ran; the appliance may or may not have acted";
                self.finish_now(&c.id, now, Status::Interrupted, why.into())
                    .await;
                continue;
            };
            let deadline = match cmd.ttl_ms {
                None => None,
                Some(ttl) => {
                    // Wall-clock time is all that survives a restart; a clock that went
                    // backwards (no RTC, no NTP yet) cannot prove the TTL is still good.
                    let elapsed = now_ms() - c.received_at_ms;
                    let left = i64::try_from(ttl).unwrap_or(i64::MAX) - elapsed;
                    if elapsed < 0 || left <= 0 {
                        let why = "ttl ran out while the gateway restarted".to_owned();
                        self.finish_now(&c.id, now, Status::Expired, why).await;
                        continue;
                    }
                    Some(now + Duration::from_millis(u64::try_from(left).unwrap_or(0)))
                }
            };
            if let Err(e) = self.shared.journal.rerun(vec![c.id.clone()]).await {
                log::warn!(command_id = c.id.as_str(); "cannot count the re-run in the journal: {e}");
            }
            log::info!(command_id = c.id.as_str(); "idempotent command interrupted by a restart; running it again");
            self.begin(cmd, now, deadline).await;
        }
    }

    /// Command ids received and not finished.
    pub fn pending_ids(&self) -> Vec<String> {
        self.shared.lock().pending.keys().cloned().collect()
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

    async fn begin(&self, cmd: Command, now: Instant, deadline: Option<Instant>) {
        let routing = self.shared.routing();
        let targets = match self.validate(&routing, &cmd) {
            Ok(t) => t,
            Err(why) => return self.finish_now(&cmd.id, now, Status::Rejected, why).await,
        };
        if cmd.ttl_ms == Some(0) {
            return self
                .finish_now(&cmd.id, now, Status::Expired, "ttl was 0".into())
                .await;
        }
        let multi = !matches!(&cmd.target, Target::One(t) if !t.starts_with("group:"));
        let timeout = cmd
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(routing.cfg.default_timeout);
        let payload = Arc::new(cmd.payload);
        let mut refused = Vec::new();
        let mut idle = Vec::new();
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
                // `validate` checked every target is configured.
                let Some(&kind) = routing.appliances.get(target) else {
                    refused.push((index, target.clone(), "appliance is not configured"));
                    continue;
                };
                let lane = match state.lanes.get_mut(target) {
                    Some(lane) => lane,
                    None => {
                        idle.push(target.clone());
                        state.lanes.entry(target.clone()).or_default()
                    }
                };
                if lane.len() >= routing.cfg.max_queue_per_appliance {
                    refused.push((index, target.clone(), "appliance queue is full"));
                    continue;
                }
                lane.push_back(Job {
                    kind,
                    command_id: cmd.id.clone(),
                    index,
                    payload: payload.clone(),
                    deadline,
                    timeout,
                });
            }
        }
        for appliance in idle {
            let worker = Worker {
                appliance,
                transports: self.shared.transports.clone(),
                shared: self.shared.clone(),
            };
            self.shared
                .tracker
                .spawn(worker.run(self.shared.cancel.clone()));
        }
        log::info!(command_id = cmd.id.as_str(), targets = targets.len(); "command accepted");
        for (index, target, why) in refused {
            let item = ItemResult {
                target,
                status: Status::Rejected,
                payload: None,
                error: Some(why.into()),
                duration_ms: 0,
            };
            self.shared.complete_item(&cmd.id, index, item).await;
        }
    }

    /// Resolves the targets and checks the bounds; the error is the `rejected` reason.
    fn validate(&self, routing: &Routing, cmd: &Command) -> Result<Vec<String>, String> {
        let cfg = &routing.cfg;
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
        let targets = resolve(routing, &cmd.target)?;
        let unknown: Vec<&str> = targets
            .iter()
            .filter(|t| !routing.appliances.contains_key(*t))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(format!("unknown target(s): {}", unknown.join(", ")));
        }
        Ok(targets)
    }

    /// A command without a usable id cannot be answered: report it as an event.
    fn unanswerable(&self) {
        let why = "command has no usable id (a string of 1 to 128 bytes)";
        log::warn!("dropped a command: {why}");
        self.shared.outbox.push_event(Event {
            appliance: None,
            kind: "malformed".into(),
            payload: json!({ "what": "command", "error": why }),
        });
    }

    async fn finish_now(&self, id: &str, received: Instant, status: Status, error: String) {
        log::warn!(command_id = id, status = status.as_str(); "command not run: {error}");
        let result = CommandResult {
            command_id: id.to_owned(),
            status,
            payload: None,
            error: Some(error),
            items: None,
            duration_ms: millis(received.elapsed()),
        };
        self.shared.outbox.push_result(result).await;
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

    /// Records one target's result; the last one completes the command. The command
    /// stays listed as pending until its result is journalled, so no poll in between can
    /// make the cloud think it was lost.
    async fn complete_item(&self, command_id: &str, index: usize, item: ItemResult) {
        let result = {
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
            aggregate(command_id, p)
        };
        self.outbox.push_result(result).await;
        let mut state = self.lock();
        state.pending.remove(command_id);
        if state.pending.is_empty() {
            self.idle.notify_waiters();
        }
    }
}

/// Expands a target into appliance ids (duplicates removed, order kept).
fn resolve(routing: &Routing, target: &Target) -> Result<Vec<String>, String> {
    let list = match target {
        Target::One(t) => match t.strip_prefix("group:") {
            Some(name) => routing
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
    if list.len() > routing.appliances.len().max(1) {
        return Err("more targets than configured appliances".into());
    }
    let mut seen = HashSet::new();
    Ok(list
        .into_iter()
        .filter(|t| seen.insert(t.clone()))
        .collect())
}

fn aggregate(command_id: &str, p: &Pending) -> CommandResult {
    let duration_ms = millis(p.received.elapsed());
    let mut items: Vec<ItemResult> = p.items.iter().flatten().cloned().collect();
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

/// Runs one appliance's lane in order, and ends when the lane is empty.
struct Worker {
    appliance: String,
    transports: Transports,
    shared: Arc<Shared>,
}

impl Worker {
    async fn run(self, cancel: CancellationToken) {
        loop {
            if cancel.is_cancelled() {
                // Stopping: what is still queued stays pending and is reported as
                // interrupted at the next start.
                return;
            }
            let job = {
                let mut state = self.shared.lock();
                let Some(lane) = state.lanes.get_mut(&self.appliance) else {
                    return;
                };
                match lane.pop_front() {
                    Some(job) => job,
                    None => {
                        state.lanes.remove(&self.appliance);
                        return;
                    }
                }
            };
            let item = self.run_job(&job).await;
            self.shared
                .complete_item(&job.command_id, job.index, item)
                .await;
        }
    }

    async fn run_job(&self, job: &Job) -> ItemResult {
        let start = Instant::now();
        let transport = match job.kind {
            TransportKind::Mqtt => "mqtt",
            TransportKind::Ble => "ble",
        };
        let outcome = if job.deadline.is_some_and(|d| d <= start) {
            None
        } else {
            let dispatch = Dispatch {
                command_id: job.command_id.clone(),
                payload: (*job.payload).clone(),
                timeout: job.timeout,
                deadline: job.deadline,
            };
            Some(
                self.transports
                    .execute(job.kind, &self.appliance, dispatch)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::SyncMode;

    impl Router {
        fn lanes(&self) -> usize {
            self.shared.lock().lanes.len()
        }
    }

    /// Lanes (and their worker tasks) exist only while an appliance has work, and a
    /// lane's bound turns the excess into `rejected` items.
    #[tokio::test]
    async fn lanes_come_and_go_with_work_and_are_bounded() {
        let dir = std::env::temp_dir().join(format!(
            "tether-router-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let mut text = format!(
            "[gateway]\nid = \"gw\"\nstate_dir = \"{}\"\n[cloud]\nurl = \"https://localhost:1\"\n\
             token_file = \"/nonexistent\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\nstartup_grace = \"0s\"\n\
             [router]\nmax_queue_per_appliance = 3\n",
            dir.display()
        );
        for i in 0..20 {
            text.push_str(&format!(
                "[[appliance]]\nid = \"a{i}\"\ntransport = \"mqtt\"\npassword = \"p{i}\"\n"
            ));
        }
        let config = Config::parse(&text).expect("config");
        let (journal, _) = Journal::open(&dir, SyncMode::Normal, 1 << 30).unwrap();
        let outbox = Arc::new(Outbox::new(journal.clone(), 100));
        let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
        let (mqtt, _, _) =
            crate::transport::mqtt::start(&config, None, outbox.clone(), &tracker, cancel.clone())
                .await
                .unwrap();
        let transports = Transports { mqtt, ble: None };
        let router = Router::start(
            &config,
            transports,
            journal,
            outbox.clone(),
            &tracker,
            cancel.clone(),
        );
        assert_eq!(
            router.lanes(),
            0,
            "no appliance has work: no lane, no worker"
        );
        // Nobody is connected, so every job ends quickly as `unreachable`.
        let mut commands: Vec<Value> = (0..40)
            .map(|n| json!({"id": format!("c{n}"), "target": format!("a{}", n % 20)}))
            .collect();
        // Five at once for one appliance: one runs, three queue, one is over the bound.
        commands.extend((0..5).map(|n| json!({"id": format!("burst{n}"), "target": "a0"})));
        router.submit(commands).await;
        router.idle().await;
        assert_eq!(router.lanes(), 0, "every lane ended with its work");
        let owed = outbox.take(100, 0).await.results;
        assert_eq!(owed.len(), 45);
        let rejected: Vec<&str> = owed
            .iter()
            .filter(|r| r.status == Status::Rejected)
            .map(|r| r.error.as_deref().unwrap_or(""))
            .collect();
        assert!(
            !rejected.is_empty() && rejected.iter().all(|e| e.contains("queue is full")),
            "{rejected:?}"
        );
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
