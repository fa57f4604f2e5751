//! What appliances publish: results (matched to the command waiting for them), status
//! (`online`/`offline`), events, and the refusals and malformed messages reported
//! upstream. Everything an appliance can make the gateway report goes through its event
//! budget (`mqtt.max_event_rate`), so one device cannot flood the outbox.
//!
//! Called by connection tasks (`conn.rs`) for each PUBLISH and for a SUBSCRIBE outside the
//! appliance's topics, and by `detach` to publish a will.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::Hub;
use crate::cloud::wire::{Event, MAX_COMMAND_ID, MAX_PAYLOAD_DEPTH, nesting_depth};
use crate::transport::Outcome;
use crate::transport::mqtt::limits::{Bucket, Take};
use crate::transport::mqtt::topic::{self, ResultMessage};

impl Hub {
    /// An allowed or denied PUBLISH from appliance `id`.
    pub fn publish(&self, id: &str, topic_name: &str, payload: &[u8]) {
        self.seen(id);
        match topic::classify_publish(&self.prefix, id, topic_name) {
            None => self.deny(id, &format!("publish to {topic_name:?}")),
            Some(topic::Inbound::Result) => self.result(id, payload),
            Some(topic::Inbound::Status) => match payload {
                b"online" => self.set_reported_offline(id, false),
                b"offline" => self.set_reported_offline(id, true),
                _ => self.malformed(id, "status must be \"online\" or \"offline\""),
            },
            Some(topic::Inbound::Events) => {
                if !self.admit_event(id) {
                    return;
                }
                match serde_json::from_slice::<Value>(payload) {
                    Ok(payload) if nesting_depth(&payload) > MAX_PAYLOAD_DEPTH => self
                        .report_malformed(
                            id,
                            &format!("event nests deeper than {MAX_PAYLOAD_DEPTH} levels"),
                        ),
                    Ok(payload) => self.outbox.push_event(Event {
                        appliance: Some(id.to_owned()),
                        kind: "event".into(),
                        payload,
                    }),
                    Err(e) => self.report_malformed(id, &format!("event is not JSON: {e}")),
                }
            }
        }
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

    fn result(&self, id: &str, payload: &[u8]) {
        let msg: ResultMessage = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => return self.malformed(id, &format!("result is not valid: {e}")),
        };
        if msg.id.len() > MAX_COMMAND_ID {
            return self.malformed(id, "result id is longer than any command id");
        }
        let msg = match msg.payload.as_ref().map(nesting_depth) {
            Some(depth) if depth > MAX_PAYLOAD_DEPTH => ResultMessage {
                ok: false,
                payload: None,
                error: Some(format!(
                    "appliance answered with a payload nested {depth} levels deep; the limit is {MAX_PAYLOAD_DEPTH}"
                )),
                ..msg
            },
            _ => msg,
        };
        let waiter = self
            .lock()
            .get_mut(id)
            .and_then(|s| s.waiting.remove(&msg.id));
        let Some(tx) = waiter else {
            let n = self.stats.unknown_results.fetch_add(1, Ordering::Relaxed) + 1;
            // Counted always; logged within the appliance's event budget.
            if self.admit_event(id) {
                log::warn!(appliance = id, command_id = msg.id.as_str(), count = n;
                    "result for a command that is not waiting (late, repeated or unknown); dropped");
            }
            return;
        };
        let outcome = if msg.ok {
            Outcome::Ok(msg.payload)
        } else {
            Outcome::Error(
                msg.error
                    .unwrap_or_else(|| "appliance reported failure".into()),
            )
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
