//! Wiring: builds every part from the [`Config`], connects their channels, and shuts them
//! down in order.
//!
//! Start order: the journal (replaying what a previous run left), the outbox, the MQTT
//! endpoint (bound before anything reports ready: the LAN side works without the cloud),
//! the router with one worker per appliance, recovery of unfinished commands, then the
//! uplink driver and the systemd supervisor (STATUS, watchdog). Every task runs on one
//! [`TaskTracker`] under one [`CancellationToken`].
//!
//! Reload ([`App::reload`], on SIGHUP) applies what can change live, as each config section
//! classifies its keys (`config::reload`): appliances, groups, `[router]`, the two MQTT
//! rates, cloud settings and identity files (a new client), the log level. Everything else
//! the running tasks took at start (listeners, MQTT timeouts and sizes, `[ble]`, state and
//! journal settings, gateway id) is reported and kept.
//!
//! Stop ([`App::shutdown`], on SIGTERM): polling stops (no new commands), running commands
//! get `gateway.stop_grace` to finish while finished results still go out on the open
//! link, then every task is cancelled and the journal is closed. Commands still running
//! at that point stay in the journal: `interrupted` (or re-run) at the next start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderValue;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cloud::driver::{Driver, Reconfigure, Uplink};
use crate::cloud::session::{Session, SessionConfig};
use crate::cloud::tls::{self, SetupError};
use crate::cloud::wire::Event;
use crate::config::MqttMode;
use crate::config::{Config, reload};
use crate::fleet::{self, Fleet, FleetHandle, Store};
use crate::health::Health;
use crate::journal::{Journal, JournalError};
use crate::outbox::Outbox;
use crate::router::Router;
use crate::status::{self, Watched};
use crate::systemd;
use crate::transport::{Transports, mqtt};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Listen(#[from] mqtt::ListenError),
    #[error("cloud link setup: {0}")]
    Uplink(#[from] SetupError),
    #[error("{0}")]
    Journal(#[from] JournalError),
    #[error("mqtt TLS listener: {0}")]
    MqttTls(SetupError),
    #[error("mqtt broker: {0}")]
    MqttBroker(SetupError),
    #[error("metrics.listen {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running daemon.
pub struct App {
    /// The endpoint's address; none with an external broker.
    pub mqtt_addr: Option<SocketAddr>,
    pub mqtt: mqtt::MqttHandle,
    pub outbox: Arc<Outbox>,
    pub router: Router,
    journal: Journal,
    watched: Arc<Watched>,
    fleet: FleetHandle,
    /// The file's configuration in force (fields that need a restart keep their start
    /// value), shared with the fleet task, which lays the cloud-managed entries over it.
    config: Arc<Config>,
    token: Option<HeaderValue>,
    /// What the cloud identity files held when the uplink was built (see `identity_files`).
    identity: u64,
    reload: mpsc::Sender<Reconfigure>,
    drain: CancellationToken,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// Opens every file the configuration names (cloud CA, client certificate and key, token,
/// MQTT TLS certificate and key) the way a start would, so `check-config` catches an
/// unreadable, unsafe or malformed file before the service does.
pub fn check_files(config: &Config) -> Result<(), StartError> {
    Uplink::new(&config.cloud, &config.gateway.id)?;
    mqtt_acceptor(config)?;
    broker_link(config)?;
    Ok(())
}

/// The MQTT TLS listener's acceptor, when `mqtt.tls_listen` is set.
fn mqtt_acceptor(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, StartError> {
    match (&config.mqtt.tls_cert, &config.mqtt.tls_key) {
        (Some(cert), Some(key)) if config.mqtt.tls_listen.is_some() => {
            mqtt::tls::acceptor(cert, key)
                .map(Some)
                .map_err(StartError::MqttTls)
        }
        _ => Ok(None),
    }
}

/// The link to an external broker, when `mqtt.mode = "external"`.
fn broker_link(config: &Config) -> Result<Option<mqtt::external::Link>, StartError> {
    if config.mqtt.mode != MqttMode::External {
        return Ok(None);
    }
    mqtt::external::Link::load(config)
        .map(Some)
        .map_err(StartError::MqttBroker)
}

/// A digest of the cloud identity files' contents: a certificate renewed in place (same
/// path) must reach the uplink on reload, and an unchanged one must not cost a reconnect.
fn identity_files(cloud: &crate::config::CloudConfig) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for path in [&cloud.ca_file, &cloud.client_cert, &cloud.client_key]
        .into_iter()
        .flatten()
    {
        std::fs::read(path).ok().hash(&mut h);
    }
    h.finish()
}

/// Starts the control socket (`gateway.control_socket`). The daemon runs without it if it
/// cannot be made: it is for people, not for the appliances or the cloud.
fn control_socket(
    config: &Config,
    watched: &Arc<Watched>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    let path = &config.gateway.control_socket;
    if path.as_os_str().is_empty() {
        return;
    }
    match status::socket::bind(path) {
        Ok(listener) => {
            log::info!("control socket at {}", path.display());
            tracker.spawn(status::socket::serve(
                listener,
                path.clone(),
                watched.clone(),
                tracker.clone(),
                cancel.clone(),
            ));
        }
        Err(e) => log::error!(
            "no control socket ({}: {e}); `tetherd status` and `tetherd metrics` will not answer",
            path.display()
        ),
    }
}

/// The session's timing knobs from `[cloud]` (also used by the fuzz harness).
pub(crate) fn session_config(config: &Config) -> SessionConfig {
    SessionConfig {
        poll_wait: config.cloud.poll_wait,
        backoff_max: config.cloud.backoff_max,
        linger: config.cloud.result_linger,
        ping_interval: config.cloud.ping_interval,
    }
}

impl App {
    /// Starts every part; returns once the MQTT endpoint listens.
    pub async fn start(config: &Config) -> Result<App, StartError> {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Set up the uplink first: a bad CA or token file should fail before we listen.
        // The digest is taken before the client reads the files: a renewal written in
        // between then shows as a change at the next reload, never as none.
        let identity = identity_files(&config.cloud);
        let uplink = Uplink::new(&config.cloud, &config.gateway.id)?;
        let token = tls::load_token(&config.cloud)?;
        let (journal, recovery) = Journal::open(
            &config.gateway.state_dir,
            config.state.sync,
            config.state.max_journal_bytes,
        )?;
        // What runs: the file, with what the cloud put laid over it (`fleet`).
        let (store, store_error) = match Store::load(&config.gateway.state_dir) {
            Ok(store) => (store, None),
            Err(e) => {
                log::error!(
                    "cloud-managed entries not loaded, and left as they are: {e}; gateway commands that change them are refused until it is fixed"
                );
                (Store::empty(&config.gateway.state_dir), Some(e))
            }
        };
        let file_config = Arc::new(config.clone());
        let sources = fleet::lay_over(&file_config, &store, store_error.clone());
        let running = sources.running.clone();
        let config = &*running;
        log::info!(
            "journal open: {} result(s) owed, {} command(s) left unfinished by the last stop",
            recovery.owed,
            recovery.running.len()
        );
        let outbox = Arc::new(Outbox::new(journal.clone(), config.mqtt.max_events));
        if let Some(reason) = &recovery.reset {
            outbox.push_event(Event {
                appliance: None,
                kind: "journal_reset".into(),
                payload: serde_json::json!({ "error": reason }),
            });
        }
        let (mqtt, mqtt_addr) = match broker_link(config)? {
            Some(link) => {
                let b = config.mqtt.broker.as_deref().unwrap_or_default();
                log::info!(
                    "mqtt: the endpoint does not run; appliances are at the external broker {b}"
                );
                let handle =
                    mqtt::start_external(config, link, outbox.clone(), &tracker, cancel.clone());
                (handle, None)
            }
            None => {
                let tls = mqtt_acceptor(config)?;
                let sessions = mqtt::Sessions {
                    journal: Some(journal.clone()),
                    known: recovery.sessions,
                };
                let (mqtt, mqtt_addr, mqtt_tls_addr) = mqtt::start(
                    config,
                    tls,
                    outbox.clone(),
                    sessions,
                    &tracker,
                    cancel.clone(),
                )
                .await?;
                log::info!("mqtt endpoint listening on {mqtt_addr}");
                if let Some(addr) = mqtt_tls_addr {
                    log::info!("mqtt TLS endpoint listening on {addr}");
                }
                mqtt::exposure::warn_if_exposed("mqtt.listen", config.mqtt.listen);
                if let Some(addr) = mqtt_tls_addr {
                    mqtt::exposure::warn_if_exposed("mqtt.tls_listen", addr);
                }
                (mqtt, Some(mqtt_addr))
            }
        };
        // --- BLE transport (docs/ble.md): started only when BLE appliances are configured;
        // it never fails to start (a missing adapter is waited for, BLE commands are
        // `unreachable` meanwhile).
        let ble = config.has_ble().then(|| {
            crate::transport::ble::start(config, outbox.clone(), &tracker, cancel.clone())
        });
        // --- end of the BLE block.
        let transports = Transports {
            mqtt: mqtt.clone(),
            ble: ble.clone(),
        };
        let router = Router::start(
            config,
            transports,
            journal.clone(),
            outbox.clone(),
            &tracker,
            cancel.clone(),
        );
        let session = Session::new(session_config(config), Instant::now(), fastrand::Rng::new());
        let health = Arc::new(Health::default());
        let (reload, reload_rx) = mpsc::channel(4);
        let drain = CancellationToken::new();
        let driver = Driver {
            uplink,
            session,
            router: router.clone(),
            outbox: outbox.clone(),
            health: health.clone(),
            max_batch: config.cloud.max_batch,
            reload: reload_rx,
        };
        let watched = Arc::new(Watched::new(
            health,
            router.clone(),
            mqtt.clone(),
            ble.clone(),
            outbox.clone(),
            journal.clone(),
            config,
            sources,
        ));
        let (fleet, inbox) = fleet::channel();
        let task = Fleet {
            file: file_config.clone(),
            store,
            store_error,
            watched: watched.clone(),
        };
        tracker.spawn(task.run(inbox, cancel.clone()));
        router.set_gateway(Arc::new(fleet.clone()));
        // A listener that cannot be had fails the start before anything is taken from
        // the cloud or settled from the journal.
        control_socket(config, &watched, &tracker, &cancel);
        if let Some(addr) = config.metrics.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Metrics { addr, source })?;
            log::info!("metrics served on http://{addr}/metrics");
            tracker.spawn(status::socket::serve_metrics(
                listener,
                watched.clone(),
                tracker.clone(),
                cancel.clone(),
            ));
        }
        // Before the first poll (the driver starts only now): what the last run left is
        // queued ahead of anything that poll brings for the same appliance, and listed in
        // its `pending`.
        #[cfg(feature = "fault-injection")]
        crate::fault::slow_recovery().await;
        router.recover(recovery.running).await;
        tracker.spawn(driver.run(drain.clone(), cancel.clone()));
        tracker.spawn(systemd::supervise(watched.clone(), cancel.clone()));
        log::info!(
            "tetherd {} started: gateway {}, cloud {}, {} appliance(s)",
            env!("CARGO_PKG_VERSION"),
            config.gateway.id,
            config.cloud.url,
            config.appliances.len()
        );
        Ok(App {
            mqtt_addr,
            mqtt,
            outbox,
            router,
            journal,
            watched,
            fleet,
            config: file_config,
            token,
            identity,
            reload,
            drain,
            cancel,
            tracker,
        })
    }

    /// The one-line summary for systemd's STATUS.
    pub fn status_line(&self) -> String {
        self.watched.status_line()
    }

    /// Applies a reloaded configuration (already validated): what each key's section
    /// classifies as live at once, the rest logged and kept (`config::reload`).
    pub async fn reload(&mut self, new: Config) {
        let merged = reload::merge(&self.config, new);
        for key in &merged.kept {
            log::warn!(
                "reload: {key} changed; it takes effect at the next restart (kept as it was)"
            );
        }
        let old = &self.config;
        let mut new = merged.config;
        crate::logging::set_level(new.log.level_filter());
        let token = match tls::load_token(&new.cloud) {
            Ok(t) => t,
            Err(e) => {
                log::error!("reload: {e}; keeping the cloud settings in force");
                self.token.clone()
            }
        };
        let mut uplink = None;
        let identity = identity_files(&new.cloud);
        if merged.new_client || token != self.token || identity != self.identity {
            match Uplink::new(&new.cloud, &new.gateway.id) {
                Ok(u) => {
                    uplink = Some(u);
                    self.token = token;
                    self.identity = identity;
                }
                Err(e) => {
                    log::error!("reload: cloud settings refused ({e}); keeping the ones in force");
                    new.cloud = old.cloud.clone();
                }
            }
        }
        let change = Reconfigure {
            uplink,
            session: session_config(&new),
            max_batch: new.cloud.max_batch,
        };
        if self.reload.send(change).await.is_err() {
            log::warn!("reload: the uplink is stopping; cloud settings not applied");
        }
        // The router's limits and the MQTT rates come with the appliances: the fleet task
        // lays the cloud-managed entries over the new file and applies the result. Only
        // then is the reload done (and logged as such).
        let new = Arc::new(new);
        self.fleet.file_changed(new.clone()).await;
        log::info!(
            "configuration reloaded: {} appliance(s), {} group(s) in the file",
            new.appliances.len(),
            new.groups.len()
        );
        self.config = new;
    }

    /// Stops in order: no new commands, running ones get `grace` to finish (their results
    /// still go out), then everything stops and the journal is closed.
    pub async fn shutdown(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.drain.cancel();
        let running = self.router.busy_count();
        let waiting = self.router.waiting_ids().len();
        if waiting > 0 {
            log::info!(
                "{waiting} command(s) wait for appliances that are away; they stay in the journal and wait again after the restart"
            );
        }
        if running > 0 {
            log::info!("waiting up to {grace:?} for {running} running command(s)");
            if tokio::time::timeout_at(deadline, self.router.idle())
                .await
                .is_err()
            {
                log::warn!(
                    "{} command(s) still running at the end of the stop grace; they will be reported at the next start",
                    self.router.busy_count()
                );
            }
        }
        // Give finished results a moment to reach the cloud on the open link; they are in
        // the journal either way.
        let flush_until = deadline.min(Instant::now() + Duration::from_secs(2));
        while self.outbox.owed() > 0 && Instant::now() < flush_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        log::info!(
            "stopped; {} result(s) still owed to the cloud",
            self.outbox.owed()
        );
        self.journal.close().await;
    }
}
