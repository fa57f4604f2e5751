//! HTTP plumbing shared by the gateway API and the admin API: JSON responses, JSON error
//! bodies, bounded body reading and small request-parsing helpers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tether::cloud::proto::JSON;

/// A complete response body that can keep the unread request body alive until the
/// response has been sent.
///
/// Why: when a handler refuses a request before reading its body (413 on a large
/// `Content-Length`), dropping the request body first makes HTTP/2 reset the stream with
/// CANCEL before the response goes out, and the client sees a stream error instead of
/// the 413. Dropped after the response's last frame, it resets with NO_ERROR as RFC 9113
/// §8.1 prescribes for early responses, and the client reads the answer.
pub struct Body {
    data: Option<Bytes>,
    len: u64,
    unread: Option<Box<Incoming>>,
    /// Injected faults (see `faults.rs`): what happens after `data` is sent.
    then: Then,
}

/// How a body ends.
enum Then {
    End,
    /// Send `data` again this many more times (a huge body).
    Repeat(u64),
    /// Never finish: the headers and `data` went out, then nothing.
    Stall,
    /// Fail the stream (HTTP/2 RST_STREAM, HTTP/1.1 connection closed mid-body).
    Break,
}

impl Body {
    fn new(data: Bytes) -> Self {
        Body {
            len: data.len() as u64,
            data: Some(data).filter(|d| !d.is_empty()),
            unread: None,
            then: Then::End,
        }
    }

    /// `chunk` sent `times` times, announced with its full length.
    pub fn repeated(chunk: Bytes, times: u64) -> Self {
        Body {
            len: chunk.len() as u64 * times,
            data: Some(chunk),
            unread: None,
            then: Then::Repeat(times.saturating_sub(1)),
        }
    }

    /// `prefix`, then silence forever.
    pub fn stalled(prefix: Bytes) -> Self {
        Body {
            len: prefix.len() as u64 + 1,
            data: Some(prefix),
            unread: None,
            then: Then::Stall,
        }
    }

    /// `prefix`, then a broken stream.
    pub fn broken(prefix: Bytes) -> Self {
        Body {
            len: prefix.len() as u64 + 1,
            data: Some(prefix),
            unread: None,
            then: Then::Break,
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if let Then::Repeat(n) = &mut this.then
            && *n > 0
        {
            *n -= 1;
            let chunk = this.data.clone();
            return Poll::Ready(chunk.map(|d| Ok(Frame::data(d))));
        }
        if let Some(d) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        match this.then {
            Then::End | Then::Repeat(_) => Poll::Ready(None),
            // Deliberately never woken: this stream is meant to hang.
            Then::Stall => Poll::Pending,
            Then::Break => Poll::Ready(Some(Err(std::io::Error::other(
                "injected fault: stream broken",
            )))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && matches!(self.then, Then::End | Then::Repeat(0))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

/// A response with a JSON body.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_body(status, JSON, bytes),
        Err(e) => {
            log::error!("cannot serialize a response: {e}");
            with_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                JSON,
                br#"{"error":"cannot serialize response"}"#.to_vec(),
            )
        }
    }
}

/// A refused request: becomes `{"error": message}` with `status`. Kept small (rather
/// than a whole `Response`) so `Result`s carrying it stay cheap to move.
#[derive(Debug)]
pub struct Reject {
    pub status: StatusCode,
    pub message: String,
    /// The request body, when it was refused unread (see [`Body`]).
    unread: Option<Box<Incoming>>,
    /// Break the response stream after the headers (`--break reset-oversize`).
    broken: bool,
}

impl Reject {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Reject {
            status,
            message: message.into(),
            unread: None,
            broken: false,
        }
    }

    /// The same refusal, its stream broken instead of answered.
    pub fn broken(self) -> Self {
        Reject {
            broken: true,
            ..self
        }
    }
}

impl From<Reject> for Response<Body> {
    fn from(reject: Reject) -> Self {
        if reject.broken {
            return with_raw_body(reject.status, Body::broken(Bytes::new()));
        }
        let mut response = error(reject.status, reject.message);
        response.body_mut().unread = reject.unread;
        response
    }
}

/// `{"error": message}` with the given status.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json(status, &json!({ "error": message.into() }))
}

pub fn not_found() -> Response<Body> {
    error(StatusCode::NOT_FOUND, "not found")
}

pub fn method_not_allowed() -> Response<Body> {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// A response with the given status and body, JSON content type.
pub fn with_raw_body(status: StatusCode, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    response
}

/// A 200 response with an already encoded body of `media_type`.
pub fn encoded(media_type: &'static str, bytes: Vec<u8>) -> Response<Body> {
    with_body(StatusCode::OK, media_type, bytes)
}

fn with_body(status: StatusCode, media_type: &'static str, bytes: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Body::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(media_type));
    response
}

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Reject> {
    let too_large = || {
        Reject::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {limit} bytes"),
        )
    };
    let announced = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = Box::new(req.into_body());
    // Refuse early when the client announces the size, before reading anything.
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(Reject {
            unread: Some(body),
            ..too_large()
        });
    }
    match Limited::new(&mut *body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(Reject {
            unread: Some(body),
            ..too_large()
        }),
        Err(e) => Err(Reject::new(
            StatusCode::BAD_REQUEST,
            format!("cannot read body: {e}"),
        )),
    }
}

/// Reads and parses a JSON body; 400 on malformed JSON, 413 when too large.
pub async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, Reject> {
    let bytes = read_body(req, limit).await?;
    parse_json(&bytes)
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Reject> {
    serde_json::from_slice(bytes)
        .map_err(|e| Reject::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

/// The raw value of query parameter `name`, if present (no percent-decoding: the admin
/// API only takes numbers and flags there).
pub fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// Path segments after `prefix` (e.g. `/v1/gateways/`), split on `/`.
///
/// Gateway ids are taken verbatim from their segment; an empty segment (`//`) is not an
/// id, so it makes the route not match.
pub fn segments_after<'a>(path: &'a str, prefix: &str) -> Option<Vec<&'a str>> {
    let rest = path.strip_prefix(prefix)?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    Some(parts)
}
