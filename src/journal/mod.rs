//! The journal: commands received and results owed, on disk before anyone acts on them.
//!
//! One SQLite database (`{state_dir}/journal.db`, WAL) owned by one dedicated thread; async
//! callers send it requests and await the answer. The thread commits every write request
//! that is waiting in one transaction (group commit), so a burst of results costs one
//! fsync, not one each. Callers:
//! - the router records new commands (and learns which ids are new) before dispatching
//!   them, and records each result before it is owed to the cloud;
//! - the outbox reads batches of owed results and deletes them when the cloud acks them;
//! - `app` replays it at start: results still owed are sent, commands without a result
//!   become `interrupted` (or run again when idempotent).
//!
//! What it guarantees and how to inspect it: `docs/durability.md`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::cloud::wire::CommandResult;

pub mod inspect;
mod open;
mod store;

pub use open::{Interrupted, Recovery};
pub use store::now_ms;

/// Finished command ids kept to refuse replays; the oldest are forgotten first.
pub const DEDUP_MEMORY: usize = 65_536;

pub use crate::config::SyncMode;

/// Why the journal could not do something.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("journal write failed: {0}")]
    Write(String),
    #[error("journal thread stopped")]
    Stopped,
}

/// A command as recorded.
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub id: String,
    /// The command as received: after a crash, what was not sent runs from it.
    pub body: String,
    pub idempotent: bool,
}

enum Req {
    Commands(
        Vec<NewCommand>,
        oneshot::Sender<Result<Vec<bool>, JournalError>>,
    ),
    Sent(String, String, oneshot::Sender<Result<(), JournalError>>),
    Result(CommandResult, oneshot::Sender<Result<(), JournalError>>),
    Ack(Vec<String>, oneshot::Sender<Result<(), JournalError>>),
    Owed {
        first: Vec<String>,
        skip: Vec<String>,
        max: usize,
        reply: oneshot::Sender<Result<Vec<CommandResult>, JournalError>>,
    },
    Rerun(Vec<String>, oneshot::Sender<Result<(), JournalError>>),
    /// An MQTT appliance's persistent session: its cmd subscription's QoS, or gone.
    Session(String, Option<u8>),
    /// Close the database (checkpointing the WAL) after the requests before it.
    Close(oneshot::Sender<()>),
}

/// Figures the journal thread keeps current for cheap reads.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Database plus WAL size in bytes.
    pub bytes: AtomicU64,
    /// Results recorded and not acked.
    pub owed: AtomicUsize,
    /// The last write failed (disk full, I/O error): take no new work.
    pub failing: AtomicBool,
}

/// Handle to the journal thread; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::UnboundedSender<Req>,
    gauges: Arc<Gauges>,
    max_bytes: u64,
}

impl Journal {
    /// Opens (or creates) the journal in `state_dir` and starts its thread. Returns what
    /// a previous run left behind.
    pub fn open(
        state_dir: &Path,
        sync: SyncMode,
        max_bytes: u64,
    ) -> Result<(Journal, Recovery), JournalError> {
        Self::open_with_window(state_dir, sync, max_bytes, DEDUP_MEMORY)
    }

    /// [`Journal::open`] remembering `window` finished ids instead of [`DEDUP_MEMORY`].
    fn open_with_window(
        state_dir: &Path,
        sync: SyncMode,
        max_bytes: u64,
        window: usize,
    ) -> Result<(Journal, Recovery), JournalError> {
        let (mut store, recovery) = store::Store::open(state_dir, sync)?;
        store.set_window(window);
        let gauges = Arc::new(Gauges::default());
        store.update_gauges(&gauges);
        let (tx, rx) = mpsc::unbounded_channel();
        let thread_gauges = gauges.clone();
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || run(store, rx, &thread_gauges))
            .map_err(|e| JournalError::Open {
                path: state_dir.to_owned(),
                message: format!("cannot start the journal thread: {e}"),
            })?;
        Ok((
            Journal {
                tx,
                gauges,
                max_bytes,
            },
            recovery,
        ))
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, JournalError>>) -> Req,
    ) -> Result<T, JournalError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| JournalError::Stopped)?;
        rx.await.map_err(|_| JournalError::Stopped)?
    }

    /// Records commands (state `running`); answers, per command, whether its id is new.
    /// A known id is left as it was: the caller must not dispatch it again. Not fsynced
    /// on its own: the `sent` record of any command makes it durable (`record_sent`).
    pub async fn record_commands(&self, cmds: Vec<NewCommand>) -> Result<Vec<bool>, JournalError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        self.ask(|r| Req::Commands(cmds, r)).await
    }

    /// Records, durably, that command `id` is about to leave for `appliance`: after a
    /// crash it may have reached it. Awaited before the PUBLISH or the GATT write.
    pub async fn record_sent(&self, id: &str, appliance: &str) -> Result<(), JournalError> {
        self.ask(|r| Req::Sent(id.to_owned(), appliance.to_owned(), r))
            .await
    }

    /// Records a command's result and marks the command done, durably. The request is
    /// queued when this is called, not when the future is first polled: whatever the
    /// caller does next (an ack of this result, say) is applied after it.
    pub fn record_result(
        &self,
        result: CommandResult,
    ) -> impl Future<Output = Result<(), JournalError>> + use<> {
        let (reply, rx) = oneshot::channel();
        let queued = self.tx.send(Req::Result(result, reply));
        async move {
            queued.map_err(|_| JournalError::Stopped)?;
            rx.await.map_err(|_| JournalError::Stopped)?
        }
    }

    /// Forgets results the cloud acked.
    pub async fn ack(&self, ids: Vec<String>) -> Result<(), JournalError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.ask(|r| Req::Ack(ids, r)).await
    }

    /// Up to `max` owed results: those of `first` that are owed, then the oldest,
    /// skipping the ids in `skip`.
    pub async fn owed(
        &self,
        first: Vec<String>,
        skip: Vec<String>,
        max: usize,
    ) -> Result<Vec<CommandResult>, JournalError> {
        self.ask(|reply| Req::Owed {
            first,
            skip,
            max,
            reply,
        })
        .await
    }

    /// Notes that idempotent commands are being run again after a restart.
    pub async fn rerun(&self, ids: Vec<String>) -> Result<(), JournalError> {
        self.ask(|r| Req::Rerun(ids, r)).await
    }

    /// Remembers (`Some(qos)`) or forgets (`None`) an MQTT appliance's persistent session.
    /// Queued, not awaited: a session lost in a power cut only means its appliance's
    /// commands fail instead of waiting until it connects again.
    pub fn note_session(&self, appliance: &str, qos: Option<u8>) {
        let _ = self.tx.send(Req::Session(appliance.to_owned(), qos));
    }

    /// Finishes the requests already sent, closes the database cleanly and stops the
    /// thread. Later requests fail with [`JournalError::Stopped`].
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Req::Close(reply)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Results recorded and not acked.
    pub fn owed_count(&self) -> usize {
        self.gauges.owed.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.gauges.bytes.load(Ordering::Relaxed)
    }

    /// At its size bound or failing to write: accept no new commands (capacity 0).
    pub fn is_full(&self) -> bool {
        self.bytes() >= self.max_bytes || self.gauges.failing.load(Ordering::Relaxed)
    }
}

/// Most requests folded into one transaction.
const GROUP_MAX: usize = 512;

fn run(mut store: store::Store, mut rx: mpsc::UnboundedReceiver<Req>, gauges: &Gauges) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = Vec::new();
        let mut close = None;
        let mut next = Some(first);
        while let Some(req) = next.take() {
            match req {
                Req::Close(reply) => {
                    close = Some(reply);
                    break;
                }
                req => group.push(req),
            }
            if group.len() < GROUP_MAX {
                next = rx.try_recv().ok();
            }
        }
        if !group.is_empty() {
            store.apply(group, gauges);
        }
        if let Some(reply) = close {
            drop(store);
            let _ = reply.send(());
            return;
        }
    }
}

#[cfg(test)]
mod tests;
