//! Per-process plumbing for the harness: its scratch directories, a panic count per thread
//! (so that a panic in a spawned task fails the input), and a logger that formats every
//! record.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Once, OnceLock};

/// A fresh directory for one gateway's journal, on tmpfs when there is one:
/// `tether-fuzz-PID-N`. Directories left by processes that are gone (a fuzz target that
/// crashed never cleans up) are removed first.
pub(super) fn scratch_dir() -> PathBuf {
    const STEM: &str = "tether-fuzz-";
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{STEM}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    for base in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        if let Ok(entries) = std::fs::read_dir(&base) {
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(STEM)) else {
                    continue;
                };
                let pid = rest.split('-').next().unwrap_or_default();
                if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = base.join(&name);
        // Only a process that had this pid before can have left it.
        let _ = std::fs::remove_dir_all(&dir);
        if std::fs::create_dir_all(&dir).is_ok() {
            return dir;
        }
    }
    panic!("harness: cannot create a scratch directory in /dev/shm or the temp directory");
}

thread_local! {
    static PANICS: Cell<u64> = const { Cell::new(0) };
}

pub(super) fn panics_on_this_thread() -> u64 {
    PANICS.try_with(Cell::get).unwrap_or(0)
}

/// Counts panics per thread (then does what the previous hook did: libFuzzer's aborts).
pub(super) fn count_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = PANICS.try_with(|n| n.set(n.get() + 1));
            previous(info);
        }));
    });
}

/// Formats every log record, so that the log lines' arguments, which carry the inputs'
/// ids and topics, are exercised too: to nowhere, or to stderr with `TETHER_FUZZ_LOG=1`
/// (to see what an input does). Leaves an existing logger alone.
pub(super) fn install_logger() {
    struct Sink {
        stderr: OnceLock<bool>,
    }
    struct Fields(String);
    impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
        fn visit_pair(
            &mut self,
            key: log::kv::Key<'kvs>,
            value: log::kv::Value<'kvs>,
        ) -> Result<(), log::kv::Error> {
            use std::fmt::Write;
            let _ = write!(self.0, " {key}={value}");
            Ok(())
        }
    }
    impl log::Log for Sink {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            let mut fields = Fields(String::new());
            let _ = record.key_values().visit(&mut fields);
            let line = format!("{} {}{}", record.level(), record.args(), fields.0);
            if *self
                .stderr
                .get_or_init(|| std::env::var_os("TETHER_FUZZ_LOG").is_some())
            {
                eprintln!("{line}");
            }
        }
        fn flush(&self) {}
    }
    static SINK: Sink = Sink {
        stderr: OnceLock::new(),
    };
    if log::set_logger(&SINK).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}
