//! Logging: to journald with structured fields, or to stderr.
//!
//! Under systemd (stderr connected to the journal, or `log.target = "journal"`) records go
//! to journald through systemd-journal-logger: key-values become upper-case fields
//! (COMMAND_ID, APPLIANCE, TRANSPORT, STATUS, DURATION_MS), `info!` maps to PRIORITY=5.
//! Otherwise each record is one stderr line: `LEVEL message KEY=value ...`.
//! The level comes from `log.level`, and `RUST_LOG` (a level name) overrides it; other
//! crates log at `warn` and above only. The level can change at run time (SIGHUP).

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use log::kv::{Key, Value, VisitSource};
use log::{LevelFilter, Log, Metadata, Record};
use systemd_journal_logger::JournalLog;

pub use crate::config::{LogTarget, parse_level};

/// The level for this crate's records; others are capped at `warn`.
static LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Info as usize);

fn level() -> LevelFilter {
    match LEVEL.load(Ordering::Relaxed) {
        0 => LevelFilter::Off,
        1 => LevelFilter::Error,
        2 => LevelFilter::Warn,
        3 => LevelFilter::Info,
        4 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

enum Sink {
    Journal(JournalLog),
    Stderr,
}

struct Logger {
    sink: Sink,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let ours = metadata.target().starts_with("tether");
        let limit = if ours {
            level()
        } else {
            level().min(LevelFilter::Warn)
        };
        metadata.level() <= limit
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match &self.sink {
            Sink::Journal(journal) => journal.log(record),
            Sink::Stderr => {
                let mut line = format!("{:<5} {}", record.level(), record.args());
                let _ = record.key_values().visit(&mut Fields(&mut line));
                line.push('\n');
                // One write per line so concurrent records do not interleave.
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

struct Fields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        self.0.push(' ');
        self.0.push_str(&key.as_str().to_ascii_uppercase());
        self.0.push('=');
        self.0.push_str(&value.to_string());
        Ok(())
    }
}

fn env_level() -> Option<LevelFilter> {
    std::env::var("RUST_LOG").ok().and_then(|s| parse_level(&s))
}

/// Installs the logger once; later calls are ignored.
pub fn init(target: LogTarget, configured: LevelFilter) {
    let sink = match target {
        LogTarget::Stderr => Sink::Stderr,
        LogTarget::Auto if !systemd_journal_logger::connected_to_journal() => Sink::Stderr,
        LogTarget::Auto | LogTarget::Journal => match JournalLog::new() {
            Ok(j) => Sink::Journal(j.with_syslog_identifier("tetherd".to_owned())),
            Err(e) => {
                eprintln!("tetherd: cannot log to journald ({e}); logging to stderr");
                Sink::Stderr
            }
        },
    };
    if log::set_boxed_logger(Box::new(Logger { sink })).is_ok() {
        set_level(configured);
    }
}

/// Changes the level at run time; `RUST_LOG`, when set, still wins.
pub fn set_level(configured: LevelFilter) {
    let level = env_level().unwrap_or(configured);
    LEVEL.store(level as usize, Ordering::Relaxed);
    log::set_max_level(level);
}
