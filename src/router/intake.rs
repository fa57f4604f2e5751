//! Taking commands in: from a poll response ([`Router::submit`]) or from what a previous
//! run left in the journal ([`Router::recover`]), to jobs queued on appliances' lanes, or
//! to an immediate `rejected`/`expired`/`interrupted` result.
//!
//! Called by the uplink driver (submit) and by `app` at start (recover). It asks
//! `targets.rs` whether a command may run and where, starts a lane's worker (`worker.rs`)
//! when the lane was idle, and answers refused targets through `aggregate.rs`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::worker::Worker;
use super::{GATEWAY_TARGET, Job, Pending, Router, millis};
use crate::cloud::proto;
use crate::cloud::wire::{
    Command, CommandResult, Event, ItemResult, MAX_COMMAND_ID, Status, Target,
};
use crate::journal::{Interrupted, NewCommand, now_ms};
use crate::transport::Payload;

/// Why a command that may have reached its appliance has no answer after a restart.
const RESTARTED: &str =
    "the gateway restarted while the command ran; the appliance may or may not have acted";

impl Router {
    /// Accepts the commands of one poll response. Every new command either starts, or
    /// gets a `rejected`/`expired` result at once; a repeated id is ignored (its result,
    /// if any, is still owed and will be re-sent; if running, it is listed in `pending`).
    /// If the journal cannot record them, none is accepted: the cloud keeps them.
    pub async fn submit(&self, commands: Vec<Value>) {
        let now = Instant::now();
        let mut entries = Vec::with_capacity(commands.len());
        for mut raw in commands {
            if let Some(fleet) = self.shared.gateway.get() {
                // A password in a gateway command is hashed before the journal sees it.
                fleet.seal(&mut raw).await;
            }
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
                    // After a crash, what was not sent yet runs from this record.
                    body: raw.to_string(),
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
                    self.begin(cmd, now, Duration::ZERO, deadline, &[]).await;
                }
                Err(why) => self.finish_now(&id, now, Status::Rejected, why).await,
            }
        }
        // The cloud resent these: it lacks their results. Any still owed go out first.
        self.shared.outbox.want(repeated);
    }

    /// Settles the commands a previous run left running. Where a command never passed its
    /// send gate (`transport::SendGate`) it was never sent: it runs now, in its
    /// appliance's order, with what is left of its TTL (and of `router.max_offline_wait`
    /// if it waits for an appliance that is away). Where it may have reached an
    /// appliance, that appliance's part is `interrupted`, unless the command is
    /// idempotent, which runs again whole.
    pub async fn recover(&self, running: Vec<Interrupted>) {
        let now = Instant::now();
        for c in running {
            // Wall-clock time is all that survives a restart (a clock that went backwards
            // counts as no time).
            let waited =
                Duration::from_millis(u64::try_from(now_ms() - c.received_at_ms).unwrap_or(0));
            let every = c.sent.iter().any(|a| a == "*");
            let cmd = match serde_json::from_str::<Command>(&c.body) {
                // Refused at receipt, but the restart came before its result was recorded:
                // it never ran, so it is refused again, not `interrupted`.
                Err(e) if c.sent.is_empty() => {
                    let why = format!("malformed command: {e}");
                    self.finish_now(&c.id, now, Status::Rejected, why).await;
                    continue;
                }
                Ok(cmd) if cmd.idempotent || !every => cmd,
                _ => {
                    self.finish_now(&c.id, now, Status::Interrupted, RESTARTED.into())
                        .await;
                    continue;
                }
            };
            let deadline = match cmd.ttl_ms {
                None => None,
                Some(ttl) => {
                    // Wall-clock time is all that survives a restart; a clock that went
                    // backwards (no RTC, no NTP yet) cannot prove the TTL is still good.
                    let elapsed = now_ms() - c.received_at_ms;
                    let left = i64::try_from(ttl).unwrap_or(i64::MAX) - elapsed;
                    if elapsed < 0 || left <= 0 {
                        if c.sent.is_empty() || cmd.idempotent {
                            let why = "ttl ran out while the gateway restarted".to_owned();
                            self.finish_now(&c.id, now, Status::Expired, why).await;
                            continue;
                        }
                        // What was sent is interrupted; the rest expires at dispatch.
                        Some(now)
                    } else {
                        Some(now + Duration::from_millis(u64::try_from(left).unwrap_or(0)))
                    }
                }
            };
            let sent = if cmd.idempotent {
                if !c.sent.is_empty() {
                    if let Err(e) = self.shared.journal.rerun(vec![c.id.clone()]).await {
                        log::warn!(command_id = c.id.as_str(); "cannot count the re-run in the journal: {e}");
                    }
                    log::info!(command_id = c.id.as_str(); "idempotent command interrupted by a restart; running it again");
                }
                Vec::new()
            } else {
                if c.sent.is_empty() {
                    log::info!(command_id = c.id.as_str(); "command was not sent before the restart; running it now");
                }
                c.sent
            };
            self.begin(cmd, now, waited, deadline, &sent).await;
        }
    }

    /// Queues a command's jobs. The parts for the appliances in `sent` (a restart found
    /// them possibly delivered) are not run again but answered `interrupted`. `waited` is
    /// how long it was accepted before this run: it counts against the hold and in the
    /// result's `duration_ms`.
    async fn begin(
        &self,
        mut cmd: Command,
        now: Instant,
        waited: Duration,
        deadline: Option<Instant>,
        sent: &[String],
    ) {
        let routing = self.shared.routing();
        let payload = match command_payload(&mut cmd) {
            Ok(p) => p,
            Err(why) => return self.finish_now(&cmd.id, now, Status::Rejected, why).await,
        };
        if matches!(&cmd.target, Target::One(t) if t == GATEWAY_TARGET) {
            return self
                .gateway_command(cmd, payload, now, waited, deadline)
                .await;
        }
        let targets = match self.validate(&routing, &cmd, &payload) {
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
        let payload = Arc::new(payload);
        let mut hold_until = now + routing.cfg.max_offline_wait.saturating_sub(waited);
        if let Some(ttl) = deadline {
            hold_until = hold_until.min(ttl);
        }
        let mut refused = Vec::new();
        let mut interrupted = Vec::new();
        let mut idle = Vec::new();
        {
            let mut state = self.shared.lock();
            state.pending.insert(
                cmd.id.clone(),
                Pending {
                    received: now,
                    before: waited,
                    multi,
                    items: vec![None; targets.len()],
                    remaining: targets.len(),
                },
            );
            for (index, target) in targets.iter().enumerate() {
                if sent.contains(target) {
                    interrupted.push((index, target.clone()));
                    continue;
                }
                // `validate` checked every target is configured.
                let Some(&(kind, offline)) = routing.appliances.get(target) else {
                    refused.push((index, target.clone(), "appliance is not configured"));
                    continue;
                };
                // The bound counts the job the worker runs (or holds) too.
                let head = state.heads.get(target);
                let running = usize::from(head.is_some());
                if let Some(head) = head
                    && deadline.is_some()
                    && head.hold.is_waiting()
                {
                    // Queued behind a command that waits for the appliance: the worker
                    // must time this one's TTL too.
                    head.hold.poke();
                }
                let lane = match state.lanes.get_mut(target) {
                    Some(lane) => lane,
                    None => {
                        idle.push(target.clone());
                        state.lanes.entry(target.clone()).or_default()
                    }
                };
                if lane.len() + running >= routing.cfg.max_queue_per_appliance {
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
                    offline,
                    hold_until,
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
        let refused = refused
            .into_iter()
            .map(|(index, target, why)| (index, target, Status::Rejected, why));
        let interrupted = interrupted
            .into_iter()
            .map(|(index, target)| (index, target, Status::Interrupted, RESTARTED));
        for (index, target, status, why) in refused.chain(interrupted) {
            let item = ItemResult {
                target,
                status,
                payload: None,
                error: Some(why.into()),
                duration_ms: 0,
            };
            self.shared.complete_item(&cmd.id, index, item).await;
        }
    }

    /// A command for the gateway itself (the `fleet` module): run at once, before the next
    /// command of the same poll is taken, so a command for an appliance that the one
    /// before it added finds it.
    async fn gateway_command(
        &self,
        cmd: Command,
        payload: Payload,
        now: Instant,
        waited: Duration,
        deadline: Option<Instant>,
    ) {
        if cmd.ttl_ms == Some(0) || deadline.is_some_and(|d| d <= now) {
            let why = "ttl ran out before the gateway command ran".to_owned();
            return self.finish_now(&cmd.id, now, Status::Expired, why).await;
        }
        if let Err(why) = super::targets::fits(&self.shared.routing().cfg, &payload) {
            return self.finish_now(&cmd.id, now, Status::Rejected, why).await;
        }
        let Payload::Json(payload) = payload else {
            let why = "a gateway command's payload is JSON, not raw bytes".to_owned();
            return self.finish_now(&cmd.id, now, Status::Rejected, why).await;
        };
        let Some(fleet) = self.shared.gateway.get() else {
            let why = "this gateway takes no gateway commands".to_owned();
            return self.finish_now(&cmd.id, now, Status::Rejected, why).await;
        };
        let op = payload
            .get("op")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let Some(reply) = fleet.call(payload).await else {
            // Stopping: it did not run; it stays unanswered in the journal and runs at
            // the next start.
            return;
        };
        log::info!(command_id = cmd.id.as_str(), op = op.as_str(), status = reply.status.as_str();
            "gateway command finished");
        let result = CommandResult {
            command_id: cmd.id.clone(),
            status: reply.status,
            payload: reply.payload,
            error: reply.error,
            items: None,
            duration_ms: millis(waited + now.elapsed()),
        };
        self.shared.outbox.push_result(result).await;
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

/// What the command carries to its appliances, taken out of it; the error is the
/// `rejected` reason. Only the protobuf decoder sets `payload_raw` or `invalid`
/// (`cloud::proto`).
fn command_payload(cmd: &mut Command) -> Result<Payload, String> {
    if let Some(why) = &cmd.invalid {
        return Err(format!("malformed command: {why}"));
    }
    match &cmd.payload_raw {
        Some(b64) => proto::raw_payload(b64).map(Payload::Raw),
        None => Ok(Payload::Json(std::mem::take(&mut cmd.payload))),
    }
}
