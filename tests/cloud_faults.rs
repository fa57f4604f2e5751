//! A hostile or broken cloud, injected into the devcloud at run time: the daemon never
//! crashes, abandons stalled requests within a bounded time, backs off, and once the
//! fault clears, every owed result arrives.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::{Value, json};

/// Short timings so faults clear quickly: 2 s poll wait, 2 s request allowance.
const FAST: &str = "poll_wait = \"2s\"\nrequest_timeout = \"2s\"\nconnect_timeout = \"2s\"\n";

struct Rig {
    _dir: TempDir,
    cloud: DevCloud,
    daemon: Tetherd,
    _app: Appliance,
}

async fn rig(tag: &str, devcloud_args: &[&str], cloud_extra: &str) -> Rig {
    let dir = TempDir::new(tag);
    // The cloud steers the poll wait (`poll.wait_s`): keep it short too.
    let mut args = vec!["--wait-s", "2"];
    args.extend_from_slice(devcloud_args);
    let cloud = DevCloud::start(dir.path(), &args);
    let cfg = config(dir.path(), &cloud, &["f-1"], "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "backoff_max = \"2s\"\n",
        &format!("backoff_max = \"2s\"\n{FAST}{cloud_extra}"),
    );
    std::fs::write(&cfg, text).unwrap();
    let daemon = Tetherd::start(&cfg);
    let app = Appliance::connect(daemon.mqtt, "f-1", Behaviour::Echo).await;
    Rig {
        _dir: dir,
        cloud,
        daemon,
        _app: app,
    }
}

async fn fault(cloud: &DevCloud, f: Value) {
    let resp = cloud
        .http
        .post(format!("http://{}/admin/faults", cloud.admin))
        .body(f.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "fault {f}: {}", resp.status());
}

/// A command round trip works (after whatever came before).
async fn round_trip(cloud: &DevCloud) {
    let id = cloud
        .enqueue(json!({"target": "f-1", "payload": "after"}))
        .await;
    assert_eq!(cloud.result(&id).await["result"]["status"], "ok");
}

#[tokio::test]
async fn server_errors_and_retry_after_are_ridden_out() {
    let r = rig("5xx", &[], "").await;
    round_trip(&r.cloud).await;
    fault(
        &r.cloud,
        json!({"mode": "status", "status": 500, "count": 3}),
    )
    .await;
    round_trip(&r.cloud).await;
    r.daemon
        .log
        .wait_async("cloud request failed: HTTP 500")
        .await;
    fault(
        &r.cloud,
        json!({"mode": "status", "status": 503, "retry_after": "1", "count": 2}),
    )
    .await;
    round_trip(&r.cloud).await;
    fault(
        &r.cloud,
        json!({"mode": "status", "status": 429, "retry_after": "1", "count": 1}),
    )
    .await;
    round_trip(&r.cloud).await;
}

#[tokio::test]
async fn broken_stalled_malformed_and_huge_responses_are_abandoned() {
    let r = rig("bodies", &[], "").await;
    round_trip(&r.cloud).await;
    for f in [
        json!({"mode": "reset", "count": 2}),
        json!({"mode": "malformed", "count": 2}),
        json!({"mode": "huge", "bytes": 16 << 20, "count": 1}),
        // Headers, then nothing: abandoned after wait + request_timeout.
        json!({"mode": "stall", "count": 1}),
    ] {
        fault(&r.cloud, f.clone()).await;
        round_trip(&r.cloud).await;
    }
    let log = r.daemon.log.all().join("\n");
    assert!(
        log.contains("not a valid protocol v1 json body"),
        "malformed not reported"
    );
    assert!(
        log.contains("exceeds 4194304 bytes"),
        "huge body not bounded"
    );
}

#[tokio::test]
async fn goaway_tls_stall_and_a_cloud_that_is_down_are_recovered_from() {
    let r = rig("conn", &[], "").await;
    round_trip(&r.cloud).await;
    fault(&r.cloud, json!({"mode": "goaway"})).await;
    round_trip(&r.cloud).await;
    // The cloud is down (connections closed at once), then up again.
    fault(&r.cloud, json!({"mode": "refuse"})).await;
    fault(&r.cloud, json!({"mode": "goaway"})).await;
    r.daemon.log.wait_async("cloud request failed").await;
    let id = r
        .cloud
        .enqueue(json!({"target": "f-1", "payload": "during"}))
        .await;
    fault(&r.cloud, json!({"mode": "none"})).await;
    assert_eq!(r.cloud.result(&id).await["result"]["status"], "ok");
    // TCP accepted, TLS never answered: the connect timeout (2 s) ends it.
    fault(&r.cloud, json!({"mode": "tls_stall", "count": 1})).await;
    fault(&r.cloud, json!({"mode": "goaway"})).await;
    round_trip(&r.cloud).await;
    let stats = r.cloud.stats().await;
    assert!(stats["tls_handshakes"].as_u64().unwrap() >= 3, "{stats}");
}

#[tokio::test]
async fn bad_commands_are_rejected_while_good_ones_in_the_same_batch_run() {
    let r = rig("badcmds", &[], "").await;
    let resp = r
        .cloud
        .http
        .post(format!(
            "http://{}/admin/gateways/{GATEWAY}/commands?raw=1",
            r.cloud.admin
        ))
        .body(
            json!([
                {"id": "bad-1", "target": 42},
                {"id": "good-1", "target": "f-1", "payload": 1},
                {"id": "bad-2", "target": "f-1", "timeout_ms": "soon"},
                {"id": "good-2", "target": "f-1", "payload": 2}
            ])
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    for (id, status) in [
        ("bad-1", "rejected"),
        ("good-1", "ok"),
        ("bad-2", "rejected"),
        ("good-2", "ok"),
    ] {
        let r = r.cloud.result(id).await["result"].clone();
        assert_eq!(r["status"], status, "{id}: {r}");
    }
}

#[tokio::test]
async fn refused_credentials_recover_when_the_operator_fixes_the_token() {
    let dir = TempDir::new("auth");
    let cloud = DevCloud::start(dir.path(), &["--token", "right-token"]);
    let token = dir.path().join("token");
    std::fs::write(&token, "wrong-token").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = config(dir.path(), &cloud, &["f-1"], "");
    use_token_file(&cfg, &token);
    let daemon = Tetherd::start(&cfg);
    let _app = Appliance::connect(daemon.mqtt, "f-1", Behaviour::Echo).await;
    daemon
        .log
        .wait_async("refused the gateway's credentials")
        .await;
    // The fix: a new token and a reload; the daemon retries at once, not in 5 minutes.
    std::fs::write(&token, "right-token").unwrap();
    daemon.signal("HUP");
    round_trip(&cloud).await;
}

/// A cloud (or a proxy before it) with a body limit refuses a request because of an event
/// too large for it: the event is found and dropped, and no result is blamed for it. With
/// events and results in one refused request, results go alone next; events alone are
/// halved down to the one refused.
#[tokio::test]
async fn a_body_limit_blames_the_event_that_breaks_it_not_the_results() {
    let r = rig("bodylimit", &["--max-body-bytes", "6000"], "").await;
    let publish = |body: String| {
        let client = r._app.client.clone();
        async move {
            client
                .publish("tether/f-1/events", rumqttc::QoS::AtLeastOnce, false, body)
                .await
                .unwrap();
        }
    };
    publish(json!({"small": 1}).to_string()).await;
    // Under the appliance client's own packet limit (10 KiB), over the cloud's.
    publish(json!({"big": "x".repeat(8_000)}).to_string()).await;
    publish(json!({"small": 2}).to_string()).await;
    // Results owed at the same time, so the refused request may carry both.
    let ids = r
        .cloud
        .enqueue_many(
            (0..5)
                .map(|n| json!({"target": "f-1", "payload": n}))
                .collect(),
        )
        .await;
    for id in &ids {
        assert_eq!(r.cloud.result(id).await["result"]["status"], "ok", "{id}");
    }
    r.daemon
        .log
        .wait_async("cloud refuses an event of kind event")
        .await;
    let events = eventually("both small events", || async {
        let e = r.cloud.events().await;
        let smalls = e
            .iter()
            .filter(|e| e["payload"].get("small").is_some())
            .count();
        (smalls == 2).then_some(e)
    })
    .await;
    assert!(events.iter().all(|e| e["payload"].get("big").is_none()));
    assert_eq!(r.daemon.log.count("quarantined"), 0, "no result was blamed");
    round_trip(&r.cloud).await;
}
