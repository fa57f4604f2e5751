//! `[log]`: the daemon's log level and where its records go.

use log::LevelFilter;
use serde::{Deserialize, Serialize};

use super::spans::Checker;
use super::{Apply, Section};

/// Where log records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    /// journald when stderr is connected to it (systemd sets `JOURNAL_STREAM`), else stderr.
    Auto,
    Journal,
    Stderr,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `off`, `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` (a bare level name)
    /// overrides it.
    #[serde(default = "default_level")]
    pub level: String,
    /// `auto` (journald under systemd, else stderr), `journal` or `stderr`.
    #[serde(default = "default_target")]
    pub target: LogTarget,
}

impl Section for LogConfig {
    const NAME: &'static str = "log";
    // The level is one atomic the logger reads per record; the sink is chosen once.
    const KEYS: &'static [(&'static str, Apply)] =
        &[("level", Apply::Live), ("target", Apply::Restart)];
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_level(),
            target: default_target(),
        }
    }
}

fn default_level() -> String {
    "info".to_owned()
}
fn default_target() -> LogTarget {
    LogTarget::Auto
}

/// Parses a level name (`error`, `warn`, `info`, `debug`, `trace`, `off`).
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    s.trim().parse().ok()
}

impl LogConfig {
    pub fn level_filter(&self) -> LevelFilter {
        parse_level(&self.level).unwrap_or(LevelFilter::Info)
    }

    pub(super) fn check(&self, v: &mut Checker) {
        if parse_level(&self.level).is_none() {
            v.err(
                &["log", "level"],
                "must be one of error, warn, info, debug, trace, off",
            );
        }
    }
}
