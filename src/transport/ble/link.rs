//! One GATT link to one appliance, and one command exchanged over it.
//!
//! [`Link::open`] connects, discovers services (always: after a reconnect the old
//! characteristic handles are gone), finds the command and result characteristics, opens
//! the notification stream and subscribes to the result characteristic *before* anything
//! is written, so an answer cannot slip past. [`Link::exchange`] writes one command (write
//! with response) and waits for the next notification on the result characteristic, or,
//! when it has no notify flag, reads it after the write.
//!
//! Owned by whoever holds the appliance's slot: a running command, or the pool while idle.
//! The radio cancels `lost` when BlueZ reports the device disconnected.

use std::pin::Pin;
use std::time::Duration;

use btleplug::api::{CharPropFlags, Characteristic, Peripheral as _, ValueNotification, WriteType};
use btleplug::platform::Peripheral;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use super::Target;
use super::fault::{Fault, classify, describe};

type Notes = Pin<Box<dyn Stream<Item = ValueNotification> + Send>>;

/// Bound on housekeeping calls (is_connected, disconnect) that must not hold a command up.
const QUICK_CALL: Duration = Duration::from_secs(2);
/// While waiting for an answer, how often the link is checked: a crashed bluetoothd sends
/// no disconnect signal, only failing calls.
const LIVENESS_PROBE: Duration = Duration::from_secs(1);

pub struct Link {
    peripheral: Peripheral,
    command: Characteristic,
    result: Characteristic,
    /// The result characteristic notifies (or indicates); otherwise it is read.
    notify: bool,
    notes: Notes,
    lost: CancellationToken,
    /// The radio's adapter generation when the link was made.
    generation: u64,
}

/// Why a link could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {text}")]
pub struct OpenError {
    pub what: &'static str,
    pub text: String,
    pub fault: Fault,
    /// Retrying cannot help (the appliance lacks the configured characteristics).
    pub permanent: bool,
}

impl OpenError {
    fn call(what: &'static str, e: &btleplug::Error) -> OpenError {
        OpenError {
            what,
            text: describe(e),
            fault: classify(e),
            permanent: false,
        }
    }

    fn timed_out(what: &'static str) -> OpenError {
        OpenError {
            what,
            text: "no answer in time".into(),
            fault: Fault::Other,
            permanent: false,
        }
    }
}

/// One BlueZ call of opening a link, under the open's deadline.
async fn step<T>(
    what: &'static str,
    until: Instant,
    call: impl Future<Output = btleplug::Result<T>>,
) -> Result<T, OpenError> {
    match timeout_at(until, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(OpenError::call(what, &e)),
        Err(_) => Err(OpenError::timed_out(what)),
    }
}

/// How one exchange ended.
#[derive(Debug)]
pub enum Exchange {
    /// The bytes the appliance answered.
    Answer(Vec<u8>),
    /// Nothing was written; the link is unusable (reconnecting is safe).
    NotSent(String),
    /// The write failed and the link is still up: the appliance refused it.
    WriteFailed(String),
    /// Reading the answer failed and the link is still up.
    ReadFailed(String),
    /// The link dropped after the write was sent: the appliance may have acted.
    Interrupted(String),
    /// No answer before the deadline.
    Timeout,
}

impl Link {
    /// Connects and prepares `peripheral` for `target`'s commands, within `until`.
    pub async fn open(
        peripheral: Peripheral,
        target: &Target,
        lost: CancellationToken,
        generation: u64,
        until: Instant,
    ) -> Result<Link, OpenError> {
        match timeout_at(until, peripheral.connect()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(OpenError::call("connect", &e)),
            Err(_) => {
                // BlueZ keeps a timed-out Connect pending, and a second one would fail
                // "already in progress": Disconnect cancels it.
                quietly_disconnect(&peripheral).await;
                return Err(OpenError::timed_out("connect"));
            }
        }
        match Self::prepare(peripheral.clone(), target, lost, generation, until).await {
            Ok(link) => Ok(link),
            Err(e) => {
                // Do not leave a link up that nobody accounts for.
                quietly_disconnect(&peripheral).await;
                Err(e)
            }
        }
    }

    async fn prepare(
        peripheral: Peripheral,
        target: &Target,
        lost: CancellationToken,
        generation: u64,
        until: Instant,
    ) -> Result<Link, OpenError> {
        step("service discovery", until, peripheral.discover_services()).await?;
        let chars = peripheral.characteristics();
        let find = |uuid| {
            chars
                .iter()
                .find(|c| c.service_uuid == target.service && c.uuid == uuid)
                .cloned()
                .ok_or_else(|| OpenError {
                    what: "gatt layout",
                    text: format!(
                        "the appliance has no characteristic {uuid} in service {}",
                        target.service
                    ),
                    fault: Fault::Other,
                    permanent: true,
                })
        };
        let command = find(target.command)?;
        let result = find(target.result)?;
        let notify = result
            .properties
            .intersects(CharPropFlags::NOTIFY | CharPropFlags::INDICATE);
        // The stream first, then the subscription: nothing notified after it is missed.
        let notes = step("notification stream", until, peripheral.notifications()).await?;
        if notify {
            step("subscribe", until, peripheral.subscribe(&result)).await?;
        }
        Ok(Link {
            peripheral,
            command,
            result,
            notify,
            notes,
            lost,
            generation,
        })
    }

    /// Whether the link can carry a command: not reported lost, made on the current
    /// adapter, and BlueZ says it is connected. (`&mut`: a `Link` is not `Sync`, its
    /// notification stream is not, so no `&Link` may be held across an await.)
    pub async fn usable(&mut self, generation: u64) -> bool {
        !self.lost.is_cancelled()
            && self.generation == generation
            && connected(&self.peripheral).await
    }

    /// Disconnects (bounded; failures do not matter: the link is given up either way).
    pub async fn close(self) {
        quietly_disconnect(&self.peripheral).await;
    }

    /// Writes `bytes` and waits, until `deadline`, for the answer.
    pub async fn exchange(&mut self, bytes: &[u8], deadline: Instant) -> Exchange {
        // An answer that came late for an earlier command (or the echo of our own read)
        // is waiting in the stream: it must not be taken for this command's answer.
        loop {
            match self.notes.next().now_or_never() {
                Some(Some(_)) => continue,
                Some(None) => return Exchange::NotSent("the notification stream ended".into()),
                None => break,
            }
        }
        let write = self
            .peripheral
            .write(&self.command, bytes, WriteType::WithResponse);
        match timeout_at(deadline, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let text = describe(&e);
                return if connected(&self.peripheral).await {
                    Exchange::WriteFailed(text)
                } else {
                    Exchange::Interrupted(format!("the link dropped during the write ({text})"))
                };
            }
            // Not acknowledged in time: it may have arrived.
            Err(_) => return Exchange::Timeout,
        }
        if self.notify {
            self.await_notification(deadline).await
        } else {
            self.read_answer(deadline).await
        }
    }

    async fn await_notification(&mut self, deadline: Instant) -> Exchange {
        let mut probe = tokio::time::interval_at(Instant::now() + LIVENESS_PROBE, LIVENESS_PROBE);
        // A disconnect report can be stale (from the link before a reconnect): it only
        // counts if BlueZ agrees; after that the token is ignored, the probe goes on.
        let mut lost_checked = false;
        loop {
            tokio::select! {
                note = self.notes.next() => match note {
                    Some(n) if n.uuid == self.result.uuid && n.service_uuid == self.result.service_uuid => {
                        return Exchange::Answer(n.value);
                    }
                    Some(_) => continue,
                    None => return Exchange::Interrupted("the notification stream ended before the answer".into()),
                },
                _ = self.lost.cancelled(), if !lost_checked => {
                    lost_checked = true;
                    if !connected(&self.peripheral).await {
                        return Exchange::Interrupted("the link dropped before the answer".into());
                    }
                }
                _ = probe.tick() => {
                    if !connected(&self.peripheral).await {
                        return Exchange::Interrupted("the link dropped before the answer".into());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Exchange::Timeout,
            }
        }
    }

    async fn read_answer(&mut self, deadline: Instant) -> Exchange {
        match timeout_at(deadline, self.peripheral.read(&self.result)).await {
            Ok(Ok(bytes)) => Exchange::Answer(bytes),
            Ok(Err(e)) => {
                let text = describe(&e);
                if connected(&self.peripheral).await {
                    Exchange::ReadFailed(text)
                } else {
                    Exchange::Interrupted(format!(
                        "the link dropped before the answer was read ({text})"
                    ))
                }
            }
            Err(_) => Exchange::Timeout,
        }
    }
}

async fn connected(peripheral: &Peripheral) -> bool {
    matches!(
        timeout(QUICK_CALL, peripheral.is_connected()).await,
        Ok(Ok(true))
    )
}

pub async fn quietly_disconnect(peripheral: &Peripheral) {
    if let Ok(Err(e)) = timeout(QUICK_CALL, peripheral.disconnect()).await {
        log::debug!("disconnect {}: {}", peripheral.address(), describe(&e));
    }
}
