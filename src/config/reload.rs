//! What a reload may change: a new configuration merged onto the one in force, key by key,
//! as each section's [`Section::KEYS`] says.
//!
//! Called by `app` on SIGHUP with a file that already passed every rule. A key whose
//! change needs a restart keeps the value in force and is named in [`Merged::kept`]; a
//! key of the cloud client's sets [`Merged::new_client`]. Appliances and groups always
//! apply live. Sections are compared through their serialized form, so a key added to a
//! section's struct is compared without anyone remembering to, and a test fails until it
//! is classified.

use serde_json::{Map, Value};

use super::{Apply, Config, Section};

/// A reloaded configuration as it will run.
#[derive(Debug)]
pub struct Merged {
    pub config: Config,
    /// Changed keys that wait for a restart (`mqtt.listen`), kept as they were.
    pub kept: Vec<String>,
    /// A key the cloud client is built from changed.
    pub new_client: bool,
}

/// `new` with every restart-only key put back to its value in `running`.
pub fn merge(running: &Config, new: Config) -> Merged {
    let mut m = Merged {
        config: running.clone(),
        kept: Vec::new(),
        new_client: false,
    };
    m.config.gateway = m.section(&running.gateway, new.gateway);
    m.config.cloud = m.section(&running.cloud, new.cloud);
    m.config.mqtt = m.section(&running.mqtt, new.mqtt);
    m.config.router = m.section(&running.router, new.router);
    m.config.state = m.section(&running.state, new.state);
    m.config.log = m.section(&running.log, new.log);
    m.config.metrics = m.section(&running.metrics, new.metrics);
    m.config.ble = m.section(&running.ble, new.ble);
    m.config.appliances = new.appliances;
    m.config.groups = new.groups;
    m
}

/// The keys of a section with their values, in serialized form.
pub fn entries<T: Section>(section: &T) -> Map<String, Value> {
    match serde_json::to_value(section) {
        Ok(Value::Object(map)) => map,
        // Sections are structs of plain values; serializing one cannot fail.
        _ => Map::new(),
    }
}

impl Merged {
    /// One section of the merge: `new`, with its restart-only changes undone and noted.
    fn section<T: Section>(&mut self, running: &T, new: T) -> T {
        let old = entries(running);
        let mut merged = entries(&new);
        let mut kept = Vec::new();
        let mut client = false;
        for (key, value) in merged.iter_mut() {
            let before = old.get(key).unwrap_or(&Value::Null);
            if before == value {
                continue;
            }
            // An unclassified key is treated as restart-only: applying it live by mistake
            // is worse than waiting (and `every_key_of_every_section_is_classified` fails on it).
            match T::apply_of(key).unwrap_or(Apply::Restart) {
                Apply::Live => {}
                Apply::NewClient => client = true,
                Apply::Restart => {
                    kept.push(format!("{}.{key}", T::NAME));
                    *value = before.clone();
                }
            }
        }
        let section = if kept.is_empty() {
            new
        } else {
            match serde_json::from_value(Value::Object(merged)) {
                Ok(section) => section,
                Err(e) => {
                    ::log::error!(
                        "reload: [{}] could not be merged ({e}); keeping the section in force",
                        T::NAME
                    );
                    return running.clone();
                }
            }
        };
        self.kept.extend(kept);
        self.new_client |= client;
        section
    }
}

#[cfg(test)]
mod tests;
