//! The admin API (plain HTTP/1.1, meant for loopback): how tests, the demo and the
//! benchmarks drive the devcloud. Enqueue commands, read results (optionally waiting for
//! one), events, queue contents (with what the last poll listed as `waiting`, and the
//! encoding of the gateway's requests: `encoding`, `requests_by_encoding`) and server
//! counters. An enqueued command may carry `payload_base64` (standard base64) instead of
//! `payload`: raw bytes for a gateway that polls in protobuf, the base64 text as `payload`
//! for one that polls in JSON.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use tether::cloud::proto;
use tether::cloud::wire::Command;
use tokio::time::Instant;

use crate::App;
use crate::api::commit;
use crate::gateway::StoredResult;
use crate::http::{self, Body};

/// Bulk enqueues for load tests can be large, and this listener is trusted.
const MAX_BODY: usize = 256 * 1024 * 1024;

/// Longest `wait_ms` honoured.
const MAX_WAIT_MS: u64 = 3_600_000;

/// Entry point for every request on the admin listener.
pub async fn handle(app: &App, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/admin/faults" {
        if req.method() != Method::POST {
            return http::method_not_allowed();
        }
        let fault: crate::faults::Fault = match http::read_json(req, 64 * 1024).await {
            Ok(f) => f,
            Err(reject) => return reject.into(),
        };
        return match app.faults.set(fault.clone()) {
            Ok(()) => http::json(StatusCode::OK, &fault),
            Err(e) => http::error(StatusCode::BAD_REQUEST, e),
        };
    }
    if path == "/admin/stats" {
        if req.method() != Method::GET {
            return http::method_not_allowed();
        }
        return http::json(StatusCode::OK, &app.stats.to_json());
    }
    let Some(parts) = http::segments_after(&path, "/admin/gateways/") else {
        return http::not_found();
    };
    let method = req.method().clone();
    match (parts.as_slice(), method) {
        ([gw, "commands"], Method::POST) => enqueue(app, gw, req).await,
        ([gw, "commands"], Method::GET) => {
            let (queued, delivered) = app.store.commands(gw);
            let last = app.store.last_poll(gw);
            http::json(
                StatusCode::OK,
                &json!({
                    "queued": queued,
                    "delivered": delivered,
                    "capacity": last.capacity,
                    "waiting": last.waiting,
                    "encoding": last.encoding,
                    "requests_by_encoding": last.requests_by_encoding,
                }),
            )
        }
        ([gw, "faults"], Method::POST) => faults(app, gw, req).await,
        ([gw, "results"], Method::GET) => {
            http::json(StatusCode::OK, &json!({ "results": app.store.results(gw) }))
        }
        ([gw, "results", id], Method::GET) => wait_result(app, gw, id, &req).await,
        ([gw, "events"], Method::GET) => {
            http::json(StatusCode::OK, &json!({ "events": app.store.events(gw) }))
        }
        ([_, "commands" | "results" | "events"] | [_, "results", _], _) => {
            http::method_not_allowed()
        }
        _ => http::not_found(),
    }
}

/// `POST .../faults` `{"ignore_results": bool}`: switch fault modes for one gateway.
async fn faults(app: &App, gw: &str, req: Request<Incoming>) -> Response<Body> {
    let v: Value = match http::read_json(req, 64 * 1024).await {
        Ok(v) => v,
        Err(reject) => return reject.into(),
    };
    let ignore = v
        .get("ignore_results")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    app.store.set_faults(gw, ignore);
    http::json(StatusCode::OK, &json!({ "ignore_results": ignore }))
}

/// `POST .../commands`: one command object → `{"id"}`, an array of them → `{"ids"}`.
///
/// Objects are checked against the protocol's `Command` type unless `?raw=1`, which
/// enqueues them verbatim so tests can exercise a gateway's handling of malformed
/// commands. Either way a given `id` must be a string; one is assigned when absent.
async fn enqueue(app: &App, gw: &str, req: Request<Incoming>) -> Response<Body> {
    let raw = matches!(http::query_param(&req, "raw"), Some("1" | "true"));
    let body: Value = match http::read_json(req, MAX_BODY).await {
        Ok(v) => v,
        Err(reject) => return reject.into(),
    };
    let (objects, bulk) = match body {
        Value::Object(obj) => (vec![obj], false),
        Value::Array(items) => {
            let mut objects = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::Object(obj) => objects.push(obj),
                    _ => {
                        return http::error(
                            StatusCode::BAD_REQUEST,
                            format!("command {i}: not a JSON object"),
                        );
                    }
                }
            }
            (objects, true)
        }
        _ => {
            return http::error(
                StatusCode::BAD_REQUEST,
                "expected a command object or an array of them",
            );
        }
    };
    for (i, obj) in objects.iter().enumerate() {
        if let Err(message) = check_command(obj, raw) {
            let message = if bulk {
                format!("command {i}: {message}")
            } else {
                message
            };
            return http::error(StatusCode::BAD_REQUEST, message);
        }
    }

    let (ids, version) = app.store.enqueue(gw, objects);
    if let Err(reject) = commit(app, Some(version)).await {
        return reject.into();
    }
    if bulk {
        http::json(StatusCode::OK, &json!({ "ids": ids }))
    } else {
        let id = ids.into_iter().next().unwrap_or_default();
        http::json(StatusCode::OK, &json!({ "id": id }))
    }
}

fn check_command(obj: &Map<String, Value>, raw: bool) -> Result<(), String> {
    match obj.get("id") {
        None | Some(Value::String(_)) => {}
        Some(_) => return Err("`id` must be a string".to_owned()),
    }
    if raw {
        return Ok(());
    }
    // One that alone would not fit an answer a gateway reads would wedge it (S20).
    let bytes = serde_json::to_string(obj).map_or(0, |text| text.len());
    if bytes > crate::gateway::MAX_ANSWER_BYTES {
        return Err(format!(
            "{bytes} bytes as JSON; one poll answer carries at most {}",
            crate::gateway::MAX_ANSWER_BYTES
        ));
    }
    let mut probe = obj.clone();
    probe
        .entry("id")
        .or_insert_with(|| Value::String(String::new()));
    if let Some(b64) = obj.get(proto::BASE64_KEY) {
        let bytes = b64.as_str().map(proto::raw_payload);
        if !matches!(bytes, Some(Ok(_))) {
            return Err(format!(
                "`{}` must be standard base64 text",
                proto::BASE64_KEY
            ));
        }
    }
    serde_json::from_value::<Command>(Value::Object(probe))
        .map(drop)
        .map_err(|e| format!("not a valid command ({e}); add ?raw=1 to enqueue it anyway"))
}

/// `GET .../results/{id}?wait_ms=N`.
async fn wait_result(app: &App, gw: &str, id: &str, req: &Request<Incoming>) -> Response<Body> {
    let wait_ms = match http::query_param(req, "wait_ms") {
        None => 0,
        Some(v) => match v.parse::<u64>() {
            Ok(ms) => ms.min(MAX_WAIT_MS),
            Err(_) => {
                return http::error(StatusCode::BAD_REQUEST, "wait_ms must be a number");
            }
        },
    };
    let found: Option<StoredResult> = if wait_ms == 0 {
        app.store.result(gw, id)
    } else {
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        app.store.wait_result(gw, id, deadline).await
    };
    match found {
        Some(stored) => http::json(StatusCode::OK, &stored),
        None => http::error(StatusCode::NOT_FOUND, "no result"),
    }
}
