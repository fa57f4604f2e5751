//! The appliance endpoint from a hostile appliance's side: authentication and topic
//! isolation, with real MQTT clients.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS, SubscribeReasonCode,
};
use serde_json::json;

#[tokio::test]
async fn wrong_password_and_foreign_usernames_are_refused() {
    let dir = TempDir::new("auth");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["lamp-1", "lamp-2"], "");
    let daemon = Tetherd::start(&cfg);
    let refused = Ok(ConnectReturnCode::NotAuthorized);
    assert_eq!(
        try_connect(daemon.mqtt, "lamp-1", "lamp-1", "wrong").await,
        refused
    );
    // Right password, but the client id is another appliance's: no takeover.
    assert_eq!(
        try_connect(daemon.mqtt, "lamp-2", "lamp-1", &password("lamp-1")).await,
        refused
    );
    // Not a configured appliance at all.
    assert_eq!(
        try_connect(daemon.mqtt, "ghost", "ghost", "x").await,
        refused
    );
    assert_eq!(
        try_connect(daemon.mqtt, "lamp-1", "lamp-1", &password("lamp-1")).await,
        Ok(ConnectReturnCode::Success)
    );
    let line = daemon.log.wait_async("not authorized").await;
    assert!(
        !line.contains("wrong"),
        "a password reached the log: {line}"
    );
    assert!(
        daemon
            .log
            .all()
            .iter()
            .all(|l| !l.contains(&password("lamp-1")))
    );
}

#[tokio::test]
async fn an_appliance_cannot_read_or_answer_for_another() {
    let dir = TempDir::new("acl");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["bulb", "lock"], "");
    let daemon = Tetherd::start(&cfg);
    let mut lock = Appliance::connect(daemon.mqtt, "lock", Behaviour::Manual).await;

    // The bulb, compromised, tries to listen to the lock's commands and everything else.
    let mut opts = MqttOptions::new("bulb", "127.0.0.1", daemon.mqtt.port());
    opts.set_credentials("bulb", password("bulb"));
    let (bulb, mut events) = AsyncClient::new(opts, 16);
    for filter in [
        "tether/lock/cmd",
        "tether/+/cmd",
        "#",
        "$SYS/#",
        "tether/bulb/cmd",
    ] {
        bulb.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    }
    let mut codes = Vec::new();
    while codes.len() < 5 {
        let event = tokio::time::timeout(PATIENCE, events.poll()).await.unwrap();
        if let Event::Incoming(Packet::SubAck(ack)) = event.unwrap() {
            codes.extend(ack.return_codes);
        }
    }
    let failure = SubscribeReasonCode::Failure;
    assert_eq!(&codes[..4], &[failure, failure, failure, failure]);
    assert_eq!(codes[4], SubscribeReasonCode::Success(QoS::AtLeastOnce));

    // A command for the lock: the bulb must not see it, and its forged result must not count.
    let id = cloud
        .enqueue(json!({"target": "lock", "payload": {"unlock": true}}))
        .await;
    assert_eq!(lock.next_command().await.0, id);
    let forged = json!({"id": id, "ok": true, "payload": "opened"}).to_string();
    bulb.publish("tether/lock/result", QoS::AtLeastOnce, false, forged)
        .await
        .unwrap();
    let bulb_loop = tokio::spawn(async move {
        let mut publishes = 0;
        while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_secs(3), events.poll()).await {
            if let Event::Incoming(Packet::Publish(_)) = e {
                publishes += 1;
            }
        }
        publishes
    });
    daemon
        .log
        .wait_async("denied publish to \"tether/lock/result\"")
        .await;
    // The real lock answers afterwards; the result stored is the lock's, not the bulb's.
    lock.answer(&id, false, json!("jammed")).await;
    let r = cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("jammed"));
    assert_eq!(bulb_loop.await.unwrap(), 0, "the bulb received a publish");
    assert!(daemon.log.count("denied ") >= 5, "{:#?}", daemon.log.all());
    // Denials are counted and reported to the cloud as events.
    let mut denied = 0;
    for _ in 0..100 {
        denied = cloud
            .events()
            .await
            .iter()
            .filter(|e| e["kind"] == "denied")
            .count();
        if denied >= 5 {
            break;
        }
        // Events ride the next poll: nudge one with a command.
        let id = cloud
            .enqueue(json!({"target": "bulb", "payload": {}}))
            .await;
        cloud.result(&id).await;
    }
    assert!(denied >= 5, "denied events at the cloud: {denied}");
}

#[tokio::test]
async fn a_second_connection_for_an_appliance_replaces_the_first() {
    let dir = TempDir::new("takeover");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["plug"], "");
    let daemon = Tetherd::start(&cfg);
    let _first = Appliance::connect(daemon.mqtt, "plug", Behaviour::Silent).await;
    let mut second = Appliance::connect(daemon.mqtt, "plug", Behaviour::Echo).await;
    daemon.log.wait_async("replaced by a new connection").await;
    let id = cloud.enqueue(json!({"target": "plug", "payload": 1})).await;
    assert_eq!(cloud.result(&id).await["result"]["status"], "ok");
    assert_eq!(second.next_command().await.0, id);
}

#[tokio::test]
async fn hostile_packets_are_dropped_or_disconnected() {
    use rumqttc::mqttbytes::v4::{Connect, Packet as Raw, Publish};
    let dir = TempDir::new("raw");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["bulb", "lock"], "");
    let daemon = Tetherd::start(&cfg);
    let _lock = Appliance::connect(daemon.mqtt, "lock", Behaviour::Manual).await;
    let mut raw = RawClient::connect(daemon.mqtt, "bulb", &password("bulb")).await;
    // Wildcards and NUL in PUBLISH topics: acked (QoS 1), dropped and counted.
    for (n, topic) in [
        "tether/+/result",
        "tether/#",
        "tether/bulb\0/result",
        "tether/lock/status",
    ]
    .iter()
    .enumerate()
    {
        let mut p = Publish::new(*topic, QoS::AtLeastOnce, "{}");
        p.pkid = n as u16 + 1;
        raw.send(Raw::Publish(p)).await;
        assert!(matches!(raw.recv().await, Some(Raw::PubAck(_))));
    }
    for topic in ["tether/+/result", "tether/#", "tether/lock/status"] {
        daemon
            .log
            .wait_async(&format!("denied publish to {topic:?}"))
            .await;
    }
    // A second CONNECT on the same connection is a protocol violation: disconnected.
    raw.send(Raw::Connect(Connect::new("bulb"))).await;
    assert_eq!(raw.recv().await, None);
    daemon.log.wait_async("second CONNECT").await;
    // A remaining length far beyond the packet limit is refused before it is buffered.
    let mut raw = RawClient::connect(daemon.mqtt, "bulb", &password("bulb")).await;
    raw.send_bytes(&[0x30, 0xff, 0xff, 0xff, 0x7f]).await;
    assert_eq!(raw.recv().await, None);
    // The lock is still served.
    let id = cloud
        .enqueue(json!({"target": "lock", "timeout_ms": 200}))
        .await;
    assert_eq!(cloud.result(&id).await["result"]["status"], "timeout");
}
