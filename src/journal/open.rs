//! Opening the journal database: the schema, the checks made before anything trusts the
//! file, setting a damaged file aside (and starting afresh), and reading what a previous
//! run left ([`Recovery`]).
//!
//! Called once, by `Journal::open`, before the journal thread starts; the [`Store`] it
//! returns then belongs to that thread.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension};

use super::store::Store;
use super::{DEDUP_MEMORY, JournalError, SyncMode};

/// 2 added `commands.sent`; a version 1 file is migrated at open (see `migrate_from_1`).
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- Every command id received, so a replay is never dispatched twice. `body` is kept while
-- the command runs: after a crash, what was never sent runs from it (and an idempotent
-- command runs again from it).
CREATE TABLE IF NOT EXISTS commands (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    body           TEXT NOT NULL,
    idempotent     INTEGER NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('running', 'done')),
    -- The appliances a running command may have reached, space-separated: each is added
    -- before the command leaves for it (the PUBLISH, the GATT write). `*` stands for
    -- every target (a command a version 1 journal left running). Emptied when done. A
    -- column, not a table: the row's page is written at receipt and at the result anyway.
    sent           TEXT NOT NULL DEFAULT '',
    runs           INTEGER NOT NULL DEFAULT 1,
    received_at_ms INTEGER NOT NULL,
    finished_at_ms INTEGER
);
-- MQTT appliances holding a persistent session (clean_session = false) and the QoS of
-- their cmd subscription: the session, and the commands it may wait for, outlive a
-- restart of the gateway as MQTT requires. Added without a schema version: a file
-- without it gets it at open.
CREATE TABLE IF NOT EXISTS sessions (
    appliance TEXT PRIMARY KEY,
    qos       INTEGER NOT NULL
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
    /// The appliances it may have reached (`*`: every target); empty if it was never sent.
    pub sent: Vec<String>,
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
    /// MQTT persistent sessions: appliance and the QoS of its cmd subscription.
    pub sessions: Vec<(String, u8)>,
}

impl Store {
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
            Some(Ok(1)) => migrate_from_1(&conn).map_err(Damage::classify)?,
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
            .prepare("SELECT id, body, idempotent, received_at_ms, sent FROM commands WHERE state = 'running' ORDER BY seq")?;
        let running = stmt
            .query_map([], |r| {
                Ok(Interrupted {
                    id: r.get(0)?,
                    body: r.get(1)?,
                    idempotent: r.get::<_, i64>(2)? != 0,
                    received_at_ms: r.get(3)?,
                    sent: r
                        .get::<_, String>(4)?
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect(),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let sessions = self
            .conn
            .prepare("SELECT appliance, qos FROM sessions ORDER BY appliance")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Recovery {
            owed: usize::try_from(owed).unwrap_or(0),
            running,
            reset: None,
            sessions,
        })
    }
}

/// A version 1 journal did not record what was sent: each command it left running may have
/// reached every target, and is treated so (`interrupted`, or run again if idempotent).
fn migrate_from_1(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "BEGIN;
         ALTER TABLE commands ADD COLUMN sent TEXT NOT NULL DEFAULT '';
         UPDATE commands SET sent = '*' WHERE state = 'running';
         UPDATE meta SET value = '2' WHERE key = 'schema';
         COMMIT;",
    )?;
    log::info!(
        "journal upgraded to schema 2 (commands a version 1 journal left running count as sent)"
    );
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
