//! What the gateway owes the cloud: finished results until acked, and appliance events.
//!
//! The router pushes results, the MQTT endpoint pushes events, and the uplink driver takes
//! batches to send and settles them with the cloud's acks. A result taken for a request is
//! marked in flight so a concurrent request (a poll and an early flush share the
//! connection) never carries it twice; if the request fails or the cloud does not ack it,
//! it becomes eligible again. Results are kept in memory here; the durable journal takes
//! this role behind the same methods.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use serde_json::json;
use tokio::sync::Notify;

use crate::cloud::wire::{CommandResult, Event};

/// Results and events owed to the cloud.
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    /// Woken whenever a result or event is pushed, so the driver can schedule an early flush.
    changed: Notify,
    max_events: usize,
}

#[derive(Debug, Default)]
struct Inner {
    results: VecDeque<Entry>,
    events: VecDeque<Event>,
    /// Events dropped at the bound since the last report.
    events_dropped: u64,
}

#[derive(Debug)]
struct Entry {
    result: CommandResult,
    in_flight: bool,
}

/// Results and events taken for one request; hand it back to [`Outbox::settle`].
#[derive(Debug, Default)]
pub struct Batch {
    pub results: Vec<CommandResult>,
    pub events: Vec<Event>,
}

impl Outbox {
    pub fn new(max_events: usize) -> Outbox {
        Outbox {
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
            max_events: max_events.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a finished result; it is owed until acked.
    pub fn push_result(&self, result: CommandResult) {
        self.lock().results.push_back(Entry {
            result,
            in_flight: false,
        });
        self.changed.notify_one();
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

    /// Takes up to `max_results` owed results not already in flight, and up to
    /// `max_events` events (with a `dropped` notice first if events were lost).
    pub fn take(&self, max_results: usize, max_events: usize) -> Batch {
        let mut inner = self.lock();
        let results = inner
            .results
            .iter_mut()
            .filter(|e| !e.in_flight)
            .take(max_results)
            .map(|e| {
                e.in_flight = true;
                e.result.clone()
            })
            .collect();
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

    /// Ends a request: acked results are forgotten, the others of the batch become
    /// eligible again. If `delivered` is false the batch's events are put back in front.
    pub fn settle(&self, batch: Batch, acked: &[String], delivered: bool) {
        let acked: HashSet<&str> = acked.iter().map(String::as_str).collect();
        let taken: HashSet<&str> = batch
            .results
            .iter()
            .map(|r| r.command_id.as_str())
            .collect();
        let mut inner = self.lock();
        inner.results.retain_mut(|e| {
            if acked.contains(e.result.command_id.as_str()) {
                return false;
            }
            if taken.contains(e.result.command_id.as_str()) {
                e.in_flight = false;
            }
            true
        });
        if !delivered {
            for event in batch.events.into_iter().rev() {
                if event.kind == "dropped" {
                    let n = event.payload["events"].as_u64().unwrap_or(0);
                    inner.events_dropped += n;
                    continue;
                }
                if inner.events.len() >= self.max_events {
                    inner.events_dropped += 1;
                    continue;
                }
                inner.events.push_front(event);
            }
        }
    }

    /// Forgets one result the cloud refuses outright (quarantine), returning it.
    pub fn quarantine(&self, command_id: &str) -> Option<CommandResult> {
        let mut inner = self.lock();
        let pos = inner
            .results
            .iter()
            .position(|e| e.result.command_id == command_id)?;
        inner.results.remove(pos).map(|e| e.result)
    }

    /// Results owed (not yet acked).
    pub fn owed(&self) -> usize {
        self.lock().results.len()
    }

    /// Whether a result for `command_id` is still owed.
    pub fn holds(&self, command_id: &str) -> bool {
        self.lock()
            .results
            .iter()
            .any(|e| e.result.command_id == command_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::wire::Status;

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

    #[test]
    fn in_flight_results_are_not_taken_twice_and_come_back_unless_acked() {
        let o = Outbox::new(10);
        o.push_result(result("c1"));
        o.push_result(result("c2"));
        let first = o.take(1, 0);
        assert_eq!(first.results[0].command_id, "c1");
        let second = o.take(10, 0);
        assert_eq!(second.results.len(), 1);
        assert_eq!(second.results[0].command_id, "c2");
        o.settle(first, &["c1".into()], true);
        o.settle(second, &[], false);
        assert_eq!(o.owed(), 1);
        assert!(o.holds("c2"));
        assert_eq!(o.take(10, 0).results[0].command_id, "c2");
    }

    #[test]
    fn events_are_bounded_dropped_oldest_and_the_loss_reported() {
        let o = Outbox::new(3);
        for n in 0..5 {
            o.push_event(event(n));
        }
        let batch = o.take(0, 10);
        assert_eq!(batch.events[0].kind, "dropped");
        assert_eq!(batch.events[0].payload["events"], 2);
        let kept: Vec<_> = batch.events[1..]
            .iter()
            .map(|e| e.payload.clone())
            .collect();
        assert_eq!(kept, vec![json!(2), json!(3), json!(4)]);
        // A failed request puts them back, loss report included.
        o.settle(batch, &[], false);
        let again = o.take(0, 10);
        assert_eq!(again.events.len(), 4);
        assert_eq!(again.events[0].payload["events"], 2);
    }

    #[test]
    fn quarantine_removes_one_result() {
        let o = Outbox::new(1);
        o.push_result(result("bad"));
        o.push_result(result("good"));
        assert!(o.quarantine("bad").is_some());
        assert!(o.quarantine("bad").is_none());
        assert_eq!(o.owed(), 1);
    }
}
