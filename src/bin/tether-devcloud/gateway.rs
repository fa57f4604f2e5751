//! One gateway's bookkeeping: its command queue, what was delivered and not yet
//! answered, the results and events it sent, and the `Notify`s its waiters sleep on.
//!
//! Everything here is synchronous and runs under the store's lock (see `state`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tether::cloud::proto::Encoding;
use tether::cloud::wire::{CommandResult, Event};
use tokio::sync::Notify;

use crate::breaks::{self, Break};

/// Events kept per gateway; older ones are dropped first.
const MAX_EVENTS: usize = 100_000;

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
pub struct Queued {
    pub id: String,
    pub body: Value,
    /// Its size as JSON, counted against an answer's [`MAX_ANSWER_BYTES`].
    bytes: usize,
}

/// Most command JSON one poll answer carries: a gateway refuses an answer over
/// `cloud.max_response_bytes` (4 MiB by default), and the commands of a refused answer
/// would be resent and refused again forever. The rest goes with the next poll.
pub const MAX_ANSWER_BYTES: usize = 3 << 20;

impl Queued {
    pub fn new(id: String, body: Value) -> Queued {
        let bytes = body.to_string().len();
        Queued { id, body, bytes }
    }

    /// Wraps a stored command; `None` if it lacks a string `id`.
    pub fn from_body(body: Value) -> Option<Queued> {
        let id = body.get("id")?.as_str()?.to_owned();
        Some(Queued::new(id, body))
    }
}

#[derive(Default)]
pub struct Gateway {
    pub queue: VecDeque<Queued>,
    /// Sent to the gateway, in delivery order. Entries whose result has arrived are
    /// pruned lazily (at the next poll) and ignored everywhere until then.
    pub delivered: Vec<Queued>,
    /// In first-receipt order; `result_index` maps ids into it.
    results: Vec<StoredResult>,
    result_index: HashMap<String, usize>,
    pub events: VecDeque<Event>,
    /// Bumped by every poll; a held poll whose generation is stale has been replaced by a
    /// newer one (typically the gateway reconnected) and must not take commands.
    pub poll_generation: u64,
    /// Woken when commands are enqueued or a newer poll supersedes the held one.
    pub commands_changed: Arc<Notify>,
    /// Woken when results are stored.
    pub results_changed: Arc<Notify>,
    /// Fault: act as if result storage were down (results are neither stored nor acked;
    /// their commands still count as answered, so they are not resent).
    pub ignore_results: bool,
    /// Ids answered while `ignore_results` was on.
    answered: HashSet<String>,
    /// What the last poll advertised.
    pub last_capacity: Option<u32>,
    /// What the last poll listed as waiting for appliances that are away.
    pub last_waiting: Vec<String>,
    /// The encoding of the gateway's last request, and how many came in each.
    pub last_encoding: Option<Encoding>,
    pub requests_by_encoding: HashMap<Encoding, u64>,
}

impl Gateway {
    pub fn results(&self) -> &[StoredResult] {
        &self.results
    }

    pub fn result(&self, id: &str) -> Option<&StoredResult> {
        self.result_index.get(id).map(|&i| &self.results[i])
    }

    /// Stores results (first copy wins) and returns the ids to acknowledge.
    pub fn store_results(&mut self, results: Vec<CommandResult>, now_ms: u64) -> Vec<String> {
        if self.ignore_results {
            self.answered
                .extend(results.into_iter().map(|r| r.command_id));
            return Vec::new();
        }
        let mut acked = Vec::with_capacity(results.len());
        let mut seen = HashSet::with_capacity(results.len());
        for result in results {
            let id = result.command_id.clone();
            if breaks::on(Break::AckUnstored) {
                acked.push(id);
                continue;
            }
            match self.result_index.get(&id) {
                Some(&i) if breaks::on(Break::KeepLast) => self.results[i].result = result,
                Some(_) if breaks::on(Break::StoreDuplicates) => self.results.push(StoredResult {
                    result,
                    deliveries: 1,
                    received_ms: now_ms,
                }),
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
        if breaks::on(Break::NoAck) {
            acked.clear();
        }
        acked
    }

    /// Turns the `ignore_results` fault on or off.
    pub fn set_ignore_results(&mut self, on: bool) {
        self.ignore_results = on;
        if !on {
            self.answered.clear();
        }
    }

    pub fn push_events(&mut self, events: Vec<Event>) {
        self.events.extend(events);
        let excess = self.events.len().saturating_sub(MAX_EVENTS);
        self.events.drain(..excess);
    }

    /// Puts back at the front of the queue, in their original order, the delivered
    /// commands the gateway no longer knows about: no result and not in `pending`. That is
    /// how a response lost with its connection gets resent. Returns whether any moved.
    pub fn requeue_lost(&mut self, pending: &[String]) -> bool {
        if breaks::on(Break::NoResend) {
            return false;
        }
        let mut pending: HashSet<&str> = pending.iter().map(String::as_str).collect();
        if breaks::on(Break::ResendPending) {
            pending.clear();
        }
        let mut lost = Vec::new();
        let mut kept = Vec::new();
        for q in self.delivered.drain(..) {
            if self.result_index.contains_key(&q.id) || self.answered.contains(&q.id) {
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

    /// Moves up to `capacity` commands, and at most [`MAX_ANSWER_BYTES`] of them (at
    /// least one), from the queue to `delivered`.
    pub fn take(&mut self, capacity: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < capacity {
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            // A result can overtake a requeued copy (it was in flight on /results).
            if self.result_index.contains_key(&q.id) {
                continue;
            }
            bytes += q.bytes;
            if !out.is_empty() && bytes > MAX_ANSWER_BYTES && !breaks::on(Break::UnboundedAnswer) {
                self.queue.push_front(q);
                break;
            }
            out.push(q.body.clone());
            self.delivered.push(q);
        }
        out
    }

    pub fn queued_ids(&self) -> Vec<String> {
        self.queue
            .iter()
            .filter(|q| self.is_live(q))
            .map(|q| q.id.clone())
            .collect()
    }

    pub fn delivered_ids(&self) -> Vec<String> {
        self.delivered
            .iter()
            .filter(|q| self.is_live(q))
            .map(|q| q.id.clone())
            .collect()
    }

    /// Adds a result loaded from the state file; the first copy of an id wins.
    pub fn restore_result(&mut self, stored: StoredResult) {
        let id = stored.result.command_id.clone();
        if !self.result_index.contains_key(&id) {
            self.result_index.insert(id, self.results.len());
            self.results.push(stored);
        }
    }

    /// Whether the command still matters (no result yet), i.e. belongs in a snapshot.
    pub fn is_live(&self, q: &Queued) -> bool {
        !self.result_index.contains_key(&q.id) && !self.answered.contains(&q.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tether::cloud::wire::Status;

    fn gateway_with(ids: &[&str]) -> Gateway {
        let mut g = Gateway::default();
        for id in ids {
            let body = json!({ "id": id, "target": "lamp" });
            g.queue.extend(Queued::from_body(body));
        }
        g
    }

    fn ok(id: &str) -> CommandResult {
        CommandResult {
            command_id: id.to_owned(),
            status: Status::Ok,
            payload: None,
            error: None,
            items: None,
            duration_ms: 0,
        }
    }

    #[test]
    fn lost_deliveries_go_back_to_the_front_in_order() {
        let mut g = gateway_with(&["c1", "c2", "c3", "c4"]);
        assert_eq!(g.take(3).len(), 3);
        g.store_results(vec![ok("c2")], 0);
        // c1 is still being worked on; c3 was lost; c2 is done.
        assert!(g.requeue_lost(&["c1".to_owned()]));
        assert_eq!(g.queued_ids(), ["c3", "c4"]);
        assert_eq!(g.delivered_ids(), ["c1"]);
        assert!(!g.requeue_lost(&["c1".to_owned()]));
    }

    #[test]
    fn first_result_wins_and_deliveries_are_counted() {
        let mut g = gateway_with(&["c1"]);
        g.take(1);
        let mut second = ok("c1");
        second.status = Status::Error;
        assert_eq!(g.store_results(vec![ok("c1"), second], 5), ["c1"]);
        let stored = g
            .result("c1")
            .map(|r| (r.result.status, r.deliveries, r.received_ms));
        assert_eq!(stored, Some((Status::Ok, 2, 5)));
        assert!(g.delivered_ids().is_empty());
    }

    #[test]
    fn take_skips_commands_that_already_have_a_result() {
        let mut g = gateway_with(&["c1", "c2"]);
        g.store_results(vec![ok("c1")], 0);
        let taken = g.take(5);
        assert_eq!(taken, [json!({ "id": "c2", "target": "lamp" })]);
    }

    #[test]
    fn an_answer_carries_at_most_its_byte_budget_and_at_least_one_command() {
        let mut g = Gateway::default();
        let big = "x".repeat(MAX_ANSWER_BYTES / 3);
        for n in 0..5 {
            let body = json!({ "id": format!("c{n}"), "target": "lamp", "payload": big });
            g.queue.extend(Queued::from_body(body));
        }
        assert_eq!(g.take(64).len(), 2);
        assert_eq!(g.queued_ids(), ["c2", "c3", "c4"]);
        let huge = "x".repeat(MAX_ANSWER_BYTES * 2);
        let mut lone = Gateway::default();
        lone.queue.extend(Queued::from_body(
            json!({ "id": "c9", "target": "lamp", "payload": huge }),
        ));
        assert_eq!(lone.take(64).len(), 1);
    }

    #[test]
    fn events_are_bounded() {
        let mut g = Gateway::default();
        let event = |n: usize| Event {
            appliance: None,
            kind: "event".to_owned(),
            payload: json!(n),
        };
        g.push_events((0..MAX_EVENTS + 10).map(event).collect());
        assert_eq!(g.events.len(), MAX_EVENTS);
        assert_eq!(g.events.front().map(|e| e.payload.clone()), Some(json!(10)));
    }
}
