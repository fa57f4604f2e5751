//! How a command's JSON payload becomes the bytes written to `command_char`, and how the
//! bytes that come back on `result_char` become the result's payload.
//!
//! Pure functions; the only state is the appliance's configured [`Encoding`]. Also the
//! parsers for the UUIDs and addresses in the config (used by its validator and by the
//! transport, so both read them the same way).

use serde_json::Value;

use crate::cloud::wire::{MAX_PAYLOAD_DEPTH, nesting_depth};

/// Largest value one GATT attribute holds (Bluetooth Core, Vol 3, Part F, 3.2.9); BlueZ
/// splits a longer write into a prepared (long) write, but no attribute takes more.
pub const MAX_ATTRIBUTE: usize = 512;

pub use crate::config::{Encoding, parse_address, parse_uuid};

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Utf8 => "utf8",
            Encoding::Hex => "hex",
            Encoding::Base64 => "base64",
        }
    }
}

/// Why a payload could not be encoded or an answer decoded; the text goes to the cloud.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("encoding {0} needs the payload to be a JSON string")]
    NotAString(&'static str),
    #[error("payload is not valid hex: {0}")]
    BadHex(&'static str),
    #[error("payload is not valid base64: {0}")]
    BadBase64(&'static str),
    #[error("command is {0} bytes; a GATT characteristic takes at most {MAX_ATTRIBUTE}")]
    TooLong(usize),
    #[error("appliance answered with bytes that are not JSON ({0}): {1}")]
    AnswerNotJson(String, String),
    #[error("appliance answered with bytes that are not UTF-8: {0}")]
    AnswerNotUtf8(String),
    #[error("appliance answered {0} bytes; a GATT attribute holds at most {MAX_ATTRIBUTE}")]
    AnswerTooLong(usize),
    #[error("appliance answered JSON nested {0} levels deep; the limit is {MAX_PAYLOAD_DEPTH}")]
    AnswerTooDeep(usize),
}

/// The bytes to write for `payload`.
pub fn encode(payload: &Value, encoding: Encoding) -> Result<Vec<u8>, CodecError> {
    let text = || match payload {
        Value::String(s) => Ok(s.as_str()),
        _ => Err(CodecError::NotAString(encoding.as_str())),
    };
    let bytes = match encoding {
        // Serializing a Value cannot fail (its map keys are strings).
        Encoding::Json => serde_json::to_vec(payload).unwrap_or_default(),
        Encoding::Utf8 => text()?.as_bytes().to_vec(),
        Encoding::Hex => hex_decode(text()?)?,
        Encoding::Base64 => base64_decode(text()?)?,
    };
    if bytes.len() > MAX_ATTRIBUTE {
        return Err(CodecError::TooLong(bytes.len()));
    }
    Ok(bytes)
}

/// Raw bytes from the cloud (protobuf `payload_raw`), written as they are whatever the
/// appliance's `encoding`; only the attribute's size bounds them.
pub fn raw(bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
    if bytes.len() > MAX_ATTRIBUTE {
        return Err(CodecError::TooLong(bytes.len()));
    }
    Ok(bytes.to_vec())
}

/// The result payload for the `bytes` the appliance answered.
pub fn decode(bytes: &[u8], encoding: Encoding) -> Result<Value, CodecError> {
    // BlueZ enforces the ATT maximum on real radios; this holds it for any stack.
    if bytes.len() > MAX_ATTRIBUTE {
        return Err(CodecError::AnswerTooLong(bytes.len()));
    }
    match encoding {
        Encoding::Json => {
            let v: Value = serde_json::from_slice(bytes)
                .map_err(|e| CodecError::AnswerNotJson(e.to_string(), preview(bytes)))?;
            match nesting_depth(&v) {
                depth if depth > MAX_PAYLOAD_DEPTH => Err(CodecError::AnswerTooDeep(depth)),
                _ => Ok(v),
            }
        }
        Encoding::Utf8 => String::from_utf8(bytes.to_vec())
            .map(Value::String)
            .map_err(|_| CodecError::AnswerNotUtf8(preview(bytes))),
        Encoding::Hex => Ok(Value::String(hex_encode(bytes))),
        Encoding::Base64 => Ok(Value::String(base64_encode(bytes))),
    }
}

/// The first bytes of an answer in hex, for error texts (payloads are not logged whole).
fn preview(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(16)];
    let more = if bytes.len() > head.len() { "..." } else { "" };
    format!("{} byte(s): {}{more}", bytes.len(), hex_encode(head))
}

pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn hex_decode(text: &str) -> Result<Vec<u8>, CodecError> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return Err(CodecError::BadHex("odd number of digits"));
    }
    let nibble = |c: u8| -> Result<u8, CodecError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(CodecError::BadHex("only 0-9, a-f and A-F are allowed")),
        }
    };
    // Even length was checked: every chunk has two digits.
    digits
        .chunks_exact(2)
        .map(|pair| Ok((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (RFC 4648, section 4) with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                let index = usize::try_from((n >> (18 - 6 * i)) & 0x3f).unwrap_or(0);
                out.push(char::from(B64[index]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64; padding is optional, whitespace and the URL-safe alphabet are refused
/// (a payload is one exact string, not a MIME body).
fn base64_decode(text: &str) -> Result<Vec<u8>, CodecError> {
    let body = text.trim_end_matches('=');
    if text.len() - body.len() > 2 || (text.len() != body.len() && !text.len().is_multiple_of(4)) {
        return Err(CodecError::BadBase64("misplaced '=' padding"));
    }
    if body.len() % 4 == 1 {
        return Err(CodecError::BadBase64("truncated"));
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in body.bytes() {
        let value = B64
            .iter()
            .position(|&d| d == c)
            .ok_or(CodecError::BadBase64(
                "only A-Z, a-z, 0-9, '+' and '/' are allowed",
            ))?;
        acc = (acc << 6) | u32::try_from(value).unwrap_or(0);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).unwrap_or(0));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
