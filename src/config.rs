//! The daemon's configuration: one TOML file, parsed strictly.
//!
//! Owned by `main` (which loads it before anything else runs) and handed to `app` as an
//! immutable [`Config`]. Every section denies unknown keys, every default is a named
//! function documented in `config.example.toml`, and [`Config::load`] reports *every*
//! problem it finds, each with its key and line, instead of stopping at the first.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

pub use crate::journal::SyncMode;
pub use crate::logging::LogTarget;
pub use crate::transport::ble::Encoding;
pub use ble::BleConfig;

mod ble;

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub cloud: CloudConfig,
    pub mqtt: MqttConfig,
    pub router: RouterConfig,
    pub state: StateConfig,
    pub log: LogConfig,
    pub ble: BleConfig,
    pub appliances: Vec<ApplianceConfig>,
    pub groups: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// This gateway's id at the cloud; part of every request path.
    pub id: String,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// On SIGTERM, how long running commands may take to finish (keep it below the
    /// unit's TimeoutStopSec).
    #[serde(default = "default_stop_grace", with = "humantime_serde")]
    pub stop_grace: Duration,
}

fn default_stop_grace() -> Duration {
    Duration::from_secs(20)
}

#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// Base URL of the cloud; must be `https://`.
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
}

// Hand-written so that a token path or a future secret can never leak through `{:?}`.
impl fmt::Debug for CloudConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudConfig")
            .field("url", &self.url)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("poll_wait", &self.poll_wait)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    #[serde(default = "default_mqtt_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Largest PUBLISH payload accepted from or sent to an appliance, in bytes.
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a new socket has to send a valid CONNECT.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle limit for clients that ask for no keep-alive (keep_alive = 0).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most unsolicited events kept for the cloud; the oldest are dropped beyond it.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// After start, a command for an appliance that has not connected yet waits this long
    /// for it (at most its timeout) before it is `unreachable`.
    #[serde(default = "default_startup_grace", with = "humantime_serde")]
    pub startup_grace: Duration,
    /// Events one appliance may raise per second (its own events, and the reports of its
    /// denied or malformed messages), with bursts of twice that; the rest are dropped and
    /// counted.
    #[serde(default = "default_max_event_rate")]
    pub max_event_rate: u32,
    /// New connections accepted per second from one source address (an IPv6 /64 counts as
    /// one), with bursts of three times that; the rest are closed at once and counted.
    #[serde(default = "default_max_connect_rate")]
    pub max_connect_rate: u32,
    /// Optional second listener speaking MQTT over TLS (e.g. `0.0.0.0:8883`).
    #[serde(default)]
    pub tls_listen: Option<SocketAddr>,
    /// Server certificate chain and private key (PEM) for `tls_listen`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Appliance timeout for commands that carry no `timeout_ms`.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Upper bound on any command's `timeout_ms`.
    #[serde(default = "default_max_timeout", with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Commands accepted and not finished, across all appliances (the advertised capacity).
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Commands waiting for one appliance.
    #[serde(default = "default_max_queue")]
    pub max_queue_per_appliance: usize,
    /// Largest command payload accepted from the cloud, in bytes of JSON.
    #[serde(default = "default_max_command_bytes")]
    pub max_command_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `off`, `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` (a bare level name)
    /// overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `auto` (journald under systemd, else stderr), `journal` or `stderr`.
    #[serde(default = "default_log_target")]
    pub target: LogTarget,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            target: default_log_target(),
        }
    }
}

impl LogConfig {
    pub fn level_filter(&self) -> log::LevelFilter {
        crate::logging::parse_level(&self.level).unwrap_or(log::LevelFilter::Info)
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}
fn default_log_target() -> LogTarget {
    LogTarget::Auto
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `full`: every commit is fsynced; `normal`: only checkpoints are (see docs/durability.md).
    #[serde(default = "default_sync")]
    pub sync: SyncMode,
    /// Journal size at which the gateway stops taking new commands (advertises capacity 0).
    #[serde(default = "default_max_journal_bytes")]
    pub max_journal_bytes: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            sync: default_sync(),
            max_journal_bytes: default_max_journal_bytes(),
        }
    }
}

fn default_sync() -> SyncMode {
    SyncMode::Full
}
fn default_max_journal_bytes() -> u64 {
    64 * 1024 * 1024
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceConfig {
    pub id: String,
    pub transport: TransportKind,
    /// MQTT password (username = client id = appliance id).
    #[serde(default)]
    pub password: Option<String>,
    // BLE appliances (docs/ble.md): the device by `address` or advertised `name`, its GATT
    // service and characteristics (UUIDs), and how payloads become bytes.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub command_char: Option<String>,
    #[serde(default)]
    pub result_char: Option<String>,
    #[serde(default)]
    pub encoding: Option<Encoding>,
}

impl fmt::Debug for ApplianceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplianceConfig")
            .field("id", &self.id)
            .field("transport", &self.transport)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Mqtt,
    Ble,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/tether")
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
fn default_mqtt_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 1883))
}
fn default_topic_prefix() -> String {
    "tether".to_owned()
}
fn default_max_payload() -> usize {
    64 * 1024
}
fn default_max_connections() -> usize {
    1024
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_max_events() -> usize {
    10_000
}
fn default_max_event_rate() -> u32 {
    20
}
fn default_max_connect_rate() -> u32 {
    10
}
fn default_startup_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_max_pending() -> usize {
    1024
}
fn default_max_queue() -> usize {
    256
}
fn default_max_command_bytes() -> usize {
    64 * 1024
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: default_mqtt_listen(),
            topic_prefix: default_topic_prefix(),
            max_payload: default_max_payload(),
            max_connections: default_max_connections(),
            connect_timeout: default_connect_timeout(),
            idle_timeout: default_idle_timeout(),
            max_events: default_max_events(),
            startup_grace: default_startup_grace(),
            max_event_rate: default_max_event_rate(),
            max_connect_rate: default_max_connect_rate(),
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            default_timeout: default_command_timeout(),
            max_timeout: default_max_timeout(),
            max_pending: default_max_pending(),
            max_queue_per_appliance: default_max_queue(),
            max_command_bytes: default_max_command_bytes(),
        }
    }
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `cloud.poll_wait` or `appliance[2].id`; empty for syntax errors.
    pub key: String,
    /// 1-based line, where known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (Some(line), false) => write!(f, "line {line}: {}: {}", self.key, self.message),
            (Some(line), true) => write!(f, "line {line}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.key, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {} problem(s)", problems.len())]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// Parses and validates a config text, listing every problem found.
    pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        let mut doc = Doc {
            text,
            problems: Vec::new(),
        };
        let root = match DeTable::parse(text) {
            Ok(root) => root,
            Err(e) => {
                let line = e.span().map(|s| doc.line_of(s.start));
                return Err(vec![Problem {
                    key: String::new(),
                    line,
                    message: e.message().to_owned(),
                }]);
            }
        };
        let mut gateway = None;
        let mut cloud = None;
        let mut mqtt = None;
        let mut router = None;
        let mut state = None;
        let mut log_section = None;
        let mut ble_section = None;
        let mut appliances = Vec::new();
        let mut groups = BTreeMap::new();
        let mut appliance_spans = Vec::new();
        for (key, value) in root.get_ref().iter() {
            let name: &str = key.get_ref();
            match name {
                "gateway" => gateway = doc.section(name, value),
                "cloud" => cloud = doc.section(name, value),
                "mqtt" => mqtt = doc.section(name, value),
                "router" => router = doc.section(name, value),
                "state" => state = doc.section(name, value),
                "log" => log_section = doc.section(name, value),
                "ble" => ble_section = doc.section(name, value),
                "groups" => groups = doc.section(name, value).unwrap_or_default(),
                "appliance" => match value.get_ref() {
                    DeValue::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            let key = format!("appliance[{i}]");
                            appliance_spans.push(item.span());
                            if let Some(a) = doc.section::<ApplianceConfig>(&key, item) {
                                appliances.push((i, a));
                            }
                        }
                    }
                    _ => doc.problem(
                        name,
                        value.span(),
                        "must be an array of tables ([[appliance]])",
                    ),
                },
                other => doc.problem(
                    other,
                    key.span(),
                    "unknown section (expected gateway, cloud, mqtt, router, state, log, ble, appliance, groups)",
                ),
            }
        }
        let root_span = 0..0;
        if gateway.is_none() && !root.get_ref().keys().any(|k| k.get_ref() == "gateway") {
            doc.problem("gateway", root_span.clone(), "missing section [gateway]");
        }
        if cloud.is_none() && !root.get_ref().keys().any(|k| k.get_ref() == "cloud") {
            doc.problem("cloud", root_span, "missing section [cloud]");
        }
        let lookup = |path: &[&str]| find_span(root.get_ref(), path);
        let mut v = Validator {
            doc: &mut doc,
            lookup: &lookup,
        };
        if let Some(g) = &gateway {
            v.gateway(g);
        }
        if let Some(c) = &cloud {
            v.cloud(c);
        }
        let mqtt = mqtt.unwrap_or_default();
        v.mqtt(&mqtt);
        let router = router.unwrap_or_default();
        v.router(&router);
        let log_config: LogConfig = log_section.unwrap_or_default();
        if crate::logging::parse_level(&log_config.level).is_none() {
            v.err(
                &["log", "level"],
                "must be one of error, warn, info, debug, trace, off",
            );
        }
        let state: StateConfig = state.unwrap_or_default();
        if state.max_journal_bytes < 1024 * 1024 {
            v.err(
                &["state", "max_journal_bytes"],
                "must be at least 1048576 (1 MiB)",
            );
        }
        let ble: BleConfig = ble_section.unwrap_or_default();
        v.ble(&ble, &appliances);
        v.durations(gateway.as_ref(), cloud.as_ref(), &mqtt, &router, &ble);
        v.appliances(&appliances, &appliance_spans);
        v.groups(&groups, &appliances);
        match (gateway, cloud, doc.problems.is_empty()) {
            (Some(gateway), Some(cloud), true) => Ok(Config {
                gateway,
                cloud,
                mqtt,
                router,
                state,
                log: log_config,
                ble,
                appliances: appliances.into_iter().map(|(_, a)| a).collect(),
                groups,
            }),
            _ => Err(doc.problems),
        }
    }

    pub fn appliance(&self, id: &str) -> Option<&ApplianceConfig> {
        self.appliances.iter().find(|a| a.id == id)
    }
}

struct Doc<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

impl Doc<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn problem(&mut self, key: &str, span: Range<usize>, message: impl Into<String>) {
        let line = (span != (0..0)).then(|| self.line_of(span.start));
        self.problems.push(Problem {
            key: key.to_owned(),
            line,
            message: message.into(),
        });
    }

    /// Deserializes one section on its own, so that a problem in one section does not hide
    /// the problems of the others.
    fn section<T: DeserializeOwned>(
        &mut self,
        key: &str,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let de = ValueDeserializer::from(value.clone());
        match T::deserialize(de) {
            Ok(v) => Some(v),
            Err(e) => {
                let span = e.span().unwrap_or_else(|| value.span());
                let sub = sub_key(value, &span);
                let key = match sub {
                    Some(sub) => format!("{key}.{sub}"),
                    None => key.to_owned(),
                };
                self.problem(&key, span, e.message());
                None
            }
        }
    }
}

/// The key inside `table` whose key or value span holds `span`.
fn sub_key(table: &Spanned<DeValue<'_>>, span: &Range<usize>) -> Option<String> {
    let DeValue::Table(t) = table.get_ref() else {
        return None;
    };
    t.iter()
        .find(|(k, v)| {
            let (ks, vs) = (k.span(), v.span());
            (ks.start <= span.start && span.start < ks.end.max(ks.start + 1))
                || (vs.start <= span.start && span.start < vs.end.max(vs.start + 1))
        })
        .map(|(k, _)| k.get_ref().to_string())
}

/// The span of the value at `path` (`["appliance", "2", "id"]`), or an empty span.
fn find_span(root: &DeTable<'_>, path: &[&str]) -> Range<usize> {
    let Some((first, rest)) = path.split_first() else {
        return 0..0;
    };
    let Some((key, mut value)) = root.iter().find(|(k, _)| k.get_ref() == *first) else {
        return 0..0;
    };
    let mut span = if rest.is_empty() {
        key.span()
    } else {
        value.span()
    };
    for (i, part) in rest.iter().enumerate() {
        let last = i + 1 == rest.len();
        match value.get_ref() {
            DeValue::Table(t) => match t.iter().find(|(k, _)| k.get_ref() == *part) {
                Some((k, v)) => {
                    span = if last { k.span() } else { v.span() };
                    value = v;
                }
                None => return span,
            },
            DeValue::Array(a) => match part.parse::<usize>().ok().and_then(|n| a.get(n)) {
                Some(v) => {
                    span = v.span();
                    value = v;
                }
                None => return span,
            },
            _ => return span,
        }
    }
    span
}

struct Validator<'a, 't, F: Fn(&[&str]) -> Range<usize>> {
    doc: &'a mut Doc<'t>,
    lookup: &'a F,
}

impl<F: Fn(&[&str]) -> Range<usize>> Validator<'_, '_, F> {
    fn err(&mut self, path: &[&str], message: impl Into<String>) {
        let key = display_key(path);
        let span = (self.lookup)(path);
        self.doc.problem(&key, span, message);
    }

    /// Upper bounds on every duration. Beyond them a value is a typo, and a few are added
    /// to the clock (`Instant + Duration`), where an absurd one would overflow it.
    fn durations(
        &mut self,
        g: Option<&GatewayConfig>,
        c: Option<&CloudConfig>,
        m: &MqttConfig,
        r: &RouterConfig,
        b: &BleConfig,
    ) {
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(86_400);
        let mut bounds: Vec<([&str; 2], Duration, Duration, &str)> = vec![
            (["mqtt", "connect_timeout"], m.connect_timeout, HOUR, "1h"),
            (["mqtt", "idle_timeout"], m.idle_timeout, DAY, "1d"),
            (["mqtt", "startup_grace"], m.startup_grace, HOUR, "1h"),
            (["router", "default_timeout"], r.default_timeout, DAY, "1d"),
            (["router", "max_timeout"], r.max_timeout, DAY, "1d"),
            (["ble", "idle_disconnect"], b.idle_disconnect, DAY, "1d"),
            (["ble", "scan_timeout"], b.scan_timeout, HOUR, "1h"),
            (["ble", "connect_timeout"], b.connect_timeout, HOUR, "1h"),
        ];
        if let Some(g) = g {
            bounds.push((["gateway", "stop_grace"], g.stop_grace, HOUR, "1h"));
        }
        if let Some(c) = c {
            bounds.extend([
                (["cloud", "backoff_max"], c.backoff_max, DAY, "1d"),
                (["cloud", "request_timeout"], c.request_timeout, HOUR, "1h"),
                (["cloud", "connect_timeout"], c.connect_timeout, HOUR, "1h"),
                (["cloud", "ping_interval"], c.ping_interval, HOUR, "1h"),
                (["cloud", "ping_timeout"], c.ping_timeout, HOUR, "1h"),
            ]);
        }
        for (path, value, max, label) in bounds {
            if value > max {
                self.err(&path, format!("must be at most {label}"));
            }
        }
    }

    fn gateway(&mut self, g: &GatewayConfig) {
        if let Err(e) = check_id(&g.id) {
            self.err(&["gateway", "id"], e);
        }
        if !g.state_dir.is_absolute() {
            self.err(&["gateway", "state_dir"], "must be an absolute path");
        }
    }

    fn cloud(&mut self, c: &CloudConfig) {
        if !c.url.starts_with("https://") || c.url.len() <= "https://".len() {
            self.err(
                &["cloud", "url"],
                "must be an https:// URL (the cloud link is always TLS-verified)",
            );
        }
        if c.client_cert.is_some() != c.client_key.is_some() {
            self.err(
                &["cloud", "client_cert"],
                "client_cert and client_key go together",
            );
        }
        if c.poll_wait > Duration::from_secs(3600) {
            self.err(&["cloud", "poll_wait"], "must be at most 1h");
        }
        if c.backoff_max < Duration::from_secs(1) {
            self.err(&["cloud", "backoff_max"], "must be at least 1s");
        }
        if c.result_linger > Duration::from_secs(10) {
            self.err(&["cloud", "result_linger"], "must be at most 10s");
        }
        for (key, d) in [
            ("request_timeout", c.request_timeout),
            ("connect_timeout", c.connect_timeout),
            ("ping_interval", c.ping_interval),
            ("ping_timeout", c.ping_timeout),
        ] {
            if d.is_zero() {
                self.err(&["cloud", key], "must be greater than 0");
            }
        }
        if c.max_response_bytes < 1024 {
            self.err(&["cloud", "max_response_bytes"], "must be at least 1024");
        }
        if c.max_batch == 0 {
            self.err(&["cloud", "max_batch"], "must be at least 1");
        }
    }

    fn mqtt(&mut self, m: &MqttConfig) {
        if let Err(e) = check_id(&m.topic_prefix) {
            self.err(&["mqtt", "topic_prefix"], e);
        }
        if !(16..=256 * 1024 * 1024).contains(&m.max_payload) {
            self.err(
                &["mqtt", "max_payload"],
                "must be between 16 and 268435456 bytes",
            );
        }
        if m.max_connections == 0 {
            self.err(&["mqtt", "max_connections"], "must be at least 1");
        }
        if m.max_event_rate == 0 {
            self.err(&["mqtt", "max_event_rate"], "must be at least 1");
        }
        if m.max_connect_rate == 0 {
            self.err(&["mqtt", "max_connect_rate"], "must be at least 1");
        }
        if m.max_events == 0 {
            self.err(&["mqtt", "max_events"], "must be at least 1");
        }
        if m.connect_timeout.is_zero() || m.idle_timeout.is_zero() {
            self.err(
                &["mqtt"],
                "connect_timeout and idle_timeout must be greater than 0",
            );
        }
        if m.tls_listen.is_some() && (m.tls_cert.is_none() || m.tls_key.is_none()) {
            self.err(&["mqtt", "tls_listen"], "needs tls_cert and tls_key");
        }
        if m.tls_listen.is_some() && m.tls_listen == Some(m.listen) && m.listen.port() != 0 {
            self.err(&["mqtt", "tls_listen"], "must differ from mqtt.listen");
        }
    }

    fn router(&mut self, r: &RouterConfig) {
        if r.default_timeout.is_zero() {
            self.err(&["router", "default_timeout"], "must be greater than 0");
        }
        if r.max_timeout < r.default_timeout {
            self.err(
                &["router", "max_timeout"],
                "must not be less than default_timeout",
            );
        }
        if r.max_command_bytes == 0 {
            self.err(&["router", "max_command_bytes"], "must be at least 1");
        }
        if r.max_pending == 0 || r.max_queue_per_appliance == 0 {
            self.err(
                &["router"],
                "max_pending and max_queue_per_appliance must be at least 1",
            );
        }
    }

    fn appliances(&mut self, list: &[(usize, ApplianceConfig)], _spans: &[Range<usize>]) {
        let mut seen = std::collections::HashSet::new();
        for (i, a) in list {
            let idx = i.to_string();
            if let Err(e) = check_id(&a.id) {
                self.err(&["appliance", &idx, "id"], e);
            }
            if !seen.insert(a.id.as_str()) {
                self.err(
                    &["appliance", &idx, "id"],
                    format!("duplicate appliance id {:?}", a.id),
                );
            }
            match (a.transport, &a.password) {
                (TransportKind::Mqtt, None) => self.err(
                    &["appliance", &idx, "password"],
                    "required for MQTT appliances",
                ),
                (TransportKind::Mqtt, Some(p)) if p.starts_with("$argon2") => {
                    if let Err(e) = crate::transport::mqtt::auth::check_hash(p) {
                        self.err(&["appliance", &idx, "password"], e)
                    }
                }
                (TransportKind::Mqtt, Some(p)) if p.is_empty() => {
                    self.err(&["appliance", &idx, "password"], "must not be empty")
                }
                _ => {}
            }
            self.ble_appliance(&idx, a);
        }
    }

    fn groups(
        &mut self,
        groups: &BTreeMap<String, Vec<String>>,
        list: &[(usize, ApplianceConfig)],
    ) {
        for (name, members) in groups {
            if let Err(e) = check_id(name) {
                self.err(&["groups", name], e);
            }
            if members.is_empty() {
                self.err(&["groups", name], "a group needs at least one member");
            }
            for m in members {
                if !list.iter().any(|(_, a)| &a.id == m) {
                    self.err(&["groups", name], format!("unknown appliance {m:?}"));
                }
            }
        }
    }
}

fn display_key(path: &[&str]) -> String {
    let mut out = String::new();
    for part in path {
        if part.parse::<usize>().is_ok() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// Ids travel in URL paths and MQTT topics: keep them to a safe alphabet.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "{id:?} may use only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
