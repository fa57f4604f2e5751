//! Simulated appliances: real MQTT 3.1.1 clients (rumqttc) that answer every command at
//! once and note, on the bench's clock, when each command arrived and when its answer
//! was handed to the client.
//!
//! `TCP_NODELAY` is set on every client: without it the answer waits behind the PUBACK
//! the client just sent (Nagle's algorithm meeting the daemon's delayed ACK, ~40 ms),
//! which would be measured as gateway latency although no real device stack behaves so.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::procs::{appliance_id, password};

/// Appliances connecting at once: keeps the daemon's accept backlog from overflowing when
/// a thousand connect.
const CONNECT_BATCH: usize = 100;

/// One command as an appliance saw it.
pub struct Seen {
    pub command_id: String,
    /// When the PUBLISH carrying it came out of the client.
    pub got: Instant,
    /// When the answer was queued to the client (it goes out on the event loop's next
    /// turn, immediately).
    pub answered: Instant,
}

/// A set of connected appliances `a{from}..a{to}`; dropping it disconnects them.
pub struct Fleet {
    tasks: Vec<JoinHandle<()>>,
    tx: mpsc::UnboundedSender<Seen>,
    pub seen: mpsc::UnboundedReceiver<Seen>,
}

impl Fleet {
    pub fn new() -> Fleet {
        let (tx, seen) = mpsc::unbounded_channel();
        Fleet {
            tasks: Vec::new(),
            tx,
            seen,
        }
    }

    /// Connects appliances until `count` are connected (ids continue from the current
    /// count) and returns once every one has its SUBACK.
    pub async fn grow(
        &mut self,
        mqtt: SocketAddr,
        count: usize,
        keep_alive: Duration,
    ) -> Result<(), String> {
        while self.tasks.len() < count {
            let start = self.tasks.len();
            let end = count.min(start + CONNECT_BATCH);
            let mut ready = Vec::with_capacity(end - start);
            for i in start..end {
                let (task, rx) = spawn_one(mqtt, &appliance_id(i), keep_alive, self.tx.clone());
                self.tasks.push(task);
                ready.push((i, rx));
            }
            for (i, rx) in ready {
                match tokio::time::timeout(Duration::from_secs(30), rx).await {
                    Ok(Ok(())) => {}
                    _ => return Err(format!("appliance {} did not connect", appliance_id(i))),
                }
            }
        }
        Ok(())
    }

    /// Waits for the appliance's record of command `id`, skipping older records.
    pub async fn wait_seen(&mut self, id: &str) -> Result<Seen, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(s)) if s.command_id == id => return Ok(s),
                Ok(Some(_)) => continue,
                _ => return Err(format!("no appliance received command {id}")),
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Dropping a client's event loop closes its socket: the daemon sees the
        // disconnection at once.
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn spawn_one(
    mqtt: SocketAddr,
    id: &str,
    keep_alive: Duration,
    seen: mpsc::UnboundedSender<Seen>,
) -> (JoinHandle<()>, oneshot::Receiver<()>) {
    let mut opts = MqttOptions::new(id, mqtt.ip().to_string(), mqtt.port());
    opts.set_credentials(id, password(id));
    opts.set_keep_alive(keep_alive);
    let (client, mut events) = AsyncClient::new(opts, 64);
    events.network_options.set_tcp_nodelay(true);
    let (ready_tx, ready_rx) = oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let cmd_topic = format!("tether/{id}/cmd");
    let result_topic = format!("tether/{id}/result");
    let task = tokio::spawn(async move {
        // Bounded: an appliance that cannot stay connected gives up after a while
        // instead of spinning for the rest of the run.
        let mut failures = 0u32;
        while failures < 100 {
            let event = match events.poll().await {
                Ok(e) => e,
                Err(_) => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    let _ = client.try_subscribe(cmd_topic.as_str(), QoS::AtLeastOnce);
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let got = Instant::now();
                    let Ok(cmd) = serde_json::from_slice::<Value>(&p.payload) else {
                        continue;
                    };
                    let command_id = cmd["id"].as_str().unwrap_or_default().to_owned();
                    let answer = format!(
                        r#"{{"id":{},"ok":true,"payload":{{"echo":true}}}}"#,
                        cmd["id"]
                    );
                    let _ =
                        client.try_publish(result_topic.as_str(), QoS::AtLeastOnce, false, answer);
                    let answered = Instant::now();
                    let _ = seen.send(Seen {
                        command_id,
                        got,
                        answered,
                    });
                }
                _ => {}
            }
        }
    });
    (task, ready_rx)
}
