//! The `[ble]` section and the BLE keys of `[[appliance]]`: types, defaults, validation.
//!
//! Kept apart from `config.rs` so the BLE transport's settings live in one place; the
//! parser calls [`Validator::ble`] and [`Validator::ble_appliance`] like the other checks,
//! so every problem is reported with its key and line.

use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;

use super::{ApplianceConfig, Config, TransportKind, Validator};
use crate::transport::ble::{parse_address, parse_uuid};

/// `[ble]`: the adapter and the link budget shared by all BLE appliances.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
const BLE_KEYS: [&str; 6] = [
    "address",
    "name",
    "service",
    "command_char",
    "result_char",
    "encoding",
];

impl<F: Fn(&[&str]) -> Range<usize>> Validator<'_, '_, F> {
    pub(super) fn ble(&mut self, b: &BleConfig, appliances: &[(usize, ApplianceConfig)]) {
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
                self.err(
                    &["appliance", &idx, key],
                    format!("{id} is already appliance {first:?}'s"),
                );
            }
        }
        if let Some(adapter) = &b.adapter
            && (adapter.is_empty() || !adapter.bytes().all(|c| c.is_ascii_alphanumeric()))
        {
            self.err(&["ble", "adapter"], "must be an adapter name like \"hci0\"");
        }
        if !(1..=64).contains(&b.max_connections) {
            self.err(&["ble", "max_connections"], "must be between 1 and 64");
        }
        for (key, d) in [
            ("idle_disconnect", b.idle_disconnect),
            ("scan_timeout", b.scan_timeout),
            ("connect_timeout", b.connect_timeout),
        ] {
            if d.is_zero() {
                self.err(&["ble", key], "must be greater than 0");
            }
        }
    }

    /// The BLE keys of appliance `idx`: required and well-formed for a BLE appliance,
    /// absent for any other.
    pub(super) fn ble_appliance(&mut self, idx: &str, a: &ApplianceConfig) {
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
                    self.err(&["appliance", idx, key], "only for BLE appliances");
                }
            }
            return;
        }
        if a.password.is_some() {
            self.err(&["appliance", idx, "password"], "only for MQTT appliances");
        }
        match (&a.address, &a.name) {
            (None, None) => self.err(
                &["appliance", idx, "address"],
                "BLE appliances need an address (or a name)",
            ),
            (Some(_), Some(_)) => self.err(
                &["appliance", idx, "name"],
                "give address or name, not both",
            ),
            (Some(address), None) => {
                if let Err(e) = parse_address(address) {
                    self.err(&["appliance", idx, "address"], e);
                }
            }
            (None, Some(name)) if name.is_empty() || name.len() > 248 => {
                self.err(&["appliance", idx, "name"], "must be 1 to 248 bytes")
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
                None => self.err(&["appliance", idx, key], "required for BLE appliances"),
                Some(text) => {
                    if let Err(e) = parse_uuid(text) {
                        self.err(&["appliance", idx, key], e);
                    }
                }
            }
        }
    }
}
