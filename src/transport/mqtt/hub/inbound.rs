//! What appliances publish, read by each one's profile (`profile.rs`): answers (matched to
//! the command waiting for them), presence (online/offline), events, and the refusals and malformed messages reported
//! upstream. Everything an appliance can make the gateway report goes through its event
//! budget (`mqtt.max_event_rate`), so one device cannot flood the outbox.
//!
//! Called by connection tasks (`conn.rs`) for each PUBLISH and for a SUBSCRIBE outside the
//! appliance's topics, and by `detach` to publish a will.

use std::sync::atomic::Ordering;

use serde_json::json;
use tokio::time::Instant;

use super::Hub;
use crate::cloud::wire::Event;
use crate::transport::Outcome;
use crate::transport::mqtt::limits::{Bucket, Take};
use crate::transport::mqtt::profile::{Contract, Inbound};

impl Hub {
    /// An allowed or denied PUBLISH from appliance `id`, read by its profile; `false` when
    /// it was outside the appliance's topics.
    pub fn publish(&self, id: &str, topic_name: &str, payload: &[u8]) -> bool {
        self.seen(id);
        let Some(contract) = self.contract(id) else {
            return false; // removed from the configuration while its connection closes
        };
        match contract.classify(topic_name) {
            None => {
                self.deny(id, &format!("publish to {topic_name:?}"));
                return false;
            }
            Some(Inbound::Ignored) => {
                log::debug!(appliance = id; "dropped a publish to {topic_name:?} (not used by the gateway)");
            }
            Some(Inbound::Answer) => self.answer(id, &contract, topic_name, payload),
            Some(Inbound::Presence) => match contract.presence(payload) {
                Ok(online) => self.set_reported_offline(id, !online),
                Err(why) => self.malformed(id, why),
            },
            Some(Inbound::Event) => {
                if !self.admit_event(id) {
                    return true;
                }
                match contract.event(topic_name, payload) {
                    Ok(payload) => self.outbox.push_event(Event {
                        appliance: Some(id.to_owned()),
                        kind: "event".into(),
                        payload,
                    }),
                    Err(why) => self.report_malformed(id, &why),
                }
            }
        }
        true
    }

    /// Whether appliance `id` may raise one more event now (`mqtt.max_event_rate`). A
    /// refused one is counted; the first of a spell is logged, and when events flow again
    /// the cloud gets one `rate_limited` event with the number dropped.
    fn admit_event(&self, id: &str) -> bool {
        let rate = f64::from(self.event_rate.load(Ordering::Relaxed));
        let burst = rate * 2.0;
        let now = Instant::now();
        let (take, dropped) = {
            let mut slots = self.lock();
            let Some(slot) = slots.get_mut(id) else {
                return true;
            };
            let take = slot
                .events
                .get_or_insert_with(|| Bucket::full(burst, now))
                .take(rate, burst, now);
            match take {
                Take::Granted => (take, std::mem::take(&mut slot.events_dropped)),
                Take::Refused { .. } => {
                    slot.events_dropped += 1;
                    (take, 0)
                }
            }
        };
        match take {
            Take::Granted => {
                if dropped > 0 {
                    log::info!(appliance = id, dropped = dropped; "appliance back under mqtt.max_event_rate; {dropped} event(s) were dropped");
                    self.outbox.push_event(Event {
                        appliance: Some(id.to_owned()),
                        kind: "rate_limited".into(),
                        payload: json!({ "dropped": dropped }),
                    });
                }
                true
            }
            Take::Refused { first } => {
                let n = self
                    .stats
                    .events_rate_limited
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                if first {
                    log::warn!(appliance = id, count = n; "appliance exceeds mqtt.max_event_rate; dropping its events until it slows down");
                }
                false
            }
        }
    }

    /// An answer: matched to the command waiting for it by the id it carries, or, when the
    /// wire has none (or the answer is unreadable), to the one command waiting.
    fn answer(&self, id: &str, contract: &Contract, topic_name: &str, payload: &[u8]) {
        let answer = contract.answer(topic_name, payload);
        let waiter = {
            let mut slots = self.lock();
            let slot = slots.get_mut(id);
            match (slot, &answer.key) {
                (Some(s), Some(key)) => s.waiting.remove(key),
                // Nothing on the wire says which: the router sends an appliance one command
                // at a time, so it is the one waiting, if one is. (Where answers name their
                // command, one that does not is only dropped: it may be another message.)
                (Some(s), None) if s.waiting.len() == 1 && !contract.answers_carry_ids() => {
                    s.waiting.drain().next().map(|(_, tx)| tx)
                }
                _ => None,
            }
        };
        let outcome = match answer.outcome {
            Ok(outcome) => outcome,
            Err(why) => {
                self.malformed(id, &why);
                Outcome::Error(format!("the appliance's answer could not be read: {why}"))
            }
        };
        let Some(tx) = waiter else {
            if !contract.answers_carry_ids() {
                // A change the device reports on its own (a button pressed): an event.
                if self.admit_event(id)
                    && let Outcome::Ok(Some(data)) = outcome
                {
                    self.outbox.push_event(Event {
                        appliance: Some(id.to_owned()),
                        kind: "event".into(),
                        payload: json!({ "topic": topic_name, "data": data }),
                    });
                }
                return;
            }
            if answer.key.is_none() {
                return; // unreadable, and counted as malformed above
            }
            let n = self.stats.unknown_results.fetch_add(1, Ordering::Relaxed) + 1;
            // Counted always; logged within the appliance's event budget.
            if self.admit_event(id) {
                let key = answer.key.as_deref().unwrap_or_default();
                log::warn!(appliance = id, command_id = key, count = n;
                    "result for a command that is not waiting (late, repeated or unknown); dropped");
            }
            return;
        };
        let _ = tx.send(outcome);
    }

    fn set_reported_offline(&self, id: &str, offline: bool) {
        let changed = match self.lock().get_mut(id) {
            Some(slot) if slot.reported_offline != offline => {
                slot.reported_offline = offline;
                slot.since = Some(std::time::SystemTime::now());
                if !offline {
                    // Commands waiting for it may go now.
                    slot.ready.notify_waiters();
                }
                slot.conn.is_some()
            }
            _ => false,
        };
        if changed && self.admit_event(id) {
            self.presence(id, if offline { "offline" } else { "online" });
        }
    }

    /// An access-control refusal: counted, logged and reported upstream.
    pub fn deny(&self, id: &str, what: &str) {
        let n = self.stats.denied.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.admit_event(id) {
            return;
        }
        log::warn!(appliance = id, count = n; "denied {what}: outside the appliance's own topics");
        self.outbox.push_event(Event {
            appliance: Some(id.to_owned()),
            kind: "denied".into(),
            payload: json!({ "what": what }),
        });
    }

    pub fn malformed(&self, id: &str, what: &str) {
        if self.admit_event(id) {
            self.report_malformed(id, what);
        } else {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `malformed` once the event budget was already charged.
    fn report_malformed(&self, id: &str, what: &str) {
        let n = self.stats.malformed.fetch_add(1, Ordering::Relaxed) + 1;
        log::warn!(appliance = id, count = n; "malformed message: {what}");
        self.outbox.push_event(Event {
            appliance: Some(id.to_owned()),
            kind: "malformed".into(),
            payload: json!({ "error": what }),
        });
    }
}
