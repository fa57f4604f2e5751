//! Talking to systemd: readiness, the STATUS line, the watchdog, reload and stop.
//!
//! Uses `sd_notify::notify` (never the variants that unset `NOTIFY_SOCKET`, so later
//! STATUS lines still arrive). Without `NOTIFY_SOCKET` every call is a no-op. The
//! watchdog task pings at half of `WATCHDOG_USEC`, and only while [`Health`] shows the
//! uplink loop turning and the router's and hub's locks answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::outbox::Outbox;
use crate::router::Router;
use crate::transport::mqtt::MqttHandle;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        log::debug!("sd_notify: {e}");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// RELOADING=1 with the monotonic timestamp systemd requires for `Type=notify-reload`.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// What the watchdog and STATUS line look at.
pub struct Watched {
    pub health: Arc<Health>,
    pub router: Router,
    pub mqtt: MqttHandle,
    pub outbox: Arc<Outbox>,
    /// Configured MQTT and BLE appliances (change on reload). BLE appliances are
    /// connected on demand, so only MQTT ones count towards "online".
    pub mqtt_appliances: AtomicUsize,
    pub ble_appliances: AtomicUsize,
}

impl Watched {
    /// One line: cloud state, appliances online, results owed, commands running, and the
    /// runtime's live tasks (a number that must not creep up over weeks).
    pub fn status_line(&self) -> String {
        let tasks =
            tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks());
        let ble = match self.ble_appliances.load(Ordering::Relaxed) {
            0 => String::new(),
            n => format!(" (+{n} BLE, linked on demand)"),
        };
        format!(
            "{}; {}/{} appliances online{ble}; {} results owed; {} commands running; {tasks} tasks",
            self.health.link_summary(),
            self.mqtt.online(),
            self.mqtt_appliances.load(Ordering::Relaxed),
            self.outbox.owed(),
            self.router.pending_count(),
        )
    }
}

/// Keeps STATUS current and, when systemd asked for it, pings the watchdog while the
/// daemon makes progress.
pub async fn supervise(watched: Arc<Watched>, cancel: CancellationToken) {
    let watchdog = sd_notify::watchdog_enabled();
    let tick = watchdog.map_or(Duration::from_secs(5), |w| {
        (w / 2).min(Duration::from_secs(5))
    });
    // The uplink loop turns every second; allow it the whole watchdog period to show it.
    let allowance = watchdog
        .unwrap_or(Duration::from_secs(30))
        .max(crate::health::BEAT_INTERVAL * 3);
    let mut last_status = String::new();
    let mut withheld = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        // Building the line takes the router's, hub's and outbox's locks: a deadlock there
        // stops this task, and with it the pings.
        let line = watched.status_line();
        if line != last_status {
            status(&line);
            last_status = line;
        }
        if watchdog.is_none() {
            continue;
        }
        if watched.health.uplink_alive(allowance) {
            send(&[NotifyState::Watchdog]);
            if std::mem::take(&mut withheld) {
                log::info!("uplink loop turning again; watchdog pings resumed");
            }
        } else if !withheld {
            withheld = true;
            log::error!(
                "uplink loop has not turned for {allowance:?}; withholding watchdog pings so systemd restarts the daemon"
            );
        } else {
            log::debug!("still withholding watchdog pings");
        }
    }
}
