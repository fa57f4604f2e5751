//! Fault injection, switched at run time through the admin API (`POST /admin/faults`),
//! so tests can show how a gateway copes with a misbehaving cloud.
//!
//! Request faults apply to the next `count` gateway requests (or until cleared):
//! `status` (any HTTP status, optionally with `Retry-After`), `stall` (headers and a
//! first chunk, then silence forever), `reset` (the response stream breaks midway),
//! `malformed` (200 with invalid JSON), `huge` (200 with a body of `bytes` bytes).
//! Connection faults apply to new TLS connections: `tls_stall` (accept TCP, never
//! answer the TLS handshake), `refuse` (close at once: a cloud that is down).
//! `goaway` is immediate: every open HTTP/2 connection is closed gracefully (GOAWAY).

use std::sync::Mutex;

use bytes::Bytes;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::http::{self, Body};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    /// Size of the `huge` body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// How many requests (or connections) it applies to; absent: until cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

const REQUEST_MODES: [&str; 5] = ["status", "stall", "reset", "malformed", "huge"];
const CONNECTION_MODES: [&str; 2] = ["tls_stall", "refuse"];

pub struct Faults {
    current: Mutex<Option<Fault>>,
    /// Bumped to make every connection send GOAWAY.
    goaway: watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            current: Mutex::new(None),
            goaway: watch::channel(0).0,
        }
    }
}

impl Faults {
    /// Sets (or with mode `none`, clears) the fault; `goaway` acts at once.
    pub fn set(&self, fault: Fault) -> Result<(), String> {
        match fault.mode.as_str() {
            "none" => *self.lock() = None,
            "goaway" => {
                self.goaway.send_modify(|n| *n += 1);
            }
            m if REQUEST_MODES.contains(&m) || CONNECTION_MODES.contains(&m) => {
                if m == "status"
                    && fault
                        .status
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .is_none()
                {
                    return Err("mode status needs a valid \"status\"".into());
                }
                *self.lock() = Some(fault);
            }
            other => return Err(format!("unknown fault mode {other:?}")),
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Fault>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, modes: &[&str]) -> Option<Fault> {
        let mut current = self.lock();
        let fault = current
            .as_mut()
            .filter(|f| modes.contains(&f.mode.as_str()))?;
        let taken = fault.clone();
        match &mut fault.count {
            Some(1) => *current = None,
            Some(n) => *n -= 1,
            None => {}
        }
        Some(taken)
    }

    /// One use of a request fault, if one is set.
    pub fn take_request(&self) -> Option<Fault> {
        self.take(&REQUEST_MODES)
    }

    /// One use of a connection fault, if one is set.
    pub fn take_connection(&self) -> Option<Fault> {
        self.take(&CONNECTION_MODES)
    }

    /// Resolves (repeatedly) each time `goaway` is requested.
    pub fn goaway(&self) -> watch::Receiver<u64> {
        self.goaway.subscribe()
    }
}

/// The response a request fault produces.
pub fn response(fault: &Fault) -> Response<Body> {
    match fault.mode.as_str() {
        "status" => {
            let status = fault
                .status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut r = http::error(status, "injected fault");
            if let Some(v) = fault
                .retry_after
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                r.headers_mut().insert(RETRY_AFTER, v);
            }
            r
        }
        "stall" => http::with_raw_body(
            StatusCode::OK,
            Body::stalled(Bytes::from_static(b"{\"commands\": [")),
        ),
        "reset" => http::with_raw_body(
            StatusCode::OK,
            Body::broken(Bytes::from_static(b"{\"commands\": [")),
        ),
        "huge" => {
            let total = fault.bytes.unwrap_or(64 << 20);
            let chunk = Bytes::from(vec![b' '; 64 * 1024]);
            http::with_raw_body(
                StatusCode::OK,
                Body::repeated(chunk, total.div_ceil(64 * 1024).max(1)),
            )
        }
        _ => http::with_raw_body(
            StatusCode::OK,
            Body::repeated(Bytes::from_static(b"{\"commands\": [}"), 1),
        ),
    }
}
