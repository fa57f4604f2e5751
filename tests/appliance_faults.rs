//! Misbehaving appliances, as real MQTT clients: malformed results, unknown and duplicate
//! results, floods, a disconnect mid-command, a reconnect storm. The daemon logs and
//! counts what it cannot use, keeps serving the others, and loses nothing.

mod common;

use common::*;
use rumqttc::QoS;
use serde_json::json;

#[tokio::test]
async fn malformed_unknown_and_duplicate_results_are_dropped_and_counted() {
    let dir = TempDir::new("badresults");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["bad-1"], "");
    let daemon = Tetherd::start(&cfg);
    let mut app = Appliance::connect(daemon.mqtt, "bad-1", Behaviour::Manual).await;
    let id = cloud
        .enqueue(json!({"target": "bad-1", "timeout_ms": 20000}))
        .await;
    assert_eq!(app.next_command().await.0, id);
    let topic = "tether/bad-1/result";
    for junk in [
        "not json",
        "{\"id\": 7}",
        "{\"ok\": true}",
        "{\"id\": \"x\", \"ok\": \"yes\"}",
    ] {
        app.client
            .publish(topic, QoS::AtLeastOnce, false, junk)
            .await
            .unwrap();
    }
    // A result for a command that does not exist.
    app.answer("c999", true, json!(null)).await;
    daemon.log.wait_async("COUNT=4").await;
    daemon.log.wait_async("not waiting").await;
    // The real answer, then the same answer again.
    app.answer(&id, true, json!("first")).await;
    app.answer(&id, true, json!("second")).await;
    let stored = cloud.result(&id).await;
    assert_eq!(stored["result"]["payload"], "first");
    daemon.log.wait_async("COMMAND_ID=c1 COUNT=2").await;
    let events = eventually("malformed events at the cloud", || async {
        let e = cloud.events().await;
        (e.iter().filter(|e| e["kind"] == "malformed").count() >= 4).then_some(e)
    })
    .await;
    assert!(
        events.iter().all(|e| !e.to_string().contains("not json\"")),
        "raw payloads are not forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_appliance_is_bounded_and_does_not_starve_the_others() {
    let dir = TempDir::new("flood");
    let cloud = DevCloud::start(dir.path(), &[]);
    let mqtt = "listen = \"127.0.0.1:0\"\nstartup_grace = \"0s\"\nmax_events = 100\n";
    let cfg = config_with_mqtt(dir.path(), &cloud, &["noisy", "calm"], mqtt, "");
    let daemon = Tetherd::start(&cfg);
    let noisy = Appliance::connect(daemon.mqtt, "noisy", Behaviour::Echo).await;
    let _calm = Appliance::connect(daemon.mqtt, "calm", Behaviour::Echo).await;
    // The cloud is down (503) during the flood, so events pile up at the gateway's bound.
    let fault = |f: serde_json::Value| {
        let (http, url) = (
            cloud.http.clone(),
            format!("http://{}/admin/faults", cloud.admin),
        );
        async move {
            assert!(
                http.post(url)
                    .body(f.to_string())
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .is_success()
            )
        }
    };
    fault(json!({"mode": "status", "status": 503})).await;
    for n in 0..5000u32 {
        let (topic, body) = if n % 2 == 0 {
            ("tether/noisy/events", json!({"n": n}).to_string())
        } else {
            (
                "tether/noisy/result",
                json!({"id": format!("ghost-{n}"), "ok": true}).to_string(),
            )
        };
        noisy
            .client
            .publish(topic, QoS::AtMostOnce, false, body)
            .await
            .unwrap();
    }
    daemon.log.wait_async("ghost-4999").await;
    fault(json!({"mode": "none"})).await;
    // The calm appliance is served as usual.
    for n in 0..20 {
        let id = cloud.enqueue(json!({"target": "calm", "payload": n})).await;
        assert_eq!(cloud.result(&id).await["result"]["status"], "ok");
    }
    // What did not fit the bound is reported upstream as a count: nothing vanishes silently
    // (events are at least once: one in a request whose answer was lost is sent again).
    let dropped = eventually("every event delivered or counted", || async {
        let e = cloud.events().await;
        let dropped: u64 = e
            .iter()
            .filter(|e| e["kind"] == "dropped")
            .map(|e| e["payload"]["events"].as_u64().unwrap())
            .sum();
        let delivered = e.iter().filter(|e| e["kind"] == "event").count() as u64;
        (delivered + dropped >= 2500).then_some(dropped)
    })
    .await;
    assert!(
        dropped > 0,
        "nothing was dropped: the bound of 100 events was not reached"
    );
    eprintln!("flood: {dropped} events dropped at the bound and reported");
    let (rss, _) = daemon.memory_kib();
    eprintln!("tetherd VmRSS after the flood: {rss} KiB");
}

#[tokio::test]
async fn a_disconnect_mid_command_is_interrupted_and_a_reconnect_storm_is_absorbed() {
    let dir = TempDir::new("storm");
    let cloud = DevCloud::start(dir.path(), &[]);
    let names: Vec<String> = (0..100).map(|i| format!("s-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let cfg = config(dir.path(), &cloud, &refs, "");
    let daemon = Tetherd::start(&cfg);
    // Mid-command disconnect: sent, never answered, link gone.
    let mut one = Appliance::connect(daemon.mqtt, "s-0", Behaviour::Manual).await;
    let id = cloud
        .enqueue(json!({"target": "s-0", "timeout_ms": 60000}))
        .await;
    assert_eq!(one.next_command().await.0, id);
    one.leave().await;
    let r = cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "interrupted", "{r}");
    // A storm: everyone connects at once, drops, and comes back.
    let mut apps = Vec::new();
    for round in 0..2 {
        let connects = names
            .iter()
            .map(|n| Appliance::connect(daemon.mqtt, n, Behaviour::Echo));
        apps = futures_util::future::join_all(connects).await;
        if round == 0 {
            for a in apps.drain(..) {
                a.leave().await;
            }
            daemon
                .log
                .wait_async("closed: disconnected APPLIANCE=s-99")
                .await;
        }
    }
    let ids = cloud
        .enqueue_many(
            names
                .iter()
                .map(|n| json!({"target": n, "timeout_ms": 10000}))
                .collect(),
        )
        .await;
    for id in &ids {
        assert_eq!(cloud.result(id).await["result"]["status"], "ok", "{id}");
    }
    drop(apps);
}
