//! Sending one command to an appliance and waiting for its answer: claim the appliance's
//! connection (waiting out the start-up grace for one not yet ready, or, for an appliance
//! whose commands wait while it is away, until it is back or the command's hold runs out),
//! queue the PUBLISH its profile makes of the command on it, and wait, up to the command's timeout, for the result
//! `inbound.rs` matches to it.
//!
//! Called by the router's workers through `MqttHandle::execute`.

use std::sync::atomic::Ordering;

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::Publish;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Hub, Outgoing, ToConn};
use crate::config::Offline;
use crate::transport::{Dispatch, Outcome, Payload};

const EXPIRED_WAITING: &str = "TTL ran out while waiting for the appliance to connect; not sent";

impl Hub {
    /// Sends one command to appliance `id` and waits for its result.
    pub async fn execute(&self, id: &str, dispatch: Dispatch) -> Outcome {
        let payload = match &dispatch.payload {
            Payload::Json(v) => v,
            Payload::Raw(_) => {
                return Outcome::Error(
                    "not sent: an MQTT appliance takes JSON payloads; raw bytes (payload_raw) are for BLE appliances".into(),
                );
            }
        };
        let Some(contract) = self.contract(id) else {
            return Outcome::Unreachable("not an MQTT appliance".into());
        };
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (name, body, key) = match contract.command(&dispatch.command_id, seq, payload) {
            Ok(c) => c,
            Err(why) => return Outcome::Error(format!("not sent: {why}")),
        };
        if body.len() > self.max_payload {
            return Outcome::Error(format!(
                "command does not fit the MQTT payload limit of {} bytes",
                self.max_payload
            ));
        }
        let (tx, rx) = oneshot::channel();
        let started = Instant::now();
        let mut tx = Some(tx);
        let Some(ready) = self.ready(id) else {
            return Outcome::Unreachable("not an MQTT appliance".into());
        };
        let conn = loop {
            let ready = ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let hold = &dispatch.hold;
            let waiting = match self.claim(id, &key, &mut tx, hold.offline) {
                // Woken just as the TTL ran out: not sent after all.
                Ok(_) if dispatch.ttl_passed(Instant::now()) => {
                    self.forget(id, &key);
                    hold.waiting(false);
                    return Outcome::Expired(EXPIRED_WAITING.into());
                }
                Ok(conn) => {
                    if hold.is_waiting() {
                        log::info!(command_id = dispatch.command_id.as_str(), appliance = id, transport = "mqtt";
                            "appliance is back; sending the command that waited for it");
                    }
                    hold.waiting(false);
                    break conn;
                }
                Err(Claim::Unreachable(why)) => why,
                Err(Claim::Away(why)) => {
                    let now = Instant::now();
                    if now >= hold.until {
                        hold.waiting(false);
                        let why = format!("the appliance was away ({why})");
                        return hold.gave_up(dispatch.ttl_passed(now), &why);
                    }
                    if !hold.is_waiting() {
                        log::info!(command_id = dispatch.command_id.as_str(), appliance = id, transport = "mqtt";
                            "{why}: the command waits for it");
                    }
                    hold.waiting(true);
                    tokio::select! {
                        _ = ready => continue,
                        _ = tokio::time::sleep_until(hold.until) => continue,
                    }
                }
                Err(Claim::NotReady(why)) => {
                    // Waiting out the start-up grace never carries a command past its TTL.
                    let mut until = self.grace_until.min(started + dispatch.timeout);
                    if let Some(ttl) = dispatch.deadline {
                        until = until.min(ttl);
                    }
                    let now = Instant::now();
                    if dispatch.ttl_passed(now) {
                        return Outcome::Expired(EXPIRED_WAITING.into());
                    }
                    if now >= until {
                        return Outcome::Unreachable(why.into());
                    }
                    tokio::select! {
                        _ = ready => continue,
                        _ = tokio::time::sleep_until(until) => continue,
                    }
                }
            };
            return Outcome::Unreachable(waiting.into());
        };
        let (conn_tx, qos) = conn;
        dispatch.gate.pass().await;
        let publish = Publish::new(name, qos, body);
        if let Err(e) = conn_tx.try_send(ToConn::Publish(Box::new(Outgoing {
            publish,
            expires: dispatch.deadline,
        }))) {
            self.forget(id, &key);
            return match e {
                mpsc::error::TrySendError::Full(_) => {
                    Outcome::Unreachable("appliance is not reading its connection".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    Outcome::Unreachable("appliance disconnected".into())
                }
            };
        }
        match tokio::time::timeout(dispatch.timeout, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Outcome::Interrupted("endpoint shut down before the answer".into()),
            Err(_) => {
                self.forget(id, &key);
                Outcome::Timeout
            }
        }
    }

    /// Registers a command as waiting on appliance `id`, under the `key` its answer is
    /// matched by, if the appliance can take a command now.
    fn claim(
        &self,
        id: &str,
        key: &str,
        tx: &mut Option<oneshot::Sender<Outcome>>,
        offline: Offline,
    ) -> Result<(mpsc::Sender<ToConn>, QoS), Claim> {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(id) else {
            return Err(Claim::Unreachable("not an MQTT appliance"));
        };
        // MQTT's rule for a persistent session: QoS 1 messages wait for the client.
        let holds = match offline {
            Offline::Queue => true,
            Offline::Fail => false,
            // At an external broker, every appliance has a session of its own there.
            Offline::Auto => {
                self.external || (slot.persistent && slot.subscription == Some(QoS::AtLeastOnce))
            }
        };
        let Some(conn) = &slot.conn else {
            let why = "appliance is not connected";
            return Err(if holds {
                Claim::Away(why)
            } else {
                Claim::NotReady(why)
            });
        };
        if slot.reported_offline {
            let why = "appliance reported offline";
            return Err(if holds {
                Claim::Away(why)
            } else {
                Claim::Unreachable(why)
            });
        }
        let Some(qos) = slot.subscription else {
            let why = "appliance is not subscribed to its cmd topic";
            return Err(if holds {
                Claim::Away(why)
            } else {
                Claim::NotReady(why)
            });
        };
        let conn_tx = conn.tx.clone();
        if let Some(tx) = tx.take() {
            slot.waiting.insert(key.to_owned(), tx);
        }
        Ok((conn_tx, qos))
    }

    fn forget(&self, id: &str, key: &str) {
        if let Some(slot) = self.lock().get_mut(id) {
            slot.waiting.remove(key);
        }
    }
}

enum Claim {
    /// Will not change by waiting.
    Unreachable(&'static str),
    /// May change once the appliance (re)connects and subscribes.
    NotReady(&'static str),
    /// Away, and its commands wait for it (`Hold`).
    Away(&'static str),
}
