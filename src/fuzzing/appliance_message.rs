//! The `appliance_message` target: the bytes as what an appliance sends, over MQTT (to the
//! hub directly) and BLE (to the codec).

use std::pin::pin;
use std::time::Duration;

use futures_util::FutureExt;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::LastWill;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::harness::{APPLIANCE, Harness, with_harness};
use crate::cloud::wire::{CommandResult, ItemResult, Status};
use crate::transport::ble::codec::{self, Encoding};
use crate::transport::mqtt::hub::ToConn;
use crate::transport::{Dispatch, Hold, Outcome, Payload, SendGate};

/// An appliance's message body, as the hub decodes it: a PUBLISH payload on its `result`
/// topic (answering command `c1`, which is waiting for it), `events` and `status` topics,
/// and in its will; the bytes as a topic name; and a BLE appliance's answer in each
/// `encoding`. Every result that comes of it goes through the journal and back.
pub fn appliance_message(data: &[u8]) {
    with_harness(|h| h.enter("appliance_message", h.appliance_message(data)));
}

impl Harness {
    async fn appliance_message(&self, data: &[u8]) {
        let hub = &self.hub;
        let prefix = self.config.mqtt.topic_prefix.clone();
        let topic = |kind: &str| format!("{prefix}/{APPLIANCE}/{kind}");
        let (tx, mut rx) = mpsc::channel(64);
        let attached = hub.attach(APPLIANCE, false, false, tx, CancellationToken::new());
        hub.subscribed(APPLIANCE, Some(QoS::AtLeastOnce));
        let mut results = Vec::new();
        {
            // A command waiting for its answer, as a router worker leaves it.
            let dispatch = Dispatch {
                command_id: "c1".into(),
                payload: Payload::Json(json!({"power": "on"})),
                timeout: Duration::from_secs(10),
                deadline: None,
                gate: SendGate::open(),
                hold: Hold::fail(),
            };
            let mut execute = pin!(hub.execute(APPLIANCE, dispatch));
            if execute.as_mut().now_or_never().is_some() {
                panic!("harness: the command finished before the appliance answered");
            }
            if !matches!(rx.try_recv(), Ok(ToConn::Publish(..))) {
                panic!("harness: the command was not handed to the appliance's connection");
            }
            hub.publish(APPLIANCE, &topic("result"), data);
            if let Some(outcome) = execute.as_mut().now_or_never() {
                if outcome.status() == Status::Ok {
                    results.extend(results_of("c1", APPLIANCE, outcome));
                } else {
                    let _ = outcome.into_parts();
                }
            }
        }
        hub.publish(APPLIANCE, &topic("events"), data);
        hub.publish(APPLIANCE, &topic("status"), data);
        hub.publish(APPLIANCE, &String::from_utf8_lossy(data), b"{}");
        let will = LastWill::new(topic("status"), data.to_vec(), QoS::AtLeastOnce, false);
        hub.detach(APPLIANCE, attached.generation, Some(will));
        // The same bytes as the firmwares' messages, read by each profile.
        firmware_messages(data);
        // A BLE appliance's answer, in every encoding (`command.rs` makes it the outcome).
        for encoding in [
            Encoding::Json,
            Encoding::Utf8,
            Encoding::Hex,
            Encoding::Base64,
        ] {
            let outcome = match codec::decode(data, encoding) {
                Ok(payload) => Outcome::Ok(Some(payload)),
                Err(e) => Outcome::Error(e.to_string()),
            };
            // Hex and base64 answers are plain ASCII strings: only the other two can hold
            // something the journal might not read back.
            if matches!(encoding, Encoding::Json | Encoding::Utf8) && outcome.status() == Status::Ok
            {
                let id = format!("ble-{}", encoding.as_str());
                results.extend(results_of(&id, "thermo-1", outcome));
            } else {
                let _ = outcome.into_parts();
            }
        }
        // The other way: the same bytes as a command's payload, made into what is written.
        if let Ok(payload) = serde_json::from_slice::<Value>(data) {
            for encoding in [
                Encoding::Json,
                Encoding::Utf8,
                Encoding::Hex,
                Encoding::Base64,
            ] {
                let _ = codec::encode(&payload, encoding).map_err(|e| e.to_string());
            }
        }
        // Every answer that came of it must survive the journal: written, read back, acked.
        let journalled = !results.is_empty();
        futures_util::future::join_all(results.into_iter().map(|r| self.outbox.push_result(r)))
            .await;
        self.deliver_everything().await;
        if journalled {
            self.forget_commands();
        }
    }
}

/// Every profile's reading of `data` as an answer, an event, a presence message, a topic
/// and a topic filter, and, if it is JSON, as a command's payload.
fn firmware_messages(data: &[u8]) {
    use crate::transport::mqtt::profile::Contract;
    static CONTRACTS: std::sync::OnceLock<Vec<Contract>> = std::sync::OnceLock::new();
    let contracts = CONTRACTS.get_or_init(|| {
        let text = "[[appliance]]\nid = \"s\"\ntransport = \"mqtt\"\npassword = \"p\"\nprofile = \"shelly-rpc\"\n\
                    [[appliance]]\nid = \"t\"\ntransport = \"mqtt\"\npassword = \"p\"\nprofile = \"tasmota\"\n\
                    [[appliance]]\nid = \"o\"\ntransport = \"mqtt\"\npassword = \"p\"\n";
        let entries = crate::config::Config::parse_entries(text, &Default::default(), &Default::default())
            .unwrap_or_else(|p| panic!("harness: profile entries: {p:?}"));
        entries
            .appliances
            .iter()
            .map(|a| Contract::new("tether", a))
            .collect()
    });
    let text = String::from_utf8_lossy(data);
    let json = serde_json::from_slice::<Value>(data).ok();
    for c in contracts {
        let _ = c.answer(&text, data);
        let _ = c.event("t", data);
        let _ = c.presence(data);
        let _ = c.classify(&text);
        let _ = c.subscribe(&text);
        if let Some(v) = &json {
            let _ = c.command("c1", 1, v);
        }
    }
}

/// The results the router would make of one appliance's outcome: for a command to that
/// appliance alone, and as the one item of a command to a list or group.
fn results_of(command_id: &str, appliance: &str, outcome: Outcome) -> [CommandResult; 2] {
    let status = outcome.status();
    let (payload, error) = outcome.into_parts();
    let single = CommandResult {
        command_id: command_id.to_owned(),
        status,
        payload: payload.clone(),
        error: error.clone(),
        items: None,
        duration_ms: 1,
    };
    let multi = CommandResult {
        command_id: format!("{command_id}-multi"),
        status: if status == Status::Ok {
            Status::Ok
        } else {
            Status::Error
        },
        payload: None,
        error: (status != Status::Ok).then(|| "all 1 targets failed".to_owned()),
        items: Some(vec![ItemResult {
            target: appliance.to_owned(),
            status,
            payload,
            error,
            duration_ms: 1,
        }]),
        duration_ms: 1,
    };
    [single, multi]
}
