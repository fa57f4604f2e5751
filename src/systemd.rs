//! Talking to systemd: readiness, the STATUS line, the watchdog, reload and stop.
//!
//! Uses `sd_notify::notify` (never the variants that unset `NOTIFY_SOCKET`, so later
//! STATUS lines still arrive). Without `NOTIFY_SOCKET` every call is a no-op. The
//! supervisor brings STATUS up to date when the cloud link or an appliance changes state,
//! and every second for the counters, and pings the watchdog at that pace
//! (or at half of `WATCHDOG_USEC`, if shorter), only while `Health` shows the uplink loop
//! turning and the router's and hub's locks answer.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::status::Watched;

/// How often the STATUS line is brought up to date.
const STATUS_TICK: Duration = Duration::from_secs(1);

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

/// Keeps STATUS current and, when systemd asked for it, pings the watchdog while the
/// daemon makes progress.
pub async fn supervise(watched: Arc<Watched>, cancel: CancellationToken) {
    let watchdog = sd_notify::watchdog_enabled();
    // STATUS follows the link and the appliances at once and the counters within a
    // second: building the line is cheap, and a line that did not change is not sent.
    // The watchdog is pinged at the tick (at least twice per WatchdogSec).
    let tick = watchdog.map_or(STATUS_TICK, |w| (w / 2).min(STATUS_TICK));
    // The uplink loop turns every second; allow it the whole watchdog period to show it.
    let allowance = watchdog
        .unwrap_or(Duration::from_secs(30))
        .max(crate::health::BEAT_INTERVAL * 3);
    // An interval, not a sleep per turn: a storm of state changes must not keep
    // postponing the watchdog's ping.
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = String::new();
    let mut withheld = false;
    loop {
        let mut beat = false;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => beat = true,
            // The link's state and the appliances' presence show at once.
            _ = watched.health.changed.notified() => {}
            _ = watched.mqtt.presence_changed() => {}
        }
        // Building the line takes the router's, hub's and outbox's locks: a deadlock there
        // stops this task, and with it the pings.
        let line = watched.status_line();
        if line != last_status {
            status(&line);
            last_status = line;
        }
        if watchdog.is_none() || !beat {
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
