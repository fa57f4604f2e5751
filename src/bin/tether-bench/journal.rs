//! Durability cost, measured on the journal API in this process: results recorded per second with `sync = full` and
//! `normal`, by one writer (each result waits for its own commit, as with one appliance
//! answering at a time) and by 64 concurrent writers (results share commits: group commit,
//! as when many appliances answer at once). End to end through tetherd, the throughput
//! section runs with both modes too.

use std::path::Path;
use std::time::Instant;

use tether::cloud::wire::{CommandResult, Status};
use tether::journal::{Journal, NewCommand, SyncMode};

use crate::report::JournalRow;

fn result(id: &str) -> CommandResult {
    CommandResult {
        command_id: id.to_owned(),
        status: Status::Ok,
        payload: Some(serde_json::json!({"state": "on", "level": 42})),
        error: None,
        items: None,
        duration_ms: 3,
    }
}

pub async fn run(dir: &Path, results: usize) -> Result<Vec<JournalRow>, String> {
    let mut rows = Vec::new();
    for (sync, name) in [(SyncMode::Full, "full"), (SyncMode::Normal, "normal")] {
        for writers in [1, 64] {
            eprintln!("durability: journal, sync {name}, {writers} writer(s), {results} results");
            let rate = one(&dir.join("journal-bench"), sync, results, writers).await?;
            rows.push(JournalRow {
                sync: name.to_owned(),
                writers,
                results,
                results_per_s: rate,
            });
        }
    }
    Ok(rows)
}

async fn one(dir: &Path, sync: SyncMode, n: usize, writers: usize) -> Result<f64, String> {
    let _ = std::fs::remove_dir_all(dir);
    let (journal, _) = Journal::open(dir, sync, u64::MAX).map_err(|e| e.to_string())?;
    let ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let commands = ids
        .iter()
        .map(|id| NewCommand {
            id: id.clone(),
            body: String::new(),
            idempotent: false,
        })
        .collect();
    journal
        .record_commands(commands)
        .await
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let tasks: Vec<_> = ids
        .chunks(n.div_ceil(writers))
        .map(<[String]>::to_vec)
        .map(|chunk| {
            let journal = journal.clone();
            tokio::spawn(async move {
                for id in chunk {
                    journal
                        .record_result(result(&id))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    journal.close().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(rate)
}
