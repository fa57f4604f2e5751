//! The appliance endpoint from a hostile appliance's side: authentication and topic
//! isolation, with real MQTT clients.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::process::Command;

use std::net::SocketAddr;
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
    let mut first = Appliance::connect(daemon.mqtt, "plug", Behaviour::Silent).await;
    // Kicked, it must not come back (the helper reconnects by itself unless told not to)
    // and kick the second in turn.
    first.received.close();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_serves_outside_clients_and_a_silent_socket_blocks_no_one() {
    use std::os::unix::fs::PermissionsExt;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let dir = TempDir::new("mqtts");
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "LAN CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "gateway");
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let (ca_path, cert_path, key_path) = (
        dir.path().join("lan-ca.pem"),
        dir.path().join("mqtt.pem"),
        dir.path().join("mqtt-key.pem"),
    );
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();

    let cloud = DevCloud::start(dir.path(), &[]);
    let mqtt = format!(
        "listen = \"127.0.0.1:0\"\nstartup_grace = \"0s\"\nconnect_timeout = \"30s\"\ntls_listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert_path.display(),
        key_path.display()
    );
    let cfg = config_with_mqtt(dir.path(), &cloud, &["sec-1"], &mqtt, "");
    let daemon = Tetherd::start(&cfg);
    let line = daemon
        .log
        .wait_async("mqtt TLS endpoint listening on ")
        .await;
    let port = line.rsplit(':').next().unwrap().trim().to_owned();
    // A socket that connects and says nothing, held open during the whole exchange.
    let _silent = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let pw = password("sec-1");
    let ok = Command::new("mosquitto_pub")
        .args([
            "--cafile",
            ca_path.to_str().unwrap(),
            "-h",
            "127.0.0.1",
            "-p",
            &port,
        ])
        .args(["-i", "sec-1", "-u", "sec-1", "-P", &pw, "-q", "1"])
        .args(["-t", "tether/sec-1/events", "-m", r#"{"over": "tls"}"#])
        .status()
        .expect("mosquitto_pub");
    assert!(ok.success(), "mosquitto_pub over TLS failed");
    let events = eventually("the TLS client's event at the cloud", || async {
        let e = cloud.events().await;
        e.iter()
            .any(|e| e["payload"] == json!({"over": "tls"}))
            .then_some(e)
    })
    .await;
    assert!(events.iter().any(|e| e["appliance"] == "sec-1"));
    // Plain MQTT on the TLS port is not MQTT to it: the handshake fails, nothing else.
    assert!(
        try_connect(
            format!("127.0.0.1:{port}").parse().unwrap(),
            "sec-1",
            "sec-1",
            &pw
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn hashed_passwords_from_hash_password_authenticate() {
    let dir = TempDir::new("hashed");
    let cloud = DevCloud::start(dir.path(), &[]);
    let out = run_with_input(
        Command::new(env!("CARGO_BIN_EXE_tetherd")).arg("hash-password"),
        b"correct horse\n",
    );
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let cfg = config(dir.path(), &cloud, &[], "");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[[appliance]]\nid = \"h-1\"\ntransport = \"mqtt\"\npassword = \"{hash}\"\n"
    ));
    std::fs::write(&cfg, &text).unwrap();
    let daemon = Tetherd::start(&cfg);
    assert_eq!(
        try_connect(daemon.mqtt, "h-1", "h-1", "correct horse").await,
        Ok(ConnectReturnCode::Success)
    );
    assert_eq!(
        try_connect(daemon.mqtt, "h-1", "h-1", "wrong horse").await,
        Ok(ConnectReturnCode::NotAuthorized)
    );
    assert!(
        daemon.log.all().iter().all(|l| !l.contains("plain text")),
        "no plain-text warning for hashes"
    );
    // A mangled hash is a config error naming the key.
    std::fs::write(&cfg, text.replace(&hash, "$argon2id$v=19$garbage")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tetherd"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("appliance[0].password"));
}

/// A device that connects too often is closed before a byte is read, per source address:
/// another device (here another loopback address) is not affected.
#[tokio::test]
async fn connecting_too_often_is_refused_per_source_address() {
    let dir = TempDir::new("connrate");
    let cloud = DevCloud::start(dir.path(), &[]);
    // 1 per second, bursts of 3. A long CONNECT timeout: a socket the limit let through
    // stays open, waiting for its CONNECT, long after the test's own patience.
    let mqtt = "listen = \"127.0.0.1:0\"\nstartup_grace = \"0s\"\nmax_connect_rate = 1\nconnect_timeout = \"60s\"\n";
    let cfg = config_with_mqtt(dir.path(), &cloud, &["bulb", "lock"], mqtt, "");
    let daemon = Tetherd::start(&cfg);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(daemon.mqtt).await.unwrap());
    }
    let mut refused = tokio::net::TcpStream::connect(daemon.mqtt).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        refused.read(&mut byte).await
    })
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the fourth connection within the burst must be closed at once, got {closed:?}"
    );
    daemon.log.wait_async("mqtt.max_connect_rate").await;
    // The burst's sockets were accepted: one of them can still log in.
    let mut first = held.remove(0);
    {
        use rumqttc::mqttbytes::v4::{Connect, Login, Packet as Raw};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut connect = Connect::new("bulb");
        connect.login = Some(Login::new("bulb", password("bulb")));
        let mut out = bytes::BytesMut::new();
        Raw::Connect(connect).write(&mut out, 1 << 16).unwrap();
        first.write_all(&out).await.unwrap();
        let mut ack = [0u8; 4];
        first.read_exact(&mut ack).await.unwrap();
        assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    }
    // Another device, another address: served at once.
    let source = "127.0.0.2".parse().unwrap();
    let _lock = RawClient::connect_from(daemon.mqtt, source, "lock", &password("lock")).await;
    let closed_one = daemon.log.count("max_connect_rate");
    assert_eq!(
        closed_one, 1,
        "one warning per spell, not one per connection"
    );
}

/// `mqtt.max_connections` caps sockets, logged in or not: beyond it a connection is closed
/// before a byte is read, and a device retrying in a loop costs one log line, not one per
/// attempt.
#[tokio::test]
async fn connections_beyond_the_cap_are_refused_with_one_log_line() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("conncap");
    let cloud = DevCloud::start(dir.path(), &[]);
    let mqtt = "listen = \"127.0.0.1:0\"\nstartup_grace = \"0s\"\nmax_connections = 2\nmax_connect_rate = 1000\nconnect_timeout = \"60s\"\n";
    let cfg = config_with_mqtt(dir.path(), &cloud, &["bulb"], mqtt, "");
    let daemon = Tetherd::start(&cfg);
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tokio::net::TcpStream::connect(daemon.mqtt).await.unwrap());
    }
    for attempt in 0..5 {
        let mut refused = tokio::net::TcpStream::connect(daemon.mqtt).await.unwrap();
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(PATIENCE, refused.read(&mut byte)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "attempt {attempt} beyond the cap must be closed at once, got {closed:?}"
        );
    }
    daemon.log.wait_async("mqtt.max_connections reached").await;
    assert_eq!(daemon.log.count("mqtt.max_connections reached"), 1);
    // A slot frees when a held socket goes; the daemon notices its end by itself.
    drop(held.pop());
    let mut connect = rumqttc::mqttbytes::v4::Connect::new("bulb");
    connect.login = Some(rumqttc::mqttbytes::v4::Login::new("bulb", password("bulb")));
    let mut hello = bytes::BytesMut::new();
    rumqttc::mqttbytes::v4::Packet::Connect(connect)
        .write(&mut hello, 1 << 16)
        .unwrap();
    eventually("a slot for the appliance", || async {
        let mut s = tokio::net::TcpStream::connect(daemon.mqtt).await.ok()?;
        s.write_all(&hello).await.ok()?;
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).await.ok()?;
        assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
        Some(s)
    })
    .await;
    daemon.log.wait_async("slots free again").await;
}

/// The connection rate is one of the `[mqtt]` settings a reload applies live; a setting
/// that needs a restart is reported and kept.
#[tokio::test]
async fn a_reload_applies_a_new_connection_rate() {
    use tokio::io::AsyncReadExt;
    let dir = TempDir::new("connrate-reload");
    let cloud = DevCloud::start(dir.path(), &[]);
    let mqtt = |rate: u32, idle: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\nmax_connect_rate = {rate}\nconnect_timeout = \"60s\"\nidle_timeout = \"{idle}\"\n"
        )
    };
    config_with_mqtt(dir.path(), &cloud, &["bulb"], &mqtt(1000, "60s"), "");
    let daemon = Tetherd::start(&dir.path().join("tetherd.toml"));
    config_with_mqtt(dir.path(), &cloud, &["bulb"], &mqtt(1, "90s"), "");
    daemon.signal("HUP");
    daemon.log.wait_async("configuration reloaded").await;
    daemon
        .log
        .wait_async("mqtt.idle_timeout changed; it takes effect at the next restart")
        .await;
    // A device not seen before gets the new burst (3 at rate 1), not the old one.
    let from = |source: &str| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(source.parse().unwrap(), 0))
            .unwrap();
        socket.connect(daemon.mqtt)
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(from("127.0.0.3").await.unwrap());
    }
    let mut refused = from("127.0.0.3").await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(PATIENCE, refused.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the fourth connection must be closed at the reloaded rate, got {closed:?}"
    );
    daemon.log.wait_async("mqtt.max_connect_rate").await;
}

/// SUBSCRIBE churn and oversized filter lists close the connection instead of costing the
/// gateway work (and upstream events) without end.
#[tokio::test]
async fn subscribe_churn_and_long_filter_lists_disconnect() {
    use rumqttc::mqttbytes::v4::{Packet as Raw, Subscribe, SubscribeFilter};
    let dir = TempDir::new("churn");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["bulb"], "");
    let daemon = Tetherd::start(&cfg);
    let mut raw = RawClient::connect(daemon.mqtt, "bulb", &password("bulb")).await;
    let own = "tether/bulb/cmd";
    // The burst (16) is granted...
    for pkid in 1..=16u16 {
        let mut s = Subscribe::new(own, QoS::AtLeastOnce);
        s.pkid = pkid;
        raw.send(Raw::Subscribe(s)).await;
        assert!(
            matches!(raw.recv().await, Some(Raw::SubAck(_))),
            "SUBSCRIBE {pkid} answered"
        );
    }
    // ... and one more at once is churn.
    let mut s = Subscribe::new(own, QoS::AtLeastOnce);
    s.pkid = 17;
    raw.send(Raw::Subscribe(s)).await;
    assert_eq!(raw.recv().await, None, "disconnected for churn");
    daemon.log.wait_async("churn beyond the allowed rate").await;
    // Nine filters in one packet (even denied ones, each of which would be an event).
    let mut raw = RawClient::connect(daemon.mqtt, "bulb", &password("bulb")).await;
    let filters: Vec<SubscribeFilter> = (0..9)
        .map(|i| SubscribeFilter::new(format!("tether/other-{i}/cmd"), QoS::AtMostOnce))
        .collect();
    let mut s = Subscribe::new_many(filters);
    s.pkid = 1;
    raw.send(Raw::Subscribe(s)).await;
    assert_eq!(raw.recv().await, None, "disconnected for too many filters");
    daemon.log.wait_async("more topic filters").await;
    assert_eq!(
        daemon.log.count("denied subscribe"),
        0,
        "refused before any filter was looked at"
    );
    // The appliance is still welcome to behave.
    let _bulb = Appliance::connect(daemon.mqtt, "bulb", Behaviour::Echo).await;
    let id = cloud.enqueue(json!({"target": "bulb"})).await;
    assert_eq!(cloud.result(&id).await["result"]["status"], "ok");
}

/// MQTT 5 and MQTT 3.1 clients are told the protocol version is not supported
/// (CONNACK return code 1), whatever follows the level byte.
#[tokio::test]
async fn other_protocol_versions_are_refused_with_their_return_code() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("mqtt5");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["bulb"], "");
    let daemon = Tetherd::start(&cfg);
    // MQTT 3.1: protocol name "MQIsdp", level 3: CONNACK "unacceptable protocol version".
    let mqtt31: &[u8] = &[
        0x10, 18, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 4, b'b', b'u', b'l',
        b'b',
    ];
    // A real MQTT 5 CONNECT without credentials (level 5, clean start, keep-alive 60, empty
    // properties, id "bulb"): an MQTT 5 CONNACK with reason 0x87, not authorized, and an
    // empty property list.
    let mqtt5: &[u8] = &[
        0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 4, b'b', b'u', b'l', b'b',
    ];
    for (name, connect, expected) in [
        ("MQTT 3.1", mqtt31, &[0x20, 0x02, 0x00, 0x01][..]),
        ("MQTT 5", mqtt5, &[0x20, 0x03, 0x00, 0x87, 0x00][..]),
    ] {
        let mut s = tokio::net::TcpStream::connect(daemon.mqtt).await.unwrap();
        s.write_all(connect).await.unwrap();
        let mut ack = vec![0u8; expected.len()];
        tokio::time::timeout(PATIENCE, s.read_exact(&mut ack))
            .await
            .expect("an answer")
            .unwrap_or_else(|e| panic!("{name}: no CONNACK: {e}"));
        assert_eq!(ack, expected, "{name}: CONNACK");
    }
    daemon
        .log
        .wait_async("MQTT protocol level 3 is not supported")
        .await;
    daemon
        .log
        .wait_async("CONNECT refused for client id \"bulb\"")
        .await;
}
