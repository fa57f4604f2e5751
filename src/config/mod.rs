//! The daemon's configuration: one TOML file, parsed strictly.
//!
//! Loaded by `main` before anything else runs and handed to `app` as an immutable
//! [`Config`]; at the bottom of the crate, it depends on no other part of it. Each section
//! lives in its own file with its struct, defaults, rules and, in [`Section::KEYS`], when a
//! change to each key takes effect, which is what a reload ([`reload::merge`]) goes by.
//! Every section denies unknown keys, every default is a named function documented in
//! `config.example.toml`, and [`Config::load`] reports *every* problem of a file in one
//! pass, each with its key and line (`spans.rs`).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

mod appliance;
pub mod ble;
mod cloud;
mod gateway;
mod log;
mod metrics;
mod mqtt;
pub mod reload;
mod router;
mod spans;
mod state;

pub use self::log::{LogConfig, LogTarget, parse_level};
pub use appliance::{
    ApplianceConfig, COMMON_KEYS, CUSTOM_KEYS, Offline, Part, Profile, Template, TransportKind,
    check_hash, parse_template, parse_topic_template, template_match, template_root, topic_clash,
    valid_entity,
};
pub use ble::{BleConfig, Encoding, parse_address, parse_uuid};
pub use cloud::{CloudConfig, WireEncoding};
pub use gateway::GatewayConfig;
pub use metrics::MetricsConfig;
pub use mqtt::{Broker, MqttConfig, MqttMode};
pub use router::RouterConfig;
pub use state::{StateConfig, SyncMode};

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub cloud: CloudConfig,
    pub mqtt: MqttConfig,
    pub router: RouterConfig,
    pub state: StateConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub ble: BleConfig,
    pub appliances: Vec<ApplianceConfig>,
    pub groups: BTreeMap<String, Vec<String>>,
}

/// When a changed key takes effect on `systemctl reload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// At once.
    Live,
    /// At once, through a new cloud client (and so a new connection).
    NewClient,
    /// At the next restart: a reload logs the change and keeps the value in force.
    Restart,
}

/// A `[section]` of the file: its name, and when a change to each of its keys applies.
/// Serializing a section gives one entry per key, which is how a reload compares two
/// configurations key by key and how the tests check that every key is classified.
pub trait Section: Serialize + DeserializeOwned + Clone {
    const NAME: &'static str;
    const KEYS: &'static [(&'static str, Apply)];

    fn apply_of(key: &str) -> Option<Apply> {
        Self::KEYS.iter().find(|(k, _)| *k == key).map(|(_, a)| *a)
    }
}

/// The sections, in the order the example file documents them (the parser's match lists
/// them again; a test keeps the two the same).
pub(crate) const SECTIONS: &str =
    "gateway, cloud, mqtt, router, state, ble, log, metrics, appliance, groups";

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

/// What the file holds before the cross-section rules run.
#[derive(Default)]
struct Parts {
    gateway: Option<GatewayConfig>,
    cloud: Option<CloudConfig>,
    mqtt: Option<MqttConfig>,
    router: Option<RouterConfig>,
    state: Option<StateConfig>,
    log: Option<LogConfig>,
    metrics: Option<MetricsConfig>,
    ble: Option<BleConfig>,
    appliances: Vec<(usize, ApplianceConfig)>,
    /// Every appliance id the file names, also those of entries refused.
    declared: HashSet<String>,
    groups: BTreeMap<String, Vec<String>>,
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
        let mut doc = spans::Doc::new(text);
        let root = parse_toml(text, &doc)?;
        let root = root.get_ref();
        let mut p = Parts::default();
        for (key, value) in root.iter() {
            let name: &str = key.get_ref();
            match name {
                "gateway" => p.gateway = doc.section(name, value),
                "cloud" => p.cloud = doc.section(name, value),
                "mqtt" => p.mqtt = doc.section(name, value),
                "router" => p.router = doc.section(name, value),
                "state" => p.state = doc.section(name, value),
                "log" => p.log = doc.section(name, value),
                "metrics" => p.metrics = doc.section(name, value),
                "ble" => p.ble = doc.section(name, value),
                "groups" => p.groups = doc.section(name, value).unwrap_or_default(),
                "appliance" => read_appliances(&mut doc, value, &mut p),
                other => doc.problem(
                    other,
                    key.span(),
                    format!("unknown section (expected {SECTIONS})"),
                ),
            }
        }
        for (name, present) in [
            ("gateway", p.gateway.is_some()),
            ("cloud", p.cloud.is_some()),
        ] {
            if !present && !root.keys().any(|k| k.get_ref() == name) {
                doc.problem(name, 0..0, format!("missing section [{name}]"));
            }
        }
        let mqtt = p.mqtt.unwrap_or_default();
        let router = p.router.unwrap_or_default();
        let state = p.state.unwrap_or_default();
        let log = p.log.unwrap_or_default();
        let metrics = p.metrics.unwrap_or_default();
        let ble = p.ble.unwrap_or_default();
        let mut v = spans::Checker {
            doc: &mut doc,
            root,
        };
        if let Some(g) = &p.gateway {
            g.check(&mut v);
        }
        if let Some(c) = &p.cloud {
            c.check(&mut v);
        }
        mqtt.check(&mut v);
        router.check(&mut v);
        state.check(&mut v);
        log.check(&mut v);
        metrics.check(&mut v);
        ble.check(&mut v, &p.appliances);
        appliance::check_appliances(&mut v, &p.appliances, &mqtt);
        appliance::check_groups(&mut v, &p.groups, &p.declared);
        match (p.gateway, p.cloud, doc.is_clean()) {
            (Some(gateway), Some(cloud), true) => Ok(Config {
                gateway,
                cloud,
                mqtt,
                router,
                state,
                log,
                metrics,
                ble,
                appliances: p.appliances.into_iter().map(|(_, a)| a).collect(),
                groups: p.groups,
            }),
            _ => Err(doc.into_problems()),
        }
    }

    pub fn appliance(&self, id: &str) -> Option<&ApplianceConfig> {
        self.appliances.iter().find(|a| a.id == id)
    }

    /// Parses a text that holds only `[[appliance]]` tables and a `[groups]` table (the
    /// cloud-managed entries, the `fleet` module), by the rules the file's own entries obey.
    /// Groups may also name the appliances in `known` (the file's); `mqtt` is the file's
    /// `[mqtt]` (its topic prefix and mode).
    pub fn parse_entries(
        text: &str,
        known: &HashSet<String>,
        mqtt: &MqttConfig,
    ) -> Result<Entries, Vec<Problem>> {
        let mut doc = spans::Doc::new(text);
        let root = parse_toml(text, &doc)?;
        let root = root.get_ref();
        let mut p = Parts::default();
        for (key, value) in root.iter() {
            match key.get_ref().as_ref() {
                "groups" => p.groups = doc.section("groups", value).unwrap_or_default(),
                "appliance" => read_appliances(&mut doc, value, &mut p),
                other => doc.problem(
                    other,
                    key.span(),
                    "only [[appliance]] and [groups] belong here",
                ),
            }
        }
        p.declared.extend(known.iter().cloned());
        let mut v = spans::Checker {
            doc: &mut doc,
            root,
        };
        BleConfig::default().check(&mut v, &p.appliances);
        appliance::check_appliances(&mut v, &p.appliances, mqtt);
        appliance::check_groups(&mut v, &p.groups, &p.declared);
        if !doc.is_clean() {
            return Err(doc.into_problems());
        }
        Ok(Entries {
            appliances: p.appliances.into_iter().map(|(_, a)| a).collect(),
            groups: p.groups,
        })
    }
}

/// The TOML document, or the one syntax problem that stops everything.
fn parse_toml<'t>(
    text: &'t str,
    doc: &spans::Doc<'_>,
) -> Result<toml::Spanned<DeTable<'t>>, Vec<Problem>> {
    DeTable::parse(text).map_err(|e| {
        vec![Problem {
            key: String::new(),
            line: e.span().map(|s| doc.line_of(s.start)),
            message: e.message().to_owned(),
        }]
    })
}

/// Appliances and groups on their own: what [`Config::parse_entries`] reads.
#[derive(Debug, Clone, Default)]
pub struct Entries {
    pub appliances: Vec<ApplianceConfig>,
    pub groups: BTreeMap<String, Vec<String>>,
}

/// `[[appliance]]`: each table deserialized on its own, and every id it names noted (also
/// of an entry refused for another reason).
fn read_appliances(doc: &mut spans::Doc<'_>, value: &toml::Spanned<DeValue<'_>>, p: &mut Parts) {
    let DeValue::Array(items) = value.get_ref() else {
        doc.problem(
            "appliance",
            value.span(),
            "must be an array of tables ([[appliance]])",
        );
        return;
    };
    for (i, item) in items.iter().enumerate() {
        if let DeValue::Table(t) = item.get_ref()
            && let Some((_, id)) = t.iter().find(|(k, _)| k.get_ref() == "id")
            && let DeValue::String(id) = id.get_ref()
        {
            p.declared.insert(id.to_string());
        }
        let key = format!("appliance[{i}]");
        if let Some(a) = doc.section::<ApplianceConfig>(&key, item) {
            p.appliances.push((i, a));
        }
    }
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
