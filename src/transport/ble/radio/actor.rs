//! The radio's actor loop: acquire the adapter, keep discovery running, follow BlueZ's
//! events, check health, and start over whenever the adapter is lost.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use btleplug::api::{
    Central, CentralEvent, CentralState, Manager as _, Peripheral as _, ScanFilter,
};
use btleplug::platform::{Adapter, Manager};
use futures_util::{Stream, StreamExt};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use super::{HEALTH_INTERVAL, RETRY_MAX, RETRY_MIN, Radio, SCAN_CHECK, adapter_gone};
use crate::transport::ble::fault::{Fault, classify, describe};
use crate::transport::ble::link::quietly_disconnect;

type Events = Pin<Box<dyn Stream<Item = CentralEvent> + Send>>;

/// Bound on any one BlueZ call made by the actor: a hung bluetoothd must not hang it.
const CALL: Duration = Duration::from_secs(10);

/// Why the actor gave up on the adapter it had.
type Lost = String;

impl Radio {
    /// Runs until `cancel`. Restartable: all state lives in `self`, so a supervisor may run
    /// it again after a panic.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut pause = RETRY_MIN;
        loop {
            let acquired = tokio::select! {
                _ = cancel.cancelled() => return,
                a = self.acquire() => a,
            };
            match acquired {
                Ok((adapter, events)) => {
                    pause = RETRY_MIN;
                    match self.serve(&adapter, events, &cancel).await {
                        Some(why) => self.lose(&why),
                        None => return self.stop(&adapter).await,
                    }
                }
                Err(why) => {
                    self.set_down(why);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = self.kick.notified() => {}
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    async fn manager(&self) -> Result<&Manager, String> {
        self.manager
            .get_or_try_init(|| async { Manager::new().await })
            .await
            .map_err(|e| format!("cannot reach the system D-Bus: {}", describe(&e)))
    }

    async fn acquire(&self) -> Result<(Adapter, Events), String> {
        let manager = self.manager().await?;
        let adapters = match timeout(CALL, manager.adapters()).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Err(format!("bluetoothd is not reachable ({})", describe(&e))),
            Err(_) => return Err("bluetoothd does not answer".into()),
        };
        let mut names = Vec::new();
        let mut chosen = None;
        for adapter in adapters {
            let info = match timeout(CALL, adapter.adapter_info()).await {
                Ok(Ok(info)) => info,
                _ => continue,
            };
            let name = info
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            let wanted = self.adapter_name.as_deref().is_none_or(|w| w == name);
            names.push(name);
            if wanted {
                chosen = Some((adapter, info));
                break;
            }
        }
        let Some((adapter, info)) = chosen else {
            return Err(match &self.adapter_name {
                Some(w) => format!("adapter {w} (ble.adapter) not present; found: {names:?}"),
                None => "bluetoothd has no adapter".into(),
            });
        };
        // A powered-off adapter is waited for, not switched on: someone (an operator,
        // rfkill, bluetoothd's own start) decided that. (btleplug's start_scan would
        // power it on.)
        if !matches!(
            timeout(CALL, adapter.adapter_state()).await,
            Ok(Ok(CentralState::PoweredOn))
        ) {
            return Err(format!("adapter {info} is powered off"));
        }
        let events = match timeout(CALL, adapter.events()).await {
            Ok(Ok(events)) => events,
            Ok(Err(e)) => return Err(format!("cannot follow adapter events: {}", describe(&e))),
            Err(_) => return Err("bluetoothd does not answer".into()),
        };
        {
            let mut state = self.lock();
            state.adapter = Some(adapter.clone());
            state.generation += 1;
            state.down = None;
            state.scanning = false;
        }
        log::info!("BLE adapter {info} acquired");
        Ok((adapter, events))
    }

    /// Follows the adapter until it is lost (`Some(why)`) or `cancel` (`None`).
    async fn serve(
        &self,
        adapter: &Adapter,
        mut events: Events,
        cancel: &CancellationToken,
    ) -> Option<Lost> {
        if let Err(why) = self.check(adapter, true).await {
            return Some(why);
        }
        self.changed.notify_waiters();
        let mut health =
            tokio::time::interval_at(Instant::now() + HEALTH_INTERVAL, HEALTH_INTERVAL);
        let mut scan_checked = Instant::now();
        loop {
            let checked = tokio::select! {
                _ = cancel.cancelled() => return None,
                event = events.next() => match event {
                    Some(event) => self.on_event(adapter, event).await,
                    None => Err("the BlueZ event stream ended".into()),
                },
                _ = self.kick.notified() => self.check(adapter, true).await,
                _ = health.tick() => {
                    let full = scan_checked.elapsed() >= SCAN_CHECK;
                    if full {
                        scan_checked = Instant::now();
                    }
                    self.check(adapter, full).await
                }
            };
            if let Err(why) = checked {
                return Some(why);
            }
        }
    }

    async fn on_event(&self, adapter: &Adapter, event: CentralEvent) -> Result<(), Lost> {
        match event {
            CentralEvent::DeviceDiscovered(id) | CentralEvent::ServicesAdvertisement { id, .. } => {
                let wanted = self.wanted();
                if wanted.is_empty() {
                    return Ok(());
                }
                if let Ok(Ok(p)) = timeout(CALL, adapter.peripheral(&id)).await {
                    self.consider(p, &wanted).await;
                }
            }
            CentralEvent::DeviceDisconnected(id) => {
                let appliances = self.appliances_of(&id);
                if appliances.is_empty() {
                    return Ok(());
                }
                // A report about the link before a quick reconnect is stale: ask BlueZ.
                if let Ok(Ok(p)) = timeout(CALL, adapter.peripheral(&id)).await
                    && matches!(timeout(CALL, p.is_connected()).await, Ok(Ok(true)))
                {
                    return Ok(());
                }
                for appliance in appliances {
                    log::debug!(appliance = appliance.as_str(), transport = "ble"; "link down");
                    if let Some(token) = self.lock().watches.get(&appliance) {
                        token.cancel();
                    }
                    drop(self.pool.dropped(&appliance));
                }
            }
            CentralEvent::StateUpdate(CentralState::PoweredOff) => {
                return Err("the adapter was powered off".into());
            }
            _ => {}
        }
        Ok(())
    }

    /// The adapter answers; discovery runs (when `scan`, or a restart was asked for); the
    /// appliances found are still known to BlueZ, and the ones missing are looked for
    /// among the devices it knows.
    async fn check(&self, adapter: &Adapter, scan: bool) -> Result<(), Lost> {
        match timeout(CALL, adapter.adapter_info()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("the adapter does not answer ({})", describe(&e))),
            Err(_) => return Err("the adapter does not answer".into()),
        }
        let cycle = std::mem::take(&mut self.lock().cycle_scan);
        if scan || cycle {
            self.scan(adapter, cycle).await?;
        }
        let listed = match timeout(CALL, adapter.peripherals()).await {
            Ok(Ok(list)) => list,
            Ok(Err(e)) => {
                return match adapter_gone(&e) {
                    Some(text) => Err(format!("cannot list devices ({text})")),
                    None => Ok(()),
                };
            }
            Err(_) => return Ok(()),
        };
        let ids: HashSet<_> = listed.iter().map(|p| p.id()).collect();
        let vanished: Vec<String> = self
            .lock()
            .found
            .iter()
            .filter(|(_, p)| !ids.contains(&p.id()))
            .map(|(a, _)| a.clone())
            .collect();
        for appliance in &vanished {
            self.forget(appliance, "BlueZ no longer knows the device");
        }
        if !vanished.is_empty() && !scan {
            // BlueZ forgot devices (a bluetoothd restart we did not see?): our discovery
            // session may be gone with it.
            self.scan(adapter, false).await?;
        }
        let wanted = self.wanted();
        if !wanted.is_empty() {
            for p in listed {
                self.consider(p, &wanted).await;
            }
        }
        Ok(())
    }

    /// Makes sure our discovery session runs; `cycle` stops and starts it first.
    async fn scan(&self, adapter: &Adapter, cycle: bool) -> Result<(), Lost> {
        if cycle {
            log::info!("BLE discovery found nothing within ble.scan_timeout; restarting it");
            let _ = timeout(CALL, adapter.stop_scan()).await;
        }
        let started = timeout(CALL, adapter.start_scan(ScanFilter::default())).await;
        let believed = std::mem::replace(&mut self.lock().scanning, true);
        match started {
            Ok(Ok(())) if believed && !cycle => {
                log::warn!("BLE discovery had stopped (bluetoothd restarted?); started it again");
            }
            Ok(Ok(())) => log::info!("BLE discovery started"),
            Ok(Err(e)) => match classify(&e) {
                // BlueZ allows one discovery per client: ours is running.
                Fault::InProgress => {}
                Fault::Adapter => return Err(format!("cannot start discovery ({})", describe(&e))),
                _ => {
                    self.lock().scanning = false;
                    log::warn!("cannot start BLE discovery: {}", describe(&e));
                }
            },
            Err(_) => {
                self.lock().scanning = false;
                log::warn!("cannot start BLE discovery: bluetoothd does not answer");
            }
        }
        Ok(())
    }

    /// Records that there is no adapter (logged when the reason changes).
    fn set_down(&self, why: String) {
        let mut state = self.lock();
        let changed = state.down.as_ref().is_none_or(|(old, _)| *old != why);
        if changed {
            log::warn!(
                "BLE adapter unavailable: {why}; BLE commands are unreachable until it is back"
            );
            let since = state
                .down
                .as_ref()
                .map_or_else(Instant::now, |(_, since)| *since);
            state.down = Some((why, since));
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// The adapter is gone: forget every peripheral and link made through it.
    pub fn lose(&self, why: &str) {
        log::warn!("BLE adapter lost: {why}; acquiring it again");
        let (online, watches) = {
            let mut state = self.lock();
            state.adapter = None;
            state.scanning = false;
            state.down = Some((why.to_owned(), Instant::now()));
            state.found.clear();
            let online: Vec<String> = state.online.drain().collect();
            let watches: Vec<_> = state.watches.drain().map(|(_, t)| t).collect();
            (online, watches)
        };
        for token in watches {
            token.cancel();
        }
        drop(self.pool.drop_idle());
        for appliance in online {
            self.presence(&appliance, false, "the Bluetooth adapter went away");
        }
        self.changed.notify_waiters();
    }

    /// Shutdown: stop scanning, disconnect what we connected (bounded).
    async fn stop(&self, adapter: &Adapter) {
        let found: Vec<_> = self.lock().found.values().cloned().collect();
        let work = async {
            let _ = adapter.stop_scan().await;
            for p in found {
                if matches!(p.is_connected().await, Ok(true)) {
                    quietly_disconnect(&p).await;
                }
            }
        };
        let _ = timeout(Duration::from_secs(3), work).await;
    }
}
