//! External broker mode (`mqtt.mode = "external"`): the daemon as one client of a broker
//! the site already runs, instead of the endpoint.
//!
//! Started by `app` in place of the endpoint. One task owns one connection to
//! `mqtt.broker` (TCP, or TLS verified against `mqtt.broker_ca_file` or the system roots),
//! with a persistent session (clean session off, so the broker keeps what arrives while the
//! link is down), subscribed to the answer, presence and event topics of the configured
//! appliances ([`Contract::inbound_filters`](super::profile::Contract::inbound_filters)) and
//! nothing else. It hands what arrives to the same [`Hub`] the endpoint uses (the profiles
//! read it the same way) and publishes the commands the hub gives it. A lost link is
//! reconnected with capped, jittered backoff; commands sent and not answered are
//! `interrupted`, and new ones wait for the link. A reload adds and drops subscriptions
//! on the live link. The broker, not the daemon, authenticates the appliances and keeps
//! each to its topics (`tetherd mosquitto-acl`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rumqttc::mqttbytes::v4::{
    Connect, ConnectReturnCode, Login, Packet, PubAck, PubComp, PubRec, PubRel, Subscribe,
    SubscribeFilter, SubscribeReasonCode, Unsubscribe,
};
use rumqttc::mqttbytes::{self, QoS};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::hub::{Hub, ToConn};
use super::{FRAMING_ALLOWANCE, MqttHandle, limits};
use crate::cloud::tls::{SetupError, install_crypto_provider, read, read_secret};
use crate::config::{Broker, Config};

/// How long a TCP connect, a TLS handshake or the CONNACK may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A write the broker does not take within this long ends the link.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A link that stayed up this long resets the backoff.
const STABLE: Duration = Duration::from_secs(60);
/// Topic filters per SUBSCRIBE or UNSUBSCRIBE packet.
const FILTERS_PER_PACKET: usize = 64;
/// Commands queued for the link before a command finds it "not reading".
const OUTBOUND_QUEUE: usize = 256;
/// QoS 2 messages from the broker awaiting PUBREL.
const MAX_AWAITING_REL: usize = 1024;

/// What the link needs from the configuration and its files, read once at start (and by
/// `check-config`).
#[derive(Clone)]
pub struct Link {
    broker: Broker,
    tls: Option<Arc<ClientConfig>>,
    client_id: String,
    login: Option<(String, String)>,
    keep_alive: Duration,
    max_packet: usize,
}

impl Link {
    pub fn load(config: &Config) -> Result<Link, SetupError> {
        let m = &config.mqtt;
        let url = m.broker.as_deref().unwrap_or_default();
        let broker = Broker::parse(url).map_err(|what| SetupError::Invalid {
            path: PathBuf::from("mqtt.broker"),
            what,
        })?;
        let tls = if broker.tls {
            Some(Arc::new(client_config(m.broker_ca_file.as_deref())?))
        } else {
            None
        };
        let login = match (&m.broker_username, &m.broker_password_file) {
            (Some(user), Some(path)) => {
                let secret = read_secret(path)?;
                let password = String::from_utf8(secret)
                    .map_err(|_| SetupError::Invalid {
                        path: path.clone(),
                        what: "the password is not UTF-8 text".into(),
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned();
                Some((user.clone(), password))
            }
            (Some(user), None) => Some((user.clone(), String::new())),
            _ => None,
        };
        Ok(Link {
            broker,
            tls,
            client_id: client_id(config),
            login,
            keep_alive: m.broker_keep_alive,
            max_packet: m.max_payload + FRAMING_ALLOWANCE,
        })
    }
}

impl Link {
    /// Connects, logs in and leaves again, as `tetherd diagnose` does: under another client
    /// id (`-diagnose` appended) with a clean session, so the daemon's own session is not
    /// taken over. Says how far it got.
    pub async fn probe(&self) -> Result<String, String> {
        let b = &self.broker;
        let tcp = timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((b.host.as_str(), b.port)),
        )
        .await
        .map_err(|_| "TCP connect timed out".to_owned())?
        .map_err(|e| format!("TCP connect: {e}"))?;
        match &self.tls {
            None => self.probe_on(tcp).await.map(|()| "plain MQTT".to_owned()),
            Some(config) => {
                let name = ServerName::try_from(b.host.clone()).map_err(|e| e.to_string())?;
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .map_err(|_| "TLS handshake timed out".to_owned())?
                    .map_err(|e| format!("TLS: {e}"))?;
                self.probe_on(tls).await.map(|()| "TLS verified".to_owned())
            }
        }
    }

    async fn probe_on<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> Result<(), String> {
        let mut io = Io {
            stream,
            rbuf: BytesMut::with_capacity(256),
            wbuf: BytesMut::with_capacity(256),
            max_packet: self.max_packet,
            skip: None,
        };
        let mut connect = Connect::new(format!("{}-diagnose", self.client_id));
        if let Some((user, password)) = &self.login {
            connect.login = Some(Login::new(user.clone(), password.clone()));
        }
        io.write(&Packet::Connect(connect))
            .await
            .map_err(|e| e.to_string())?;
        let ack = timeout(CONNECT_TIMEOUT, io.read_packet())
            .await
            .map_err(|_| "no CONNACK in time".to_owned())?
            .map_err(|e| e.to_string())?;
        let _ = io.write(&Packet::Disconnect).await;
        match ack {
            Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => Ok(()),
            Packet::ConnAck(ack) => Err(format!("refused: {}", refusal(ack.code))),
            _ => Err("the first packet was not CONNACK".into()),
        }
    }
}

/// The daemon's client id at the broker.
pub fn client_id(config: &Config) -> String {
    config
        .mqtt
        .broker_client_id
        .clone()
        .unwrap_or_else(|| format!("tetherd-{}", config.gateway.id))
}

fn client_config(ca_file: Option<&std::path::Path>) -> Result<ClientConfig, SetupError> {
    install_crypto_provider();
    let Some(path) = ca_file else {
        use rustls_platform_verifier::ConfigVerifierExt;
        return ClientConfig::with_platform_verifier()
            .map_err(|e| SetupError::Client(format!("the system's trust store: {e}")));
    };
    let invalid = |what: String| SetupError::Invalid {
        path: path.to_owned(),
        what,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(path)?) {
        let cert = cert.map_err(|e| invalid(format!("not a PEM certificate bundle: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| invalid(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(invalid("holds no certificate".into()));
    }
    Ok(ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Starts the link on `tracker` until `cancel`; the hub is the one the endpoint would use.
pub fn start(
    hub: Arc<Hub>,
    link: Link,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> MqttHandle {
    let resubscribe = Arc::new(Notify::new());
    if !link.broker.tls && !link.broker.is_loopback() {
        log::warn!(
            "mqtt.broker {}:{} is plain MQTT over the network: appliance commands and the broker password travel unencrypted (use mqtts://)",
            link.broker.host,
            link.broker.port
        );
    }
    let client = Client {
        hub: hub.clone(),
        link,
        resubscribe: resubscribe.clone(),
    };
    tracker.spawn(client.run(cancel));
    MqttHandle {
        hub,
        connect_rate: Arc::new(Mutex::new(limits::ConnectRate::new(1))),
        resubscribe: Some(resubscribe),
    }
}

struct Client {
    hub: Arc<Hub>,
    link: Link,
    resubscribe: Arc<Notify>,
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("the broker refused the connection: {0}")]
    Refused(&'static str),
    #[error("the broker closed the connection")]
    Eof,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(#[from] mqttbytes::Error),
    #[error("{0}")]
    Violation(&'static str),
    #[error("timed out")]
    Timeout,
}

impl Client {
    async fn run(self, cancel: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        let mut failures = 0u64;
        loop {
            let began = Instant::now();
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                o = self.session(&cancel) => o,
            };
            self.hub.link_down();
            let e = match outcome {
                Ok(()) => return,
                Err(e) => e,
            };
            if began.elapsed() >= STABLE {
                backoff = BACKOFF_MIN;
            }
            failures += 1;
            let b = &self.link.broker;
            // Every failure while it lasts would fill the journal: the first, then every
            // tenth.
            if failures == 1 || failures.is_multiple_of(10) {
                log::warn!(count = failures; "mqtt broker {}:{}: {e}; reconnecting", b.host, b.port);
            }
            // Full jitter: a site's gateways do not come back in step.
            let wait = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sleep(wait) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            if matches!(e, LinkError::Refused(_)) {
                backoff = BACKOFF_MAX;
            }
        }
    }

    /// One connection, from TCP connect to its end; `Ok` only when cancelled.
    async fn session(&self, cancel: &CancellationToken) -> Result<(), LinkError> {
        let b = &self.link.broker;
        let tcp = timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((b.host.as_str(), b.port)),
        )
        .await
        .map_err(|_| LinkError::Timeout)?
        .map_err(LinkError::Connect)?;
        let _ = tcp.set_nodelay(true);
        match &self.link.tls {
            None => self.converse(tcp, cancel).await,
            Some(config) => {
                let name = ServerName::try_from(b.host.clone()).map_err(|e| {
                    LinkError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                })?;
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .map_err(|_| LinkError::Timeout)?
                    .map_err(LinkError::Tls)?;
                self.converse(tls, cancel).await
            }
        }
    }

    async fn converse<S>(&self, stream: S, cancel: &CancellationToken) -> Result<(), LinkError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut io = Io {
            stream,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::with_capacity(1024),
            max_packet: self.link.max_packet,
            skip: None,
        };
        let keep_alive = u16::try_from(self.link.keep_alive.as_secs().max(1)).unwrap_or(u16::MAX);
        let mut connect = Connect::new(self.link.client_id.clone());
        connect.keep_alive = keep_alive;
        // The broker keeps the subscriptions and what arrives for them while the link is
        // down (QoS 1).
        connect.clean_session = false;
        if let Some((user, password)) = &self.link.login {
            connect.login = Some(Login::new(user.clone(), password.clone()));
        }
        io.write(&Packet::Connect(connect)).await?;
        let ack = timeout(CONNECT_TIMEOUT, io.read_packet())
            .await
            .map_err(|_| LinkError::Timeout)??;
        let session_present = match ack {
            Packet::ConnAck(ack) => match ack.code {
                ConnectReturnCode::Success => ack.session_present,
                code => return Err(LinkError::Refused(refusal(code))),
            },
            _ => {
                return Err(LinkError::Violation(
                    "the broker's first packet was not CONNACK",
                ));
            }
        };
        let b = &self.link.broker;
        log::info!(
            "connected to the MQTT broker {}:{} as {:?} (session {})",
            b.host,
            b.port,
            self.link.client_id,
            if session_present { "resumed" } else { "new" }
        );

        let mut state = State::default();
        // Subscribing again costs little and covers appliances added while the link was
        // down; the broker answers a repeated filter by replacing the subscription.
        self.sync(&mut io, &mut state, true).await?;
        state.announce = true;
        announce_subscribed(&mut state);
        let (tx, mut rx) = mpsc::channel(OUTBOUND_QUEUE);
        let kick = CancellationToken::new();
        self.hub.link_up(&tx, &kick);

        let period = Duration::from_secs(u64::from(keep_alive));
        let mut ping_at = Instant::now() + period;
        let mut awaiting_pong = false;
        loop {
            while let Some(packet) = io.next()? {
                self.handle(&mut io, &mut state, packet).await?;
            }
            // Cleared here, once the PINGRESP is decoded, before the timer is waited on.
            if std::mem::take(&mut state.pong) {
                awaiting_pong = false;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    let _ = io.write(&Packet::Disconnect).await;
                    return Ok(());
                }
                _ = self.resubscribe.notified() => {
                    self.sync(&mut io, &mut state, false).await?;
                    self.hub.link_up(&tx, &kick);
                }
                msg = rx.recv() => match msg {
                    Some(ToConn::Publish(out)) => {
                        let mut publish = out.publish;
                        publish.pkid = state.pkid();
                        io.write(&Packet::Publish(publish)).await?;
                    }
                    None => return Err(LinkError::Violation("the hub let go of the link")),
                },
                n = io.fill() => {
                    if n? == 0 {
                        return Err(LinkError::Eof);
                    }
                }
                _ = sleep_until(ping_at) => {
                    if awaiting_pong {
                        return Err(LinkError::Timeout);
                    }
                    io.write(&Packet::PingReq).await?;
                    awaiting_pong = true;
                    ping_at = Instant::now() + period;
                }
            }
        }
    }

    /// Brings the broker's subscriptions in line with the configured appliances: all of
    /// them on a new link, the difference after a reload.
    async fn sync<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut Io<S>,
        state: &mut State,
        all: bool,
    ) -> Result<(), LinkError> {
        let wanted = self.hub.inbound_filters();
        let add: Vec<String> = if all {
            wanted.iter().cloned().collect()
        } else {
            wanted.difference(&state.subscribed).cloned().collect()
        };
        let drop: Vec<String> = state.subscribed.difference(&wanted).cloned().collect();
        for chunk in add.chunks(FILTERS_PER_PACKET) {
            let pkid = state.pkid();
            let filters = chunk
                .iter()
                .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
                .collect::<Vec<_>>();
            let mut sub = Subscribe::new_many(filters);
            sub.pkid = pkid;
            io.write(&Packet::Subscribe(sub)).await?;
            state.pending.insert(pkid, chunk.to_vec());
        }
        for chunk in drop.chunks(FILTERS_PER_PACKET) {
            let pkid = state.pkid();
            let mut unsub = Unsubscribe::new(String::new());
            unsub.pkid = pkid;
            unsub.topics = chunk.to_vec();
            io.write(&Packet::Unsubscribe(unsub)).await?;
        }
        state.subscribed = wanted;
        Ok(())
    }

    async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut Io<S>,
        state: &mut State,
        packet: Inbound,
    ) -> Result<(), LinkError> {
        let packet = match packet {
            Inbound::Packet(p) => p,
            Inbound::TooLarge { topic, qos, pkid } => {
                // Acked, so the broker does not send it again at every reconnect.
                match self.hub.route(&topic) {
                    Some(id) => self.hub.malformed(
                        &id,
                        &format!("message on {topic:?} is larger than mqtt.max_payload; dropped"),
                    ),
                    None => {
                        log::warn!("dropped a message on {topic:?} larger than mqtt.max_payload")
                    }
                }
                return self.ack(io, state, qos, pkid, false).await;
            }
        };
        match packet {
            Packet::Publish(p) => {
                let duplicate = p.qos == QoS::ExactlyOnce && state.awaiting_rel.contains(&p.pkid);
                if !duplicate {
                    match self.hub.route(&p.topic) {
                        Some(id) => {
                            self.hub.publish(&id, &p.topic, &p.payload);
                        }
                        // A subscription a reload just dropped, still in flight.
                        None => log::debug!(
                            "message on {:?} for no configured appliance; dropped",
                            p.topic
                        ),
                    }
                }
                self.ack(io, state, p.qos, p.pkid, duplicate).await?;
            }
            Packet::PubRel(rel) => {
                state.awaiting_rel.remove(&rel.pkid);
                io.write(&Packet::PubComp(PubComp::new(rel.pkid))).await?;
            }
            Packet::PubRec(rec) => io.write(&Packet::PubRel(PubRel::new(rec.pkid))).await?,
            Packet::SubAck(ack) => {
                let filters = state.pending.remove(&ack.pkid).unwrap_or_default();
                for (filter, code) in filters.iter().zip(&ack.return_codes) {
                    if matches!(code, SubscribeReasonCode::Failure)
                        && state.refused.insert(filter.clone())
                    {
                        log::error!(
                            "the MQTT broker refused the subscription to {filter:?}: its access list must let the gateway read it (tetherd mosquitto-acl)"
                        );
                    }
                }
                announce_subscribed(state);
            }
            Packet::PingResp => state.pong = true,
            Packet::PubAck(_) | Packet::PubComp(_) | Packet::UnsubAck(_) => {}
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq
            | Packet::Disconnect => {
                return Err(LinkError::Violation("client-only packet from the broker"));
            }
        }
        Ok(())
    }

    async fn ack<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut Io<S>,
        state: &mut State,
        qos: QoS,
        pkid: u16,
        duplicate: bool,
    ) -> Result<(), LinkError> {
        match qos {
            QoS::AtMostOnce => Ok(()),
            QoS::AtLeastOnce => io.write(&Packet::PubAck(PubAck::new(pkid))).await,
            QoS::ExactlyOnce => {
                if !duplicate {
                    if state.awaiting_rel.len() >= MAX_AWAITING_REL {
                        return Err(LinkError::Violation("too many QoS 2 messages in flight"));
                    }
                    state.awaiting_rel.insert(pkid);
                }
                io.write(&Packet::PubRec(PubRec::new(pkid))).await
            }
        }
    }
}

fn refusal(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::RefusedProtocolVersion => {
            "unacceptable protocol version (it must speak MQTT 3.1.1)"
        }
        ConnectReturnCode::BadClientId => "client id rejected (mqtt.broker_client_id)",
        ConnectReturnCode::ServiceUnavailable => "server unavailable",
        ConnectReturnCode::BadUserNamePassword => {
            "bad user name or password (mqtt.broker_username, mqtt.broker_password_file)"
        }
        ConnectReturnCode::NotAuthorized => {
            "not authorized (mqtt.broker_username, mqtt.broker_password_file)"
        }
        ConnectReturnCode::Success => "success",
    }
}

/// What one link keeps.
#[derive(Default)]
struct State {
    next_pkid: u16,
    subscribed: BTreeSet<String>,
    /// SUBSCRIBEs not yet answered, by packet id.
    pending: HashMap<u16, Vec<String>>,
    /// Filters the broker refused, each logged once per link.
    refused: HashSet<String>,
    awaiting_rel: HashSet<u16>,
    pong: bool,
    /// The link's first subscriptions are out and their answers not yet all in.
    announce: bool,
}

/// Says once per link when the broker has answered every first SUBSCRIBE: only from then
/// on does what the appliances publish reach the gateway.
fn announce_subscribed(state: &mut State) {
    if state.pending.is_empty() && std::mem::take(&mut state.announce) {
        log::info!(
            "subscribed at the MQTT broker to {} topic filter(s), {} refused",
            state.subscribed.len(),
            state.refused.len()
        );
    }
}

impl State {
    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        self.next_pkid
    }
}

enum Inbound {
    Packet(Packet),
    /// A PUBLISH over the size limit, skipped unread past its header.
    TooLarge {
        topic: String,
        qos: QoS,
        pkid: u16,
    },
}

/// The socket and its buffers.
struct Io<S> {
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    max_packet: usize,
    /// Bytes of an oversized packet still to be thrown away.
    skip: Option<usize>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    async fn fill(&mut self) -> std::io::Result<usize> {
        self.stream.read_buf(&mut self.rbuf).await
    }

    async fn read_packet(&mut self) -> Result<Packet, LinkError> {
        loop {
            match self.next()? {
                Some(Inbound::Packet(p)) => return Ok(p),
                Some(Inbound::TooLarge { .. }) => {
                    return Err(LinkError::Violation("oversized packet before CONNACK"));
                }
                None => {
                    if self.fill().await? == 0 {
                        return Err(LinkError::Eof);
                    }
                }
            }
        }
    }

    /// The next complete packet in the buffer, if there is one. A PUBLISH larger than the
    /// limit is not buffered: its topic and packet id are read, and the rest discarded as
    /// it arrives, so one oversized retained or queued message cannot wedge the link.
    fn next(&mut self) -> Result<Option<Inbound>, LinkError> {
        if let Some(left) = self.skip {
            let n = left.min(self.rbuf.len());
            self.rbuf.advance(n);
            self.skip = (left > n).then_some(left - n);
            if self.skip.is_some() {
                return Ok(None);
            }
        }
        match Packet::read(&mut self.rbuf, self.max_packet) {
            Ok(p) => Ok(Some(Inbound::Packet(p))),
            Err(mqttbytes::Error::InsufficientBytes(n)) => {
                self.rbuf.reserve(n.min(self.max_packet));
                Ok(None)
            }
            Err(mqttbytes::Error::PayloadSizeLimitExceeded(_)) => self.skip_oversized(),
            Err(e) => Err(e.into()),
        }
    }

    fn skip_oversized(&mut self) -> Result<Option<Inbound>, LinkError> {
        let buf = &self.rbuf[..];
        let first = buf[0];
        if first >> 4 != 3 {
            return Err(LinkError::Violation(
                "an oversized packet that is not a PUBLISH",
            ));
        }
        let (mut len, mut i, mut shift) = (0usize, 1usize, 0);
        loop {
            let Some(&b) = buf.get(i) else {
                return Ok(None);
            };
            len |= usize::from(b & 0x7f) << shift;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 21 {
                return Err(LinkError::Violation("malformed remaining length"));
            }
        }
        let qos = mqttbytes::qos((first >> 1) & 3)?;
        let (Some(&hi), Some(&lo)) = (buf.get(i), buf.get(i + 1)) else {
            return Ok(None);
        };
        let topic_len = usize::from(u16::from_be_bytes([hi, lo]));
        let header = 2 + topic_len + if qos == QoS::AtMostOnce { 0 } else { 2 };
        if header > len {
            return Err(LinkError::Violation("a PUBLISH whose topic overruns it"));
        }
        if buf.len() < i + header {
            self.rbuf.reserve(i + header - buf.len());
            return Ok(None);
        }
        let topic = String::from_utf8_lossy(&buf[i + 2..i + 2 + topic_len]).into_owned();
        let pkid = if qos == QoS::AtMostOnce {
            0
        } else {
            u16::from_be_bytes([buf[i + 2 + topic_len], buf[i + 3 + topic_len]])
        };
        let total = i + len;
        let have = self.rbuf.len().min(total);
        self.rbuf.advance(have);
        self.skip = (total > have).then_some(total - have);
        Ok(Some(Inbound::TooLarge { topic, qos, pkid }))
    }

    async fn write(&mut self, packet: &Packet) -> Result<(), LinkError> {
        self.wbuf.clear();
        packet.write(&mut self.wbuf, self.max_packet)?;
        match timeout(WRITE_TIMEOUT, self.stream.write_all(&self.wbuf)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(LinkError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::SyncMode;
    use crate::journal::Journal;
    use crate::outbox::Outbox;

    /// A broker that accepts the CONNECT and every subscription, and answers each
    /// PINGREQ; counts them.
    async fn broker(stream: tokio::io::DuplexStream, pings: Arc<AtomicUsize>) {
        let mut io = Io {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            max_packet: 1 << 20,
            skip: None,
        };
        while let Ok(p) = io.read_packet().await {
            let answer = match p {
                Packet::Connect(_) => Packet::ConnAck(rumqttc::mqttbytes::v4::ConnAck::new(
                    ConnectReturnCode::Success,
                    false,
                )),
                Packet::Subscribe(s) => Packet::SubAck(rumqttc::mqttbytes::v4::SubAck::new(
                    s.pkid,
                    s.filters
                        .iter()
                        .map(|_| SubscribeReasonCode::Success(QoS::AtLeastOnce))
                        .collect(),
                )),
                Packet::PingReq => {
                    pings.fetch_add(1, Ordering::SeqCst);
                    Packet::PingResp
                }
                _ => continue,
            };
            if io.write(&answer).await.is_err() {
                return;
            }
        }
    }

    /// An idle link outlives many keep-alive periods when the broker answers its PINGs
    /// (a PINGRESP once went unnoticed until a period later, and the link dropped every
    /// second period).
    #[tokio::test(start_paused = true)]
    async fn an_idle_link_outlives_its_keep_alives() {
        let dir = std::env::temp_dir().join(format!(
            "tether-link-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let text = format!(
            "[gateway]\nid = \"gw\"\nstate_dir = \"{}\"\n[cloud]\nurl = \"https://localhost:1\"\n\
             [mqtt]\nmode = \"external\"\nbroker = \"mqtt://127.0.0.1:1\"\nbroker_keep_alive = \"2s\"\n\
             [[appliance]]\nid = \"lamp\"\ntransport = \"mqtt\"\n",
            dir.display()
        );
        let config = Config::parse(&text).unwrap_or_else(|p| panic!("{p:#?}"));
        let (journal, _) = Journal::open(&dir, SyncMode::Normal, 1 << 30).unwrap();
        let outbox = Arc::new(Outbox::new(journal, 100));
        let hub = Arc::new(super::super::new_hub(&config, outbox, Default::default()));
        let client = Client {
            hub: hub.clone(),
            link: Link::load(&config).unwrap(),
            resubscribe: Arc::new(Notify::new()),
        };
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let pings = Arc::new(AtomicUsize::new(0));
        tokio::spawn(broker(theirs, pings.clone()));
        let cancel = CancellationToken::new();
        tokio::select! {
            r = client.converse(ours, &cancel) => panic!("the link ended: {r:?}"),
            _ = sleep(Duration::from_secs(21)) => {}
        }
        assert!(pings.load(Ordering::SeqCst) >= 9, "{pings:?}");
        assert_eq!(hub.online(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
