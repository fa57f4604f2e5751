//! MQTT 5 on the endpoint, as a translation at the edge of a connection.
//!
//! A connection whose CONNECT says protocol level 5 is decoded and encoded with rumqttc's
//! MQTT 5 codec; everything in between (`conn.rs`, the hub, the profiles) sees the 3.1.1
//! packets it already handles. What MQTT 5 adds that matters here is kept in this file:
//! the session expiry interval as the persistent-session signal (with clean start as
//! "resume or not"), reason codes on every refusal (CONNACK, SUBACK, PUBACK, DISCONNECT),
//! topic aliases from the client (at most [`TOPIC_ALIAS_MAX`], announced in the CONNACK),
//! and the message expiry interval on commands that have a TTL. Called by `conn.rs` only.

use std::collections::HashMap;

use bytes::BytesMut;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes as mb5;
use rumqttc::v5::mqttbytes::v5 as p5;
use tokio::time::Instant;

/// Topic aliases a client may set up on one connection.
pub const TOPIC_ALIAS_MAX: u16 = 16;

/// What MQTT 5 asks of a connection beyond 3.1.1.
#[derive(Debug, Default)]
pub struct State {
    aliases: HashMap<u16, String>,
    /// Filters in the UNSUBSCRIBE being answered (its UNSUBACK has a reason for each).
    unsubscribed: usize,
}

/// A decoded MQTT 5 packet as the 3.1.1 code sees it.
pub enum In {
    Packet(v4::Packet),
    /// DISCONNECT with a reason other than 0x00 (0x04 asks for it, an error code implies
    /// it): the will is published.
    DisconnectWithWill,
}

/// Why a connection is closed, as a DISCONNECT reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    Protocol,
    TopicAlias,
    TooLarge,
    KeepAlive,
    TakenOver,
    ShuttingDown,
}

/// The CONNECT of an MQTT 5 client, in 3.1.1 terms plus its session wishes.
pub struct Hello {
    pub connect: v4::Connect,
    /// Clean start off: the client wants its previous session.
    pub resume: bool,
    /// A session expiry interval above 0: the session outlives the connection.
    pub persist: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("protocol: {0}")]
    Codec(mb5::Error),
    #[error("a topic alias above {TOPIC_ALIAS_MAX}, or one never set up")]
    TopicAlias,
    #[error("{0}")]
    Unsupported(&'static str),
}

fn qos4(q: mb5::QoS) -> QoS {
    match q {
        mb5::QoS::AtMostOnce => QoS::AtMostOnce,
        mb5::QoS::AtLeastOnce => QoS::AtLeastOnce,
        mb5::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos5(q: QoS) -> mb5::QoS {
    match q {
        QoS::AtMostOnce => mb5::QoS::AtMostOnce,
        QoS::AtLeastOnce => mb5::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mb5::QoS::ExactlyOnce,
    }
}

/// Decodes the CONNECT; `Ok(None)` until it is all there.
pub fn read_connect(buf: &mut BytesMut, max: usize) -> Result<Option<Hello>, Error> {
    match p5::Packet::read(buf, Some(limit(max))) {
        Ok(p5::Packet::Connect(c, will, login)) => {
            let expiry = c
                .properties
                .as_ref()
                .and_then(|p| p.session_expiry_interval)
                .unwrap_or(0);
            let mut connect = v4::Connect::new(c.client_id);
            connect.keep_alive = c.keep_alive;
            connect.clean_session = c.clean_start;
            connect.login = login.map(|l| v4::Login::new(l.username, l.password));
            connect.last_will = will.map(|w| {
                v4::LastWill::new(
                    String::from_utf8_lossy(&w.topic),
                    w.message.to_vec(),
                    qos4(w.qos),
                    w.retain,
                )
            });
            Ok(Some(Hello {
                connect,
                resume: !c.clean_start,
                persist: expiry > 0,
            }))
        }
        Ok(_) => Err(Error::Unsupported("first packet was not CONNECT")),
        Err(mb5::Error::InsufficientBytes(_)) => Ok(None),
        Err(e) => Err(Error::Codec(e)),
    }
}

fn limit(max: usize) -> u32 {
    u32::try_from(max).unwrap_or(u32::MAX)
}

impl State {
    /// Decodes one packet from `buf`, if it is all there.
    pub fn decode(&mut self, buf: &mut BytesMut, max: usize) -> Result<Option<In>, Error> {
        let packet = match p5::Packet::read(buf, Some(limit(max))) {
            Ok(p) => p,
            Err(mb5::Error::InsufficientBytes(n)) => {
                buf.reserve(n.min(max));
                return Ok(None);
            }
            Err(e) => return Err(Error::Codec(e)),
        };
        let p = match packet {
            p5::Packet::Publish(p) => v4::Packet::Publish(self.publish(p)?),
            p5::Packet::Subscribe(s) => {
                let mut sub = v4::Subscribe::new_many(
                    s.filters
                        .into_iter()
                        .map(|f| v4::SubscribeFilter::new(f.path, qos4(f.qos))),
                );
                sub.pkid = s.pkid;
                v4::Packet::Subscribe(sub)
            }
            p5::Packet::Unsubscribe(u) => {
                let mut unsub = v4::Unsubscribe::new(String::new());
                unsub.pkid = u.pkid;
                unsub.topics = u.filters;
                v4::Packet::Unsubscribe(unsub)
            }
            p5::Packet::PubAck(a) => v4::Packet::PubAck(v4::PubAck::new(a.pkid)),
            p5::Packet::PubRec(a) => v4::Packet::PubRec(v4::PubRec::new(a.pkid)),
            p5::Packet::PubRel(a) => v4::Packet::PubRel(v4::PubRel::new(a.pkid)),
            p5::Packet::PubComp(a) => v4::Packet::PubComp(v4::PubComp::new(a.pkid)),
            p5::Packet::PingReq(_) => v4::Packet::PingReq,
            p5::Packet::Disconnect(d) => {
                // Only a normal disconnection (0x00) discards the will.
                if d.reason_code != p5::DisconnectReasonCode::NormalDisconnection {
                    return Ok(Some(In::DisconnectWithWill));
                }
                v4::Packet::Disconnect
            }
            p5::Packet::Connect(..) => v4::Packet::Connect(v4::Connect::new(String::new())),
            p5::Packet::Auth(_) => {
                return Err(Error::Unsupported(
                    "AUTH (enhanced authentication) is not supported",
                ));
            }
            p5::Packet::ConnAck(_)
            | p5::Packet::SubAck(_)
            | p5::Packet::UnsubAck(_)
            | p5::Packet::PingResp(_) => v4::Packet::PingResp,
        };
        if let v4::Packet::Unsubscribe(u) = &p {
            self.unsubscribed = u.topics.len();
        }
        Ok(Some(In::Packet(p)))
    }

    /// A PUBLISH with its topic alias resolved (and remembered, when it sets one up).
    fn publish(&mut self, p: p5::Publish) -> Result<v4::Publish, Error> {
        let alias = p.properties.as_ref().and_then(|pr| pr.topic_alias);
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let topic = match alias {
            None => topic,
            Some(0) => return Err(Error::TopicAlias),
            Some(a) if a > TOPIC_ALIAS_MAX => return Err(Error::TopicAlias),
            Some(a) if topic.is_empty() => {
                self.aliases.get(&a).cloned().ok_or(Error::TopicAlias)?
            }
            Some(a) => {
                self.aliases.insert(a, topic.clone());
                topic
            }
        };
        let mut out = v4::Publish::new(topic, qos4(p.qos), p.payload.to_vec());
        out.pkid = p.pkid;
        out.retain = p.retain;
        out.dup = p.dup;
        Ok(out)
    }

    /// Encodes a 3.1.1 packet the connection wants to send, as MQTT 5. `denied` marks a
    /// PUBACK or PUBREC for a publish outside the client's topics; `expires` is when a
    /// command's TTL runs out.
    pub fn encode(
        &mut self,
        packet: &v4::Packet,
        denied: bool,
        expires: Option<Instant>,
        out: &mut BytesMut,
        max: usize,
    ) -> Result<(), Error> {
        let p = match packet {
            v4::Packet::ConnAck(a) => p5::Packet::ConnAck(connack(a.code, a.session_present, max)),
            v4::Packet::SubAck(a) => p5::Packet::SubAck(p5::SubAck {
                pkid: a.pkid,
                return_codes: a
                    .return_codes
                    .iter()
                    .map(|c| match c {
                        v4::SubscribeReasonCode::Success(q) => {
                            p5::SubscribeReasonCode::Success(qos5(*q))
                        }
                        v4::SubscribeReasonCode::Failure => p5::SubscribeReasonCode::NotAuthorized,
                    })
                    .collect(),
                properties: None,
            }),
            v4::Packet::UnsubAck(a) => p5::Packet::UnsubAck(p5::UnsubAck {
                pkid: a.pkid,
                reasons: vec![p5::UnsubAckReason::Success; std::mem::take(&mut self.unsubscribed)],
                properties: None,
            }),
            v4::Packet::PubAck(a) => p5::Packet::PubAck(p5::PubAck {
                pkid: a.pkid,
                reason: if denied {
                    p5::PubAckReason::NotAuthorized
                } else {
                    p5::PubAckReason::Success
                },
                properties: None,
            }),
            v4::Packet::PubRec(a) => p5::Packet::PubRec(p5::PubRec {
                pkid: a.pkid,
                reason: if denied {
                    p5::PubRecReason::NotAuthorized
                } else {
                    p5::PubRecReason::Success
                },
                properties: None,
            }),
            v4::Packet::PubComp(a) => p5::Packet::PubComp(p5::PubComp::new(a.pkid, None)),
            v4::Packet::PubRel(a) => p5::Packet::PubRel(p5::PubRel::new(a.pkid, None)),
            v4::Packet::PingResp => p5::Packet::PingResp(p5::PingResp),
            v4::Packet::Publish(p) => {
                // What is left of the command's TTL, so nothing holds it past that.
                let properties = expires.map(|at| p5::PublishProperties {
                    message_expiry_interval: Some(
                        u32::try_from(
                            at.saturating_duration_since(Instant::now())
                                .as_secs()
                                .max(1),
                        )
                        .unwrap_or(u32::MAX),
                    ),
                    ..Default::default()
                });
                let mut out =
                    p5::Publish::new(p.topic.clone(), qos5(p.qos), p.payload.clone(), properties);
                out.pkid = p.pkid;
                p5::Packet::Publish(out)
            }
            _ => return Err(Error::Unsupported("a packet the endpoint never sends")),
        };
        p.write(out, Some(limit(max))).map_err(Error::Codec)?;
        Ok(())
    }
}

/// The CONNACK, with the endpoint's limits announced.
pub fn connack(code: v4::ConnectReturnCode, session_present: bool, max: usize) -> p5::ConnAck {
    let code = match code {
        v4::ConnectReturnCode::Success => p5::ConnectReturnCode::Success,
        v4::ConnectReturnCode::RefusedProtocolVersion => {
            p5::ConnectReturnCode::UnsupportedProtocolVersion
        }
        v4::ConnectReturnCode::BadClientId => p5::ConnectReturnCode::ClientIdentifierNotValid,
        v4::ConnectReturnCode::ServiceUnavailable => p5::ConnectReturnCode::ServerUnavailable,
        v4::ConnectReturnCode::BadUserNamePassword => p5::ConnectReturnCode::BadUserNamePassword,
        v4::ConnectReturnCode::NotAuthorized => p5::ConnectReturnCode::NotAuthorized,
    };
    let success = code == p5::ConnectReturnCode::Success;
    p5::ConnAck {
        session_present,
        code,
        properties: success.then(|| p5::ConnAckProperties {
            session_expiry_interval: None,
            receive_max: None,
            // Commands go out at QoS 1 at most.
            max_qos: Some(1),
            retain_available: None,
            max_packet_size: Some(limit(max)),
            assigned_client_identifier: None,
            topic_alias_max: Some(TOPIC_ALIAS_MAX),
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: Some(0),
            shared_subscription_available: Some(0),
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        }),
    }
}

/// A refusal's CONNACK, encoded.
pub fn refusal(code: v4::ConnectReturnCode, out: &mut BytesMut, max: usize) -> Result<(), Error> {
    p5::Packet::ConnAck(connack(code, false, max))
        .write(out, Some(limit(max)))
        .map(|_| ())
        .map_err(Error::Codec)
}

/// The DISCONNECT the endpoint sends before it closes a connection, encoded.
/// The reason string rides along: a client can log it, and some (Paho 1.6 for Python)
/// read the reason code only from a DISCONNECT that has properties.
pub fn disconnect(why: Close, detail: &str, out: &mut BytesMut) -> Result<(), Error> {
    let reason = match why {
        Close::Protocol => p5::DisconnectReasonCode::ProtocolError,
        Close::TopicAlias => p5::DisconnectReasonCode::TopicAliasInvalid,
        Close::TooLarge => p5::DisconnectReasonCode::PacketTooLarge,
        Close::KeepAlive => p5::DisconnectReasonCode::KeepAliveTimeout,
        Close::TakenOver => p5::DisconnectReasonCode::SessionTakenOver,
        Close::ShuttingDown => p5::DisconnectReasonCode::ServerShuttingDown,
    };
    let mut packet = p5::Disconnect::new(reason);
    // Short: the reason string counts against the client's maximum packet size.
    let detail: String = detail.chars().take(200).collect();
    packet.properties = Some(p5::DisconnectProperties {
        session_expiry_interval: None,
        reason_string: Some(detail),
        user_properties: Vec::new(),
        server_reference: None,
    });
    p5::Packet::Disconnect(packet)
        .write(out, None)
        .map(|_| ())
        .map_err(Error::Codec)
}

/// Whether a 3.1.1 decoding error is the packet size limit (for the DISCONNECT reason).
pub fn too_large(e: &Error) -> bool {
    matches!(e, Error::Codec(mb5::Error::PayloadSizeLimitExceeded { .. }))
}
