//! `[cloud]`: the cloud link: where, with what identity, and its timing.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::spans::{Checker, DAY, HOUR};
use super::{Apply, Section};

#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// Base URL of the cloud; must be `https://`. Required (checked with the other rules).
    #[serde(default)]
    pub url: String,
    /// File holding the bearer token. Without it, `$CREDENTIALS_DIRECTORY/token` is tried.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Trust only this CA (PEM) instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// mTLS identity; both or neither.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default = "default_poll_wait", with = "humantime_serde")]
    pub poll_wait: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Minimum spacing of early result flushes while a poll is held.
    #[serde(default = "default_result_linger", with = "humantime_serde")]
    pub result_linger: Duration,
    /// Allowance on top of the poll wait before a request counts as failed.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval; a cloud that does not answer within `ping_timeout` is dead.
    #[serde(default = "default_ping_interval", with = "humantime_serde")]
    pub ping_interval: Duration,
    #[serde(default = "default_ping_timeout", with = "humantime_serde")]
    pub ping_timeout: Duration,
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Most results carried by one request.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How request and response bodies are encoded.
    #[serde(default)]
    pub encoding: WireEncoding,
}

/// The cloud link's body encoding (`cloud.encoding`); `cloud::proto` encodes and decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WireEncoding {
    /// docs/protocol.md's JSON: what every cloud speaks.
    #[default]
    Json,
    /// docs/proto/tether/v1/tether.proto; a cloud that answers 415 gets JSON instead.
    Protobuf,
}

impl WireEncoding {
    pub fn as_str(self) -> &'static str {
        match self {
            WireEncoding::Json => "json",
            WireEncoding::Protobuf => "protobuf",
        }
    }
}

impl Section for CloudConfig {
    const NAME: &'static str = "cloud";
    // What the HTTP client is built from needs a new client (and so a new connection);
    // the session's timing does not, so a reload that changes only that keeps the link.
    const KEYS: &'static [(&'static str, Apply)] = &[
        ("url", Apply::NewClient),
        ("token_file", Apply::NewClient),
        ("ca_file", Apply::NewClient),
        ("client_cert", Apply::NewClient),
        ("client_key", Apply::NewClient),
        ("poll_wait", Apply::Live),
        ("backoff_max", Apply::Live),
        ("result_linger", Apply::Live),
        ("request_timeout", Apply::NewClient),
        ("connect_timeout", Apply::NewClient),
        ("ping_interval", Apply::NewClient),
        ("ping_timeout", Apply::NewClient),
        ("max_response_bytes", Apply::NewClient),
        ("max_batch", Apply::Live),
        ("encoding", Apply::NewClient),
    ];
}

// Hand-written so that a token path or a future secret can never leak through `{:?}`.
impl fmt::Debug for CloudConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudConfig")
            .field("url", &self.url)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("poll_wait", &self.poll_wait)
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

fn default_poll_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}
fn default_result_linger() -> Duration {
    // Results that finish while a flush is in flight already share the next one; a
    // spacing on top only delays a command sent as soon as the previous result arrived.
    Duration::ZERO
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_ping_interval() -> Duration {
    Duration::from_secs(20)
}
fn default_ping_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_response_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_batch() -> usize {
    256
}

impl CloudConfig {
    pub(super) fn check(&self, v: &mut Checker) {
        if self.url.is_empty() {
            v.err(&["cloud", "url"], "required (the cloud's https:// URL)");
        } else if !self.url.starts_with("https://") || self.url.len() <= "https://".len() {
            v.err(
                &["cloud", "url"],
                "must be an https:// URL (the cloud link is always TLS-verified)",
            );
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            v.err(
                &["cloud", "client_cert"],
                "client_cert and client_key go together",
            );
        }
        v.at_most("cloud", "poll_wait", self.poll_wait, HOUR, "1h");
        if self.backoff_max < Duration::from_secs(1) {
            v.err(&["cloud", "backoff_max"], "must be at least 1s");
        }
        v.at_most("cloud", "backoff_max", self.backoff_max, DAY, "1d");
        v.at_most(
            "cloud",
            "result_linger",
            self.result_linger,
            Duration::from_secs(10),
            "10s",
        );
        for (key, d) in [
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
            ("ping_interval", self.ping_interval),
            ("ping_timeout", self.ping_timeout),
        ] {
            v.above_zero("cloud", key, d);
            v.at_most("cloud", key, d, HOUR, "1h");
        }
        if self.max_response_bytes < 1024 {
            v.err(&["cloud", "max_response_bytes"], "must be at least 1024");
        }
        v.at_least_one("cloud", "max_batch", self.max_batch as u64);
    }
}
