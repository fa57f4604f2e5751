//! The daemon's own MQTT endpoint for appliances (MQTT 3.1.1).
//!
//! Not a general broker: every client is a configured appliance, authenticated by
//! username = client id = appliance id and its password, and the topics of its profile
//! ([`profile`]: Tether's own contract in [`topic`], or a firmware's) are its
//! access-control list. [`start`] binds the listener (before the daemon
//! reports ready) and runs the accept loop; each socket gets its own task (`conn.rs`) with
//! TCP_NODELAY, a CONNECT timeout and bounded buffers; [`limits`] bounds how fast one
//! device may connect, subscribe and raise events. The router reaches appliances through
//! the cloneable [`MqttHandle`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, MqttMode, TransportKind};
use crate::outbox::Outbox;
use crate::transport::{Dispatch, Outcome};

pub mod acl;
pub mod auth;
mod conn;
pub mod exposure;
pub mod external;
pub(crate) mod hub;
pub mod limits;
pub mod profile;
pub mod tls;
pub mod topic;
mod v5;

pub use conn::connect_protocol_level;
pub use hub::{Presence, Sessions, Stats};

/// Bytes of MQTT framing allowed on top of `max_payload` (fixed header, topic, packet id).
const FRAMING_ALLOWANCE: usize = 1024;

/// Cloneable handle to the endpoint.
#[derive(Clone)]
pub struct MqttHandle {
    hub: Arc<hub::Hub>,
    connect_rate: Arc<Mutex<limits::ConnectRate>>,
    /// External broker mode: tells the link to subscribe to a reloaded appliance list.
    resubscribe: Option<Arc<tokio::sync::Notify>>,
}

impl MqttHandle {
    /// Sends a command to one appliance and waits for its result.
    pub async fn execute(&self, appliance: &str, dispatch: Dispatch) -> Outcome {
        self.hub.execute(appliance, dispatch).await
    }

    /// Appliances connected and not reporting offline.
    pub fn online(&self) -> usize {
        self.hub.online()
    }

    /// Every configured appliance's presence, by id.
    pub fn presence(&self) -> HashMap<String, Presence> {
        self.hub.presence_map()
    }

    /// Resolves when an appliance came online or went offline since the last call.
    pub async fn presence_changed(&self) {
        self.hub.changed.notified().await;
    }

    pub fn stats(&self) -> &Stats {
        &self.hub.stats
    }

    /// Applies a reloaded configuration's appliance list and rate limits (listen address
    /// and the other limits need a restart).
    pub fn reconfigure(&self, config: &Config) {
        self.hub
            .reconfigure(members(config), config.mqtt.max_event_rate);
        self.connect_rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_rate(config.mqtt.max_connect_rate);
        if let Some(link) = &self.resubscribe {
            link.notify_one();
        }
    }
}

/// The hub for the configuration's MQTT appliances.
pub(crate) fn new_hub(config: &Config, outbox: Arc<Outbox>, sessions: Sessions) -> hub::Hub {
    let m = &config.mqtt;
    hub::Hub::new(
        m.max_payload,
        members(config),
        outbox,
        m.startup_grace,
        m.max_event_rate,
        sessions,
        m.mode == MqttMode::External,
    )
}

fn members(config: &Config) -> HashMap<String, hub::Member> {
    let prefix = &config.mqtt.topic_prefix;
    let members: HashMap<String, hub::Member> = config
        .appliances
        .iter()
        .filter(|a| a.transport == TransportKind::Mqtt)
        .map(|a| {
            let member = hub::Member {
                // Required by the config's rules unless an external broker authenticates.
                secret: a
                    .password
                    .as_deref()
                    .map_or(auth::Secret::Unset, auth::Secret::from_config),
                contract: Arc::new(profile::Contract::new(prefix, a)),
            };
            (a.id.clone(), member)
        })
        .collect();
    let mut plain: Vec<&str> = members
        .iter()
        .filter(|(_, m)| m.secret.is_plain())
        .map(|(id, _)| id.as_str())
        .collect();
    if !plain.is_empty() {
        plain.sort_unstable();
        log::warn!(
            "appliance password(s) stored in plain text for {}; store Argon2 hashes instead (tetherd hash-password)",
            plain.join(", ")
        );
    }
    members
}

/// Starts the link to an external broker (`mqtt.mode = "external"`) instead of the
/// endpoint.
pub fn start_external(
    config: &Config,
    link: external::Link,
    outbox: Arc<Outbox>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> MqttHandle {
    let hub = Arc::new(new_hub(config, outbox, Sessions::default()));
    external::start(hub, link, tracker, cancel)
}

/// Binds `mqtt.listen` (and `mqtt.tls_listen` with `tls`) and starts accepting
/// appliances on `tracker` until `cancel`. Returns the plain listener's address and the
/// TLS one's, if any.
pub async fn start(
    config: &Config,
    tls: Option<tokio_rustls::TlsAcceptor>,
    outbox: Arc<Outbox>,
    sessions: Sessions,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<(MqttHandle, SocketAddr, Option<SocketAddr>), ListenError> {
    let m = &config.mqtt;
    let hub = Arc::new(new_hub(config, outbox, sessions));
    let (listener, local) = bind("mqtt.listen", m.listen).await?;
    let limits = conn::Limits {
        max_packet: m.max_payload + FRAMING_ALLOWANCE,
        connect_timeout: m.connect_timeout,
        idle_timeout: m.idle_timeout,
    };
    // One connection budget and one rate table shared by both listeners.
    let slots = Arc::new(Semaphore::new(m.max_connections));
    let connect_rate = Arc::new(Mutex::new(limits::ConnectRate::new(m.max_connect_rate)));
    let full = Arc::new(AtomicBool::new(false));
    let mut tls_local = None;
    if let (Some(addr), Some(acceptor)) = (m.tls_listen, tls) {
        let (tls_listener, addr) = bind("mqtt.tls_listen", addr).await?;
        tls_local = Some(addr);
        let ctx = Accepting {
            hub: hub.clone(),
            limits: limits.clone(),
            slots: slots.clone(),
            connect_rate: connect_rate.clone(),
            tracker: tracker.clone(),
            cancel: cancel.clone(),
            full: full.clone(),
        };
        tracker.spawn(accept_loop(tls_listener, Some(acceptor), ctx));
    }
    let ctx = Accepting {
        hub: hub.clone(),
        limits,
        slots,
        connect_rate: connect_rate.clone(),
        tracker: tracker.clone(),
        cancel,
        full,
    };
    tracker.spawn(accept_loop(listener, None, ctx));
    let handle = MqttHandle {
        hub,
        connect_rate,
        resubscribe: None,
    };
    Ok((handle, local, tls_local))
}

/// A listener that could not be set up, named by its config key.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {key} {addr}: {source}")]
pub struct ListenError {
    pub key: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

async fn bind(
    key: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), ListenError> {
    let fail = |source| ListenError { key, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(fail)?;
    let local = listener.local_addr().map_err(fail)?;
    Ok((listener, local))
}

/// What an accept loop hands each connection.
struct Accepting {
    hub: Arc<hub::Hub>,
    limits: conn::Limits,
    slots: Arc<Semaphore>,
    connect_rate: Arc<Mutex<limits::ConnectRate>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// The last connection was refused for want of a slot (shared by both listeners).
    full: Arc<AtomicBool>,
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Accepting,
) {
    loop {
        let accepted = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually EMFILE: back off briefly instead of spinning on the error.
                log::warn!("mqtt accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = ctx
            .connect_rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(peer.ip(), tokio::time::Instant::now());
        if let limits::Take::Refused { first } = admitted {
            let n = ctx
                .hub
                .stats
                .connections_rate_limited
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            if first {
                log::warn!(count = n; "{peer}: connecting too often (mqtt.max_connect_rate); closing its connections until it slows down");
            }
            continue;
        }
        let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
            let n = ctx
                .hub
                .stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            // Once per spell: a device retrying in a loop must not fill the journal.
            if !ctx.full.swap(true, Ordering::Relaxed) {
                log::warn!(count = n; "{peer}: refused: mqtt.max_connections reached; further refusals are counted until a slot frees");
            }
            continue;
        };
        if ctx.full.swap(false, Ordering::Relaxed) {
            log::info!("mqtt connection slots free again");
        }
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("{peer}: set_nodelay: {e}");
        }
        let (hub, limits, cancel) = (ctx.hub.clone(), ctx.limits.clone(), ctx.cancel.clone());
        let tls = tls.clone();
        ctx.tracker.spawn(async move {
            match tls {
                None => conn::serve(stream, peer, hub, limits, cancel).await,
                // The handshake runs here, in the connection's task, under the CONNECT
                // deadline: a silent socket cannot hold up anyone else.
                Some(acceptor) => {
                    match tokio::time::timeout(limits.connect_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls_stream)) => {
                            conn::serve(tls_stream, peer, hub, limits, cancel).await
                        }
                        Ok(Err(e)) => log::info!("{peer}: TLS handshake failed: {e}"),
                        Err(_) => log::info!(
                            "{peer}: no TLS handshake within the connect timeout; closed"
                        ),
                    }
                }
            }
            drop(permit);
        });
    }
}
