//! `tetherd journal`: a read-only look at the journal for operators.
//!
//! Safe while the daemon runs: SQLite's WAL mode lets a reader in another process see the
//! last committed state without blocking the writer.

use std::fmt::Write as _;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

/// A human-readable summary of the journal in `state_dir`, listing at most `limit` rows
/// per section.
pub fn summary(state_dir: &Path, limit: usize) -> Result<String, String> {
    let path = state_dir.join("journal.db");
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let q = |sql: &str| -> Result<i64, String> {
        conn.query_row(sql, [], |r| r.get(0))
            .map_err(|e| e.to_string())
    };
    let mut out = String::new();
    let size = q("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")?;
    let _ = writeln!(out, "journal {} ({} KiB)", path.display(), size / 1024);
    let _ = writeln!(
        out,
        "  results owed to the cloud: {}",
        q("SELECT COUNT(*) FROM results")?
    );
    let _ = writeln!(
        out,
        "  commands running:          {}",
        q("SELECT COUNT(*) FROM commands WHERE state = 'running'")?
    );
    let _ = writeln!(
        out,
        "  finished ids remembered:   {}",
        q("SELECT COUNT(*) FROM commands WHERE state = 'done'")?
    );
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = |sql: &str| -> Result<Vec<(String, String, i64)>, String> {
        let mut stmt = conn.prepare(sql).map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map([limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
    };
    let owed =
        rows("SELECT command_id, status, recorded_at_ms FROM results ORDER BY seq LIMIT ?1")?;
    if !owed.is_empty() {
        let _ = writeln!(
            out,
            "\nowed results (oldest first): command id, status, recorded (unix ms)"
        );
        for (id, status, at) in owed {
            let _ = writeln!(out, "  {id}  {status}  {at}");
        }
    }
    // A schema 1 journal (not yet opened by this version) has no `sent` column.
    let has_sent = q("SELECT COUNT(*) FROM pragma_table_info('commands') WHERE name = 'sent'")? > 0;
    let sent = if has_sent {
        "CASE sent WHEN '' THEN 'not sent yet' ELSE 'sent to ' || sent END"
    } else {
        "'sent: unknown (schema 1)'"
    };
    let running = rows(&format!(
        "SELECT id, CASE idempotent WHEN 1 THEN 'idempotent, ' ELSE '' END || {sent}, received_at_ms
         FROM commands WHERE state = 'running' ORDER BY seq LIMIT ?1"
    ))?;
    if !running.is_empty() {
        let _ = writeln!(
            out,
            "\nrunning commands: command id, idempotent, where sent, received (unix ms)"
        );
        for (id, how, at) in running {
            let _ = writeln!(out, "  {id}  {how}  {at}");
        }
    }
    Ok(out)
}

/// SQLite's integrity check of the journal in `state_dir`, read-only: `Ok(None)` when
/// there is no journal yet, else its size and what it holds.
pub fn check(state_dir: &Path) -> Result<Option<String>, String> {
    let path = state_dir.join("journal.db");
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let verdict: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if verdict != "ok" {
        return Err(format!("{}: integrity check: {verdict}", path.display()));
    }
    let q = |sql: &str| -> Result<i64, String> {
        conn.query_row(sql, [], |r| r.get(0))
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let size = q("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")?;
    let owed = q("SELECT COUNT(*) FROM results")?;
    Ok(Some(format!(
        "{} passes its integrity check ({} KiB, {owed} result(s) owed)",
        path.display(),
        size / 1024
    )))
}
