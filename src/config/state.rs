//! `[state]`: how the journal reaches the disk and how large it may grow.

use serde::{Deserialize, Serialize};

use super::spans::Checker;
use super::{Apply, Section};

/// How commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// fsync on every commit: a power cut loses nothing that was acknowledged.
    Full,
    /// fsync at checkpoints only: a power cut may lose the last commits (a crash of the
    /// daemon alone loses nothing).
    Normal,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `full`: every commit is fsynced; `normal`: only checkpoints are (see docs/durability.md).
    #[serde(default = "default_sync")]
    pub sync: SyncMode,
    /// Journal size at which the gateway stops taking new commands (advertises capacity 0).
    #[serde(default = "default_max_journal_bytes")]
    pub max_journal_bytes: u64,
}

impl Section for StateConfig {
    const NAME: &'static str = "state";
    // Both are set on the journal's connection when it opens.
    const KEYS: &'static [(&'static str, Apply)] = &[
        ("sync", Apply::Restart),
        ("max_journal_bytes", Apply::Restart),
    ];
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            sync: default_sync(),
            max_journal_bytes: default_max_journal_bytes(),
        }
    }
}

fn default_sync() -> SyncMode {
    SyncMode::Full
}
fn default_max_journal_bytes() -> u64 {
    64 * 1024 * 1024
}

impl StateConfig {
    pub(super) fn check(&self, v: &mut Checker) {
        if self.max_journal_bytes < 1024 * 1024 {
            v.err(
                &["state", "max_journal_bytes"],
                "must be at least 1048576 (1 MiB)",
            );
        }
    }
}
