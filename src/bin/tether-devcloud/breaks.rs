//! Deliberate protocol violations (`--break NAME`), one at a time, so tether-conformance
//! can be shown to catch each: every break makes the devcloud wrong in exactly the way a
//! real cloud can be, and the kit's own tests check that the case for it fails. Nothing
//! here is on unless the flag is given.

use std::sync::OnceLock;

static ACTIVE: OnceLock<Break> = OnceLock::new();

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Break {
    /// Negotiate only http/1.1 by ALPN.
    Http1Only,
    /// Accept any token, or none.
    NoAuth,
    /// Hold every poll at least 4 s past its `Prefer: wait`.
    Overhold,
    /// Answer every poll at once, never holding it.
    NoHold,
    /// Hold a poll to the end of its wait even with commands queued.
    HoldQueued,
    /// A command queued during a hold does not end it.
    NoWake,
    /// One queue for every gateway.
    SharedQueue,
    /// Send every queued command whatever `capacity` says.
    IgnoreCapacity,
    /// Put every command `capacity` allows in one answer, however large it gets.
    UnboundedAnswer,
    /// Send again the delivered commands listed in `pending`.
    ResendPending,
    /// Never send a delivered command again, even when the gateway no longer knows it.
    NoResend,
    /// A later result for an id replaces the stored one.
    KeepLast,
    /// Store every copy of a result as a row of its own.
    StoreDuplicates,
    /// Ack results without storing them.
    AckUnstored,
    /// Store results, never ack them.
    NoAck,
    /// Answer an early flush only once no poll is held.
    FlushWaits,
    /// Refuse a body with a field the devcloud does not know (400).
    StrictFields,
    /// Break the stream of a request over the body limit instead of answering 413.
    ResetOversize,
    /// Answer a body that does not decode with 500, not 400.
    Lenient,
    /// Answer protobuf requests in JSON.
    ProtobufAsJson,
}

/// Switches `b` on for the life of the process (once, at start).
pub fn set(b: Break) {
    let _ = ACTIVE.set(b);
}

/// Whether `b` is the break in force.
pub fn on(b: Break) -> bool {
    ACTIVE.get() == Some(&b)
}

/// Held by a poll for as long as it is held, and by a flush (`FlushWaits`).
static HELD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `FlushWaits`: what a poll or a flush holds while it runs, so a flush waits for the
/// held poll to end; `None` (nothing to wait for) otherwise.
pub async fn one_at_a_time() -> Option<tokio::sync::MutexGuard<'static, ()>> {
    match on(Break::FlushWaits) {
        true => Some(HELD.lock().await),
        false => None,
    }
}

/// `StrictFields`: a 400 for a body with a field outside the protocol (a JSON key, or a
/// protobuf field the schema does not have), as a server with a strict parser answers.
pub fn refuse_unknown_fields<T: tether::cloud::proto::Body>(
    encoding: tether::cloud::proto::Encoding,
    bytes: &[u8],
) -> Result<(), crate::http::Reject> {
    use prost::Message;
    use tether::cloud::proto::Encoding;
    let unknown = match encoding {
        // A typed decode drops unknown keys: the body is strict only if it is what its
        // decoded form serializes back to, key for key.
        Encoding::Json => {
            let raw: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
            let typed = Encoding::Json
                .decode::<T>(bytes)
                .ok()
                .and_then(|t| serde_json::to_value(t).ok())
                .unwrap_or_default();
            has_extra_keys(&raw, &typed)
        }
        Encoding::Protobuf => T::Proto::decode(bytes).is_ok_and(|m| m.encoded_len() != bytes.len()),
    };
    match unknown {
        true => Err(crate::http::Reject::new(
            hyper::StatusCode::BAD_REQUEST,
            "unknown field",
        )),
        false => Ok(()),
    }
}

fn has_extra_keys(raw: &serde_json::Value, typed: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (raw, typed) {
        (Value::Object(r), Value::Object(t)) => r.iter().any(|(k, v)| match t.get(k) {
            // Serialization leaves out what is null or absent.
            None => !v.is_null(),
            Some(tv) => has_extra_keys(v, tv),
        }),
        (Value::Array(r), Value::Array(t)) => {
            r.iter().zip(t).any(|(rv, tv)| has_extra_keys(rv, tv))
        }
        _ => false,
    }
}
