//! The HTTP client of the uplink: the only code that speaks HTTP to the cloud.
//!
//! It owns the `reqwest` client built from `[cloud]` (by [`tls`]), the two endpoints'
//! URLs and the token, and turns one request into a decoded response or a
//! [`RequestError`], which `RequestError::failure` classifies for the session's timing
//! rules. The driver (`cloud::driver`) is its only caller: it decides what to send and
//! when; this module only sends it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};

use super::proto::{Body, Encoding};
use super::session::Failure;
use super::tls;
use crate::config::CloudConfig;

/// Why a request failed, with enough detail for one clear log line.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Transport(String),
    #[error("HTTP {status}: {body}")]
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
        body: String,
    },
    #[error("response body exceeds {0} bytes (cloud.max_response_bytes)")]
    TooLarge(usize),
    #[error("response is not a valid protocol v1 {0} body: {1}")]
    BadBody(&'static str, String),
}

impl RequestError {
    /// `carried` is whether the request carried results or events: only then can a
    /// 400/413/422 be about its content.
    pub(super) fn failure(&self, carried: bool) -> Failure {
        match self {
            RequestError::Status {
                status,
                retry_after,
                ..
            } => match status.as_u16() {
                401 | 403 => Failure::Auth,
                429 | 503 => Failure::Busy(*retry_after),
                400 | 413 | 422 if carried => Failure::Refused,
                _ => Failure::Transient,
            },
            _ => Failure::Transient,
        }
    }
}

/// Which of the gateway's two cloud endpoints a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST .../poll`, held by the cloud for up to the request's wait (`Prefer: wait`).
    Poll,
    /// `POST .../results`, an early flush, answered at once.
    Results,
}

/// The HTTP side of the uplink; cheap to clone.
#[derive(Clone)]
pub struct Uplink {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    client: reqwest::Client,
    poll_url: String,
    results_url: String,
    /// What the client was built from, read once: a rebuild for another PING interval
    /// touches no file (a changed token still waits for a reload).
    cfg: CloudConfig,
    credentials: tls::Credentials,
    ping_interval: Duration,
    /// Shared by the clients rebuilt from this one, so both outlive a rebuild: the cloud
    /// refused protobuf, so JSON from then on ...
    json_fallback: Arc<AtomicBool>,
    /// ... and the cloud answered a protobuf request with success at least once.
    protobuf_proven: Arc<AtomicBool>,
    /// The last response came over HTTP/2: a request dropped mid-way resets its stream
    /// only (on HTTP/1.1 it costs the connection).
    http2: Arc<AtomicBool>,
}

impl Uplink {
    /// Builds the HTTP client (TLS settings, identity, token) for gateway `gateway_id`.
    pub fn new(cfg: &CloudConfig, gateway_id: &str) -> Result<Uplink, tls::SetupError> {
        let credentials = tls::Credentials::load(cfg)?;
        let base = cfg.url.trim_end_matches('/');
        Ok(Uplink {
            inner: Arc::new(Inner {
                client: tls::build_client(cfg, cfg.ping_interval, &credentials)?,
                poll_url: format!("{base}/v1/gateways/{gateway_id}/poll"),
                results_url: format!("{base}/v1/gateways/{gateway_id}/results"),
                cfg: cfg.clone(),
                credentials,
                ping_interval: cfg.ping_interval,
                json_fallback: Arc::default(),
                protobuf_proven: Arc::default(),
                http2: Arc::default(),
            }),
        })
    }

    /// The HTTP/2 PING interval this client's connections use.
    pub fn ping_interval(&self) -> Duration {
        self.inner.ping_interval
    }

    /// The same client with another PING interval (the cloud's `ping_s`). hyper fixes the
    /// interval when a connection opens, so the new client opens a connection of its own;
    /// the old one closes once its last request is done. What was learnt of the cloud's
    /// encodings carries over.
    pub fn with_ping_interval(&self, interval: Duration) -> Result<Uplink, tls::SetupError> {
        let old = &*self.inner;
        Ok(Uplink {
            inner: Arc::new(Inner {
                client: tls::build_client(&old.cfg, interval, &old.credentials)?,
                ping_interval: interval,
                ..old.clone()
            }),
        })
    }

    /// Whether the cloud's last response came over HTTP/2, where dropping a request in
    /// flight leaves the connection (and the other stream on it) as it is.
    pub fn multiplexed(&self) -> bool {
        self.inner.http2.load(Ordering::Relaxed)
    }

    /// The encoding requests go out in now.
    pub fn encoding(&self) -> Encoding {
        if self.inner.json_fallback.load(Ordering::Relaxed) {
            Encoding::Json
        } else {
            self.inner.cfg.encoding
        }
    }

    /// One request, abandoned as a whole (headers and body) after `wait` plus
    /// `cloud.request_timeout`: a server that sends headers and then stalls cannot hold the
    /// uplink, even while it keeps answering HTTP/2 PINGs.
    pub(super) async fn post<B: Body, R: Body>(
        self,
        endpoint: Endpoint,
        body: B,
        wait: Duration,
    ) -> Result<R, RequestError> {
        let limit = wait + self.inner.cfg.request_timeout;
        log::debug!(
            "request {} (limit {limit:?})",
            match endpoint {
                Endpoint::Poll => "poll",
                Endpoint::Results => "flush",
            }
        );
        match tokio::time::timeout(limit, self.exchange(endpoint, body, wait)).await {
            Ok(out) => out,
            Err(_) => Err(RequestError::Transport(format!(
                "no complete response within {limit:?}"
            ))),
        }
    }

    async fn exchange<B: Body, R: Body>(
        &self,
        endpoint: Endpoint,
        body: B,
        wait: Duration,
    ) -> Result<R, RequestError> {
        let encoding = self.encoding();
        let out = self.exchange_as(encoding, endpoint, &body, wait).await;
        if encoding != Encoding::Protobuf {
            return out;
        }
        let proven = &self.inner.protobuf_proven;
        match out {
            Ok(r) => {
                proven.store(true, Ordering::Relaxed);
                Ok(r)
            }
            Err(RequestError::Status { status, .. })
                if refuses_protobuf(status, proven.load(Ordering::Relaxed)) =>
            {
                // Once per client: every later request is JSON without asking again.
                if !self.inner.json_fallback.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "the cloud does not take protobuf (HTTP {}); speaking JSON to it until the next restart or reload",
                        status.as_u16()
                    );
                }
                self.exchange_as(Encoding::Json, endpoint, &body, wait)
                    .await
            }
            Err(e) => Err(e),
        }
    }

    async fn exchange_as<B: Body, R: Body>(
        &self,
        encoding: Encoding,
        endpoint: Endpoint,
        body: &B,
        wait: Duration,
    ) -> Result<R, RequestError> {
        let inner = &self.inner;
        let url = match endpoint {
            Endpoint::Poll => &inner.poll_url,
            Endpoint::Results => &inner.results_url,
        };
        let mut req = inner
            .client
            .post(url)
            .header(CONTENT_TYPE, encoding.media_type())
            .header(ACCEPT, encoding.media_type())
            .timeout(wait + inner.cfg.request_timeout)
            .body(encoding.encode(body));
        if endpoint == Endpoint::Poll {
            req = req.header("prefer", format!("wait={}", wait.as_secs()));
        }
        if let Some(auth) = &inner.credentials.authorization {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| RequestError::Transport(error_chain(&e)))?;
        let status = resp.status();
        inner.http2.store(
            resp.version() == reqwest::Version::HTTP_2,
            Ordering::Relaxed,
        );
        // A server answers in the request's encoding; one that names another it still
        // gets read in that one.
        let answer = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(Encoding::from_media_type)
            .unwrap_or(encoding);
        let max = inner.cfg.max_response_bytes;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(RequestError::TooLarge(max));
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| RequestError::Transport(error_chain(&e)))?
        {
            if buf.len() + chunk.len() > max {
                return Err(RequestError::TooLarge(max));
            }
            buf.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let text = String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned();
            return Err(RequestError::Status {
                status,
                retry_after,
                body: text,
            });
        }
        answer
            .decode(&buf)
            .map_err(|e| RequestError::BadBody(answer.as_str(), e))
    }
}

/// Whether an error status to a protobuf request means the cloud does not take protobuf.
/// 415 always does. Until the cloud has once answered protobuf with success, so do the
/// statuses a JSON-only server gives a body it cannot parse (400, 422) or an Accept it
/// cannot meet (406): read as content refusals, they would have results quarantined and
/// events dropped over an encoding mismatch.
fn refuses_protobuf(status: StatusCode, proven: bool) -> bool {
    match status.as_u16() {
        415 => true,
        400 | 406 | 422 => !proven,
        _ => false,
    }
}

/// `Retry-After`: delta-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// An error with its sources, so "error sending request" says *why* (TLS, DNS, reset).
/// The devcloud and tether-conformance describe their HTTP errors the same way.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH);
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(600));
        let d = parse_retry_after(&future).unwrap();
        assert!(
            d > Duration::from_secs(590) && d <= Duration::from_secs(600),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn statuses_that_refuse_protobuf() {
        let s = |code| StatusCode::from_u16(code).unwrap();
        for proven in [false, true] {
            assert!(refuses_protobuf(s(415), proven));
            assert!(!refuses_protobuf(s(413), proven));
            assert!(!refuses_protobuf(s(503), proven));
            assert!(!refuses_protobuf(s(401), proven));
        }
        for code in [400, 406, 422] {
            assert!(refuses_protobuf(s(code), false), "{code}");
            // Once protobuf worked, these are about the content, as in JSON.
            assert!(!refuses_protobuf(s(code), true), "{code}");
        }
    }

    #[test]
    fn status_codes_map_to_failures() {
        let status = |code: u16| RequestError::Status {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after: Some(Duration::from_secs(3)),
            body: String::new(),
        };
        assert_eq!(status(401).failure(true), Failure::Auth);
        assert_eq!(status(403).failure(false), Failure::Auth);
        assert_eq!(
            status(429).failure(false),
            Failure::Busy(Some(Duration::from_secs(3)))
        );
        assert_eq!(
            status(503).failure(true),
            Failure::Busy(Some(Duration::from_secs(3)))
        );
        assert_eq!(status(413).failure(true), Failure::Refused);
        assert_eq!(status(400).failure(false), Failure::Transient);
        assert_eq!(status(500).failure(true), Failure::Transient);
        assert_eq!(RequestError::TooLarge(1).failure(true), Failure::Transient);
    }
}
