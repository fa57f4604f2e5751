//! The gateway-facing protocol v1: `POST /v1/gateways/{gw}/poll` (the long poll) and
//! `POST /v1/gateways/{gw}/results` (early flush), with bearer-token authentication.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode, Version};
use serde_json::Value;
use tether::cloud::proto::{self, Body as WireBody, Encoding};
use tether::cloud::wire::{Cadence, PollRequest, PollResponse, ResultsRequest, ResultsResponse};
use tokio::time::Instant;

use crate::App;
use crate::breaks::{self, Break};
use crate::http::{self, Body, Reject};
use crate::state::Take;
use crate::stats::bump;

/// Largest request body accepted from a gateway.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Longest hold honoured even if `--max-wait-s` is larger, so deadlines never overflow.
const MAX_HOLD_S: u64 = 24 * 3600;

/// What the TLS layer established about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client presented a certificate that verified against `--client-ca`.
    pub client_cert: bool,
}

/// Entry point for every request on the HTTPS listener.
pub async fn handle(app: &App, conn: ConnInfo, req: Request<Incoming>) -> Response<Body> {
    if req.version() == Version::HTTP_2 {
        bump(&app.stats.requests_http2);
    } else {
        bump(&app.stats.requests_http1);
    }

    let path = req.uri().path().to_owned();
    if path != "/v1" && !path.starts_with("/v1/") {
        return http::not_found();
    }
    if let Some(fault) = app.faults.take_request() {
        return crate::faults::response(&fault);
    }
    if !authorized(app, conn, req.headers()) {
        let mut response = http::error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }

    let Some(parts) = http::segments_after(&path, "/v1/gateways/") else {
        return http::not_found();
    };
    match parts.as_slice() {
        [gw, action @ ("poll" | "results")] => {
            if req.method() != Method::POST {
                return http::method_not_allowed();
            }
            let encoding = match request_encoding(app, req.headers()) {
                Ok(e) => e,
                Err(refused) => return refused.into(),
            };
            app.store.note_encoding(gw, encoding);
            if *action == "poll" {
                poll(app, gw, req, encoding).await
            } else {
                results(app, gw, req, encoding).await
            }
        }
        _ => http::not_found(),
    }
}

fn authorized(app: &App, conn: ConnInfo, headers: &HeaderMap) -> bool {
    let Some(token) = &app.token else {
        return true;
    };
    if breaks::on(Break::NoAuth) {
        return true;
    }
    if conn.client_cert {
        return true;
    }
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, presented)| {
            constant_time_eq(presented.trim().as_bytes(), token.as_bytes())
        })
}

/// Compares without an early exit, so response timing does not reveal how much of a
/// guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The body's encoding, from `Content-Type`: protobuf under either of its names (unless
/// `--json-only`: 415, as a JSON-only cloud answers), JSON otherwise (a missing or
/// unusual type included, as before protobuf existed).
fn request_encoding(app: &App, headers: &HeaderMap) -> Result<Encoding, Reject> {
    let named = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(Encoding::from_media_type);
    match (named, app.json_only) {
        (Some(Encoding::Protobuf), Some(status)) => {
            bump(&app.stats.unsupported_media);
            Err(Reject::new(
                status,
                "this cloud speaks application/json only",
            ))
        }
        (Some(Encoding::Protobuf), None) => {
            bump(&app.stats.requests_protobuf);
            Ok(Encoding::Protobuf)
        }
        _ => {
            bump(&app.stats.requests_json);
            Ok(Encoding::Json)
        }
    }
}

/// Reads and decodes a request body; 400 when it does not decode, 413 when too large.
async fn read_body<T: WireBody>(
    app: &App,
    req: Request<Incoming>,
    encoding: Encoding,
) -> Result<T, http::Reject> {
    let bytes = match http::read_body(req, app.max_body_bytes).await {
        Err(reject)
            if reject.status == StatusCode::PAYLOAD_TOO_LARGE
                && breaks::on(Break::ResetOversize) =>
        {
            return Err(reject.broken());
        }
        other => other?,
    };
    if breaks::on(Break::StrictFields) {
        breaks::refuse_unknown_fields::<T>(encoding, &bytes)?;
    }
    encoding.decode(&bytes).map_err(|e| {
        let status = match breaks::on(Break::Lenient) {
            true => StatusCode::INTERNAL_SERVER_ERROR,
            false => StatusCode::BAD_REQUEST,
        };
        http::Reject::new(status, format!("invalid {} body: {e}", encoding.as_str()))
    })
}

/// A 200 response in `encoding`.
fn answer<T: WireBody>(mut encoding: Encoding, body: &T) -> Response<Body> {
    if breaks::on(Break::ProtobufAsJson) {
        encoding = Encoding::Json;
    }
    http::encoded(encoding.media_type(), encoding.encode(body))
}

/// A command enqueued with `payload_base64` (raw bytes) reaches a JSON gateway as that
/// base64 text in `payload`, the nearest JSON has; a protobuf gateway gets the bytes.
fn for_json(mut command: Value) -> Value {
    if let Value::Object(fields) = &mut command
        && let Some(b64) = fields.remove(proto::BASE64_KEY)
    {
        fields.insert("payload".into(), b64);
    }
    command
}

/// `wait=N` from `Prefer` headers (RFC 7240); 0 when absent or unparsable.
fn prefer_wait(headers: &HeaderMap) -> u64 {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|pref| {
            // Parameters of a preference follow `;`; `wait` takes none.
            let head = pref.split(';').next()?.trim();
            let (key, value) = head.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("wait")
                .then(|| value.trim().trim_matches('"').parse::<u64>().ok())
                .flatten()
        })
        .next()
        .unwrap_or(0)
}

async fn poll(app: &App, gw: &str, req: Request<Incoming>, encoding: Encoding) -> Response<Body> {
    bump(&app.stats.polls);
    let mut wait_s = prefer_wait(req.headers())
        .min(app.max_wait_s)
        .min(MAX_HOLD_S);
    if breaks::on(Break::NoHold) {
        wait_s = 0;
    } else if breaks::on(Break::Overhold) {
        wait_s += 4;
    }
    let body: PollRequest = match read_body(app, req, encoding).await {
        Ok(body) => body,
        Err(reject) => return reject.into(),
    };
    let capacity = body.capacity;
    let start = app.store.begin_poll(gw, body);
    if let Err(reject) = commit(app, start.version).await {
        return reject.into();
    }

    let deadline = Instant::now() + Duration::from_secs(wait_s);
    let _serialised = breaks::one_at_a_time().await;
    if breaks::on(Break::HoldQueued) {
        tokio::time::sleep_until(deadline).await;
    }
    let commands = loop {
        let notified = start.wake.notified();
        tokio::pin!(notified);
        // Registered before looking at the queue, so an enqueue racing with the look
        // still wakes us.
        notified.as_mut().enable();
        let timed_out = match app.store.take_commands(gw, start.generation, capacity) {
            Take::Superseded => break Vec::new(),
            Take::Commands { commands, version } if !commands.is_empty() => {
                if let Err(reject) = commit(app, version).await {
                    return reject.into();
                }
                break commands;
            }
            // Nothing to hand out (empty queue, or capacity 0: then only the deadline or
            // a newer poll ends the hold, so a full gateway does not spin).
            Take::Commands { .. } => {
                if breaks::on(Break::NoWake) {
                    tokio::time::sleep_until(deadline).await;
                    true
                } else {
                    tokio::select! {
                        () = &mut notified => false,
                        () = tokio::time::sleep_until(deadline) => true,
                    }
                }
            }
        };
        if timed_out {
            // Last look: something may have arrived just as the deadline fired.
            match app.store.take_commands(gw, start.generation, capacity) {
                Take::Superseded => break Vec::new(),
                Take::Commands { commands, version } => {
                    if let Err(reject) = commit(app, version).await {
                        return reject.into();
                    }
                    break commands;
                }
            }
        }
    };

    let commands = match encoding {
        Encoding::Json => commands.into_iter().map(for_json).collect(),
        Encoding::Protobuf => commands,
    };
    answer(
        encoding,
        &PollResponse {
            commands,
            acked: start.acked,
            poll: Some(Cadence {
                wait_s: Some(app.wait_s),
                interval_s: Some(app.interval_s),
                ping_s: app.ping_s,
            }),
        },
    )
}

async fn results(
    app: &App,
    gw: &str,
    req: Request<Incoming>,
    encoding: Encoding,
) -> Response<Body> {
    bump(&app.stats.results_posts);
    let _serialised = breaks::one_at_a_time().await;
    let body: ResultsRequest = match read_body(app, req, encoding).await {
        Ok(body) => body,
        Err(reject) => return reject.into(),
    };
    let (acked, version) = app.store.post_results(gw, body.results, body.events);
    if let Err(reject) = commit(app, version).await {
        return reject.into();
    }
    answer(encoding, &ResultsResponse { acked })
}

/// Makes a change durable before it is acknowledged; 500 if that fails, so the gateway
/// keeps its results and retries.
pub async fn commit(app: &App, version: Option<u64>) -> Result<(), Reject> {
    app.store.commit(version).await.map_err(|e| {
        log::error!("cannot persist state: {e}");
        Reject::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot persist state")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefer_wait() {
        let mut headers = HeaderMap::new();
        assert_eq!(prefer_wait(&headers), 0);
        headers.insert("prefer", HeaderValue::from_static("respond-async, wait=25"));
        assert_eq!(prefer_wait(&headers), 25);
        headers.insert("prefer", HeaderValue::from_static("WAIT = 7"));
        assert_eq!(prefer_wait(&headers), 7);
        headers.insert("prefer", HeaderValue::from_static("wait=soon"));
        assert_eq!(prefer_wait(&headers), 0);
    }

    #[test]
    fn compares_tokens() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
