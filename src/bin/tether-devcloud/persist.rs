//! Durable snapshots for `--state`: atomic file replacement and group commit.
//!
//! Every change that will be acknowledged (results acked to a gateway, commands enqueued
//! or delivered) bumps the store's version; the handler then calls
//! [`Persister::commit`] with that version before answering. Writers queue on one async
//! lock, and whoever gets it writes a snapshot of the *current* state, so a single write
//! covers every change made so far and concurrent requests that were waiting behind it
//! return without writing again. Snapshots are taken while holding that lock, which
//! keeps them in version order: an older snapshot can never overwrite a newer one.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes the state file; one per store.
pub struct Persister {
    path: PathBuf,
    /// The version of the last snapshot on disk.
    written: tokio::sync::Mutex<u64>,
}

impl Persister {
    /// `path` is assumed to already hold the state the store starts from (version 0).
    pub fn new(path: PathBuf) -> Self {
        Persister {
            path,
            written: tokio::sync::Mutex::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns once a snapshot of version `version` or newer is on disk.
    ///
    /// `snapshot` serializes the current state and returns it with its version; it is
    /// called only when a write is actually needed.
    pub async fn commit(
        &self,
        version: u64,
        snapshot: impl FnOnce() -> io::Result<(u64, Vec<u8>)>,
    ) -> io::Result<()> {
        let mut written = self.written.lock().await;
        if *written >= version {
            return Ok(());
        }
        let (snap_version, bytes) = snapshot()?;
        let path = self.path.clone();
        // If this request is cancelled meanwhile the write still completes; `written`
        // just stays behind and the next commit writes again, which is harmless.
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(io::Error::other)??;
        *written = snap_version;
        Ok(())
    }
}

/// Replaces `path` with `bytes` so that a crash at any point leaves either the old or the
/// new file complete: write a sibling temp file, fsync it, rename it over, fsync the dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = path
        .file_name()
        .ok_or_else(|| io::Error::other("state path has no file name"))?
        .to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);

    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    // Without this the rename itself may not survive a power cut.
    #[cfg(unix)]
    fs::File::open(&dir)?.sync_all()?;
    Ok(())
}

/// Reads the state file, `None` if it does not exist yet.
pub fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
