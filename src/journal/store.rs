//! Applying the journal's requests: each group the journal thread collects runs in one
//! SQLite transaction (inserts, acks, reads of owed results, trimming the finished-id
//! memory), and every request is answered after the commit, or with its error. Also keeps
//! the [`Gauges`] current. Runs only on the journal thread; opening the database and
//! reading what a previous run left is `open.rs`.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::oneshot;

use super::{Gauges, JournalError, NewCommand, Req, SyncMode};
use crate::cloud::wire::CommandResult;

pub struct Store {
    pub(super) conn: Connection,
    pub(super) sync: SyncMode,
    /// The connection is at `synchronous = NORMAL` for a group of acks only.
    pub(super) relaxed: bool,
    /// Finished ids remembered (`DEDUP_MEMORY`; smaller in tests).
    pub(super) window: usize,
    /// Acks since the window was last trimmed.
    pub(super) acks_since_prune: usize,
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
        // Receipts too: a command received and not yet sent may be lost in a power cut (the
        // cloud still has it and resends it, docs/protocol.md); one that was sent cannot,
        // since the fsync of its `sent` mark covers every frame before it.
        let relax = self.sync == SyncMode::Full
            && group.iter().all(|r| {
                matches!(
                    r,
                    Req::Ack(..) | Req::Owed { .. } | Req::Commands(..) | Req::Session(..)
                )
            });
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
                    Req::Sent(id, appliance, reply) => {
                        tx.prepare_cached(
                            "UPDATE commands SET sent = ltrim(sent || ' ' || ?2)
                             WHERE id = ?1 AND state = 'running'
                               AND instr(' ' || sent || ' ', ' ' || ?2 || ' ') = 0",
                        )
                        .and_then(|mut s| s.execute(params![id, appliance]))
                        .map_err(sql_err)?;
                        replies.push(Reply::Done(reply));
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
                    Req::Session(appliance, Some(qos)) => {
                        tx.prepare_cached(
                            "INSERT INTO sessions (appliance, qos) VALUES (?1, ?2)
                             ON CONFLICT (appliance) DO UPDATE SET qos = ?2",
                        )
                        .and_then(|mut s| s.execute(params![appliance, qos]))
                        .map_err(sql_err)?;
                    }
                    Req::Session(appliance, None) => {
                        tx.prepare_cached("DELETE FROM sessions WHERE appliance = ?1")
                            .and_then(|mut s| s.execute([appliance]))
                            .map_err(sql_err)?;
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
         ON CONFLICT (id) DO UPDATE SET state = 'done', body = '', sent = '', finished_at_ms = ?2",
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
