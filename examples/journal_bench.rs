//! Journal write cost: results recorded per second with `sync = full` and `sync = normal`.
//!
//! `cargo run --release --example journal_bench -- [RESULTS] [DIR]` (defaults: 5000, the
//! system temp dir; point DIR at the SD card to measure the Pi's real fsync cost). Each
//! mode is measured twice: one writer at a time (every result waits for its own commit)
//! and 64 concurrent writers (results share commits, as when many appliances answer at
//! once).

use std::time::Instant;

use tether::cloud::wire::{CommandResult, Status};
use tether::journal::{Journal, NewCommand, SyncMode};

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

async fn run(dir: &std::path::Path, sync: SyncMode, n: usize, writers: usize) -> f64 {
    let _ = std::fs::remove_dir_all(dir);
    let (journal, _) = Journal::open(dir, sync, u64::MAX).expect("open journal");
    let ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let cmds = ids
        .iter()
        .map(|id| NewCommand {
            id: id.clone(),
            body: String::new(),
            idempotent: false,
        })
        .collect();
    journal
        .record_commands(cmds)
        .await
        .expect("record commands");
    let start = Instant::now();
    let chunks: Vec<Vec<String>> = ids
        .chunks(n.div_ceil(writers))
        .map(<[String]>::to_vec)
        .collect();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let journal = journal.clone();
            tokio::spawn(async move {
                for id in chunk {
                    journal
                        .record_result(result(&id))
                        .await
                        .expect("record result");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    journal.close().await;
    let _ = std::fs::remove_dir_all(dir);
    rate
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5000);
    let base = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("tether-journal-bench-{}", std::process::id()));
    println!("journal: {n} results per run, in {}", base.display());
    println!("{:<8} {:>8} {:>14}", "sync", "writers", "results/s");
    for sync in [SyncMode::Full, SyncMode::Normal] {
        for writers in [1, 64] {
            let rate = run(&dir, sync, n, writers).await;
            println!(
                "{:<8} {:>8} {:>14.0}",
                format!("{sync:?}").to_lowercase(),
                writers,
                rate
            );
        }
    }
}
