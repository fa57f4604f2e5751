//! The `[ble]` section and the BLE keys of `[[appliance]]`: types, defaults, rules, and the
//! parsers for what those keys hold (addresses, UUIDs, encodings), which the BLE transport
//! uses too: the transport depends on the config, never the other way round.

use std::str::FromStr;
use std::time::Duration;

use btleplug::api::BDAddr;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::spans::{Checker, DAY, HOUR};
use super::{ApplianceConfig, Apply, Config, Section, TransportKind};

/// `[ble]`: the adapter and the link budget shared by all BLE appliances.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BleConfig {
    /// The adapter to use (`hci0`); default: the first BlueZ lists.
    #[serde(default)]
    pub adapter: Option<String>,
    /// Links open at once across all BLE appliances (controllers manage about 4 to 7).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A link unused this long is closed (it costs the appliance battery and a slot).
    #[serde(default = "default_idle_disconnect", with = "humantime_serde")]
    pub idle_disconnect: Duration,
    /// How long scanning may take to find an appliance not seen yet.
    #[serde(default = "default_scan_timeout", with = "humantime_serde")]
    pub scan_timeout: Duration,
    /// Bound on one connection attempt (a command makes up to three, within its timeout).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Section for BleConfig {
    const NAME: &'static str = "ble";
    // The radio task and its link pool are built from these when the transport starts.
    const KEYS: &'static [(&'static str, Apply)] = &[
        ("adapter", Apply::Restart),
        ("max_connections", Apply::Restart),
        ("idle_disconnect", Apply::Restart),
        ("scan_timeout", Apply::Restart),
        ("connect_timeout", Apply::Restart),
    ];
}

/// How payloads are carried over the air (`encoding` in `[[appliance]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The payload serialized as JSON; the answer must be JSON.
    #[default]
    Json,
    /// The payload must be a string, sent as its UTF-8 bytes; the answer is text.
    Utf8,
    /// The payload is a string of hex digits; the answer is given as lowercase hex.
    Hex,
    /// The payload is a standard base64 string; the answer is given as base64.
    Base64,
}

fn default_max_connections() -> usize {
    4
}
fn default_idle_disconnect() -> Duration {
    Duration::from_secs(30)
}
fn default_scan_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for BleConfig {
    fn default() -> Self {
        Self {
            adapter: None,
            max_connections: default_max_connections(),
            idle_disconnect: default_idle_disconnect(),
            scan_timeout: default_scan_timeout(),
            connect_timeout: default_connect_timeout(),
        }
    }
}

impl Config {
    /// Whether any appliance uses the BLE transport (only then is it started).
    pub fn has_ble(&self) -> bool {
        self.appliances
            .iter()
            .any(|a| a.transport == TransportKind::Ble)
    }
}

/// The `[[appliance]]` keys that only BLE appliances may set.
pub const BLE_KEYS: [&str; 6] = [
    "address",
    "name",
    "service",
    "command_char",
    "result_char",
    "encoding",
];

impl BleConfig {
    /// The section's own rules, and that no two appliances claim one device.
    pub(super) fn check(&self, v: &mut Checker, appliances: &[(usize, ApplianceConfig)]) {
        let b = self;
        // Two appliances on one device would fight over its link.
        let mut seen = std::collections::HashMap::new();
        for (i, a) in appliances {
            let idx = i.to_string();
            let (key, id) = match (&a.address, &a.name) {
                (Some(addr), _) => ("address", format!("address {}", addr.to_ascii_uppercase())),
                (None, Some(name)) => ("name", format!("name {name:?}")),
                (None, None) => continue,
            };
            if a.transport != TransportKind::Ble {
                continue;
            }
            if let Some(first) = seen.insert(id.clone(), a.id.clone()) {
                v.err(
                    &["appliance", &idx, key],
                    format!("{id} is already appliance {first:?}'s"),
                );
            }
        }
        if let Some(adapter) = &b.adapter
            && (adapter.is_empty() || !adapter.bytes().all(|c| c.is_ascii_alphanumeric()))
        {
            v.err(&["ble", "adapter"], "must be an adapter name like \"hci0\"");
        }
        if !(1..=64).contains(&b.max_connections) {
            v.err(&["ble", "max_connections"], "must be between 1 and 64");
        }
        for (key, d, max, label) in [
            ("idle_disconnect", b.idle_disconnect, DAY, "1d"),
            ("scan_timeout", b.scan_timeout, HOUR, "1h"),
            ("connect_timeout", b.connect_timeout, HOUR, "1h"),
        ] {
            v.above_zero("ble", key, d);
            v.at_most("ble", key, d, max, label);
        }
    }
}

/// The BLE keys of appliance `idx`: required and well-formed for a BLE appliance, absent
/// for any other.
pub(super) fn check_appliance(v: &mut Checker, idx: &str, a: &ApplianceConfig) {
    let values = [
        &a.address,
        &a.name,
        &a.service,
        &a.command_char,
        &a.result_char,
    ];
    if a.transport != TransportKind::Ble {
        let encoding = a.encoding.is_some();
        for (key, set) in BLE_KEYS
            .iter()
            .zip(values.iter().map(|v| v.is_some()).chain([encoding]))
        {
            if set {
                v.err(&["appliance", idx, key], "only for BLE appliances");
            }
        }
        return;
    }
    if a.password.is_some() {
        v.err(&["appliance", idx, "password"], "only for MQTT appliances");
    }
    match (&a.address, &a.name) {
        (None, None) => v.err(
            &["appliance", idx, "address"],
            "BLE appliances need an address (or a name)",
        ),
        (Some(_), Some(_)) => v.err(
            &["appliance", idx, "name"],
            "give address or name, not both",
        ),
        (Some(address), None) => {
            if let Err(e) = parse_address(address) {
                v.err(&["appliance", idx, "address"], e);
            }
        }
        (None, Some(name)) if name.is_empty() || name.len() > 248 => {
            v.err(&["appliance", idx, "name"], "must be 1 to 248 bytes")
        }
        (None, Some(_)) => {}
    }
    // command_char may equal result_char: UART-style modules (HM-10's ffe1) write and
    // notify on one characteristic.
    for (key, value) in [
        ("service", &a.service),
        ("command_char", &a.command_char),
        ("result_char", &a.result_char),
    ] {
        match value {
            None => v.err(&["appliance", idx, key], "required for BLE appliances"),
            Some(text) => {
                if let Err(e) = parse_uuid(text) {
                    v.err(&["appliance", idx, key], e);
                }
            }
        }
    }
}

/// A GATT UUID: the 128-bit form, or a 16-bit SIG short form (`180d`) on the Bluetooth
/// base UUID.
pub fn parse_uuid(text: &str) -> Result<Uuid, String> {
    let text = text.trim();
    if text.len() == 4 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let short = u32::from_str_radix(text, 16).map_err(|e| e.to_string())?;
        return Ok(Uuid::from_u128(
            (u128::from(short) << 96) | 0x0000_0000_0000_1000_8000_0080_5f9b_34fb,
        ));
    }
    if text.len() != 36 {
        return Err(format!(
            "{text:?} is not a UUID (want 0000ffe0-0000-1000-8000-00805f9b34fb or a 16-bit short form like \"ffe0\")"
        ));
    }
    Uuid::parse_str(text).map_err(|e| format!("{text:?} is not a UUID: {e}"))
}

/// A Bluetooth device address, `AA:BB:CC:DD:EE:FF` (any case).
pub fn parse_address(text: &str) -> Result<BDAddr, String> {
    if text.len() != 17 {
        return Err(format!(
            "{text:?} is not a Bluetooth address (want AA:BB:CC:DD:EE:FF)"
        ));
    }
    BDAddr::from_str(text)
        .map_err(|e| format!("{text:?} is not a Bluetooth address (want AA:BB:CC:DD:EE:FF): {e}"))
}
