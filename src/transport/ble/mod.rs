//! Bluetooth Low Energy appliances, through BlueZ (btleplug over D-Bus).
//!
//! What it owns: the one btleplug `Manager` of the process and the adapter (`radio.rs`, an
//! actor that also scans, matches devices to appliances and reports presence), the GATT
//! links (`link.rs`), and the link slots (`scheduler.rs`, the policy; `pool.rs`, its async
//! wrapper), which keep at most `ble.max_connections` links up across all BLE appliances,
//! reuse a link while commands keep coming and close it after `ble.idle_disconnect`.
//!
//! Who talks to it: the router, through the cloneable [`BleHandle`] (one command at a time
//! per appliance: its worker awaits [`BleHandle::execute`]); the radio pushes `online` and
//! `offline` events to the [`Outbox`]. A command (`command.rs`) waits for a slot (FIFO
//! across appliances, up to its deadline), connects if needed (retrying a bounded number
//! of times: connecting is safe to repeat), writes its payload to `command_char` once and
//! never again, and takes the next notification on `result_char` (or reads it, when it
//! does not notify) as the answer. Payloads become bytes and back per `encoding`
//! (`codec.rs`).
//!
//! Started by `App::start` only when BLE appliances are configured. Without an adapter (no
//! bluetoothd, no controller) the daemon runs on; BLE commands are `unreachable` with the
//! reason until one appears. See docs/ble.md.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use btleplug::api::BDAddr;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::{ApplianceConfig, Config, TransportKind};
use crate::outbox::Outbox;
use crate::transport::{Dispatch, Outcome};

pub mod codec;
mod command;
mod fault;
mod link;
mod pool;
mod radio;
pub mod scheduler;

pub use codec::{Encoding, parse_address, parse_uuid};

use link::Link;
use pool::{Pool, ToClose};
use radio::Radio;

/// How one configured BLE appliance is found and spoken to.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub id: String,
    pub matcher: Matcher,
    pub service: Uuid,
    pub command: Uuid,
    pub result: Uuid,
    pub encoding: Encoding,
}

/// How the appliance's device is recognised among the ones BlueZ sees.
#[derive(Debug, Clone, PartialEq)]
pub enum Matcher {
    Address(BDAddr),
    /// The advertised (or BlueZ alias) name.
    Name(String),
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::Address(a) => write!(f, "address {a}"),
            Matcher::Name(n) => write!(f, "name {n:?}"),
        }
    }
}

impl Target {
    /// From a validated `[[appliance]]` (errors only for a config that skipped validation).
    pub fn from_config(a: &ApplianceConfig) -> Result<Target, String> {
        let uuid = |key: &str, v: &Option<String>| {
            v.as_deref()
                .ok_or_else(|| format!("{key} is required"))
                .and_then(parse_uuid)
        };
        let matcher = match (&a.address, &a.name) {
            (Some(address), _) => Matcher::Address(parse_address(address)?),
            (None, Some(name)) => Matcher::Name(name.clone()),
            (None, None) => return Err("address or name is required".into()),
        };
        Ok(Target {
            id: a.id.clone(),
            matcher,
            service: uuid("service", &a.service)?,
            command: uuid("command_char", &a.command_char)?,
            result: uuid("result_char", &a.result_char)?,
            encoding: a.encoding.unwrap_or_default(),
        })
    }
}

fn targets(config: &Config) -> HashMap<String, Target> {
    config
        .appliances
        .iter()
        .filter(|a| a.transport == TransportKind::Ble)
        .filter_map(|a| match Target::from_config(a) {
            Ok(t) => Some((a.id.clone(), t)),
            Err(e) => {
                log::error!(appliance = a.id.as_str(); "BLE appliance left out: {e}");
                None
            }
        })
        .collect()
}

/// Cloneable handle to the BLE transport.
#[derive(Clone)]
pub struct BleHandle {
    shared: Arc<Shared>,
}

struct Shared {
    radio: Arc<Radio>,
    pool: Arc<Pool<Link>>,
    connect_timeout: Duration,
}

impl BleHandle {
    /// Sends one command to appliance `appliance` and waits for its answer.
    pub async fn execute(&self, appliance: &str, dispatch: Dispatch) -> Outcome {
        command::execute(&self.shared, appliance, dispatch).await
    }

    /// Each BLE appliance found by a scan or not (BlueZ knows it, not: it is linked), and
    /// since when.
    pub fn presence(&self) -> HashMap<String, (bool, Option<std::time::SystemTime>)> {
        self.shared.radio.presence_map()
    }

    /// Applies a reloaded configuration's BLE appliances (the `[ble]` section needs a
    /// restart). Appliances whose entry changed are looked up again.
    pub fn reconfigure(&self, config: &Config) {
        self.shared.radio.set_targets(targets(config));
    }
}

/// Starts the radio actor, the idle reaper and the link closer on `tracker`; they stop on
/// `cancel`. Never fails: a missing adapter is waited for.
pub fn start(
    config: &Config,
    outbox: Arc<Outbox>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> BleHandle {
    let b = &config.ble;
    let (pool, to_close) = Pool::new(b.max_connections, b.idle_disconnect);
    let targets = targets(config);
    log::info!(
        "BLE transport: {} appliance(s), at most {} link(s), idle links closed after {:?}",
        targets.len(),
        b.max_connections,
        b.idle_disconnect
    );
    let radio = Arc::new(Radio::new(
        b.adapter.clone(),
        b.scan_timeout,
        targets,
        outbox,
        pool.clone(),
    ));
    let (actor, stop) = (radio.clone(), cancel.clone());
    tracker.spawn(supervise(
        move || actor.clone().run(stop.clone()),
        {
            let radio = radio.clone();
            move |_: &str| radio.lose("the radio task was restarted")
        },
        cancel.clone(),
    ));
    tracker.spawn(pool.clone().reap_idle(cancel.clone()));
    tracker.spawn(close_links(pool.clone(), to_close, tracker.clone(), cancel));
    BleHandle {
        shared: Arc::new(Shared {
            radio,
            pool,
            connect_timeout: b.connect_timeout,
        }),
    }
}

/// Runs a task (the radio actor) and runs it again if it panics: a bug, ours or in a
/// BlueZ binding, must cost a moment of BLE, never the daemon or the transport. Returns
/// when the task returns (on `cancel`).
async fn supervise<F, Fut>(mut start: F, on_panic: impl Fn(&str), cancel: CancellationToken)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(start()).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                let panic = e.into_panic();
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                log::error!("the BLE radio task panicked ({text}); starting it again");
                on_panic(&text);
            }
            Err(_) => return,
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Disconnects the links the pool gives up, each in its own task, then frees their slots.
async fn close_links(
    pool: Arc<Pool<Link>>,
    mut to_close: mpsc::UnboundedReceiver<ToClose<Link>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    loop {
        let (appliance, link) = tokio::select! {
            _ = cancel.cancelled() => return,
            next = to_close.recv() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let pool = pool.clone();
        tracker.spawn(async move {
            log::debug!(appliance = appliance.as_str(), transport = "ble"; "closing idle link");
            link.close().await;
            pool.closed(&appliance);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_actor_is_started_again() {
        let runs = Arc::new(AtomicUsize::new(0));
        let panics = Arc::new(std::sync::Mutex::new(Vec::new()));
        let counter = runs.clone();
        let seen = panics.clone();
        supervise(
            move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        panic!("No match with that id found");
                    }
                }
            },
            move |text: &str| seen.lock().unwrap().push(text.to_owned()),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(
            *panics.lock().unwrap(),
            vec!["No match with that id found"; 2]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_ends_the_supervision_between_restarts() {
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        supervise(
            || async { panic!("always") },
            move |_: &str| stop.cancel(),
            cancel,
        )
        .await;
    }
}
