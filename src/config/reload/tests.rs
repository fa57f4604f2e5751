use std::collections::BTreeSet;
use std::time::Duration;

use super::*;
use crate::config::{
    BleConfig, COMMON_KEYS, CUSTOM_KEYS, CloudConfig, GatewayConfig, LogConfig, MetricsConfig,
    MqttConfig, RouterConfig, StateConfig, ble,
};

const EXAMPLE: &str = include_str!("../../../config.example.toml");

fn example() -> Config {
    Config::parse(EXAMPLE).unwrap_or_else(|p| panic!("{p:#?}"))
}

/// The keys of `T`'s struct (as serialized) and its classification, side by side.
fn check_section<T: Section>(section: &T) -> Vec<String> {
    let fields: BTreeSet<String> = entries(section).keys().cloned().collect();
    let classified: BTreeSet<String> = T::KEYS.iter().map(|(k, _)| k.to_string()).collect();
    let mut wrong = Vec::new();
    for k in fields.difference(&classified) {
        wrong.push(format!(
            "{}.{k} is not classified in its Section::KEYS",
            T::NAME
        ));
    }
    for k in classified.difference(&fields) {
        wrong.push(format!("{}.{k} is classified but is no field", T::NAME));
    }
    wrong
}

#[test]
fn every_key_of_every_section_is_classified() {
    let c = example();
    let mut wrong = Vec::new();
    wrong.extend(check_section(&c.gateway));
    wrong.extend(check_section(&c.cloud));
    wrong.extend(check_section(&c.mqtt));
    wrong.extend(check_section(&c.router));
    wrong.extend(check_section(&c.state));
    wrong.extend(check_section(&c.log));
    wrong.extend(check_section(&c.metrics));
    wrong.extend(check_section(&c.ble));
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Every key the example file documents, commented out or not, by section.
fn documented_keys() -> Vec<(String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in EXAMPLE.lines() {
        let line = line.trim_start_matches("# ").trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            section = name.to_owned();
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, _)) = line.split_once(" = ")
            && !key.is_empty()
            && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            out.push((section.clone(), key.to_owned()));
        }
    }
    out
}

#[test]
fn every_key_of_the_example_file_is_classified() {
    let keys = documented_keys();
    assert!(keys.len() > 40, "the walk found too few keys: {keys:?}");
    let mut unclassified = Vec::new();
    for (section, key) in &keys {
        let known = match section.as_str() {
            "gateway" => GatewayConfig::apply_of(key).is_some(),
            "cloud" => CloudConfig::apply_of(key).is_some(),
            "mqtt" => MqttConfig::apply_of(key).is_some(),
            "router" => RouterConfig::apply_of(key).is_some(),
            "state" => StateConfig::apply_of(key).is_some(),
            "log" => LogConfig::apply_of(key).is_some(),
            "metrics" => MetricsConfig::apply_of(key).is_some(),
            "ble" => BleConfig::apply_of(key).is_some(),
            // Appliances and groups apply live as a whole.
            "appliance" => {
                COMMON_KEYS.contains(&key.as_str())
                    || ble::BLE_KEYS.contains(&key.as_str())
                    || CUSTOM_KEYS.contains(&key.as_str())
            }
            "groups" => true,
            _ => false,
        };
        if !known {
            unclassified.push(format!("[{section}] {key}"));
        }
    }
    assert!(unclassified.is_empty(), "{unclassified:#?}");
}

#[test]
fn a_reload_applies_live_keys_and_keeps_the_rest() {
    let running = example();
    let text = EXAMPLE
        .replace("listen = \"0.0.0.0:1883\"", "listen = \"127.0.0.1:1884\"")
        .replace("max_event_rate = 20", "max_event_rate = 7")
        .replace("poll_wait = \"30s\"", "poll_wait = \"45s\"")
        .replace("max_pending = 1024", "max_pending = 10")
        .replace("level = \"info\"", "level = \"debug\"")
        .replace("target = \"auto\"", "target = \"stderr\"")
        .replace("idle_disconnect = \"30s\"", "idle_disconnect = \"1m\"")
        .replace("stop_grace = \"20s\"", "stop_grace = \"5s\"");
    let new = Config::parse(&text).unwrap_or_else(|p| panic!("{p:#?}"));
    let m = merge(&running, new);
    assert_eq!(
        m.kept,
        [
            "gateway.stop_grace",
            "mqtt.listen",
            "log.target",
            "ble.idle_disconnect"
        ],
    );
    assert!(!m.new_client, "only session timing changed in [cloud]");
    let c = &m.config;
    assert_eq!(c.mqtt.listen, running.mqtt.listen, "kept");
    assert_eq!(c.gateway.stop_grace, running.gateway.stop_grace, "kept");
    assert_eq!(c.log.target, running.log.target, "kept");
    assert_eq!(c.ble, running.ble, "kept");
    assert_eq!(c.mqtt.max_event_rate, 7, "live");
    assert_eq!(c.cloud.poll_wait, Duration::from_secs(45), "live");
    assert_eq!(c.router.max_pending, 10, "live");
    assert_eq!(c.log.level, "debug", "live");
}

#[test]
fn a_client_setting_asks_for_a_new_client() {
    let running = example();
    for (from, to) in [
        (
            "url = \"https://cloud.example.com\"",
            "url = \"https://other.example.com\"",
        ),
        ("ping_interval = \"20s\"", "ping_interval = \"21s\""),
        (
            "# ca_file = \"/etc/tether/cloud-ca.pem\"",
            "ca_file = \"/etc/tether/cloud-ca.pem\"",
        ),
    ] {
        let new = Config::parse(&EXAMPLE.replace(from, to)).unwrap_or_else(|p| panic!("{p:#?}"));
        let m = merge(&running, new);
        assert!(m.new_client, "{to}");
        assert!(m.kept.is_empty(), "{to}: {:?}", m.kept);
    }
    let same = merge(&running, example());
    assert!(!same.new_client && same.kept.is_empty());
}
