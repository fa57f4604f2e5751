//! What the gateway owes the cloud: results until acked, and appliance events.
//!
//! The router pushes results (each is journalled before it is owed), the MQTT endpoint
//! pushes events, and the uplink driver takes batches and settles them with the cloud's
//! acks. Results live in the journal, not in memory, so a week-long outage costs disk, not
//! RAM; only the ids of results riding in a request are held here ("in flight"), so a
//! poll and an early flush never carry the same result. If the journal cannot be written
//! (a full disk), a result is kept in memory instead ("spilled") and still delivered.
//! A new result may leave while its own journal commit (and fsync) runs ("fresh"): the
//! cloud deduplicates by command id, so a crash in that window costs at most a second,
//! `interrupted`, result for the same command, which the cloud ignores.
//! Events are held in memory, bounded, oldest dropped and counted.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::Notify;

use crate::cloud::wire::{CommandResult, Event, Status};
use crate::journal::Journal;

/// Most resent ids remembered for priority; more wait for the normal order.
const MAX_WANTED: usize = 1024;

pub struct Outbox {
    journal: Journal,
    inner: Mutex<Inner>,
    /// Woken whenever a result or event is pushed, so the driver can flush early.
    changed: Notify,
    max_events: usize,
    /// Results made since the start (the metrics).
    counts: ResultCounts,
}

#[derive(Default)]
struct Inner {
    in_flight: HashSet<String>,
    /// Results the cloud is missing (it resent their command): sent first.
    wanted: Vec<String>,
    spilled: VecDeque<CommandResult>,
    /// Results whose journal commit is under way; taken like spilled ones meanwhile.
    fresh: VecDeque<CommandResult>,
    events: VecDeque<Event>,
    /// Events dropped at the bound since the last report.
    events_dropped: u64,
}

/// Results and events taken for one request; hand it back to [`Outbox::settle`].
#[derive(Debug, Default)]
pub struct Batch {
    pub results: Vec<CommandResult>,
    pub events: Vec<Event>,
}

impl Outbox {
    pub fn new(journal: Journal, max_events: usize) -> Outbox {
        Outbox {
            journal,
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
            max_events: max_events.max(1),
            counts: ResultCounts::default(),
        }
    }

    pub fn result_counts(&self) -> &ResultCounts {
        &self.counts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a finished result durably; from then on it is owed until acked.
    /// It may be sent before the commit ends (see `fresh`); this returns after it.
    pub async fn push_result(self: &Arc<Self>, result: CommandResult) {
        self.begin_result(result).await;
    }

    /// [`Outbox::push_result`] in two steps: the record is queued in the journal and the
    /// result is available to requests when this returns; the future it gives resolves
    /// when the record is committed. Whatever the caller asks of the journal next (the
    /// next command's `sent` mark, an ack) is applied after the record, in the same commit
    /// or a later one.
    pub fn begin_result(
        self: &Arc<Self>,
        result: CommandResult,
    ) -> impl Future<Output = ()> + Send + 'static {
        self.counts.record(result.status, result.duration_ms);
        // Queued before it is visible: an ack of it reaches the journal after the record.
        let recorded = self.journal.record_result(result.clone());
        let id = result.command_id.clone();
        self.lock().fresh.push_back(result);
        self.changed.notify_one();
        let outbox = self.clone();
        async move { outbox.settle_recorded(&id, recorded.await) }
    }

    fn settle_recorded(&self, id: &str, outcome: Result<(), crate::journal::JournalError>) {
        let mut inner = self.lock();
        let Some(at) = inner.fresh.iter().position(|r| r.command_id == id) else {
            // Acked already: the journal applied the ack after the record.
            return;
        };
        let Some(result) = inner.fresh.remove(at) else {
            return;
        };
        if let Err(e) = outcome {
            log::error!(command_id = result.command_id.as_str();
                "result kept in memory only, the journal refused it: {e}");
            inner.spilled.push_back(result);
            drop(inner);
            self.changed.notify_one();
        }
    }

    /// Queues an event, dropping the oldest at the bound.
    pub fn push_event(&self, event: Event) {
        let mut inner = self.lock();
        if inner.events.len() >= self.max_events {
            inner.events.pop_front();
            inner.events_dropped += 1;
        }
        inner.events.push_back(event);
        drop(inner);
        self.changed.notify_one();
    }

    /// Resolves when results or events were pushed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Takes up to `max_results` owed results not already in flight, oldest first, and up
    /// to `max_events` events (with a `dropped` notice first if events were lost).
    /// Called by one task (the driver) at a time.
    pub async fn take(&self, max_results: usize, max_events: usize) -> Batch {
        let (mut results, skip) = {
            let inner = self.lock();
            let memory: Vec<CommandResult> = inner
                .spilled
                .iter()
                .chain(inner.fresh.iter())
                .filter(|r| !inner.in_flight.contains(&r.command_id))
                .take(max_results)
                .cloned()
                .collect();
            let skip = inner
                .in_flight
                .iter()
                .cloned()
                .chain(memory.iter().map(|r| r.command_id.clone()))
                .collect::<Vec<_>>();
            (memory, skip)
        };
        let wanted = std::mem::take(&mut self.lock().wanted);
        let room = max_results - results.len();
        if room > 0 && self.journal.owed_count() > 0 {
            match self.journal.owed(wanted, skip, room).await {
                Ok(owed) => results.extend(owed),
                Err(e) => log::error!("cannot read owed results from the journal: {e}"),
            }
        }
        let mut inner = self.lock();
        for r in &results {
            inner.in_flight.insert(r.command_id.clone());
        }
        let mut events = Vec::new();
        if max_events > 0 && inner.events_dropped > 0 {
            events.push(Event {
                appliance: None,
                kind: "dropped".into(),
                payload: json!({ "events": inner.events_dropped }),
            });
            inner.events_dropped = 0;
        }
        let n = max_events
            .saturating_sub(events.len())
            .min(inner.events.len());
        events.extend(inner.events.drain(..n));
        Batch { results, events }
    }

    /// Ends a request: acked results are forgotten (durably, before they can be taken
    /// again), the others of the batch become eligible again. If `delivered` is false the
    /// batch's events are put back in front.
    pub async fn settle(&self, batch: Batch, acked: &[String], delivered: bool) {
        if !acked.is_empty()
            && let Err(e) = self.journal.ack(acked.to_vec()).await
        {
            // They stay owed and are sent again; the cloud deduplicates by command id.
            log::error!("cannot record acks in the journal: {e}");
        }
        let acked: HashSet<&str> = acked.iter().map(String::as_str).collect();
        let mut inner = self.lock();
        inner
            .spilled
            .retain(|r| !acked.contains(r.command_id.as_str()));
        inner
            .fresh
            .retain(|r| !acked.contains(r.command_id.as_str()));
        for r in &batch.results {
            inner.in_flight.remove(&r.command_id);
        }
        if !delivered {
            for event in batch.events.into_iter().rev() {
                if event.kind == "dropped" {
                    inner.events_dropped += event.payload["events"].as_u64().unwrap_or(0);
                } else if inner.events.len() >= self.max_events {
                    inner.events_dropped += 1;
                } else {
                    inner.events.push_front(event);
                }
            }
        }
    }

    /// Forgets one result the cloud refuses outright (quarantine).
    pub async fn quarantine(&self, command_id: &str) {
        if let Err(e) = self.journal.ack(vec![command_id.to_owned()]).await {
            log::error!(command_id = command_id; "cannot drop the refused result from the journal: {e}");
        }
        self.lock().spilled.retain(|r| r.command_id != command_id);
    }

    /// The cloud resent these commands: if their results are owed, send them next.
    pub fn want(&self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let room = MAX_WANTED.saturating_sub(inner.wanted.len());
        inner.wanted.extend(ids.into_iter().take(room));
        drop(inner);
        self.changed.notify_one();
    }

    /// Ids of results riding in a request now: the cloud may not have them yet, so a poll
    /// built meanwhile lists them as pending (else the cloud would think them lost).
    pub fn in_flight_ids(&self) -> Vec<String> {
        self.lock().in_flight.iter().cloned().collect()
    }

    /// Whether owed results wait that no request carries yet.
    pub fn results_waiting(&self) -> bool {
        let owed = self.journal.owed_count();
        let inner = self.lock();
        owed + inner.spilled.len() + inner.fresh.len() > inner.in_flight.len()
    }

    /// Results owed (not yet acked).
    pub fn owed(&self) -> usize {
        self.journal.owed_count() + self.lock().spilled.len()
    }
}

/// Upper bounds (seconds) of the command duration histogram's buckets: from a LAN round
/// trip to a command that waited minutes for its appliance.
pub const BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0,
];

pub const STATUSES: [Status; 8] = [
    Status::Ok,
    Status::Error,
    Status::Timeout,
    Status::Unreachable,
    Status::Expired,
    Status::Rejected,
    Status::Interrupted,
    Status::Partial,
];

/// Results made since the start, by status, and their durations (accepted to result).
#[derive(Debug, Default)]
pub struct ResultCounts {
    by_status: [AtomicU64; 8],
    buckets: [AtomicU64; 12],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

impl ResultCounts {
    pub fn by_status(&self) -> [u64; 8] {
        std::array::from_fn(|i| self.by_status[i].load(Ordering::Relaxed))
    }

    /// Cumulative, one per [`BUCKETS`] bound.
    pub fn buckets(&self) -> [u64; 12] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum_ms(&self) -> u64 {
        self.sum_ms.load(Ordering::Relaxed)
    }

    pub fn record(&self, status: Status, duration_ms: u64) {
        let i = STATUSES.iter().position(|s| *s == status).unwrap_or(0);
        self.by_status[i].fetch_add(1, Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)]
        let secs = duration_ms as f64 / 1000.0;
        for (b, bound) in self.buckets.iter().zip(BUCKETS) {
            if secs <= bound {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(duration_ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::wire::Status;
    use crate::journal::SyncMode;

    fn result(id: &str) -> CommandResult {
        CommandResult {
            command_id: id.into(),
            status: Status::Ok,
            payload: None,
            error: None,
            items: None,
            duration_ms: 1,
        }
    }

    fn event(n: u64) -> Event {
        Event {
            appliance: Some("a".into()),
            kind: "event".into(),
            payload: json!(n),
        }
    }

    fn outbox(tag: &str, max_events: usize) -> (Arc<Outbox>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "tether-outbox-{tag}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let (journal, _) = Journal::open(&dir, SyncMode::Normal, 1 << 30).unwrap();
        (Arc::new(Outbox::new(journal, max_events)), dir)
    }

    #[tokio::test]
    async fn in_flight_results_are_not_taken_twice_and_come_back_unless_acked() {
        let (o, dir) = outbox("flight", 10);
        o.push_result(result("c1")).await;
        o.push_result(result("c2")).await;
        let first = o.take(1, 0).await;
        assert_eq!(first.results[0].command_id, "c1");
        let second = o.take(10, 0).await;
        assert_eq!(second.results.len(), 1);
        assert_eq!(second.results[0].command_id, "c2");
        o.settle(first, &["c1".into()], true).await;
        o.settle(second, &[], false).await;
        assert_eq!(o.owed(), 1);
        assert_eq!(o.take(10, 0).await.results[0].command_id, "c2");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn events_are_bounded_dropped_oldest_and_the_loss_reported() {
        let (o, dir) = outbox("events", 3);
        for n in 0..5 {
            o.push_event(event(n));
        }
        let batch = o.take(0, 10).await;
        assert_eq!(batch.events[0].kind, "dropped");
        assert_eq!(batch.events[0].payload["events"], 2);
        let kept: Vec<_> = batch.events[1..]
            .iter()
            .map(|e| e.payload.clone())
            .collect();
        assert_eq!(kept, vec![json!(2), json!(3), json!(4)]);
        // A failed request puts them back, loss report included.
        o.settle(batch, &[], false).await;
        let again = o.take(0, 10).await;
        assert_eq!(again.events.len(), 4);
        assert_eq!(again.events[0].payload["events"], 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn quarantine_removes_one_result() {
        let (o, dir) = outbox("quarantine", 1);
        o.push_result(result("bad")).await;
        o.push_result(result("good")).await;
        o.quarantine("bad").await;
        assert_eq!(o.owed(), 1);
        assert_eq!(o.take(10, 0).await.results[0].command_id, "good");
        let _ = std::fs::remove_dir_all(dir);
    }
}
