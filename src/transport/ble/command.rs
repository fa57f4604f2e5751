//! One command for one BLE appliance, from slot to answer.
//!
//! Time budget: everything (waiting for a slot, finding the device, connecting, the
//! exchange) fits in the command's timeout, and a TTL deadline stops it before the write.
//! What is retried: only what happens before the write (finding the device, connecting,
//! a link found dead before use). What never is: the write. Outcomes: nothing sent ->
//! `unreachable` (or `expired` when the TTL ran out first); for an appliance whose entry
//! says `offline = "queue"`, not finding it first waits for it to advertise again, within
//! the command's hold, and the timeout starts once it is seen; written and the link dropped
//! -> `interrupted`; written and refused -> `error`; no answer in time -> `timeout`.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;

use super::fault::Fault;
use super::link::{Exchange, Link};
use super::pool::{Kept, Permit};
use super::radio::FindError;
use super::{Shared, Target, codec};
use crate::config::Offline;
use crate::transport::{Dispatch, Outcome, Payload, SendGate};

/// Connect attempts per command (each bounded by `ble.connect_timeout`).
const CONNECT_ATTEMPTS: u32 = 3;
/// First pause between connect attempts; doubled each time, with jitter so that waiters
/// do not retry in step (BlueZ's connection-slot storms).
const CONNECT_BACKOFF: Duration = Duration::from_millis(200);
/// How often a command waiting for an appliance looks again while there is no adapter.
const ADAPTER_RECHECK: Duration = Duration::from_secs(5);

pub(super) async fn execute(shared: &Shared, appliance: &str, d: Dispatch) -> Outcome {
    let Some(target) = shared.radio.target(appliance) else {
        return Outcome::Unreachable("not a configured BLE appliance".into());
    };
    let encoded = match &d.payload {
        Payload::Json(v) => codec::encode(v, target.encoding),
        Payload::Raw(bytes) => codec::raw(bytes),
    };
    let bytes = match encoded {
        Ok(bytes) => bytes,
        Err(e) => return Outcome::Error(format!("not sent: {e}")),
    };
    if d.hold.offline == Offline::Queue
        && let Err(outcome) = wait_until_seen(shared, appliance, &d).await
    {
        return outcome;
    }
    // The timeout starts once the appliance is there: a wait for it is the hold's.
    let deadline = Instant::now() + d.timeout;
    let until = d.deadline.map_or(deadline, |ttl| ttl.min(deadline));
    // Scanning needs no link: an appliance not seen yet is waited for before a slot is
    // taken, so absent appliances cannot hold every slot while present ones queue.
    if let Err(e) = shared.radio.find(appliance, until).await {
        return if d.ttl_passed(Instant::now()) {
            Outcome::Expired(format!(
                "ttl ran out while looking for the appliance ({e}); not sent"
            ))
        } else {
            Outcome::Unreachable(format!("not sent: {e}"))
        };
    }
    let Some(mut permit) = shared.pool.acquire(appliance, until).await else {
        let (_, waiting, max) = shared.pool.usage();
        return if d.ttl_passed(Instant::now()) {
            Outcome::Expired(format!(
                "ttl ran out waiting for a BLE link (all {max} of ble.max_connections busy, {waiting} more waiting); not sent"
            ))
        } else {
            Outcome::Unreachable(format!(
                "not sent: no BLE link came free within the timeout (all {max} of ble.max_connections busy, {waiting} more waiting)"
            ))
        };
    };
    let mut written = false;
    let run = Run {
        shared,
        target: &target,
        bytes: &bytes,
        deadline,
        ttl: d.deadline,
        gate: &d.gate,
        written: &mut written,
    };
    // A panic below (ours or a binding's) must not take the appliance's router worker with
    // it: it becomes this command's outcome, and the slot is freed.
    match AssertUnwindSafe(run.go(&mut permit)).catch_unwind().await {
        Ok((outcome, kept)) => {
            permit.release(kept);
            outcome
        }
        Err(_) => {
            log::error!(appliance = appliance, transport = "ble"; "BLE command task panicked");
            shared.radio.disconnect(appliance).await;
            permit.release(Kept::Gone);
            if written {
                Outcome::Interrupted("the BLE task failed after the command was written".into())
            } else {
                Outcome::Unreachable("not sent: the BLE task failed".into())
            }
        }
    }
}

/// For an appliance whose commands wait while it is away: looks for it, scanning, until
/// it is seen advertising or the command's hold runs out.
async fn wait_until_seen(shared: &Shared, appliance: &str, d: &Dispatch) -> Result<(), Outcome> {
    let hold = &d.hold;
    loop {
        match shared.radio.find(appliance, hold.until).await {
            Ok(_) => {
                if hold.is_waiting() {
                    log::info!(command_id = d.command_id.as_str(), appliance = appliance, transport = "ble";
                        "appliance is back; sending the command that waited for it");
                }
                hold.waiting(false);
                return Ok(());
            }
            Err(FindError::Unknown) => {
                return Err(Outcome::Unreachable(
                    "not a configured BLE appliance".into(),
                ));
            }
            Err(e) => {
                let now = Instant::now();
                if now >= hold.until {
                    hold.waiting(false);
                    let why = format!("the appliance was away ({e})");
                    return Err(hold.gave_up(d.ttl_passed(now), &why));
                }
                if !hold.is_waiting() {
                    log::info!(command_id = d.command_id.as_str(), appliance = appliance, transport = "ble";
                        "{e}: the command waits for the appliance");
                }
                hold.waiting(true);
                if matches!(e, FindError::NoAdapter(_)) {
                    // Answered at once while the adapter is gone: look again later.
                    tokio::time::sleep_until(hold.until.min(now + ADAPTER_RECHECK)).await;
                }
            }
        }
    }
}

struct Run<'a> {
    shared: &'a Shared,
    target: &'a Target,
    bytes: &'a [u8],
    deadline: Instant,
    ttl: Option<Instant>,
    gate: &'a SendGate,
    /// Set just before the write: from then on nothing is retried.
    written: &'a mut bool,
}

impl Run<'_> {
    fn appliance(&self) -> &str {
        &self.target.id
    }

    async fn go(self, permit: &mut Permit<Link>) -> (Outcome, Kept<Link>) {
        let mut kept = permit.take_link();
        let mut reconnected = false;
        loop {
            let usable = match (&mut kept, self.shared.radio.generation()) {
                (Some(link), Some(generation)) => link.usable(generation).await,
                _ => false,
            };
            let mut link = match kept.take() {
                Some(link) if usable => link,
                stale => {
                    if let Some(link) = stale {
                        log::debug!(appliance = self.appliance(), transport = "ble"; "kept link is down; reconnecting");
                        link.close().await;
                    }
                    match self.connect().await {
                        Ok(link) => link,
                        Err(outcome) => return (outcome, Kept::Gone),
                    }
                }
            };
            if self.ttl.is_some_and(|ttl| ttl <= Instant::now()) {
                let why = "ttl ran out before the write (connecting took too long); not sent";
                return (Outcome::Expired(why.into()), Kept::Idle(link));
            }
            self.gate.pass().await;
            *self.written = true;
            let outcome = match link.exchange(self.bytes, self.deadline).await {
                Exchange::NotSent(why) => {
                    *self.written = false;
                    if !reconnected {
                        reconnected = true;
                        link.close().await;
                        continue;
                    }
                    return (
                        Outcome::Unreachable(format!("not sent: {why}")),
                        Kept::Close(link),
                    );
                }
                Exchange::Answer(bytes) => match codec::decode(&bytes, self.target.encoding) {
                    Ok(payload) => Outcome::Ok(Some(payload)),
                    Err(e) => Outcome::Error(e.to_string()),
                },
                Exchange::WriteFailed(e) => Outcome::Error(format!("write refused: {e}")),
                Exchange::ReadFailed(e) => {
                    Outcome::Error(format!("reading the answer failed: {e}"))
                }
                Exchange::Interrupted(e) => return (Outcome::Interrupted(e), Kept::Close(link)),
                // A late answer is drained before the next write.
                Exchange::Timeout => Outcome::Timeout,
            };
            return (outcome, Kept::Idle(link));
        }
    }

    /// Finds the device and connects, retrying a bounded number of times within the
    /// deadline. The error is the command's outcome.
    async fn connect(&self) -> Result<Link, Outcome> {
        let radio = &self.shared.radio;
        let mut last: Option<String> = None;
        let mut attempts = 0;
        while attempts < CONNECT_ATTEMPTS {
            attempts += 1;
            let found = match radio.find(self.appliance(), self.deadline).await {
                Ok(found) => found,
                Err(e) => {
                    let after = last.map(|l| format!(" (after: {l})")).unwrap_or_default();
                    return Err(Outcome::Unreachable(format!("not sent: {e}{after}")));
                }
            };
            let until = self
                .deadline
                .min(Instant::now() + self.shared.connect_timeout);
            let lost = radio.watch(self.appliance());
            match Link::open(found.peripheral, self.target, lost, found.generation, until).await {
                Ok(link) => {
                    log::debug!(appliance = self.appliance(), transport = "ble", attempt = attempts; "connected");
                    return Ok(link);
                }
                Err(e) => {
                    log::warn!(appliance = self.appliance(), transport = "ble";
                        "connect attempt {attempts} of {CONNECT_ATTEMPTS} failed: {e}");
                    if e.permanent {
                        return Err(Outcome::Unreachable(format!("not sent: {e}")));
                    }
                    match e.fault {
                        Fault::Adapter => radio.adapter_fault(),
                        Fault::Device => {
                            radio.forget(self.appliance(), "BlueZ no longer knows the device")
                        }
                        _ => {}
                    }
                    last = Some(e.to_string());
                }
            }
            if attempts == CONNECT_ATTEMPTS {
                break;
            }
            let factor = 2u32.pow(attempts - 1);
            let pause = (CONNECT_BACKOFF * factor).mul_f64(0.5 + fastrand::f64());
            if Instant::now() + pause >= self.deadline {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        let last = last.unwrap_or_else(|| "no attempt fitted in the timeout".into());
        Err(Outcome::Unreachable(format!(
            "not sent: could not connect ({attempts} attempt(s)); last: {last}"
        )))
    }
}
