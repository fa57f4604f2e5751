//! The `mqtt_stream` target: the bytes as a stream from an appliance into the MQTT
//! endpoint, over a loopback TCP connection with the harness's own client.

use std::net::SocketAddr;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnectReturnCode, LastWill, Packet, Subscribe};
use rumqttc::mqttbytes::{self, QoS};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::harness::{APPLIANCE, HANG, Harness, with_harness};

/// A byte stream from an appliance into the daemon's MQTT endpoint: the real accept loop and
/// connection handler (`transport::mqtt::conn`) over a loopback TCP connection. The first
/// byte chooses what the harness sends before the rest, so that the fuzzer also reaches
/// the states after authentication (`0`: nothing; `1`: CONNECT as `lamp-1`; `2`: CONNECT,
/// SUBSCRIBE to its command topic and a command `m1` from the router, in flight; `3`: the
/// same with a persistent session, a will and the command sent to `group:lights`). Then
/// the rest is written, the client's write half shut, and the endpoint must close the
/// connection promptly.
pub fn mqtt_stream(data: &[u8]) {
    with_harness(|h| h.enter("mqtt_stream", h.mqtt_stream(data)));
}

/// Largest packet the harness's MQTT client accepts from the endpoint.
const CLIENT_MAX_PACKET: usize = 1 << 20;

impl Harness {
    async fn mqtt_stream(&self, data: &[u8]) {
        let (mode, rest) = match data.split_first() {
            Some((first, rest)) => (first % 4, rest),
            None => (0, data),
        };
        let mut client = Client::connect(self.mqtt_addr).await;
        let mut command = false;
        if mode > 0 {
            client.send(&self.prefix(mode)).await;
            let ok = |p: &Packet| matches!(p, Packet::ConnAck(a) if a.code == ConnectReturnCode::Success);
            client
                .read_until("a CONNACK accepting the harness's CONNECT", ok)
                .await;
            if mode >= 2 {
                client
                    .read_until("a SUBACK", |p| matches!(p, Packet::SubAck(_)))
                    .await;
                let target = if mode == 2 { APPLIANCE } else { "group:lights" };
                self.router
                    .submit(vec![json!({
                        "id": "m1",
                        "target": target,
                        "payload": {"power": "on"},
                        "timeout_ms": 10_000,
                    })])
                    .await;
                client
                    .read_until("the command m1 on the appliance's cmd topic", |p| {
                        matches!(p, Packet::Publish(_))
                    })
                    .await;
                command = true;
            }
        }
        // A stream that opens with its own MQTT 5 CONNECT is answered in MQTT 5.
        let v5 = mode == 0 && crate::transport::mqtt::connect_protocol_level(rest) == Some(5);
        client.finish(rest, v5).await;
        // The connection task detaches right after closing; let everything it woke run.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        if command {
            self.settled("the appliance's connection closed").await;
        }
        self.deliver_everything().await;
        if command {
            self.forget_commands();
        }
    }

    /// CONNECT (and SUBSCRIBE) packets for `mode` 1 to 3 of [`mqtt_stream`].
    fn prefix(&self, mode: u8) -> BytesMut {
        let prefix = &self.config.mqtt.topic_prefix;
        let password = self
            .config
            .appliance(APPLIANCE)
            .and_then(|a| a.password.clone())
            .unwrap_or_default();
        let mut connect = rumqttc::mqttbytes::v4::Connect::new(APPLIANCE);
        connect.set_login(APPLIANCE, password);
        connect.keep_alive = 30;
        if mode == 3 {
            connect.keep_alive = 0;
            connect.clean_session = false;
            connect.last_will = Some(LastWill::new(
                format!("{prefix}/{APPLIANCE}/status"),
                "offline",
                QoS::AtLeastOnce,
                false,
            ));
        }
        let mut out = BytesMut::new();
        let mut packets = vec![Packet::Connect(connect)];
        if mode >= 2 {
            let qos = if mode == 2 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            };
            let mut sub = Subscribe::new(format!("{prefix}/{APPLIANCE}/cmd"), qos);
            sub.pkid = 1;
            packets.push(Packet::Subscribe(sub));
        }
        for p in &packets {
            if let Err(e) = p.write(&mut out, CLIENT_MAX_PACKET) {
                panic!("harness: cannot encode its own packet: {e}");
            }
        }
        out
    }
}

/// The harness's MQTT client: a TCP connection to the endpoint.
struct Client {
    stream: TcpStream,
    inbox: BytesMut,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = match timeout(HANG, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => panic!("harness: cannot connect to the MQTT endpoint: {e}"),
            Err(_) => panic!("hang: the MQTT endpoint accepts no connection"),
        };
        let _ = stream.set_nodelay(true);
        Client {
            stream,
            inbox: BytesMut::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes).await {
            panic!("harness: cannot write to the MQTT endpoint: {e}");
        }
    }

    /// Reads until a packet that `want` accepts.
    async fn read_until(&mut self, what: &str, want: impl Fn(&Packet) -> bool) {
        let found = timeout(HANG, async {
            loop {
                while let Some(p) = next_packet(&mut self.inbox) {
                    if want(&p) {
                        return true;
                    }
                }
                match self.stream.read_buf(&mut self.inbox).await {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                }
            }
        })
        .await;
        match found {
            Ok(true) => {}
            Ok(false) => panic!("the MQTT endpoint closed the connection before {what}"),
            Err(_) => panic!("hang: no {what} from the MQTT endpoint within {HANG:?}"),
        }
    }

    /// Writes `rest`, shuts the write half, and reads until the endpoint closes.
    async fn finish(mut self, rest: &[u8], v5: bool) {
        let (mut rd, mut wr) = self.stream.split();
        let inbox = &mut self.inbox;
        let write = async {
            // The endpoint may close early (a protocol violation): then writing fails.
            if wr.write_all(rest).await.is_ok() {
                let _ = wr.shutdown().await;
            }
        };
        let read = async {
            loop {
                while if v5 {
                    next_packet_v5(inbox)
                } else {
                    next_packet(inbox).is_some()
                } {}
                match rd.read_buf(inbox).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        if timeout(HANG, async { tokio::join!(write, read) })
            .await
            .is_err()
        {
            panic!(
                "hang: the MQTT endpoint kept the connection open {HANG:?} after the client's last byte and EOF"
            );
        }
    }
}

/// Whether a complete MQTT 5 packet the endpoint sent was taken off `inbox`; every one must
/// decode.
fn next_packet_v5(inbox: &mut BytesMut) -> bool {
    use rumqttc::v5::mqttbytes::{Error, v5::Packet};
    match Packet::read(inbox, Some(1 << 20)) {
        Ok(_) => true,
        Err(Error::InsufficientBytes(_)) => false,
        Err(e) => panic!("the MQTT endpoint sent bytes that are not an MQTT 5 packet: {e}"),
    }
}

/// The next complete packet the endpoint sent; every one must decode.
fn next_packet(inbox: &mut BytesMut) -> Option<Packet> {
    match Packet::read(inbox, CLIENT_MAX_PACKET) {
        Ok(p) => Some(p),
        Err(mqttbytes::Error::InsufficientBytes(_)) => None,
        Err(e) => panic!("the MQTT endpoint sent bytes that are not an MQTT 3.1.1 packet: {e}"),
    }
}
