//! `[[appliance]]` and `[groups]`: who the gateway talks to, and the names for sets of them.
//!
//! Both apply live on reload (the router, the MQTT endpoint and the BLE transport take the
//! new list); the BLE keys of an appliance are checked in `ble.rs`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::Deserialize;

use super::Encoding;
use super::check_id;
use super::spans::Checker;

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
    /// What happens to commands while the appliance is away.
    #[serde(default)]
    pub offline: Offline,
}

/// The keys every `[[appliance]]` may have; the BLE ones are `ble::BLE_KEYS`. All of
/// them apply live.
pub const COMMON_KEYS: [&str; 4] = ["id", "transport", "password", "offline"];

impl fmt::Debug for ApplianceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplianceConfig")
            .field("id", &self.id)
            .field("transport", &self.transport)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("offline", &self.offline)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Mqtt,
    Ble,
}

/// What a command for an appliance that is away does (`offline` in `[[appliance]]`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Offline {
    /// `queue` for an MQTT appliance holding a persistent session (it connected with
    /// `clean_session = false` and subscribed to its cmd topic at QoS 1), as MQTT's own
    /// rule for such sessions says; `fail` otherwise, and for BLE appliances.
    #[default]
    Auto,
    /// Commands wait, in order, until the appliance is back (within their TTL, or
    /// `router.max_offline_wait`).
    Queue,
    /// A command finds the appliance away: `unreachable` at once.
    Fail,
}

/// Checks that a configured hash is a well-formed Argon2 PHC string.
pub fn check_hash(hash: &str) -> Result<(), String> {
    argon2::password_hash::phc::PasswordHash::new(hash)
        .map(|_| ())
        .map_err(|e| {
            format!("not a valid Argon2 PHC string ({e}); make one with `tetherd hash-password`")
        })
}

/// The appliances' own rules: ids unique and well-formed, each transport's keys.
pub(super) fn check_appliances(v: &mut Checker, list: &[(usize, ApplianceConfig)]) {
    let mut seen = HashSet::new();
    for (i, a) in list {
        let idx = i.to_string();
        if let Err(e) = check_id(&a.id) {
            v.err(&["appliance", &idx, "id"], e);
        }
        if !seen.insert(a.id.as_str()) {
            v.err(
                &["appliance", &idx, "id"],
                format!("duplicate appliance id {:?}", a.id),
            );
        }
        match (a.transport, &a.password) {
            (TransportKind::Mqtt, None) => v.err(
                &["appliance", &idx, "password"],
                "required for MQTT appliances",
            ),
            (TransportKind::Mqtt, Some(p)) if p.starts_with("$argon2") => {
                if let Err(e) = check_hash(p) {
                    v.err(&["appliance", &idx, "password"], e)
                }
            }
            (TransportKind::Mqtt, Some(p)) if p.is_empty() => {
                v.err(&["appliance", &idx, "password"], "must not be empty")
            }
            _ => {}
        }
        super::ble::check_appliance(v, &idx, a);
    }
}

/// Groups name known appliances. `declared` holds every appliance id the file names, also
/// those of entries refused for another reason: that reason is the problem to report, not
/// a second one on the group.
pub(super) fn check_groups(
    v: &mut Checker,
    groups: &BTreeMap<String, Vec<String>>,
    declared: &HashSet<String>,
) {
    for (name, members) in groups {
        if let Err(e) = check_id(name) {
            v.err(&["groups", name], e);
        }
        if members.is_empty() {
            v.err(&["groups", name], "a group needs at least one member");
        }
        for m in members {
            if !declared.contains(m) {
                v.err(&["groups", name], format!("unknown appliance {m:?}"));
            }
        }
    }
}
