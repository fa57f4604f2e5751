use serde_json::Value;
use serde_json::json;

use super::*;
use crate::cloud::wire::Status;
use crate::journal::SyncMode;

impl Router {
    fn lanes(&self) -> usize {
        self.shared.lock().lanes.len()
    }
}

/// A router on a scratch journal and a real MQTT endpoint (nobody connects to it).
struct Rig {
    router: Router,
    outbox: Arc<Outbox>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    dir: std::path::PathBuf,
}

impl Rig {
    /// `sections` go before the `[[appliance]]` tables in `appliances`.
    async fn start(sections: &str, appliances: &str) -> Rig {
        let dir = std::env::temp_dir().join(format!(
            "tether-router-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let text = format!(
            "[gateway]\nid = \"gw\"\nstate_dir = \"{}\"\n[cloud]\nurl = \"https://localhost:1\"\n\
             token_file = \"/nonexistent\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\nstartup_grace = \"0s\"\n\
             {sections}{appliances}",
            dir.display()
        );
        let config = Config::parse(&text).expect("config");
        let (journal, _) = Journal::open(&dir, SyncMode::Normal, 1 << 30).unwrap();
        let outbox = Arc::new(Outbox::new(journal.clone(), 100));
        let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
        let (mqtt, _, _) = crate::transport::mqtt::start(
            &config,
            None,
            outbox.clone(),
            Default::default(),
            &tracker,
            cancel.clone(),
        )
        .await
        .unwrap();
        let transports = Transports { mqtt, ble: None };
        let router = Router::start(
            &config,
            transports,
            journal,
            outbox.clone(),
            &tracker,
            cancel.clone(),
        );
        Rig {
            router,
            outbox,
            tracker,
            cancel,
            dir,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Lanes (and their worker tasks) exist only while an appliance has work, and a
/// lane's bound turns the excess into `rejected` items.
#[tokio::test]
async fn lanes_come_and_go_with_work_and_are_bounded() {
    let mut appliances = String::new();
    for i in 0..20 {
        appliances.push_str(&format!(
            "[[appliance]]\nid = \"a{i}\"\ntransport = \"mqtt\"\npassword = \"p{i}\"\n"
        ));
    }
    let rig = Rig::start("[router]\nmax_queue_per_appliance = 3\n", &appliances).await;
    let (router, outbox) = (&rig.router, &rig.outbox);
    assert_eq!(
        router.lanes(),
        0,
        "no appliance has work: no lane, no worker"
    );
    // Nobody is connected, so every job ends quickly as `unreachable`.
    let mut commands: Vec<Value> = (0..40)
        .map(|n| json!({"id": format!("c{n}"), "target": format!("a{}", n % 20)}))
        .collect();
    // Five at once for one appliance: one runs, two queue, two are over the bound.
    commands.extend((0..5).map(|n| json!({"id": format!("burst{n}"), "target": "a0"})));
    router.submit(commands).await;
    router.idle().await;
    assert_eq!(router.lanes(), 0, "every lane ended with its work");
    let owed = outbox.take(100, 0).await.results;
    assert_eq!(owed.len(), 45);
    let rejected: Vec<&str> = owed
        .iter()
        .filter(|r| r.status == Status::Rejected)
        .map(|r| r.error.as_deref().unwrap_or(""))
        .collect();
    assert!(
        !rejected.is_empty() && rejected.iter().all(|e| e.contains("queue is full")),
        "{rejected:?}"
    );
    rig.stop().await;
}

/// A malformed command whose rejection a crash cut off is rejected again at the next start,
/// not reported `interrupted`: it never ran. A sent one still is.
#[tokio::test]
async fn a_malformed_command_left_by_a_crash_is_rejected_not_interrupted() {
    let rig = Rig::start(
        "",
        "[[appliance]]\nid = \"a0\"\ntransport = \"mqtt\"\npassword = \"p0\"\n",
    )
    .await;
    let (router, outbox) = (&rig.router, &rig.outbox);
    let left = |id: &str, sent: &[&str]| crate::journal::Interrupted {
        id: id.into(),
        body: format!(r#"{{"id":"{id}","target":42}}"#),
        idempotent: false,
        received_at_ms: crate::journal::now_ms(),
        sent: sent.iter().map(|s| s.to_string()).collect(),
    };
    router
        .recover(vec![left("m1", &[]), left("m2", &["a0"])])
        .await;
    router.idle().await;
    let owed = outbox.take(10, 0).await.results;
    let status = |id: &str| owed.iter().find(|r| r.command_id == id).map(|r| r.status);
    assert_eq!(status("m1"), Some(Status::Rejected), "{owed:?}");
    assert_eq!(status("m2"), Some(Status::Interrupted), "{owed:?}");
    rig.stop().await;
}

/// A protobuf command's raw bytes and decoding fault live in its journalled JSON
/// (`cloud::proto`), so they survive a crash: the raw payload is still raw after a restart
/// (an MQTT appliance refuses it unsent, rather than getting `null`), a fault is still a
/// rejection.
#[tokio::test]
async fn raw_payloads_and_decode_faults_survive_a_restart() {
    let rig = Rig::start(
        "",
        "[[appliance]]\nid = \"a0\"\ntransport = \"mqtt\"\npassword = \"p0\"\n",
    )
    .await;
    let (router, outbox) = (&rig.router, &rig.outbox);
    let left = |id: &str, extra: &str| crate::journal::Interrupted {
        id: id.into(),
        body: format!(r#"{{"id":"{id}","target":"a0"{extra}}}"#),
        idempotent: false,
        received_at_ms: crate::journal::now_ms(),
        sent: Vec::new(),
    };
    router
        .recover(vec![
            left("raw", r#","$payload_raw":"AAH/""#),
            left("bad", r#","$invalid":"payload_json is not JSON text""#),
            left("b64", r#","$payload_raw":"not base64!""#),
        ])
        .await;
    router.idle().await;
    let owed = outbox.take(10, 0).await.results;
    let get = |id: &str| {
        let r = owed.iter().find(|r| r.command_id == id).unwrap();
        (r.status, r.error.clone().unwrap_or_default())
    };
    let (status, error) = get("raw");
    assert_eq!(status, Status::Error, "{owed:?}");
    assert!(error.contains("raw bytes"), "{error}");
    let (status, error) = get("bad");
    assert_eq!(status, Status::Rejected);
    assert!(error.contains("payload_json is not JSON text"), "{error}");
    let (status, error) = get("b64");
    assert_eq!(status, Status::Rejected);
    assert!(error.contains("not base64"), "{error}");
    rig.stop().await;
}
