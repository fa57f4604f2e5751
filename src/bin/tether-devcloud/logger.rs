//! A minimal stderr logger.
//!
//! stdout is reserved for the `READY` line, so everything else goes to stderr. The level
//! comes from `TETHER_DEVCLOUD_LOG` (`error`, `warn`, `info`, `debug`, `trace`; default
//! `warn`), which keeps test output quiet unless someone asks for more.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    max: LevelFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // Dependencies (rustls, hyper) log a lot at debug level; show them only at trace
        // so `debug` stays about this server's own decisions.
        let ours = metadata.target().starts_with("tether_devcloud");
        metadata.level() <= self.max && (ours || self.max >= LevelFilter::Trace)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        // A closed stderr must not take the server down.
        let _ = writeln!(
            std::io::stderr().lock(),
            "tether-devcloud {level} {}",
            record.args()
        );
    }

    fn flush(&self) {}
}

/// Installs the logger; harmless if one is already installed.
pub fn init() {
    let max = match std::env::var("TETHER_DEVCLOUD_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => LevelFilter::Warn,
    };
    if log::set_boxed_logger(Box::new(StderrLogger { max })).is_ok() {
        log::set_max_level(max);
    }
}
