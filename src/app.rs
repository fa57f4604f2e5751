//! Wiring: builds every part from the [`Config`], connects their channels, and shuts them
//! down in order.
//!
//! Start order: the journal (replaying what a previous run left), the outbox, the MQTT
//! endpoint (bound before anything reports ready: the LAN side works without the cloud),
//! the router with one worker per appliance, recovery of interrupted commands, then the
//! uplink driver. Every task runs on one [`TaskTracker`] under one [`CancellationToken`]; stopping
//! means cancelling the token and waiting for the tracker to drain.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cloud::driver::{Driver, Uplink};
use crate::cloud::session::{Session, SessionConfig};
use crate::cloud::tls::SetupError;
use crate::cloud::wire::Event;
use crate::config::Config;
use crate::journal::{Journal, JournalError};
use crate::outbox::Outbox;
use crate::router::Router;
use crate::transport::{Transports, mqtt};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on mqtt.listen {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cloud link setup: {0}")]
    Uplink(#[from] SetupError),
    #[error("{0}")]
    Journal(#[from] JournalError),
}

/// A running daemon.
pub struct App {
    pub mqtt_addr: SocketAddr,
    pub mqtt: mqtt::MqttHandle,
    pub outbox: Arc<Outbox>,
    pub router: Router,
    journal: Journal,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl App {
    /// Starts every part; returns once the MQTT endpoint listens.
    pub async fn start(config: &Config) -> Result<App, StartError> {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Set up the uplink first: a bad CA or token file should fail before we listen.
        let uplink = Uplink::new(&config.cloud, &config.gateway.id)?;
        let (journal, recovery) = Journal::open(
            &config.gateway.state_dir,
            config.state.sync,
            config.state.max_journal_bytes,
        )?;
        log::info!(
            "journal open: {} result(s) owed, {} command(s) interrupted by the last stop",
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
        let (mqtt, mqtt_addr) = mqtt::start(config, outbox.clone(), &tracker, cancel.clone())
            .await
            .map_err(|source| StartError::Listen {
                addr: config.mqtt.listen,
                source,
            })?;
        log::info!("mqtt endpoint listening on {mqtt_addr}");
        let transports = Transports { mqtt: mqtt.clone() };
        let router = Router::start(
            config,
            transports,
            journal.clone(),
            outbox.clone(),
            &tracker,
            cancel.clone(),
        );
        let recovering = router.clone();
        tracker.spawn(async move { recovering.recover(recovery.running).await });
        let session = Session::new(
            SessionConfig {
                poll_wait: config.cloud.poll_wait,
                backoff_max: config.cloud.backoff_max,
                linger: config.cloud.result_linger,
            },
            Instant::now(),
            fastrand::Rng::new(),
        );
        let driver = Driver {
            uplink,
            session,
            router: router.clone(),
            outbox: outbox.clone(),
            max_batch: config.cloud.max_batch,
        };
        tracker.spawn(driver.run(cancel.clone()));
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
            cancel,
            tracker,
        })
    }

    /// Stops every task and waits for them.
    pub async fn shutdown(self) {
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
