//! Protocol v1 in Protocol Buffers (`docs/proto/tether/v1/tether.proto`): the generated
//! message types and their translation to and from [`wire`]'s, which stay the one model
//! the rest of the gateway (and the devcloud) works with.
//!
//! The client (`cloud::client`) encodes requests and decodes responses through
//! [`Encoding`]; the devcloud uses the same functions the other way round. The generated
//! code is committed (`tether.v1.rs`, checked against the .proto by
//! `tests/proto_schema.rs`), so no schema compiler runs at build time.
//!
//! Two things the protobuf encoding carries that JSON cannot: a command's payload as raw
//! bytes (`payload_raw`), and a payload that is not JSON text (a decoding fault). Both ride
//! into the router in the command's JSON form under keys only this decoder writes
//! (`$payload_raw`, base64; `$invalid`, why): the JSON decoder drops every `$` key a cloud
//! sends ([`strip_internal_keys`]), so a JSON cloud cannot set them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use prost::Message as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::wire::{
    Cadence, CommandResult, Event, ItemResult, PollRequest, PollResponse, ResultsRequest,
    ResultsResponse, Status, nesting_depth,
};

/// The generated types, package `tether.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
#[rustfmt::skip]
pub mod v1 {
    include!("tether.v1.rs");
}

/// Deepest JSON payload a protobuf command may carry: what fits in a JSON poll response
/// (response object, `commands` list, command object) under serde_json's limit (127
/// levels parse), so both encodings accept the same commands and a journalled command
/// (one level around its payload) always reads back.
pub const MAX_COMMAND_PAYLOAD_DEPTH: usize = 124;

/// Where a protobuf command's raw bytes ride in its JSON form (base64).
pub const RAW_KEY: &str = "$payload_raw";
/// Where a protobuf command that cannot be turned into JSON says why (it is `rejected`).
pub const INVALID_KEY: &str = "$invalid";
/// What a JSON-side tool (the devcloud's admin API) writes to ask for raw bytes: base64
/// text, sent as `payload_raw` to a protobuf gateway and as the `payload` string to a JSON one.
pub const BASE64_KEY: &str = "payload_base64";

/// How request and response bodies are encoded on the cloud link (`cloud.encoding`).
pub use crate::config::WireEncoding as Encoding;

/// The media type RFC 9996 registers for protobuf bodies.
pub const PROTOBUF: &str = "application/protobuf";
/// The older, unregistered name, accepted in responses and requests.
pub const PROTOBUF_LEGACY: &str = "application/x-protobuf";
pub const JSON: &str = "application/json";

// The type lives in `config` (which imports nothing of the crate); how it encodes, here.
impl Encoding {
    pub fn media_type(self) -> &'static str {
        match self {
            Encoding::Json => JSON,
            Encoding::Protobuf => PROTOBUF,
        }
    }

    /// The encoding a `Content-Type` names: `None` for anything else. Parameters
    /// (`; charset=utf-8`) and case are ignored.
    pub fn from_media_type(value: &str) -> Option<Encoding> {
        let essence = value.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case(JSON) {
            Some(Encoding::Json)
        } else if essence.eq_ignore_ascii_case(PROTOBUF)
            || essence.eq_ignore_ascii_case(PROTOBUF_LEGACY)
        {
            Some(Encoding::Protobuf)
        } else {
            None
        }
    }

    pub fn encode<M: Body>(self, message: &M) -> Vec<u8> {
        match self {
            // Serializing these types cannot fail: every map key is a string.
            Encoding::Json => serde_json::to_vec(message).unwrap_or_default(),
            Encoding::Protobuf => message.to_proto().encode_to_vec(),
        }
    }

    pub fn decode<M: Body>(self, bytes: &[u8]) -> Result<M, String> {
        match self {
            Encoding::Json => {
                let mut m: M = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
                m.strip_internal_keys();
                Ok(m)
            }
            Encoding::Protobuf => {
                let p = M::Proto::decode(bytes).map_err(|e| e.to_string())?;
                M::from_proto(p)
            }
        }
    }
}

/// A request or response body of protocol v1, in either encoding.
pub trait Body: Serialize + DeserializeOwned + Sized {
    type Proto: prost::Message + Default;
    fn to_proto(&self) -> Self::Proto;
    fn from_proto(p: Self::Proto) -> Result<Self, String>;
    /// Drops what only the protobuf decoder may set (see the module docs).
    fn strip_internal_keys(&mut self) {}
}

impl Body for PollRequest {
    type Proto = v1::PollRequest;
    fn to_proto(&self) -> v1::PollRequest {
        v1::PollRequest {
            results: self.results.iter().map(result_to_proto).collect(),
            pending: self.pending.clone(),
            waiting: self.waiting.clone(),
            events: self.events.iter().map(event_to_proto).collect(),
            capacity: self.capacity,
        }
    }
    fn from_proto(p: v1::PollRequest) -> Result<Self, String> {
        Ok(PollRequest {
            results: p
                .results
                .into_iter()
                .map(result_from_proto)
                .collect::<Result<_, _>>()?,
            pending: p.pending,
            waiting: p.waiting,
            events: p
                .events
                .into_iter()
                .map(event_from_proto)
                .collect::<Result<_, _>>()?,
            capacity: p.capacity,
        })
    }
}

impl Body for PollResponse {
    type Proto = v1::PollResponse;
    fn to_proto(&self) -> v1::PollResponse {
        v1::PollResponse {
            commands: self.commands.iter().map(command_to_proto).collect(),
            acked: self.acked.clone(),
            poll: self.poll.map(|c| v1::Cadence {
                wait_s: c.wait_s,
                interval_s: c.interval_s,
                ping_s: c.ping_s,
            }),
        }
    }
    fn from_proto(p: v1::PollResponse) -> Result<Self, String> {
        Ok(PollResponse {
            commands: p.commands.into_iter().map(command_from_proto).collect(),
            acked: p.acked,
            poll: p.poll.map(|c| Cadence {
                wait_s: c.wait_s,
                interval_s: c.interval_s,
                ping_s: c.ping_s,
            }),
        })
    }
    fn strip_internal_keys(&mut self) {
        for command in &mut self.commands {
            if let Value::Object(fields) = command {
                fields.retain(|k, _| !k.starts_with('$'));
            }
        }
    }
}

impl Body for ResultsRequest {
    type Proto = v1::ResultsRequest;
    fn to_proto(&self) -> v1::ResultsRequest {
        v1::ResultsRequest {
            results: self.results.iter().map(result_to_proto).collect(),
            events: self.events.iter().map(event_to_proto).collect(),
        }
    }
    fn from_proto(p: v1::ResultsRequest) -> Result<Self, String> {
        Ok(ResultsRequest {
            results: p
                .results
                .into_iter()
                .map(result_from_proto)
                .collect::<Result<_, _>>()?,
            events: p
                .events
                .into_iter()
                .map(event_from_proto)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl Body for ResultsResponse {
    type Proto = v1::ResultsResponse;
    fn to_proto(&self) -> v1::ResultsResponse {
        v1::ResultsResponse {
            acked: self.acked.clone(),
        }
    }
    fn from_proto(p: v1::ResultsResponse) -> Result<Self, String> {
        Ok(ResultsResponse { acked: p.acked })
    }
}

fn status_to_proto(s: Status) -> i32 {
    (match s {
        Status::Ok => v1::Status::Ok,
        Status::Error => v1::Status::Error,
        Status::Timeout => v1::Status::Timeout,
        Status::Unreachable => v1::Status::Unreachable,
        Status::Expired => v1::Status::Expired,
        Status::Rejected => v1::Status::Rejected,
        Status::Interrupted => v1::Status::Interrupted,
        Status::Partial => v1::Status::Partial,
    }) as i32
}

fn status_from_proto(n: i32) -> Result<Status, String> {
    Ok(match v1::Status::try_from(n) {
        Ok(v1::Status::Ok) => Status::Ok,
        Ok(v1::Status::Error) => Status::Error,
        Ok(v1::Status::Timeout) => Status::Timeout,
        Ok(v1::Status::Unreachable) => Status::Unreachable,
        Ok(v1::Status::Expired) => Status::Expired,
        Ok(v1::Status::Rejected) => Status::Rejected,
        Ok(v1::Status::Interrupted) => Status::Interrupted,
        Ok(v1::Status::Partial) => Status::Partial,
        Ok(v1::Status::Unspecified) | Err(_) => return Err(format!("unknown status {n}")),
    })
}

fn parse_json_text(field: &str, text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{field} is not JSON text: {e}"))
}

fn result_to_proto(r: &CommandResult) -> v1::Result {
    v1::Result {
        command_id: r.command_id.clone(),
        status: status_to_proto(r.status),
        payload_json: r.payload.as_ref().map(Value::to_string),
        error: r.error.clone(),
        items: r
            .items
            .iter()
            .flatten()
            .map(|i| v1::Item {
                target: i.target.clone(),
                status: status_to_proto(i.status),
                payload_json: i.payload.as_ref().map(Value::to_string),
                error: i.error.clone(),
                duration_ms: i.duration_ms,
            })
            .collect(),
        duration_ms: r.duration_ms,
    }
}

fn result_from_proto(r: v1::Result) -> Result<CommandResult, String> {
    let items = r
        .items
        .into_iter()
        .map(|i| {
            Ok(ItemResult {
                target: i.target,
                status: status_from_proto(i.status)?,
                payload: i
                    .payload_json
                    .map(|t| parse_json_text("payload_json", &t))
                    .transpose()?,
                error: i.error,
                duration_ms: i.duration_ms,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(CommandResult {
        command_id: r.command_id,
        status: status_from_proto(r.status)?,
        payload: r
            .payload_json
            .map(|t| parse_json_text("payload_json", &t))
            .transpose()?,
        error: r.error,
        items: (!items.is_empty()).then_some(items),
        duration_ms: r.duration_ms,
    })
}

fn event_to_proto(e: &Event) -> v1::Event {
    v1::Event {
        appliance: e.appliance.clone(),
        kind: e.kind.clone(),
        payload_json: (!e.payload.is_null()).then(|| e.payload.to_string()),
    }
}

fn event_from_proto(e: v1::Event) -> Result<Event, String> {
    Ok(Event {
        appliance: e.appliance,
        kind: e.kind,
        payload: match e.payload_json {
            Some(t) => parse_json_text("payload_json", &t)?,
            None => Value::Null,
        },
    })
}

/// A command in the JSON form the router takes in. Never fails: what is wrong with one
/// command is that command's `rejected` result, not the whole response's failure.
fn command_from_proto(c: v1::Command) -> Value {
    use v1::command::{Payload, Target};
    let mut m = Map::new();
    m.insert("id".into(), Value::String(c.id));
    match c.target {
        Some(Target::TargetOne(t)) => {
            m.insert("target".into(), Value::String(t));
        }
        Some(Target::TargetMany(list)) => {
            let ids = list.ids.into_iter().map(Value::String).collect();
            m.insert("target".into(), Value::Array(ids));
        }
        None => {}
    }
    match c.payload {
        Some(Payload::PayloadJson(text)) => match parse_json_text("payload_json", &text) {
            Ok(v) => match nesting_depth(&v) {
                depth if depth > MAX_COMMAND_PAYLOAD_DEPTH => {
                    let why = format!(
                        "payload_json nests {depth} levels; at most {MAX_COMMAND_PAYLOAD_DEPTH}"
                    );
                    m.insert(INVALID_KEY.into(), Value::String(why));
                }
                _ => {
                    m.insert("payload".into(), v);
                }
            },
            Err(why) => {
                m.insert(INVALID_KEY.into(), Value::String(why));
            }
        },
        Some(Payload::PayloadRaw(bytes)) => {
            m.insert(RAW_KEY.into(), Value::String(BASE64.encode(bytes)));
        }
        None => {}
    }
    if let Some(ttl) = c.ttl_ms {
        m.insert("ttl_ms".into(), ttl.into());
    }
    if let Some(timeout) = c.timeout_ms {
        m.insert("timeout_ms".into(), timeout.into());
    }
    if c.idempotent {
        m.insert("idempotent".into(), Value::Bool(true));
    }
    Value::Object(m)
}

/// The protobuf form of a command a cloud holds as JSON. A field of the wrong JSON type is
/// left out (the gateway then rejects the command, as it would the JSON).
pub fn command_to_proto(v: &Value) -> v1::Command {
    use v1::command::{Payload, Target};
    let str_of = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let target = match v.get("target") {
        Some(Value::String(t)) => Some(Target::TargetOne(t.clone())),
        // A list with anything but strings in it is as wrong as the JSON would be.
        Some(Value::Array(ids)) => ids
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(|ids| Target::TargetMany(v1::TargetList { ids })),
        _ => None,
    };
    let raw = str_of(RAW_KEY)
        .or_else(|| str_of(BASE64_KEY))
        .and_then(|b64| BASE64.decode(b64).ok());
    let payload = match (raw, v.get("payload")) {
        (Some(bytes), _) => Some(Payload::PayloadRaw(bytes)),
        (None, Some(p)) if !p.is_null() => Some(Payload::PayloadJson(p.to_string())),
        _ => None,
    };
    v1::Command {
        id: str_of("id").unwrap_or_default(),
        target,
        payload,
        ttl_ms: v.get("ttl_ms").and_then(Value::as_u64),
        timeout_ms: v.get("timeout_ms").and_then(Value::as_u64),
        idempotent: v
            .get("idempotent")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

/// The raw bytes a command's JSON form carries (see the module docs).
pub fn raw_payload(base64_text: &str) -> Result<Vec<u8>, String> {
    BASE64
        .decode(base64_text)
        .map_err(|e| format!("raw payload is not base64: {e}"))
}

#[cfg(test)]
mod tests;
