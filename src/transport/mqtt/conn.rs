//! One appliance connection, from CONNECT to close.
//!
//! Spawned per accepted socket by the endpoint's accept loop. It authenticates the CONNECT
//! (within `connect_timeout`), attaches to the [`Hub`], then loops: decode packets from the
//! socket (each bounded by the packet size limit), pass PUBLISHes to the hub, answer
//! SUBSCRIBEs by the appliance's profile (`profile.rs`), write the commands the hub hands over, and enforce the
//! keep-alive. Every exit detaches from the hub, which publishes the will if the client
//! went away without DISCONNECT.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{self, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use super::hub::{Hub, Outgoing, ToConn};
use super::limits::{Bucket, Take};
use super::profile::Subscribe;
use super::v5;

/// A client that cannot take a packet within this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Commands queued for one connection before `execute` reports it as not reading.
pub const OUTBOUND_QUEUE: usize = 64;
/// A write buffer grown past this by one large packet is given back afterwards.
const KEEP_BUFFER: usize = 4096;
/// Topic filters in one SUBSCRIBE or UNSUBSCRIBE: an appliance needs one.
const MAX_FILTERS: usize = 8;
/// SUBSCRIBE and UNSUBSCRIBE packets per connection: a burst of this many, then one every
/// `SUBSCRIBE_PERIOD`. An appliance subscribes once per connection; churn beyond this is a
/// bug or an attack, and the connection is closed.
const SUBSCRIBE_BURST: f64 = 16.0;
const SUBSCRIBE_PERIOD: Duration = Duration::from_secs(5);
/// QoS 2 publishes awaiting PUBREL, per connection.
const MAX_AWAITING_REL: usize = 64;

/// Limits for a connection, from `[mqtt]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_packet: usize,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("connection closed")]
    Eof,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(#[from] mqttbytes::Error),
    #[error("{0}")]
    Violation(&'static str),
    #[error("timed out")]
    Timeout,
    #[error("MQTT 5: {0}")]
    V5(#[from] v5::Error),
}

/// The first packet, by protocol level.
enum Hello {
    V4(Connect),
    V5(v5::Hello),
}

/// Serves one accepted socket until it closes, is kicked, or the endpoint shuts down.
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    hub: Arc<Hub>,
    limits: Limits,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut conn = Conn {
        rd,
        wr,
        // Small to start: a thousand idle appliances each hold these. They grow for a
        // large packet when one comes.
        rbuf: BytesMut::with_capacity(256),
        wbuf: BytesMut::with_capacity(256),
        limits,
        hub,
        v5: None,
        will_on_disconnect: false,
    };
    let hello = match timeout(conn.limits.connect_timeout, conn.read_connect()).await {
        Ok(Ok(Some(hello))) => hello,
        Ok(Ok(None)) => return log::debug!("{peer}: first packet was not CONNECT; closed"),
        Ok(Err(ConnError::Protocol(mqttbytes::Error::InvalidProtocolLevel(level)))) => {
            log::info!("{peer}: MQTT protocol level {level} is not supported; refused");
            let _ = conn.refuse(ConnectReturnCode::RefusedProtocolVersion).await;
            return;
        }
        Ok(Err(e)) => return log::debug!("{peer}: closed before CONNECT: {e}"),
        Err(_) => return log::debug!("{peer}: no CONNECT within the connect timeout; closed"),
    };
    let (connect, resume, persist) = match hello {
        Hello::V4(c) => {
            let persistent = !c.clean_session;
            (c, persistent, persistent)
        }
        Hello::V5(h) => {
            conn.v5 = Some(Box::default());
            (h.connect, h.resume, h.persist)
        }
    };
    let password = connect.login.as_ref().map(|l| l.password.as_str());
    let username = connect.login.as_ref().map(|l| l.username.as_str());
    let authorized = conn
        .hub
        .authenticate(&connect.client_id, username, password)
        .await;
    if !authorized {
        let n = conn.hub.stats.auth_failures.fetch_add(1, Ordering::Relaxed) + 1;
        // The claimed id is logged, the password never is.
        log::warn!(count = n; "{peer}: CONNECT refused for client id {:?}: not authorized", connect.client_id);
        let _ = conn.refuse(ConnectReturnCode::NotAuthorized).await;
        return;
    }
    conn.run(connect, resume, persist, peer, shutdown).await;
}

struct Conn<S> {
    rd: ReadHalf<S>,
    wr: WriteHalf<S>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    limits: Limits,
    hub: Arc<Hub>,
    /// An MQTT 5 client: its packets go through the translation in `v5.rs`.
    v5: Option<Box<v5::State>>,
    /// An MQTT 5 DISCONNECT asked for the will to be published all the same.
    will_on_disconnect: bool,
}

impl<S: AsyncRead + AsyncWrite> Conn<S> {
    async fn run(
        &mut self,
        connect: Connect,
        resume: bool,
        persist: bool,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) {
        let id = connect.client_id.clone();
        let (tx, mut rx) = mpsc::channel(OUTBOUND_QUEUE);
        let kick = CancellationToken::new();
        let attached = self.hub.attach(&id, resume, persist, tx, kick.clone());
        log::info!(appliance = id.as_str(), transport = "mqtt"; "{peer}: connected");
        let mut session = Session {
            id: id.clone(),
            keep_alive: match connect.keep_alive {
                0 => self.limits.idle_timeout,
                // The spec allows one and a half keep-alive periods of silence.
                s => Duration::from_millis(u64::from(s) * 1500),
            },
            next_pkid: 1,
            awaiting_rel: HashSet::new(),
            denied_rel: false,
            subscribes: Bucket::full(SUBSCRIBE_BURST, Instant::now()),
        };
        let mut will = connect.last_will;
        let ack = Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            attached.session_present,
        ));
        let result = match self.write(&ack).await {
            Ok(()) => self.serve(&mut session, &mut rx, &kick, &shutdown).await,
            Err(e) => Err(e),
        };
        if let Some(why) = self.v5.as_ref().and_then(|_| close_reason(&result)) {
            // An MQTT 5 client is told why the endpoint closes its connection.
            self.wbuf.clear();
            let detail = match &result {
                Ok(Exit::Kicked) => {
                    "replaced by a new connection, or the appliance's configuration changed"
                        .to_owned()
                }
                Ok(_) => "the gateway is stopping".to_owned(),
                Err(e) => e.to_string(),
            };
            if v5::disconnect(why, &detail, &mut self.wbuf).is_ok() {
                let _ = timeout(WRITE_TIMEOUT, self.wr.write_all(&self.wbuf)).await;
            }
        }
        let reason = match &result {
            Ok(Exit::Disconnect) if self.will_on_disconnect => {
                "disconnected, asking for its will".to_owned()
            }
            Ok(Exit::Disconnect) => {
                will = None; // a clean DISCONNECT discards the will
                "disconnected".to_owned()
            }
            Ok(Exit::Kicked) => "replaced by a new connection".to_owned(),
            Ok(Exit::Shutdown) => "endpoint shutting down".to_owned(),
            Err(e) => e.to_string(),
        };
        log::info!(appliance = id.as_str(), transport = "mqtt"; "{peer}: closed: {reason}");
        let _ = self.wr.shutdown().await;
        self.hub.detach(&id, attached.generation, will);
    }

    async fn serve(
        &mut self,
        session: &mut Session,
        rx: &mut mpsc::Receiver<ToConn>,
        kick: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<Exit, ConnError> {
        let mut deadline = Instant::now() + session.keep_alive;
        loop {
            while let Some(packet) = self.decode()? {
                deadline = Instant::now() + session.keep_alive;
                if let Some(exit) = self.handle(session, packet).await? {
                    return Ok(exit);
                }
            }
            tokio::select! {
                biased;
                _ = kick.cancelled() => return Ok(Exit::Kicked),
                _ = shutdown.cancelled() => return Ok(Exit::Shutdown),
                msg = rx.recv() => match msg {
                    Some(ToConn::Publish(out)) => {
                        let Outgoing { mut publish, expires } = *out;
                        if publish.qos != QoS::AtMostOnce {
                            publish.pkid = session.pkid();
                        }
                        self.send(&Packet::Publish(publish), false, expires).await?;
                    }
                    // The hub dropped our sender: a newer connection took over.
                    None => return Ok(Exit::Kicked),
                },
                n = self.rd.read_buf(&mut self.rbuf) => {
                    if n? == 0 {
                        return Err(ConnError::Eof);
                    }
                }
                _ = sleep_until(deadline) => return Err(ConnError::Timeout),
            }
        }
    }

    async fn handle(&mut self, s: &mut Session, packet: Packet) -> Result<Option<Exit>, ConnError> {
        match packet {
            Packet::PingReq => self.write(&Packet::PingResp).await?,
            Packet::Disconnect => return Ok(Some(Exit::Disconnect)),
            Packet::Connect(_) => return Err(ConnError::Violation("second CONNECT")),
            Packet::Subscribe(sub) => {
                s.churn(sub.filters.len())?;
                let contract = self.hub.contract(&s.id);
                let mut codes = Vec::with_capacity(sub.filters.len());
                for f in &sub.filters {
                    // Commands go out at QoS 1 at most.
                    let qos = if f.qos == QoS::AtMostOnce {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    };
                    match contract.as_ref().map(|c| c.subscribe(&f.path)) {
                        Some(Subscribe::Commands) => {
                            self.hub.subscribed(&s.id, Some(qos));
                            codes.push(SubscribeReasonCode::Success(qos));
                        }
                        Some(Subscribe::Own) => codes.push(SubscribeReasonCode::Success(qos)),
                        Some(Subscribe::Ignored) => {
                            log::debug!(appliance = s.id.as_str(); "refused the firmware's subscription to {:?} (not used)", f.path);
                            codes.push(SubscribeReasonCode::Failure);
                        }
                        Some(Subscribe::Denied) | None => {
                            self.hub.deny(&s.id, &format!("subscribe to {:?}", f.path));
                            codes.push(SubscribeReasonCode::Failure);
                        }
                    }
                }
                self.write(&Packet::SubAck(SubAck::new(sub.pkid, codes)))
                    .await?;
            }
            Packet::Unsubscribe(unsub) => {
                s.churn(unsub.topics.len())?;
                let own = self.hub.contract(&s.id).map(|c| c.command_filter());
                if own.is_some_and(|own| unsub.topics.contains(&own)) {
                    self.hub.subscribed(&s.id, None);
                }
                self.write(&Packet::UnsubAck(UnsubAck::new(unsub.pkid)))
                    .await?;
            }
            Packet::Publish(p) => match p.qos {
                QoS::AtMostOnce => {
                    self.hub.publish(&s.id, &p.topic, &p.payload);
                }
                QoS::AtLeastOnce => {
                    let allowed = self.hub.publish(&s.id, &p.topic, &p.payload);
                    // MQTT 5 says "not authorized" in the PUBACK; 3.1.1 cannot.
                    self.send(&Packet::PubAck(PubAck::new(p.pkid)), !allowed, None)
                        .await?;
                }
                QoS::ExactlyOnce => {
                    // Deliver on first receipt; a resend before PUBREL is a duplicate.
                    if !s.awaiting_rel.contains(&p.pkid) {
                        if s.awaiting_rel.len() >= MAX_AWAITING_REL {
                            return Err(ConnError::Violation("too many QoS 2 publishes in flight"));
                        }
                        let allowed = self.hub.publish(&s.id, &p.topic, &p.payload);
                        // An MQTT 5 PUBREC with a failure code ends the exchange: no
                        // PUBREL follows to free the packet id.
                        if allowed || self.v5.is_none() {
                            s.awaiting_rel.insert(p.pkid);
                        }
                        s.denied_rel = !allowed;
                    }
                    let denied = s.denied_rel;
                    self.send(&Packet::PubRec(PubRec::new(p.pkid)), denied, None)
                        .await?;
                }
            },
            Packet::PubRel(rel) => {
                s.awaiting_rel.remove(&rel.pkid);
                self.write(&Packet::PubComp(PubComp::new(rel.pkid))).await?;
            }
            // Acks of our QoS 1 commands: MQTT 3.1.1 resends only on reconnect, and a
            // command cut off by a reconnect is reported `interrupted`, so nothing to track.
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {}
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Err(ConnError::Violation("server-only packet from a client"));
            }
        }
        Ok(None)
    }

    /// Decodes one complete packet from the read buffer, if there is one.
    fn decode(&mut self) -> Result<Option<Packet>, ConnError> {
        if let Some(state) = &mut self.v5 {
            return Ok(
                match state.decode(&mut self.rbuf, self.limits.max_packet)? {
                    None => None,
                    Some(v5::In::Packet(p)) => Some(p),
                    Some(v5::In::DisconnectWithWill) => {
                        self.will_on_disconnect = true;
                        Some(Packet::Disconnect)
                    }
                },
            );
        }
        match Packet::read(&mut self.rbuf, self.limits.max_packet) {
            Ok(p) => Ok(Some(p)),
            Err(mqttbytes::Error::InsufficientBytes(n)) => {
                self.rbuf.reserve(n);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The first packet: a CONNECT, told apart by its protocol level byte before decoding
    /// (the 3.1.1 decoder would misread an MQTT 5 CONNECT's properties). MQTT 5 is decoded
    /// as such; another level (MQTT 3.1) is refused with the right return code. `None`:
    /// the first packet was something else.
    async fn read_connect(&mut self) -> Result<Option<Hello>, ConnError> {
        loop {
            match connect_protocol_level(&self.rbuf) {
                Some(5) => {
                    if let Some(hello) = v5::read_connect(&mut self.rbuf, self.limits.max_packet)? {
                        return Ok(Some(Hello::V5(hello)));
                    }
                }
                Some(level) if level != 4 => {
                    return Err(mqttbytes::Error::InvalidProtocolLevel(level).into());
                }
                _ => {
                    if let Some(p) = self.decode()? {
                        return Ok(match p {
                            Packet::Connect(c) => Some(Hello::V4(c)),
                            _ => None,
                        });
                    }
                }
            }
            if self.rd.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ConnError::Eof);
            }
        }
    }

    async fn write(&mut self, packet: &Packet) -> Result<(), ConnError> {
        self.send(packet, false, None).await
    }

    /// Writes a packet in the connection's protocol version. `denied` marks an
    /// acknowledgement of a publish outside the client's topics, `expires` a command's
    /// TTL (both said only in MQTT 5).
    async fn send(
        &mut self,
        packet: &Packet,
        denied: bool,
        expires: Option<tokio::time::Instant>,
    ) -> Result<(), ConnError> {
        self.wbuf.clear();
        match &mut self.v5 {
            Some(state) => state.encode(
                packet,
                denied,
                expires,
                &mut self.wbuf,
                self.limits.max_packet,
            )?,
            None => {
                packet.write(&mut self.wbuf, self.limits.max_packet)?;
            }
        }
        let written = timeout(WRITE_TIMEOUT, self.wr.write_all(&self.wbuf)).await;
        if self.wbuf.capacity() > KEEP_BUFFER {
            // One large command must not pin its size for the life of the connection.
            self.wbuf = BytesMut::with_capacity(256);
        }
        match written {
            Ok(r) => Ok(r?),
            Err(_) => Err(ConnError::Timeout),
        }
    }

    async fn refuse(&mut self, code: ConnectReturnCode) -> Result<(), ConnError> {
        if self.v5.is_some() {
            self.wbuf.clear();
            v5::refusal(code, &mut self.wbuf, self.limits.max_packet)?;
            timeout(WRITE_TIMEOUT, self.wr.write_all(&self.wbuf))
                .await
                .map_err(|_| ConnError::Timeout)??;
        } else {
            self.write(&Packet::ConnAck(ConnAck::new(code, false)))
                .await?;
        }
        let _ = self.wr.shutdown().await;
        Ok(())
    }
}

/// The protocol level of the CONNECT at the start of `buf`, once enough of it is there:
/// fixed header 0x10, remaining length (1 to 4 bytes), protocol name (length-prefixed),
/// then the level.
pub fn connect_protocol_level(buf: &[u8]) -> Option<u8> {
    if buf.first() != Some(&0x10) {
        return None;
    }
    let mut i = 1;
    loop {
        let b = *buf.get(i)?;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return None;
        }
    }
    let name = usize::from(u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]));
    buf.get(i + 2 + name).copied()
}

/// The DISCONNECT reason an MQTT 5 client is given when the endpoint closes on it.
fn close_reason(result: &Result<Exit, ConnError>) -> Option<v5::Close> {
    Some(match result {
        Ok(Exit::Disconnect) => return None,
        Ok(Exit::Kicked) => v5::Close::TakenOver,
        Ok(Exit::Shutdown) => v5::Close::ShuttingDown,
        Err(ConnError::Timeout) => v5::Close::KeepAlive,
        Err(ConnError::Eof | ConnError::Io(_)) => return None,
        Err(ConnError::V5(v5::Error::TopicAlias)) => v5::Close::TopicAlias,
        Err(ConnError::V5(e)) if v5::too_large(e) => v5::Close::TooLarge,
        Err(ConnError::Protocol(mqttbytes::Error::PayloadSizeLimitExceeded(_))) => {
            v5::Close::TooLarge
        }
        Err(_) => v5::Close::Protocol,
    })
}

enum Exit {
    Disconnect,
    Kicked,
    Shutdown,
}

struct Session {
    id: String,
    keep_alive: Duration,
    next_pkid: u16,
    awaiting_rel: HashSet<u16>,
    /// The last QoS 2 publish was outside the client's topics (its PUBREC says so, in
    /// MQTT 5, also when resent).
    denied_rel: bool,
    subscribes: Bucket,
}

impl Session {
    /// Charges one SUBSCRIBE/UNSUBSCRIBE with `filters` topic filters.
    fn churn(&mut self, filters: usize) -> Result<(), ConnError> {
        if filters > MAX_FILTERS {
            return Err(ConnError::Violation(
                "more topic filters in one SUBSCRIBE/UNSUBSCRIBE than allowed (8)",
            ));
        }
        let rate = 1.0 / SUBSCRIBE_PERIOD.as_secs_f64();
        match self.subscribes.take(rate, SUBSCRIBE_BURST, Instant::now()) {
            Take::Granted => Ok(()),
            Take::Refused { .. } => Err(ConnError::Violation(
                "SUBSCRIBE/UNSUBSCRIBE churn beyond the allowed rate",
            )),
        }
    }

    fn pkid(&mut self) -> u16 {
        let id = self.next_pkid;
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        id
    }
}
