//! Protocol v1 message types, shared by the daemon's uplink and the reference cloud.
//!
//! `docs/protocol.md` is the normative description; these types follow it. Every type
//! ignores unknown fields on input so either side can grow the protocol without breaking
//! the other.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest command id accepted, in bytes (`docs/protocol.md`: a string of 1 to 128 bytes).
/// An appliance's result names its command by this id, so a longer one answers nothing.
pub const MAX_COMMAND_ID: usize = 128;

/// Deepest nesting accepted in an appliance's answer or event. serde_json refuses input
/// nested deeper than 128 levels, and the gateway wraps a payload in up to four levels of
/// its own (result, items, request body), so a payload near that limit would be journalled
/// but could never be read back or sent.
pub const MAX_PAYLOAD_DEPTH: usize = 64;

/// How deeply `v` nests (a scalar is 0, `[1]` is 1). Iterative: the value was already
/// parsed within serde_json's limit, and this must not recurse either.
pub fn nesting_depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    deepest
}

/// Body of `POST /v1/gateways/{id}/poll`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PollRequest {
    /// Finished commands whose results the cloud has not acknowledged yet.
    #[serde(default)]
    pub results: Vec<CommandResult>,
    /// Command ids received and not finished: the cloud must not resend them.
    #[serde(default)]
    pub pending: Vec<String>,
    /// Of `pending`, the ids that wait for an appliance that is away; left out when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<String>,
    /// Unsolicited appliance events and gateway notices.
    #[serde(default)]
    pub events: Vec<Event>,
    /// How many more commands the gateway accepts now (0: keep them queued).
    #[serde(default)]
    pub capacity: u32,
}

/// Response to a poll.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PollResponse {
    /// New commands. Kept as raw JSON so one malformed command cannot poison the batch:
    /// each is parsed on its own and a bad one earns a `rejected` result.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub commands: Vec<Value>,
    /// Command ids whose results the cloud has stored durably.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub acked: Vec<String>,
    /// Server-steered cadence for the next polls.
    #[serde(default)]
    pub poll: Option<Cadence>,
}

/// How the server wants to be polled. Any field may be left out: a missing `wait_s` or
/// `ping_s` keeps the value in force, a missing `interval_s` means 0.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cadence {
    /// How long the server may hold the next poll, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_s: Option<u64>,
    /// Pause between polls, in seconds; 0 means poll again at once (long polling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_s: Option<u64>,
    /// HTTP/2 PING interval for the connection, in seconds (bounded to 10..=3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_s: Option<u64>,
}

/// `null` where a list is expected reads as the empty list: some servers' JSON encoders
/// write an empty list that way (Go's nil slices, for one).
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// Body of `POST /v1/gateways/{id}/results` (early flush while a poll is held).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ResultsRequest {
    #[serde(default)]
    pub results: Vec<CommandResult>,
    #[serde(default)]
    pub events: Vec<Event>,
}

/// Response to an early flush.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ResultsResponse {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub acked: Vec<String>,
}

/// A command as the cloud sends it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Command {
    pub id: String,
    pub target: Target,
    #[serde(default)]
    pub payload: Value,
    /// Time to live, relative to receipt by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// How long each appliance may take to answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Safe to run again after a crash interrupted it.
    #[serde(default)]
    pub idempotent: bool,
    /// A protobuf command's raw-bytes payload, base64; replaces `payload`. Only the
    /// protobuf decoder sets it (`cloud::proto`): the JSON decoder drops `$` keys.
    #[serde(
        default,
        rename = "$payload_raw",
        skip_serializing_if = "Option::is_none"
    )]
    pub payload_raw: Option<String>,
    /// Why a protobuf command could not be turned into this form (it is `rejected`).
    #[serde(default, rename = "$invalid", skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

/// Who a command is for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Target {
    /// One appliance id, or `group:NAME`.
    One(String),
    /// Several appliance ids.
    Many(Vec<String>),
}

/// Terminal state of a command, or of one target of it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Error,
    Timeout,
    Unreachable,
    Expired,
    Rejected,
    Interrupted,
    Partial,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Timeout => "timeout",
            Status::Unreachable => "unreachable",
            Status::Expired => "expired",
            Status::Rejected => "rejected",
            Status::Interrupted => "interrupted",
            Status::Partial => "partial",
        }
    }
}

/// The result of one command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommandResult {
    pub command_id: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Per-target results of a command sent to a list or a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<ItemResult>>,
    #[serde(default)]
    pub duration_ms: u64,
}

/// One target's part of a multi-target result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ItemResult {
    pub target: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub duration_ms: u64,
}

/// Something the cloud should know that is not a command result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// The appliance it concerns; absent for gateway-wide notices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appliance: Option<String>,
    /// `event` (published by the appliance), `online`, `offline`, `denied`
    /// (an access-control refusal), `malformed`, `dropped` (events lost at the bound).
    pub kind: String,
    #[serde(default)]
    pub payload: Value,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nesting_depth_counts_containers() {
        assert_eq!(nesting_depth(&json!(1)), 0);
        assert_eq!(nesting_depth(&json!([])), 1);
        assert_eq!(nesting_depth(&json!({"a": [1, {"b": [[]]}]})), 5);
        let deep: Value =
            serde_json::from_str(&format!("{}{}", "[".repeat(127), "]".repeat(127))).unwrap();
        assert_eq!(nesting_depth(&deep), 127);
    }

    #[test]
    fn poll_responses_from_lenient_servers_parse() {
        let r: PollResponse = serde_json::from_str(
            r#"{"commands": null, "acked": null, "poll": {"interval_s": 300}}"#,
        )
        .unwrap();
        assert!(r.commands.is_empty() && r.acked.is_empty());
        assert_eq!(
            r.poll,
            Some(Cadence {
                wait_s: None,
                interval_s: Some(300),
                ping_s: None,
            })
        );
        let r: ResultsResponse = serde_json::from_str(r#"{"acked": null}"#).unwrap();
        assert!(r.acked.is_empty());
        // A wrong type is still an error, not an empty list.
        assert!(serde_json::from_str::<PollResponse>(r#"{"acked": "c1"}"#).is_err());
    }
}
