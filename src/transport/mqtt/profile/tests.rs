use serde_json::json;

use super::*;
use crate::config::TransportKind;

fn appliance(id: &str, profile: Profile, topic: Option<&str>) -> ApplianceConfig {
    let text = format!(
        "[[appliance]]\nid = \"{id}\"\ntransport = \"mqtt\"\npassword = \"pw\"\nprofile = \"{}\"\n{}",
        profile.name(),
        topic
            .map(|t| format!("topic = \"{t}\"\n"))
            .unwrap_or_default()
    );
    let mut entries =
        crate::config::Config::parse_entries(&text, &Default::default(), &Default::default())
            .unwrap();
    let a = entries.appliances.remove(0);
    assert_eq!(a.transport, TransportKind::Mqtt);
    a
}

#[test]
fn shelly_topics_are_its_own_and_nothing_else() {
    let c = Contract::new(
        "tether",
        &appliance("plug", Profile::ShellyRpc, Some("shellyplus1-a1")),
    );
    assert_eq!(c.subscribe("shellyplus1-a1/rpc"), Subscribe::Commands);
    assert_eq!(c.subscribe("shellyplus1-a1/command"), Subscribe::Own);
    assert_eq!(
        c.subscribe("shellyplus1-a1/command/switch:0"),
        Subscribe::Own
    );
    for f in [
        "#",
        "shellyplus1-a1/#",
        "shellyplus1-a2/rpc",
        "shellyplus1-a1/command/+",
        "tether/plug/rpc",
        "+/rpc",
    ] {
        assert_eq!(c.subscribe(f), Subscribe::Denied, "{f}");
    }
    assert_eq!(c.classify("tether/plug/rpc"), Some(Inbound::Answer));
    assert_eq!(c.classify("shellyplus1-a1/online"), Some(Inbound::Presence));
    assert_eq!(
        c.classify("shellyplus1-a1/events/rpc"),
        Some(Inbound::Event)
    );
    assert_eq!(
        c.classify("shellyplus1-a1/status/switch:0"),
        Some(Inbound::Event)
    );
    for t in [
        "tether/other/rpc",
        "shellyplus1-a1/rpc",
        "shellyplus1-a2/online",
        "shellyplus1-a1/status/a/b",
        "shellyplus1-a1/status/",
    ] {
        assert_eq!(c.classify(t), None, "{t}");
    }
    assert_eq!(c.presence(b"true"), Ok(true));
    assert_eq!(c.presence(b"false"), Ok(false));
    assert!(c.presence(b"online").is_err());
}

#[test]
fn shelly_requests_and_answers() {
    let c = Contract::new("tether", &appliance("plug", Profile::ShellyRpc, None));
    let (name, body, key) = c
        .command(
            "cmd-1",
            7,
            &json!({"method": "Switch.Set", "params": {"id": 0, "on": true}}),
        )
        .unwrap();
    assert_eq!(name, "plug/rpc");
    assert_eq!(key, "7");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        json!({"id": 7, "src": "tether/plug", "method": "Switch.Set", "params": {"id": 0, "on": true}})
    );
    for bad in [
        json!({"params": {}}),
        json!({"method": ""}),
        json!({"method": "X", "params": [1]}),
        json!({"method": "X", "extra": 1}),
        json!("Switch.Set"),
    ] {
        assert!(c.command("c", 1, &bad).is_err(), "{bad}");
    }
    let ok = c.answer(
        "t",
        br#"{"id":7,"src":"plug","dst":"tether/plug","result":{"was_on":false}}"#,
    );
    assert_eq!(
        ok,
        Answer {
            key: Some("7".into()),
            outcome: Ok(Outcome::Ok(Some(json!({"was_on": false}))))
        }
    );
    let err = c.answer(
        "t",
        br#"{"id":8,"src":"plug","error":{"code":-103,"message":"Invalid argument 'id'!"}}"#,
    );
    assert_eq!(err.key.as_deref(), Some("8"));
    assert_eq!(
        err.outcome,
        Ok(Outcome::Error(
            "shelly error -103: Invalid argument 'id'!".into()
        ))
    );
    assert_eq!(
        c.answer("t", br#"{"id":9}"#).outcome.unwrap_err(),
        "shelly answer has neither \"result\" nor \"error\""
    );
    assert_eq!(c.answer("t", b"garbage").key, None);
    assert!(c.answer("t", b"garbage").outcome.is_err());
}

#[test]
fn tasmota_topics_commands_and_answers() {
    let c = Contract::new("tether", &appliance("lamp", Profile::Tasmota, Some("hall")));
    assert_eq!(c.subscribe("cmnd/hall/#"), Subscribe::Commands);
    assert_eq!(c.subscribe("cmnd/tasmotas/#"), Subscribe::Ignored);
    assert_eq!(c.subscribe("cmnd/lamp_fb/#"), Subscribe::Ignored);
    for f in [
        "cmnd/other/#",
        "cmnd/+/#",
        "stat/hall/#",
        "#",
        "cmnd/hall/Power",
    ] {
        assert_eq!(c.subscribe(f), Subscribe::Denied, "{f}");
    }
    assert_eq!(c.classify("stat/hall/RESULT"), Some(Inbound::Answer));
    assert_eq!(c.classify("tele/hall/LWT"), Some(Inbound::Presence));
    assert_eq!(c.classify("tele/hall/STATE"), Some(Inbound::Event));
    assert_eq!(c.classify("stat/hall/POWER"), Some(Inbound::Event));
    assert_eq!(
        c.classify("tasmota/discovery/A4CF12/config"),
        Some(Inbound::Ignored)
    );
    for t in [
        "stat/other/RESULT",
        "cmnd/hall/Power",
        "stat/hall",
        "stat/hall/a/b",
        "tele/hall2/LWT",
        "stat/hall/+",
    ] {
        assert_eq!(c.classify(t), None, "{t}");
    }
    assert_eq!(c.presence(b"Online"), Ok(true));
    assert_eq!(c.presence(b"Offline"), Ok(false));
    let (name, body, _) = c
        .command("c1", 1, &json!({"command": "Power1", "value": "ON"}))
        .unwrap();
    assert_eq!(
        (name.as_str(), body.as_slice()),
        ("cmnd/hall/Power1", b"ON".as_slice())
    );
    let (_, body, _) = c.command("c1", 1, &json!({"command": "Dimmer"})).unwrap();
    assert!(body.is_empty());
    let (_, body, _) = c
        .command("c1", 1, &json!({"command": "Dimmer", "value": 40}))
        .unwrap();
    assert_eq!(body, b"40");
    for bad in [
        json!({"command": "Power/1"}),
        json!({"command": "+"}),
        json!({"value": 1}),
        json!({"command": "P", "x": 1}),
    ] {
        assert!(c.command("c", 1, &bad).is_err(), "{bad}");
    }
    assert_eq!(
        c.answer("t", br#"{"POWER1":"ON"}"#).outcome,
        Ok(Outcome::Ok(Some(json!({"POWER1": "ON"}))))
    );
    assert!(matches!(
        c.answer("t", br#"{"Command":"Unknown"}"#).outcome,
        Ok(Outcome::Error(_))
    ));
    assert!(c.answer("t", b"ON").outcome.is_err());
    assert!(!c.answers_carry_ids());
    assert_eq!(
        c.event("stat/hall/POWER", b"ON").unwrap(),
        json!({"topic": "stat/hall/POWER", "data": "ON"})
    );
}

#[test]
fn tether_profile_is_the_original_contract() {
    let c = Contract::new("tether", &appliance("a", Profile::Tether, None));
    assert_eq!(c.subscribe("tether/a/cmd"), Subscribe::Commands);
    assert_eq!(c.subscribe("tether/b/cmd"), Subscribe::Denied);
    assert_eq!(c.classify("tether/a/result"), Some(Inbound::Answer));
    let a = c.answer("t", br#"{"id":"c1","ok":true,"payload":{"x":1}}"#);
    assert_eq!(
        a,
        Answer {
            key: Some("c1".into()),
            outcome: Ok(Outcome::Ok(Some(json!({"x": 1}))))
        }
    );
}

fn custom(extra: &str) -> ApplianceConfig {
    let text = format!(
        "[[appliance]]\nid = \"node\"\ntransport = \"mqtt\"\npassword = \"pw\"\nprofile = \"custom\"\ntopic = \"porch\"\n{extra}"
    );
    let mut entries =
        crate::config::Config::parse_entries(&text, &Default::default(), &Default::default())
            .unwrap_or_else(|p| panic!("{p:#?}"));
    entries.appliances.remove(0)
}

#[test]
fn custom_templates_place_commands_and_match_answers() {
    let a = custom(
        "command_topic = \"esphome/{topic}/{entity}/command\"\nanswer_topic = \"esphome/{topic}/{entity}/state\"\npresence_topic = \"esphome/{topic}/status\"\n",
    );
    let c = Contract::new("tether", &a);
    assert_eq!(
        c.subscribe("esphome/porch/light/porch_light/command"),
        Subscribe::Commands
    );
    // Its whole subtree is its own: only its commands are ever published there.
    assert_eq!(c.subscribe("esphome/porch/#"), Subscribe::Commands);
    for f in [
        "esphome/#",
        "esphome/porch/+/x/command",
        "esphome/other/light/x/command",
        "esphome/porch/command",
    ] {
        assert_eq!(c.subscribe(f), Subscribe::Denied, "{f}");
    }
    assert_eq!(c.classify("esphome/porch/status"), Some(Inbound::Presence));
    assert_eq!(
        c.classify("esphome/porch/sensor/t/state"),
        Some(Inbound::Answer)
    );
    assert_eq!(c.classify("esphome/porch/light/x/command"), None);
    assert_eq!(c.classify("esphome/other/light/x/state"), None);
    let (name, body, key) = c
        .command(
            "c1",
            1,
            &json!({"entity": "light/x", "value": {"state": "ON"}}),
        )
        .unwrap();
    assert_eq!(name, "esphome/porch/light/x/command");
    assert_eq!(body, br#"{"state":"ON"}"#);
    assert_eq!(key, "esphome/porch/light/x/state");
    // The next message on that topic answers it, whatever it is.
    let a = c.answer("esphome/porch/light/x/state", b"{\"state\":\"ON\"}");
    assert_eq!(a.key.as_deref(), Some("esphome/porch/light/x/state"));
    assert_eq!(a.outcome, Ok(Outcome::Ok(Some(json!({"state": "ON"})))));
    assert!(!c.answers_carry_ids());
    assert_eq!(
        c.inbound_filters(),
        ["esphome/porch/#", "esphome/porch/status"]
    );
    for bad in [
        json!({"value": 1}),
        json!({"entity": "a/+/b"}),
        json!({"entity": ""}),
        json!({"entity": "a", "x": 1}),
    ] {
        assert!(c.command("c", 1, &bad).is_err(), "{bad}");
    }
}

#[test]
fn custom_answers_matched_by_a_field() {
    let a = custom(
        "command_topic = \"dev/{topic}/in\"\ncommand_payload = '{{\"req\": \"{command_id}\", \"set\": {value}}}'\nanswer_topic = \"dev/{topic}/out\"\nanswer_match = \"field:req\"\npresence_topic = \"dev/{topic}/alive\"\nonline_payload = \"1\"\noffline_payload = \"0\"\n",
    );
    let c = Contract::new("tether", &a);
    let (name, body, key) = c.command("c9", 1, &json!({"value": 5})).unwrap();
    assert_eq!((name.as_str(), key.as_str()), ("dev/porch/in", "c9"));
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"req": "c9", "set": 5})
    );
    let a = c.answer("dev/porch/out", br#"{"req": "c9", "ok": true}"#);
    assert_eq!(a.key.as_deref(), Some("c9"));
    assert!(c.answer("dev/porch/out", b"nope").outcome.is_err());
    assert!(
        c.answer("dev/porch/out", br#"{"ok": true}"#)
            .outcome
            .is_err()
    );
    assert!(c.answers_carry_ids());
    assert_eq!(c.presence(b"1"), Ok(true));
    assert_eq!(c.presence(b"0"), Ok(false));
    assert!(c.command("c", 1, &json!({"entity": "x"})).is_err());
}
