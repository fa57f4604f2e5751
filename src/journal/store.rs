//! The SQLite side of the journal: schema, opening (with damage handling), and applying a
//! group of requests in one transaction. Runs only on the journal thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::oneshot;

use super::{DEDUP_MEMORY, Gauges, JournalError, NewCommand, Req, SyncMode};
use crate::cloud::wire::CommandResult;

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- Every command id received, so a replay is never dispatched twice. `body` is kept while
-- the command runs (an idempotent one is run again from it after a crash).
CREATE TABLE IF NOT EXISTS commands (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    body           TEXT NOT NULL,
    idempotent     INTEGER NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('running', 'done')),
    runs           INTEGER NOT NULL DEFAULT 1,
    received_at_ms INTEGER NOT NULL,
    finished_at_ms INTEGER
);
-- Results owed to the cloud: deleted when the cloud acks them.
CREATE TABLE IF NOT EXISTS results (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    command_id     TEXT NOT NULL UNIQUE,
    status         TEXT NOT NULL,
    body           TEXT NOT NULL,
    recorded_at_ms INTEGER NOT NULL
);
";

/// A command a previous run started and did not finish.
#[derive(Debug, Clone)]
pub struct Interrupted {
    pub id: String,
    /// The command as received.
    pub body: String,
    pub idempotent: bool,
    /// Wall-clock receipt time (Unix ms); only a hint, the gateway may have no RTC.
    pub received_at_ms: i64,
}

/// What a previous run left in the journal.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Results recorded and never acked: they will be sent.
    pub owed: usize,
    /// Commands recorded without a result, oldest first.
    pub running: Vec<Interrupted>,
    /// The journal was damaged and set aside: the reason and where the damaged file is.
    pub reset: Option<String>,
}

pub struct Store {
    conn: Connection,
    sync: SyncMode,
    /// The connection is at `synchronous = NORMAL` for a group of acks only.
    relaxed: bool,
    /// Finished ids remembered (`DEDUP_MEMORY`; smaller in tests).
    window: usize,
    /// Acks since the window was last trimmed.
    acks_since_prune: usize,
}

pub fn now_ms() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn sql_err(e: rusqlite::Error) -> JournalError {
    JournalError::Write(e.to_string())
}

impl Store {
    pub fn set_window(&mut self, window: usize) {
        self.window = window.max(1);
    }

    pub fn open(state_dir: &Path, sync: SyncMode) -> Result<(Store, Recovery), JournalError> {
        let open_err = |message: String| JournalError::Open {
            path: state_dir.join("journal.db"),
            message,
        };
        std::fs::create_dir_all(state_dir)
            .map_err(|e| open_err(format!("cannot create the state directory: {e}")))?;
        let path = state_dir.join("journal.db");
        let mut reset = None;
        let conn = match Self::open_checked(&path, sync) {
            Ok(conn) => conn,
            Err(Damage::Io(message)) => return Err(open_err(message)),
            Err(Damage::Corrupt(why)) => {
                let kept = quarantine(&path).map_err(|e| {
                    open_err(format!("damaged ({why}) and cannot be moved aside: {e}"))
                })?;
                let reason = format!(
                    "journal was damaged ({why}); kept as {} and started afresh",
                    kept.display()
                );
                log::error!("{reason}");
                reset = Some(reason);
                Self::open_checked(&path, sync).map_err(|d| open_err(d.to_string()))?
            }
        };
        let store = Store {
            conn,
            sync,
            relaxed: false,
            window: DEDUP_MEMORY,
            acks_since_prune: 0,
        };
        let mut recovery = store.recover().map_err(|e| open_err(e.to_string()))?;
        recovery.reset = reset;
        Ok((store, recovery))
    }

    fn open_checked(path: &Path, sync: SyncMode) -> Result<Connection, Damage> {
        let conn = Connection::open(path).map_err(Damage::classify)?;
        // Fail fast on a file that is not ours or is damaged, before anything trusts it.
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(Damage::classify)?;
        if check != "ok" {
            return Err(Damage::Corrupt(format!("integrity check: {check}")));
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(Damage::classify)?;
        let level = match sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", level)
            .map_err(Damage::classify)?;
        // Small page cache: the Pi has 1 GB for everything. The WAL is cut back to 1 MiB
        // after each checkpoint so it cannot keep a burst's size on the SD card.
        conn.pragma_update(None, "cache_size", -1024)
            .map_err(Damage::classify)?;
        conn.pragma_update(None, "journal_size_limit", 1024 * 1024)
            .map_err(Damage::classify)?;
        conn.execute_batch(SCHEMA).map_err(Damage::classify)?;
        let version: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(Damage::classify)?;
        match version.as_deref().map(str::parse::<i64>) {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?1)",
                    [SCHEMA_VERSION.to_string()],
                )
                .map_err(Damage::classify)?;
            }
            Some(Ok(SCHEMA_VERSION)) => {}
            Some(other) => {
                return Err(Damage::Io(format!(
                    "schema version {other:?} is not {SCHEMA_VERSION}: written by another tetherd version"
                )));
            }
        }
        Ok(conn)
    }

    fn recover(&self) -> rusqlite::Result<Recovery> {
        let owed: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM results", [], |r| r.get(0))?;
        let mut stmt = self
            .conn
            .prepare("SELECT id, body, idempotent, received_at_ms FROM commands WHERE state = 'running' ORDER BY seq")?;
        let running = stmt
            .query_map([], |r| {
                Ok(Interrupted {
                    id: r.get(0)?,
                    body: r.get(1)?,
                    idempotent: r.get::<_, i64>(2)? != 0,
                    received_at_ms: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Recovery {
            owed: usize::try_from(owed).unwrap_or(0),
            running,
            reset: None,
        })
    }

    pub fn update_gauges(&self, gauges: &Gauges) {
        // Pages in use (committed data, WAL included as the connection sees it). The WAL
        // file itself is bounded separately by checkpoints and `journal_size_limit`.
        let used: i64 = self
            .conn
            .query_row(
                "SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count())",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        let page_size: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap_or(4096);
        gauges.bytes.store(
            u64::try_from(used * page_size).unwrap_or(0),
            Ordering::Relaxed,
        );
        let owed: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM results", [], |r| r.get(0))
            .unwrap_or(0);
        gauges
            .owed
            .store(usize::try_from(owed).unwrap_or(0), Ordering::Relaxed);
    }

    /// Applies a group of requests in one transaction and answers each after the commit.
    pub fn apply(&mut self, group: Vec<Req>, gauges: &Gauges) {
        let mut replies: Vec<Reply> = Vec::with_capacity(group.len());
        // A group that only forgets acked results (or reads) commits without an fsync: an
        // ack lost in a power cut only means the result is sent again, which at-least-once
        // delivery allows. The WAL is append-only, so the next fsynced commit makes these
        // frames durable too, in order.
        let relax = self.sync == SyncMode::Full
            && group
                .iter()
                .all(|r| matches!(r, Req::Ack(..) | Req::Owed { .. }));
        let outcome = (|| -> Result<(), JournalError> {
            if relax != self.relaxed {
                let level = if relax { "NORMAL" } else { "FULL" };
                self.conn
                    .pragma_update(None, "synchronous", level)
                    .map_err(sql_err)?;
                self.relaxed = relax;
            }
            let tx = self.conn.transaction().map_err(sql_err)?;
            let mut acked = 0;
            for req in group {
                match req {
                    Req::Commands(cmds, reply) => {
                        let fresh = insert_commands(&tx, &cmds)?;
                        replies.push(Reply::Fresh(reply, fresh));
                    }
                    Req::Result(result, reply) => {
                        insert_result(&tx, &result)?;
                        replies.push(Reply::Done(reply));
                    }
                    Req::Ack(ids, reply) => {
                        let mut del = tx
                            .prepare_cached("DELETE FROM results WHERE command_id = ?1")
                            .map_err(sql_err)?;
                        for id in &ids {
                            del.execute([id]).map_err(sql_err)?;
                        }
                        acked += ids.len();
                        replies.push(Reply::Done(reply));
                    }
                    Req::Rerun(ids, reply) => {
                        for id in &ids {
                            tx.execute("UPDATE commands SET runs = runs + 1 WHERE id = ?1", [id])
                                .map_err(sql_err)?;
                        }
                        replies.push(Reply::Done(reply));
                    }
                    Req::Close(_) => unreachable_close(),
                    Req::Owed {
                        first,
                        skip,
                        max,
                        reply,
                    } => {
                        let owed = read_owed(&tx, &first, &skip, max)?;
                        replies.push(Reply::Owed(reply, owed));
                    }
                }
            }
            // Trimming walks the window (65,536 rows), so it runs once per 1/64th of
            // the window's acks, not on every ack: on every ack it took two thirds of the
            // throughput once the window was full. The window overshoots by at most that.
            self.acks_since_prune += acked;
            if self.acks_since_prune >= (self.window / 64).max(1) {
                prune(&tx, self.window)?;
                self.acks_since_prune = 0;
            }
            tx.commit().map_err(sql_err)
        })();
        match &outcome {
            Ok(()) => {
                if gauges.failing.swap(false, Ordering::Relaxed) {
                    log::info!("journal writes work again");
                }
            }
            Err(e) => {
                if !gauges.failing.swap(true, Ordering::Relaxed) {
                    log::error!("{e}; accepting no new commands until the journal can be written");
                }
            }
        }
        self.update_gauges(gauges);
        // Requests of a failed group that never got to their statement still get the error.
        for reply in replies {
            reply.send(outcome.as_ref().err());
        }
    }
}

/// An answer held until its group commits (or fails).
enum Reply {
    Fresh(oneshot::Sender<Result<Vec<bool>, JournalError>>, Vec<bool>),
    Done(oneshot::Sender<Result<(), JournalError>>),
    Owed(
        oneshot::Sender<Result<Vec<CommandResult>, JournalError>>,
        Vec<CommandResult>,
    ),
}

impl Reply {
    fn send(self, err: Option<&JournalError>) {
        fn or<T>(err: Option<&JournalError>, v: T) -> Result<T, JournalError> {
            err.map_or(Ok(v), |e| Err(e.clone()))
        }
        // A receiver that went away (its caller was cancelled) needs no answer.
        match self {
            Reply::Fresh(tx, v) => drop(tx.send(or(err, v))),
            Reply::Done(tx) => drop(tx.send(or(err, ()))),
            Reply::Owed(tx, v) => drop(tx.send(or(err, v))),
        }
    }
}

/// The journal thread takes `Close` out of a group before applying it.
fn unreachable_close() {
    log::error!("journal: close request inside a write group; ignored");
}

fn insert_commands(tx: &Transaction<'_>, cmds: &[NewCommand]) -> Result<Vec<bool>, JournalError> {
    let mut stmt = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO commands (id, body, idempotent, state, received_at_ms)
             VALUES (?1, ?2, ?3, 'running', ?4)",
        )
        .map_err(sql_err)?;
    let now = now_ms();
    cmds.iter()
        .map(|c| {
            stmt.execute(params![c.id, c.body, c.idempotent, now])
                .map(|n| n == 1)
                .map_err(sql_err)
        })
        .collect()
}

fn insert_result(tx: &Transaction<'_>, result: &CommandResult) -> Result<(), JournalError> {
    let body = serde_json::to_string(result).map_err(|e| JournalError::Write(e.to_string()))?;
    let now = now_ms();
    tx.prepare_cached(
        "INSERT OR REPLACE INTO results (command_id, status, body, recorded_at_ms) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| s.execute(params![result.command_id, result.status.as_str(), body, now]))
    .map_err(sql_err)?;
    // A command refused before it was recorded (malformed, say) is recorded as done here,
    // so a replay of its id is recognised too.
    tx.prepare_cached(
        "INSERT INTO commands (id, body, idempotent, state, received_at_ms, finished_at_ms)
         VALUES (?1, '', 0, 'done', ?2, ?2)
         ON CONFLICT (id) DO UPDATE SET state = 'done', body = '', finished_at_ms = ?2",
    )
    .and_then(|mut s| s.execute(params![result.command_id, now]))
    .map_err(sql_err)?;
    Ok(())
}

fn read_owed(
    tx: &Transaction<'_>,
    first: &[String],
    skip: &[String],
    max: usize,
) -> Result<Vec<CommandResult>, JournalError> {
    let mut out: Vec<CommandResult> = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    let mut push = |id: String, body: String, out: &mut Vec<CommandResult>| {
        match serde_json::from_str(&body) {
            Ok(r) => {
                taken.push(id);
                out.push(r);
            }
            Err(e) => {
                log::error!(command_id = id.as_str(); "journal holds an unreadable result ({e}); skipped")
            }
        }
    };
    let mut by_id = tx
        .prepare_cached("SELECT body FROM results WHERE command_id = ?1")
        .map_err(sql_err)?;
    for id in first.iter().filter(|id| !skip.contains(id)) {
        if out.len() >= max {
            return Ok(out);
        }
        if let Some(body) = by_id
            .query_row([id], |r| r.get::<_, String>(0))
            .optional()
            .map_err(sql_err)?
        {
            push(id.clone(), body, &mut out);
        }
    }
    let limit = i64::try_from(max + skip.len() + out.len()).unwrap_or(i64::MAX);
    let mut stmt = tx
        .prepare_cached("SELECT command_id, body FROM results ORDER BY seq LIMIT ?1")
        .map_err(sql_err)?;
    let rows = stmt
        .query_map([limit], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(sql_err)?;
    for row in rows {
        if out.len() >= max {
            break;
        }
        let (id, body) = row.map_err(sql_err)?;
        if skip.contains(&id) || out.iter().any(|r| r.command_id == id) {
            continue;
        }
        push(id, body, &mut out);
    }
    Ok(out)
}

/// Keeps the newest `DEDUP_MEMORY` finished ids whose results were acked.
fn prune(tx: &Transaction<'_>, window: usize) -> Result<(), JournalError> {
    tx.execute(
        "DELETE FROM commands WHERE state = 'done'
           AND seq <= (SELECT seq FROM commands WHERE state = 'done'
                       ORDER BY seq DESC LIMIT 1 OFFSET ?1)
           AND id NOT IN (SELECT command_id FROM results)",
        [i64::try_from(window).unwrap_or(i64::MAX)],
    )
    .map_err(sql_err)?;
    Ok(())
}

enum Damage {
    /// The file is not a usable SQLite database: set it aside.
    Corrupt(String),
    /// Permissions, a full disk, an unknown schema: nothing to repair, report and stop.
    Io(String),
}

impl Damage {
    fn classify(e: rusqlite::Error) -> Damage {
        use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
        match e.sqlite_error_code() {
            Some(DatabaseCorrupt | NotADatabase) => Damage::Corrupt(e.to_string()),
            _ => Damage::Io(e.to_string()),
        }
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Corrupt(s) | Damage::Io(s) => f.write_str(s),
        }
    }
}

/// Moves a damaged journal (and its WAL and shared-memory files) aside, keeping it.
fn quarantine(path: &Path) -> std::io::Result<PathBuf> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let kept = path.with_file_name(format!("journal.db.damaged-{stamp}"));
    std::fs::rename(path, &kept)?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        if side.exists() {
            std::fs::rename(&side, format!("{}{suffix}", kept.display()))?;
        }
    }
    Ok(kept)
}
