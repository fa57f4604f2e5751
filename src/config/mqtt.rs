//! `[mqtt]`: how MQTT appliances are reached. By default the daemon's own endpoint
//! (listeners, sizes, rates); with `mode = "external"`, a broker the site already runs,
//! which the daemon joins as a client (`broker*` keys).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::spans::{Checker, DAY, HOUR};
use super::{Apply, Section, check_id};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    #[serde(default = "default_listen")]
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
    /// `endpoint`: appliances connect to the daemon. `external`: the daemon connects to
    /// `broker` as a client, and the broker authenticates and confines the appliances.
    #[serde(default)]
    pub mode: MqttMode,
    /// `mqtt://host[:port]` (1883) or `mqtts://host[:port]` (8883).
    #[serde(default)]
    pub broker: Option<String>,
    /// The daemon's client id at the broker; default `tetherd-{gateway.id}`.
    #[serde(default)]
    pub broker_client_id: Option<String>,
    #[serde(default)]
    pub broker_username: Option<String>,
    /// File holding the password for `broker_username` (mode 0640 at most).
    #[serde(default)]
    pub broker_password_file: Option<PathBuf>,
    /// Trust only this CA (PEM) for an `mqtts://` broker instead of the system roots.
    #[serde(default)]
    pub broker_ca_file: Option<PathBuf>,
    #[serde(default = "default_broker_keep_alive", with = "humantime_serde")]
    pub broker_keep_alive: Duration,
}

/// Who runs the MQTT broker the appliances talk to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttMode {
    #[default]
    Endpoint,
    External,
}

/// `mqtt.broker`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Broker {
    pub fn parse(url: &str) -> Result<Broker, String> {
        let bad = || format!("{url:?} must be mqtt://host[:port] or mqtts://host[:port]");
        let (tls, rest) = match url.split_once("://") {
            Some(("mqtt", rest)) => (false, rest),
            Some(("mqtts", rest)) => (true, rest),
            _ => return Err(bad()),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            (host, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
            return Err(bad());
        }
        let port = match port {
            None => {
                if tls {
                    8883
                } else {
                    1883
                }
            }
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?,
        };
        Ok(Broker {
            tls,
            host: host.to_owned(),
            port,
        })
    }

    /// Whether the broker is this machine (a plain `mqtt://` link then never leaves it).
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl Section for MqttConfig {
    const NAME: &'static str = "mqtt";
    // The listeners, their connections' limits and the outbox's size are taken by the
    // tasks that start with the daemon; the two rates are read by the hub on every check.
    const KEYS: &'static [(&'static str, Apply)] = &[
        ("listen", Apply::Restart),
        ("topic_prefix", Apply::Restart),
        ("max_payload", Apply::Restart),
        ("max_connections", Apply::Restart),
        ("connect_timeout", Apply::Restart),
        ("idle_timeout", Apply::Restart),
        ("max_events", Apply::Restart),
        ("startup_grace", Apply::Restart),
        ("max_event_rate", Apply::Live),
        ("max_connect_rate", Apply::Live),
        ("tls_listen", Apply::Restart),
        ("tls_cert", Apply::Restart),
        ("tls_key", Apply::Restart),
        ("mode", Apply::Restart),
        ("broker", Apply::Restart),
        ("broker_client_id", Apply::Restart),
        ("broker_username", Apply::Restart),
        ("broker_password_file", Apply::Restart),
        ("broker_ca_file", Apply::Restart),
        ("broker_keep_alive", Apply::Restart),
    ];
}

fn default_listen() -> SocketAddr {
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
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
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
fn default_broker_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_startup_grace() -> Duration {
    Duration::from_secs(10)
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
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
            mode: MqttMode::Endpoint,
            broker: None,
            broker_client_id: None,
            broker_username: None,
            broker_password_file: None,
            broker_ca_file: None,
            broker_keep_alive: default_broker_keep_alive(),
        }
    }
}

impl MqttConfig {
    pub(super) fn check(&self, v: &mut Checker) {
        if let Err(e) = check_id(&self.topic_prefix) {
            v.err(&["mqtt", "topic_prefix"], e);
        }
        if !(16..=256 * 1024 * 1024).contains(&self.max_payload) {
            v.err(
                &["mqtt", "max_payload"],
                "must be between 16 and 268435456 bytes",
            );
        }
        v.at_least_one("mqtt", "max_connections", self.max_connections as u64);
        v.at_least_one("mqtt", "max_event_rate", self.max_event_rate.into());
        v.at_least_one("mqtt", "max_connect_rate", self.max_connect_rate.into());
        v.at_least_one("mqtt", "max_events", self.max_events as u64);
        v.above_zero("mqtt", "connect_timeout", self.connect_timeout);
        v.above_zero("mqtt", "idle_timeout", self.idle_timeout);
        v.at_most("mqtt", "connect_timeout", self.connect_timeout, HOUR, "1h");
        v.at_most("mqtt", "idle_timeout", self.idle_timeout, DAY, "1d");
        v.at_most("mqtt", "startup_grace", self.startup_grace, HOUR, "1h");
        if self.tls_listen.is_some() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            v.err(&["mqtt", "tls_listen"], "needs tls_cert and tls_key");
        }
        self.check_broker(v);
        if self.tls_listen.is_some()
            && self.tls_listen == Some(self.listen)
            && self.listen.port() != 0
        {
            v.err(&["mqtt", "tls_listen"], "must differ from mqtt.listen");
        }
    }

    fn check_broker(&self, v: &mut Checker) {
        let external = self.mode == MqttMode::External;
        if !external {
            for (key, set) in [
                ("broker", self.broker.is_some()),
                ("broker_client_id", self.broker_client_id.is_some()),
                ("broker_username", self.broker_username.is_some()),
                ("broker_password_file", self.broker_password_file.is_some()),
                ("broker_ca_file", self.broker_ca_file.is_some()),
            ] {
                if set {
                    v.err(&["mqtt", key], "only with mqtt.mode = \"external\"");
                }
            }
            return;
        }
        match &self.broker {
            None => v.err(&["mqtt", "mode"], "\"external\" needs mqtt.broker"),
            Some(url) => match Broker::parse(url) {
                Ok(b) if !b.tls && self.broker_ca_file.is_some() => {
                    v.err(&["mqtt", "broker_ca_file"], "only for an mqtts:// broker")
                }
                Ok(_) => {}
                Err(e) => v.err(&["mqtt", "broker"], e),
            },
        }
        if let Some(id) = &self.broker_client_id
            && let Err(e) = check_id(id)
        {
            v.err(&["mqtt", "broker_client_id"], e);
        }
        if self.broker_password_file.is_some() && self.broker_username.is_none() {
            v.err(&["mqtt", "broker_password_file"], "needs broker_username");
        }
        if self.tls_listen.is_some() {
            v.err(
                &["mqtt", "tls_listen"],
                "the endpoint does not run with mqtt.mode = \"external\"",
            );
        }
        v.above_zero("mqtt", "broker_keep_alive", self.broker_keep_alive);
        v.at_most(
            "mqtt",
            "broker_keep_alive",
            self.broker_keep_alive,
            HOUR,
            "1h",
        );
    }
}
