use serde_json::json;

use super::*;
use crate::cloud::wire::Command;

fn result(id: &str, status: Status) -> CommandResult {
    CommandResult {
        command_id: id.into(),
        status,
        payload: Some(json!({"on": true, "n": 9_007_199_254_740_993_u64})),
        error: None,
        items: None,
        duration_ms: 42,
    }
}

#[test]
fn requests_survive_both_encodings() {
    let req = PollRequest {
        results: vec![
            result("c1", Status::Ok),
            CommandResult {
                items: Some(vec![ItemResult {
                    target: "lamp-2".into(),
                    status: Status::Timeout,
                    payload: None,
                    error: Some("no answer".into()),
                    duration_ms: 5,
                }]),
                payload: None,
                ..result("c2", Status::Partial)
            },
        ],
        pending: vec!["c3".into(), "c4".into()],
        waiting: vec!["c4".into()],
        events: vec![
            Event {
                appliance: Some("lamp-1".into()),
                kind: "event".into(),
                payload: json!([1, "two", null]),
            },
            Event {
                appliance: None,
                kind: "dropped".into(),
                payload: Value::Null,
            },
        ],
        capacity: 7,
    };
    for encoding in [Encoding::Json, Encoding::Protobuf] {
        let bytes = encoding.encode(&req);
        let back: PollRequest = encoding.decode(&bytes).unwrap();
        assert_eq!(back, req, "{encoding:?}");
    }
    let flush = ResultsRequest {
        results: req.results.clone(),
        events: req.events.clone(),
    };
    let back: ResultsRequest = Encoding::Protobuf
        .decode(&Encoding::Protobuf.encode(&flush))
        .unwrap();
    assert_eq!(back, flush);
}

#[test]
fn protobuf_is_smaller_for_results() {
    let req = PollRequest {
        results: (0..10)
            .map(|i| result(&format!("cmd-{i:04}"), Status::Ok))
            .collect(),
        ..PollRequest::default()
    };
    let json = Encoding::Json.encode(&req).len();
    let pb = Encoding::Protobuf.encode(&req).len();
    assert!(pb * 10 < json * 7, "protobuf {pb} bytes, JSON {json}");
}

#[test]
fn commands_become_the_json_form_the_router_takes() {
    let response = v1::PollResponse {
        commands: vec![
            v1::Command {
                id: "c1".into(),
                target: Some(v1::command::Target::TargetOne("group:lamps".into())),
                payload: Some(v1::command::Payload::PayloadJson(r#"{"on":true}"#.into())),
                ttl_ms: Some(0),
                timeout_ms: None,
                idempotent: true,
            },
            v1::Command {
                id: "c2".into(),
                target: Some(v1::command::Target::TargetMany(v1::TargetList {
                    ids: vec!["a".into(), "b".into()],
                })),
                payload: Some(v1::command::Payload::PayloadRaw(vec![0, 1, 0xff])),
                ..v1::Command::default()
            },
            v1::Command {
                id: "c3".into(),
                target: Some(v1::command::Target::TargetOne("a".into())),
                payload: Some(v1::command::Payload::PayloadJson("{not json".into())),
                ..v1::Command::default()
            },
            // No target: the router rejects it, as it does the JSON without one.
            v1::Command {
                id: "c4".into(),
                ..v1::Command::default()
            },
        ],
        acked: vec!["c0".into()],
        poll: Some(v1::Cadence {
            wait_s: Some(3600),
            interval_s: None,
            ping_s: Some(300),
        }),
    };
    let got: PollResponse = Encoding::Protobuf
        .decode(&response.encode_to_vec())
        .unwrap();
    assert_eq!(
        got.commands[0],
        json!({"id": "c1", "target": "group:lamps", "payload": {"on": true}, "ttl_ms": 0, "idempotent": true})
    );
    let c2: Command = serde_json::from_value(got.commands[1].clone()).unwrap();
    assert_eq!(c2.payload_raw.as_deref(), Some("AAH/"));
    assert_eq!(raw_payload("AAH/").unwrap(), vec![0, 1, 0xff]);
    let c3: Command = serde_json::from_value(got.commands[2].clone()).unwrap();
    assert!(
        c3.invalid
            .as_deref()
            .unwrap()
            .contains("payload_json is not JSON text"),
        "{c3:?}"
    );
    assert!(serde_json::from_value::<Command>(got.commands[3].clone()).is_err());
    assert_eq!(got.acked, ["c0"]);
    assert_eq!(
        got.poll,
        Some(Cadence {
            wait_s: Some(3600),
            interval_s: None,
            ping_s: Some(300),
        })
    );
    // The server side's way back gives the same message, but for the payload that was
    // not JSON (the cloud's own fault: it never sends one).
    let mut expected = response.clone();
    expected.commands[2].payload = None;
    assert_eq!(got.to_proto(), expected);
}

#[test]
fn too_deep_payloads_are_refused_per_command() {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let decode = |text: String| {
        let response = v1::PollResponse {
            commands: vec![v1::Command {
                id: "c1".into(),
                target: Some(v1::command::Target::TargetOne("a".into())),
                payload: Some(v1::command::Payload::PayloadJson(text)),
                ..v1::Command::default()
            }],
            ..v1::PollResponse::default()
        };
        let got: PollResponse = Encoding::Protobuf
            .decode(&response.encode_to_vec())
            .unwrap();
        serde_json::from_value::<Command>(got.commands[0].clone()).unwrap()
    };
    let ok = decode(deep(MAX_COMMAND_PAYLOAD_DEPTH));
    assert!(ok.invalid.is_none());
    // Its journalled form reads back.
    let body = serde_json::to_string(&ok).unwrap();
    assert!(serde_json::from_str::<Command>(&body).is_ok());
    let refused = decode(deep(MAX_COMMAND_PAYLOAD_DEPTH + 1));
    assert!(refused.invalid.unwrap().contains("nests 125 levels"));
}

#[test]
fn a_json_cloud_cannot_set_the_protobuf_only_keys() {
    let body = json!({"commands": [
        {"id": "c1", "target": "a", "payload": 1, "$payload_raw": "AAH/", "$invalid": "x"}
    ]});
    let got: PollResponse = Encoding::Json
        .decode(&serde_json::to_vec(&body).unwrap())
        .unwrap();
    assert_eq!(
        got.commands[0],
        json!({"id": "c1", "target": "a", "payload": 1})
    );
}

#[test]
fn bad_protobuf_is_an_error_not_a_panic() {
    assert!(
        Encoding::Protobuf
            .decode::<PollResponse>(&[0x0a, 0xff])
            .is_err()
    );
    // A result with an unknown status cannot be stored as one.
    let req = v1::PollRequest {
        results: vec![v1::Result {
            command_id: "c1".into(),
            status: 99,
            ..v1::Result::default()
        }],
        ..v1::PollRequest::default()
    };
    let err = Encoding::Protobuf
        .decode::<PollRequest>(&req.encode_to_vec())
        .unwrap_err();
    assert!(err.contains("unknown status 99"), "{err}");
    // Unknown fields are skipped, as unknown JSON keys are.
    let mut bytes = v1::ResultsResponse {
        acked: vec!["c1".into()],
    }
    .encode_to_vec();
    bytes.extend([0x98, 0x06, 0x01]); // field 99, varint 1
    let got: ResultsResponse = Encoding::Protobuf.decode(&bytes).unwrap();
    assert_eq!(got.acked, ["c1"]);
}

#[test]
fn media_types() {
    assert_eq!(
        Encoding::from_media_type("application/protobuf"),
        Some(Encoding::Protobuf)
    );
    assert_eq!(
        Encoding::from_media_type("Application/X-Protobuf; proto=tether.v1.PollResponse"),
        Some(Encoding::Protobuf)
    );
    assert_eq!(
        Encoding::from_media_type("application/json; charset=utf-8"),
        Some(Encoding::Json)
    );
    assert_eq!(Encoding::from_media_type("text/html"), None);
}

#[test]
fn json_clouds_send_raw_bytes_as_base64() {
    let c = command_to_proto(&json!({"id": "c1", "target": "a", "payload_base64": "AAH/"}));
    assert_eq!(
        c.payload,
        Some(v1::command::Payload::PayloadRaw(vec![0, 1, 0xff]))
    );
    let c = command_to_proto(&json!({"id": "c1", "target": "a", "payload": null}));
    assert_eq!(c.payload, None);
    // A list holding a non-string is left out whole, so the gateway rejects the command.
    let c = command_to_proto(&json!({"id": "c1", "target": ["a", 1]}));
    assert_eq!(c.target, None);
}
