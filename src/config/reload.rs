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
    let mut kept = Vec::new();
    let mut new_client = false;
    let mut out = |kept_now: Vec<String>, client: bool| {
        kept.extend(kept_now);
        new_client |= client;
    };
    let gateway = section(&running.gateway, new.gateway, &mut out);
    let cloud = section(&running.cloud, new.cloud, &mut out);
    let mqtt = section(&running.mqtt, new.mqtt, &mut out);
    let router = section(&running.router, new.router, &mut out);
    let state = section(&running.state, new.state, &mut out);
    let log = section(&running.log, new.log, &mut out);
    let ble = section(&running.ble, new.ble, &mut out);
    Merged {
        config: Config {
            gateway,
            cloud,
            mqtt,
            router,
            state,
            log,
            ble,
            appliances: new.appliances,
            groups: new.groups,
        },
        kept,
        new_client,
    }
}

/// The keys of a section with their values, in serialized form.
pub fn entries<T: Section>(section: &T) -> Map<String, Value> {
    match serde_json::to_value(section) {
        Ok(Value::Object(map)) => map,
        // Sections are structs of plain values; serializing one cannot fail.
        _ => Map::new(),
    }
}

fn section<T: Section>(running: &T, new: T, out: &mut impl FnMut(Vec<String>, bool)) -> T {
    let old = entries(running);
    let mut merged = entries(&new);
    let mut kept = Vec::new();
    let mut client = false;
    for (key, value) in merged.iter_mut() {
        let before = old.get(key).unwrap_or(&Value::Null);
        if before == value {
            continue;
        }
        // An unclassified key is treated as restart-only: applying it live by mistake is
        // worse than waiting (and `every_key_is_classified` fails on it).
        match T::apply_of(key).unwrap_or(Apply::Restart) {
            Apply::Live => {}
            Apply::NewClient => client = true,
            Apply::Restart => {
                kept.push(format!("{}.{key}", T::NAME));
                *value = before.clone();
            }
        }
    }
    if kept.is_empty() {
        out(kept, client);
        return new;
    }
    match serde_json::from_value(Value::Object(merged)) {
        Ok(section) => {
            out(kept, client);
            section
        }
        Err(e) => {
            ::log::error!(
                "reload: [{}] could not be merged ({e}); keeping the section in force",
                T::NAME
            );
            out(Vec::new(), false);
            running.clone()
        }
    }
}

#[cfg(test)]
mod tests;
