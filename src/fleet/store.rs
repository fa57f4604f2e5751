//! The cloud-managed entries on disk: `managed.toml` in the state directory.
//!
//! Written only by the fleet task (`fleet/mod.rs`) after a gateway command, read at start
//! and by `tetherd check-config`. The file holds `[[appliance]]` tables and a `[groups]`
//! table, the file's own form, so an operator can read it; passwords in it are Argon2id
//! hashes. It is replaced whole (written beside, synced, renamed, the directory synced):
//! after a power cut it holds the entries before or after a command, never half of them.
//! Every entry is checked again when read, one at a time, so an entry that a newer
//! version's rules refuse costs only that entry.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{ApplianceConfig, Config, MqttConfig, Problem, topic_clash};
use crate::status::Ignored;

/// The store's file name in `gateway.state_dir`.
pub const FILE: &str = "managed.toml";

const HEADER: &str = "\
# Appliances and groups put by the cloud (gateway commands to $gateway), kept by tetherd.
# Do not edit: tetherd rewrites this file at every such command. Entries of the same id
# in /etc/tether/config.toml take precedence over these.
";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    #[serde(default)]
    appliance: Vec<toml::Table>,
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
}

/// What the cloud put, as stored.
#[derive(Debug, Clone, Default)]
pub struct Store {
    path: PathBuf,
    /// By appliance id: the entry as the command gave it (its password hashed).
    pub appliances: BTreeMap<String, toml::Table>,
    pub groups: BTreeMap<String, Vec<String>>,
}

impl Store {
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE)
    }

    /// Reads the store; no file is an empty store. An unreadable or unparsable file is an
    /// error: the caller must not write over what it could not read.
    pub fn load(state_dir: &Path) -> Result<Store, String> {
        let path = Store::path_in(state_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Store {
                    path,
                    ..Store::default()
                });
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let file: StoreFile =
            toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
        let mut appliances = BTreeMap::new();
        for table in file.appliance {
            let id = match table.get("id").and_then(toml::Value::as_str) {
                Some(id) => id.to_owned(),
                None => return Err(format!("{}: an appliance without an id", path.display())),
            };
            appliances.insert(id, table);
        }
        Ok(Store {
            path,
            appliances,
            groups: file.groups,
        })
    }

    /// An empty store at `state_dir` (for tests, and a start whose store was unreadable).
    pub fn empty(state_dir: &Path) -> Store {
        Store {
            path: Store::path_in(state_dir),
            ..Store::default()
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file with this store, durably.
    pub fn save(&self) -> std::io::Result<()> {
        let file = StoreFile {
            appliance: self.appliances.values().cloned().collect(),
            groups: self.groups.clone(),
        };
        let body = toml::to_string(&file).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("toml.new");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(HEADER.as_bytes())?;
            f.write_all(b"\n")?;
            f.write_all(body.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The stored entries laid over the file's configuration: what runs. A stored entry
    /// that the file's rules refuse, or whose id (or BLE device, or group name) the file
    /// has, stays stored but is not in force, and is listed.
    pub fn overlay(&self, file: &Arc<Config>) -> (Arc<Config>, Vec<Ignored>) {
        if self.appliances.is_empty() && self.groups.is_empty() {
            // The usual case: the file alone, not a second copy of it.
            return (file.clone(), Vec::new());
        }
        let mut config = Config::clone(file);
        let mut ignored = Vec::new();
        for (id, table) in &self.appliances {
            let entry = match parse_appliance(table, &file.mqtt) {
                Ok(a) => a,
                Err(problems) => {
                    let why = problems
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join("; ");
                    ignored.push(Ignored {
                        kind: "appliance",
                        id: id.clone(),
                        why,
                    });
                    continue;
                }
            };
            if file.appliance(id).is_some() {
                ignored.push(Ignored {
                    kind: "appliance",
                    id: id.clone(),
                    why: "the configuration file has an appliance with this id".into(),
                });
                continue;
            }
            if let Some(other) = same_device(&config.appliances, &entry) {
                ignored.push(Ignored {
                    kind: "appliance",
                    id: id.clone(),
                    why: format!("its BLE device is appliance {other:?}'s"),
                });
                continue;
            }
            if let Some((other, topic)) =
                topic_clash(&file.mqtt.topic_prefix, &config.appliances, &entry)
            {
                ignored.push(Ignored {
                    kind: "appliance",
                    id: id.clone(),
                    why: format!("its topics overlap appliance {other:?}'s ({topic})"),
                });
                continue;
            }
            config.appliances.push(entry);
        }
        for (name, members) in &self.groups {
            if file.groups.contains_key(name) {
                ignored.push(Ignored {
                    kind: "group",
                    id: name.clone(),
                    why: "the configuration file has a group with this name".into(),
                });
                continue;
            }
            if let Some(m) = members.iter().find(|m| config.appliance(m).is_none()) {
                ignored.push(Ignored {
                    kind: "group",
                    id: name.clone(),
                    why: format!("names appliance {m:?}, which is not configured"),
                });
                continue;
            }
            config.groups.insert(name.clone(), members.clone());
        }
        (Arc::new(config), ignored)
    }
}

/// Another appliance in `list` that speaks to the same BLE device as `entry`.
pub fn same_device<'a>(list: &'a [ApplianceConfig], entry: &ApplianceConfig) -> Option<&'a str> {
    let key = |a: &ApplianceConfig| match (&a.address, &a.name) {
        _ if a.transport != crate::config::TransportKind::Ble => None,
        (Some(addr), _) => Some(format!("address {}", addr.to_ascii_uppercase())),
        (None, Some(name)) => Some(format!("name {name}")),
        (None, None) => None,
    };
    let mine = key(entry)?;
    list.iter()
        .filter(|a| a.id != entry.id)
        .find(|a| key(a).as_deref() == Some(mine.as_str()))
        .map(|a| a.id.as_str())
}

/// Checks one appliance entry by the file's rules; the problems name the key as
/// `appliance.KEY`.
pub fn parse_appliance(
    table: &toml::Table,
    mqtt: &MqttConfig,
) -> Result<ApplianceConfig, Vec<Problem>> {
    #[derive(Serialize)]
    struct One<'a> {
        appliance: [&'a toml::Table; 1],
    }
    let text = toml::to_string(&One { appliance: [table] }).map_err(|e| {
        vec![Problem {
            key: "appliance".into(),
            line: None,
            message: e.to_string(),
        }]
    })?;
    match Config::parse_entries(&text, &HashSet::new(), mqtt) {
        Ok(mut entries) if entries.appliances.len() == 1 => Ok(entries.appliances.remove(0)),
        Ok(_) => Err(vec![Problem {
            key: "appliance".into(),
            line: None,
            message: "not an appliance entry".into(),
        }]),
        Err(problems) => Err(problems
            .into_iter()
            .map(|p| Problem {
                key: p.key.replacen("appliance[0]", "appliance", 1),
                // Lines of a text the caller never saw mean nothing to it.
                line: None,
                message: p.message,
            })
            .collect()),
    }
}
