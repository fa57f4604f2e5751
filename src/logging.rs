//! Logging to stderr with structured key-values.
//!
//! Each record is one line: `LEVEL message key=value ...`. Keys are written in upper case,
//! the names they get as journald fields (COMMAND_ID, APPLIANCE, TRANSPORT, STATUS,
//! DURATION_MS). The level comes from `RUST_LOG` (`error`, `warn`, `info`, `debug`,
//! `trace`), default `info`; other crates log at `warn` and above only.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};
use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    level: LevelFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let ours = metadata.target().starts_with("tether");
        let limit = if ours {
            self.level
        } else {
            self.level.min(LevelFilter::Warn)
        };
        metadata.level() <= limit
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = format!("{:<5} {}", record.level(), record.args());
        let mut fields = Fields(&mut line);
        let _ = record.key_values().visit(&mut fields);
        line.push('\n');
        // One write per line so concurrent records do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
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

/// Parses a level name as used in `RUST_LOG`.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    s.trim().parse().ok()
}

/// Installs the stderr logger once; later calls are ignored.
pub fn init(default: LevelFilter) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| parse_level(&s))
        .unwrap_or(default);
    if log::set_boxed_logger(Box::new(StderrLogger { level })).is_ok() {
        log::set_max_level(level);
    }
}
