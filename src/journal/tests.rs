use super::*;
use crate::cloud::wire::Status;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!(
            "tether-journal-{tag}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cmd(id: &str, idempotent: bool) -> NewCommand {
    NewCommand {
        id: id.into(),
        body: format!(r#"{{"id":"{id}","target":"a"}}"#),
        idempotent,
    }
}

fn result(id: &str) -> CommandResult {
    CommandResult {
        command_id: id.into(),
        status: Status::Ok,
        payload: Some(serde_json::json!({"n": id})),
        error: None,
        items: None,
        duration_ms: 3,
    }
}

fn open(dir: &Dir) -> (Journal, Recovery) {
    Journal::open(&dir.0, SyncMode::Full, 1 << 30).unwrap()
}

#[tokio::test]
async fn a_command_id_is_new_only_once() {
    let dir = Dir::new("dedup");
    let (j, _) = open(&dir);
    let fresh = j
        .record_commands(vec![cmd("c1", false), cmd("c2", false)])
        .await
        .unwrap();
    assert_eq!(fresh, vec![true, true]);
    let again = j
        .record_commands(vec![cmd("c2", false), cmd("c3", false)])
        .await
        .unwrap();
    assert_eq!(again, vec![false, true]);
    j.record_result(result("c1")).await.unwrap();
    j.ack(vec!["c1".into()]).await.unwrap();
    // Finished and acked: still remembered.
    assert_eq!(
        j.record_commands(vec![cmd("c1", false)]).await.unwrap(),
        vec![false]
    );
}

#[tokio::test]
async fn owed_results_come_back_in_order_until_acked() {
    let dir = Dir::new("owed");
    let (j, _) = open(&dir);
    for id in ["c1", "c2", "c3"] {
        j.record_commands(vec![cmd(id, false)]).await.unwrap();
        j.record_result(result(id)).await.unwrap();
    }
    assert_eq!(j.owed_count(), 3);
    let ids = |v: Vec<CommandResult>| v.into_iter().map(|r| r.command_id).collect::<Vec<_>>();
    assert_eq!(
        ids(j.owed(vec![], vec![], 10).await.unwrap()),
        ["c1", "c2", "c3"]
    );
    assert_eq!(
        ids(j.owed(vec![], vec!["c1".into()], 1).await.unwrap()),
        ["c2"]
    );
    // Asked-for ids come first (a result the cloud is missing), without duplicates.
    let first = vec!["c3".into(), "nope".into()];
    assert_eq!(ids(j.owed(first, vec![], 2).await.unwrap()), ["c3", "c1"]);
    j.ack(vec!["c2".into()]).await.unwrap();
    assert_eq!(ids(j.owed(vec![], vec![], 10).await.unwrap()), ["c1", "c3"]);
    assert_eq!(j.owed_count(), 2);
    assert_eq!(j.owed(vec![], vec![], 10).await.unwrap()[0], result("c1"));
}

#[tokio::test]
async fn a_restart_finds_owed_results_and_running_commands() {
    let dir = Dir::new("recover");
    {
        let (j, r) = open(&dir);
        assert_eq!((r.owed, r.running.len(), r.reset.is_none()), (0, 0, true));
        j.record_commands(vec![
            cmd("done", false),
            cmd("run", false),
            cmd("idem", true),
        ])
        .await
        .unwrap();
        j.record_result(result("done")).await.unwrap();
        j.close().await;
    }
    let (j, r) = open(&dir);
    assert_eq!(r.owed, 1);
    let running: Vec<_> = r
        .running
        .iter()
        .map(|c| (c.id.as_str(), c.idempotent))
        .collect();
    assert_eq!(running, [("run", false), ("idem", true)]);
    assert!(
        r.running[0].body.contains("\"target\""),
        "the body is kept for a re-run"
    );
    assert!(r.running[0].received_at_ms > 0);
    assert_eq!(
        j.owed(vec![], vec![], 10).await.unwrap()[0].command_id,
        "done"
    );
}

#[tokio::test]
async fn a_damaged_journal_is_kept_aside_and_reported() {
    let dir = Dir::new("corrupt");
    {
        let (j, _) = open(&dir);
        j.record_commands(vec![cmd("c1", false)]).await.unwrap();
        j.close().await;
        assert!(
            j.record_commands(vec![cmd("c2", false)]).await.is_err(),
            "closed"
        );
    }
    let db = dir.0.join("journal.db");
    let _ = std::fs::remove_file(dir.0.join("journal.db-wal"));
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[..16].copy_from_slice(b"this is garbage!");
    std::fs::write(&db, &bytes).unwrap();
    let (j, r) = open(&dir);
    let reason = r.reset.expect("the damage is reported");
    assert!(reason.contains("damaged"), "{reason}");
    let kept: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("journal.db.damaged-")
                && !name.ends_with("-shm")
                && !name.ends_with("-wal")
        })
        .collect();
    assert_eq!(kept.len(), 1, "the damaged file is kept");
    assert_eq!(
        std::fs::read(kept[0].path()).unwrap()[..16],
        *b"this is garbage!"
    );
    // The fresh journal works.
    assert_eq!(
        j.record_commands(vec![cmd("c1", false)]).await.unwrap(),
        vec![true]
    );
}

#[tokio::test]
async fn the_size_bound_reports_full() {
    let dir = Dir::new("full");
    let (j, _) = Journal::open(&dir.0, SyncMode::Normal, 64 * 1024).unwrap();
    assert!(!j.is_full());
    let mut n = 0;
    while !j.is_full() {
        let id = format!("c{n}");
        j.record_commands(vec![cmd(&id, false)]).await.unwrap();
        let mut r = result(&id);
        r.payload = Some(serde_json::json!("x".repeat(1000)));
        j.record_result(r).await.unwrap();
        n += 1;
        assert!(n < 10_000, "never reported full");
    }
    assert!(j.bytes() >= 64 * 1024);
}

#[tokio::test]
async fn concurrent_writes_share_commits() {
    let dir = Dir::new("group");
    let (j, _) = open(&dir);
    let ids: Vec<String> = (0..200).map(|n| format!("c{n}")).collect();
    j.record_commands(ids.iter().map(|id| cmd(id, false)).collect())
        .await
        .unwrap();
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let j = j.clone();
            let id = id.clone();
            tokio::spawn(async move { j.record_result(result(&id)).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(j.owed_count(), 200);
}

/// The newest finished ids are remembered (`DEDUP_MEMORY`; 64 here), older acked ones are
/// forgotten; an id whose result is still owed is kept whatever its age.
#[tokio::test]
async fn finished_ids_are_remembered_for_the_window_then_forgotten() {
    let dir = Dir::new("window");
    let (j, _) = Journal::open_with_window(&dir.0, SyncMode::Normal, 1 << 30, 64).unwrap();
    let finish = |ids: Vec<String>, ack: bool| {
        let j = j.clone();
        async move {
            j.record_commands(ids.iter().map(|id| cmd(id, false)).collect())
                .await
                .unwrap();
            for id in &ids {
                j.record_result(result(id)).await.unwrap();
            }
            if ack {
                j.ack(ids).await.unwrap();
            }
        }
    };
    finish(vec!["old-acked".into()], true).await;
    finish(vec!["old-owed".into()], false).await;
    let known = |id: &str| {
        let j = j.clone();
        let id = id.to_owned();
        async move { !j.record_commands(vec![cmd(&id, false)]).await.unwrap()[0] }
    };
    // 62 newer finished ids: with the two old ones, exactly the window.
    finish((0..62).map(|n| format!("n{n}")).collect(), true).await;
    assert!(known("old-acked").await, "inside the window");
    finish(vec!["one-more".into()], true).await;
    assert!(!known("old-acked").await, "forgotten beyond the window");
    assert!(known("old-owed").await, "a result still owed keeps its id");
}

/// What a restart needs to tell "never sent" from "may have reached it": the `sent` marks,
/// per appliance, gone once the command is done.
#[tokio::test]
async fn a_restart_knows_which_appliances_a_running_command_was_sent_to() {
    let dir = Dir::new("sent");
    {
        let (j, _) = open(&dir);
        j.record_commands(vec![cmd("c1", false), cmd("c2", false), cmd("c3", false)])
            .await
            .unwrap();
        j.record_sent("c1", "lamp-1").await.unwrap();
        j.record_sent("c1", "lamp-2").await.unwrap();
        j.record_sent("c3", "lamp-1").await.unwrap();
        j.record_result(result("c3")).await.unwrap();
        j.close().await;
    }
    let (_, recovery) = open(&dir);
    let running: Vec<(String, Vec<String>)> = recovery
        .running
        .into_iter()
        .map(|c| (c.id, c.sent))
        .collect();
    assert_eq!(
        running,
        [
            (
                "c1".to_owned(),
                vec!["lamp-1".to_owned(), "lamp-2".to_owned()]
            ),
            ("c2".to_owned(), vec![]),
        ]
    );
}

/// A version 1 journal did not record what was sent: what it left running counts as sent
/// to every target, never as safe to run again.
#[tokio::test]
async fn a_version_1_journal_is_upgraded_with_its_running_commands_counted_as_sent() {
    let dir = Dir::new("v1");
    {
        let (j, _) = open(&dir);
        j.record_commands(vec![cmd("old", false)]).await.unwrap();
        j.close().await;
    }
    {
        let conn = rusqlite::Connection::open(dir.0.join("journal.db")).unwrap();
        conn.execute_batch(
            "ALTER TABLE commands DROP COLUMN sent; UPDATE meta SET value = '1' WHERE key = 'schema';",
        )
            .unwrap();
    }
    let (j, recovery) = open(&dir);
    assert_eq!(recovery.running.len(), 1);
    assert_eq!(recovery.running[0].sent, vec!["*".to_owned()]);
    j.close().await;
    let conn = rusqlite::Connection::open(dir.0.join("journal.db")).unwrap();
    let version: String = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(version, "2");
}

/// MQTT persistent sessions outlive a restart; a forgotten one does not come back.
#[tokio::test]
async fn persistent_sessions_are_remembered_across_a_restart() {
    let dir = Dir::new("sessions");
    let (j, r) = open(&dir);
    assert!(r.sessions.is_empty());
    j.note_session("thermo", Some(1));
    j.note_session("lamp", Some(0));
    j.note_session("lamp", Some(1));
    j.note_session("gone", Some(1));
    j.note_session("gone", None);
    j.close().await;
    let (j, r) = open(&dir);
    assert_eq!(
        r.sessions,
        vec![("lamp".to_owned(), 1), ("thermo".to_owned(), 1)]
    );
    j.close().await;
}
