//! The radio: the one btleplug `Manager`, the adapter, scanning, and which peripheral is
//! which appliance.
//!
//! One actor task ([`Radio::run`]) owns the adapter's life: it acquires the adapter
//! (`ble.adapter`, default the first), keeps a discovery session running, matches
//! discovered devices to configured appliances (by address, or by advertised name), reports
//! presence upstream (`online` when an appliance is found, `offline` when BlueZ forgets it
//! or the adapter goes), and tells links when BlueZ reports their device disconnected.
//! Commands ask it for an appliance's peripheral ([`Radio::find`]) and kick it when a call
//! says bluetoothd or the device object is gone.
//!
//! bluetoothd can go away under us: a graceful restart emits DeviceDisconnected and
//! StateUpdate(PoweredOff), a crash emits nothing and calls fail (ServiceUnknown while it is
//! down, UnknownObject for old object paths after), and discovery can silently stop. Every
//! such sign leads to the same recovery: forget peripherals and links, re-acquire the
//! adapter, restart scanning (InProgress means it is running), look at the devices BlueZ
//! already knows (`peripherals()`: a known device is not announced again), then follow
//! events. The `Manager` (one D-Bus connection) is made once and kept for the process:
//! dropping one leaks its connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use btleplug::api::Peripheral as _;
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use serde_json::Value;
use tokio::sync::{Notify, OnceCell};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fault::{Fault, classify, describe};
use super::link::Link;
use super::pool::Pool;
use super::{Matcher, Target};
use crate::cloud::wire::Event;
use crate::outbox::Outbox;

mod actor;

/// Retry pacing while there is no adapter (kicks from commands cut it short).
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How often the actor checks that the adapter answers and the appliances it found are
/// still known to BlueZ.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// How often, at the least, it makes sure discovery runs (StartDiscovery: InProgress
/// when it does).
const SCAN_CHECK: Duration = Duration::from_secs(30);

/// The peripheral to connect to, and the adapter generation it belongs to.
pub struct Found {
    pub peripheral: Peripheral,
    pub generation: u64,
}

/// Why [`Radio::find`] found nothing; the text goes to the cloud.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error("no Bluetooth adapter: {0}")]
    NoAdapter(String),
    #[error(
        "not found: no device with {what} seen by scanning in {waited:?} (ble.scan_timeout = {scan_timeout:?})"
    )]
    NotFound {
        what: String,
        waited: Duration,
        scan_timeout: Duration,
    },
    #[error("not a configured BLE appliance")]
    Unknown,
}

pub struct Radio {
    adapter_name: Option<String>,
    scan_timeout: Duration,
    targets: RwLock<Arc<HashMap<String, Target>>>,
    manager: OnceCell<Manager>,
    state: Mutex<State>,
    /// Woken (all waiters) when an appliance is found or the adapter comes or goes.
    changed: Notify,
    /// Asks the actor to check the adapter and scanning now.
    kick: Notify,
    outbox: Arc<Outbox>,
    pool: Arc<Pool<Link>>,
}

struct State {
    adapter: Option<Adapter>,
    /// Bumped at every acquisition; links made on an older one are not used.
    generation: u64,
    /// Why there is no adapter, and since when.
    down: Option<(String, Instant)>,
    /// The discovery session we started is believed to be running.
    scanning: bool,
    /// A lookup found nothing within scan_timeout: stop and start discovery again.
    cycle_scan: bool,
    found: HashMap<String, Peripheral>,
    /// Appliances reported `online` (and not since `offline`).
    online: std::collections::HashSet<String>,
    /// When each appliance was last reported online or offline (`tetherd status`).
    since: HashMap<String, std::time::SystemTime>,
    /// Per appliance, the current link's token, cancelled when BlueZ reports it down.
    watches: HashMap<String, CancellationToken>,
}

impl Radio {
    pub fn new(
        adapter_name: Option<String>,
        scan_timeout: Duration,
        targets: HashMap<String, Target>,
        outbox: Arc<Outbox>,
        pool: Arc<Pool<Link>>,
    ) -> Radio {
        Radio {
            adapter_name,
            scan_timeout,
            targets: RwLock::new(Arc::new(targets)),
            manager: OnceCell::new(),
            state: Mutex::new(State {
                adapter: None,
                generation: 0,
                down: Some(("looking for the adapter".into(), Instant::now())),
                scanning: false,
                cycle_scan: false,
                found: HashMap::new(),
                online: Default::default(),
                since: HashMap::new(),
                watches: HashMap::new(),
            }),
            changed: Notify::new(),
            kick: Notify::new(),
            outbox,
            pool,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn targets(&self) -> Arc<HashMap<String, Target>> {
        self.targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn target(&self, appliance: &str) -> Option<Target> {
        self.targets().get(appliance).cloned()
    }

    /// Replaces the appliance table; appliances whose entry changed are looked up again.
    pub fn set_targets(&self, targets: HashMap<String, Target>) {
        let old = self.targets();
        *self.targets.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(targets.clone());
        for (id, t) in old.iter() {
            if targets.get(id) != Some(t) {
                self.forget(id, "its configuration changed");
            }
        }
        self.kick.notify_one();
    }

    /// The current adapter generation, if there is an adapter.
    pub fn generation(&self) -> Option<u64> {
        let state = self.lock();
        state.adapter.as_ref().map(|_| state.generation)
    }

    /// Asks the actor to check the adapter now (a call failed as if bluetoothd were gone).
    pub fn adapter_fault(&self) {
        self.kick.notify_one();
    }

    /// A fresh token for `appliance`'s new link, cancelled when BlueZ reports it down.
    pub fn watch(&self, appliance: &str) -> CancellationToken {
        let token = CancellationToken::new();
        if let Some(old) = self
            .lock()
            .watches
            .insert(appliance.to_owned(), token.clone())
        {
            old.cancel();
        }
        token
    }

    /// `appliance`'s peripheral: known already, or found by scanning within
    /// `ble.scan_timeout` (and `deadline`).
    pub async fn find(&self, appliance: &str, deadline: Instant) -> Result<Found, FindError> {
        let target = self.target(appliance).ok_or(FindError::Unknown)?;
        let started = Instant::now();
        let until = deadline.min(started + self.scan_timeout);
        let mut kicked = false;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let state = self.lock();
                match (&state.adapter, state.found.get(appliance), &state.down) {
                    (Some(_), Some(p), _) => {
                        return Ok(Found {
                            peripheral: p.clone(),
                            generation: state.generation,
                        });
                    }
                    // Down for longer than a restart takes: say so at once.
                    (None, _, Some((why, since)))
                        if since.elapsed() >= self.scan_timeout || Instant::now() >= until =>
                    {
                        return Err(FindError::NoAdapter(why.clone()));
                    }
                    _ => {}
                }
            }
            if Instant::now() >= until {
                let mut state = self.lock();
                if state.adapter.is_some() {
                    // Scanning that finds nothing may have silently stopped.
                    state.cycle_scan = true;
                    drop(state);
                    self.kick.notify_one();
                }
                return Err(FindError::NotFound {
                    what: target.matcher.to_string(),
                    waited: Duration::from_millis(
                        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    ),
                    scan_timeout: self.scan_timeout,
                });
            }
            if !kicked {
                kicked = true;
                self.kick.notify_one();
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Forgets `appliance`'s peripheral (BlueZ no longer knows its object): it is looked
    /// up again.
    pub fn forget(&self, appliance: &str, why: &str) {
        let was_online = {
            let mut state = self.lock();
            state.found.remove(appliance);
            state.online.remove(appliance)
        };
        if was_online {
            self.presence(appliance, false, why);
        }
        self.kick.notify_one();
    }

    /// Best effort, bounded: disconnect `appliance`'s device (its link object was lost).
    pub async fn disconnect(&self, appliance: &str) {
        let peripheral = self.lock().found.get(appliance).cloned();
        if let Some(p) = peripheral {
            super::link::quietly_disconnect(&p).await;
        }
    }

    /// Each appliance found by a scan (BlueZ knows it) or not, and since when.
    pub fn presence_map(&self) -> HashMap<String, (bool, Option<std::time::SystemTime>)> {
        let state = self.lock();
        self.targets()
            .keys()
            .map(|id| {
                let p = (state.online.contains(id), state.since.get(id).copied());
                (id.clone(), p)
            })
            .collect()
    }

    fn presence(&self, appliance: &str, online: bool, why: &str) {
        self.lock()
            .since
            .insert(appliance.to_owned(), std::time::SystemTime::now());
        let kind = if online { "online" } else { "offline" };
        log::info!(appliance = appliance, transport = "ble"; "appliance {kind}: {why}");
        self.outbox.push_event(Event {
            appliance: Some(appliance.to_owned()),
            kind: kind.to_owned(),
            payload: Value::Null,
        });
    }

    fn mark_found(&self, appliance: &str, peripheral: Peripheral) {
        let newly_online = {
            let mut state = self.lock();
            state.found.insert(appliance.to_owned(), peripheral.clone());
            state.online.insert(appliance.to_owned())
        };
        if newly_online {
            let why = format!("found as {}", peripheral.address());
            self.presence(appliance, true, &why);
        }
        self.changed.notify_waiters();
    }

    /// Appliances not found yet.
    fn wanted(&self) -> Vec<Target> {
        let state = self.lock();
        self.targets()
            .values()
            .filter(|t| !state.found.contains_key(&t.id))
            .cloned()
            .collect()
    }

    /// Matches one BlueZ device against the appliances still wanted.
    async fn consider(&self, peripheral: Peripheral, wanted: &[Target]) {
        let address = peripheral.address();
        if let Some(t) = wanted
            .iter()
            .find(|t| t.matcher == Matcher::Address(address))
        {
            return self.mark_found(&t.id, peripheral);
        }
        if !wanted.iter().any(|t| matches!(t.matcher, Matcher::Name(_))) {
            return;
        }
        let Ok(Ok(Some(props))) =
            tokio::time::timeout(Duration::from_secs(2), peripheral.properties()).await
        else {
            return;
        };
        let names = [props.local_name, props.advertisement_name];
        if let Some(t) = wanted.iter().find(|t| match &t.matcher {
            Matcher::Name(n) => names.iter().flatten().any(|have| have == n),
            Matcher::Address(_) => false,
        }) {
            self.mark_found(&t.id, peripheral);
        }
    }

    /// Appliances whose found peripheral has this BlueZ id.
    fn appliances_of(&self, id: &PeripheralId) -> Vec<String> {
        self.lock()
            .found
            .iter()
            .filter(|(_, p)| p.id() == *id)
            .map(|(a, _)| a.clone())
            .collect()
    }
}

/// A failed call's text, and whether it means the adapter (bluetoothd) is gone.
fn adapter_gone(e: &btleplug::Error) -> Option<String> {
    (classify(e) == Fault::Adapter).then(|| describe(e))
}
