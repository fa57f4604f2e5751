//! Profiles on the wire: for each MQTT appliance, the topics it may subscribe to and
//! publish on (its access-control list), how a command is put to it, and how its answers,
//! presence and events are read.
//!
//! One [`Contract`] per configured appliance, built from its `[[appliance]]` entry by
//! [`Contract::new`] and held by the hub beside its password; connection tasks ask it about
//! each SUBSCRIBE, the hub about each PUBLISH and each command. The `tether` profile is the
//! contract in [`super::topic`]; `shelly-rpc` and `tasmota` are the firmwares' own
//! (docs/appliances.md). Every rule is an exact comparison against the appliance's own
//! topic strings, so a wildcard or another appliance's topic simply does not match.

use serde_json::{Map, Value, json};

use super::topic;
use crate::cloud::wire::{MAX_COMMAND_ID, MAX_PAYLOAD_DEPTH, nesting_depth};
use crate::config::{
    ApplianceConfig, Part, Profile, Template, parse_template, parse_topic_template, template_match,
    template_root, valid_entity,
};
use crate::transport::Outcome;

/// Tasmota's default group topic: every Tasmota subscribes to it; refused without a fuss.
const TASMOTA_GROUP: &str = "cmnd/tasmotas/#";
/// Where Tasmota announces itself for Home Assistant (on by default since 9.1).
const TASMOTA_DISCOVERY: &str = "tasmota/discovery/";
/// Longest Tasmota command name taken from a command (its own are far shorter).
const MAX_TASMOTA_COMMAND: usize = 64;

/// What a SUBSCRIBE filter is to an appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribe {
    /// The topic its commands come on: once subscribed, it can take commands.
    Commands,
    /// Its own topic the gateway never publishes on (a Shelly's `command` topics): granted.
    Own,
    /// A filter its firmware always asks for and does not need (Tasmota's group topic):
    /// refused, but not reported as an intrusion.
    Ignored,
    /// Anything else: refused, counted and reported.
    Denied,
}

/// What a PUBLISH from an appliance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// The answer to a command.
    Answer,
    /// Its online/offline topic (and will).
    Presence,
    /// Telemetry and notifications, passed to the cloud as events.
    Event,
    /// Something its firmware publishes by default that the gateway has no use for
    /// (Tasmota's discovery messages): dropped without a report.
    Ignored,
}

/// An answer read off the wire.
#[derive(Debug, PartialEq)]
pub struct Answer {
    /// The command it answers, by the key [`Contract::command`] gave; `None` when the wire
    /// carries no id (Tasmota) or the answer did not parse far enough to show one: then it
    /// answers the one command waiting, if there is one.
    pub key: Option<String>,
    /// The outcome, or why the answer could not be read (an `error` result, and counted).
    pub outcome: Result<Outcome, String>,
}

/// One appliance's topics and message formats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contract {
    profile: Profile,
    id: String,
    prefix: String,
    /// The device's own topic (`topic`, or the id).
    device: String,
    /// The `custom` profile's templates.
    custom: Option<Custom>,
}

/// A `custom` profile, its templates parsed (the config's rules checked them).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Custom {
    command_topic: Template,
    command_payload: Template,
    answer_topic: Template,
    /// The JSON field of an answer that holds the command id; `None`: the next message
    /// on the command's answer topic.
    match_field: Option<String>,
    presence_topic: Option<String>,
    online: String,
    offline: String,
}

impl Contract {
    pub fn new(prefix: &str, a: &ApplianceConfig) -> Contract {
        let mut c = Contract {
            profile: a.profile,
            id: a.id.clone(),
            prefix: prefix.to_owned(),
            device: a.device_topic().to_owned(),
            custom: None,
        };
        if a.profile == Profile::Custom {
            let topic = |t: &Option<String>| {
                t.as_deref()
                    .and_then(|t| parse_topic_template(t).ok())
                    .unwrap_or_default()
            };
            let presence = a
                .presence_topic
                .as_deref()
                .and_then(|t| parse_topic_template(t).ok())
                .map(|p| c.render(&p, None, "", ""));
            c.custom = Some(Custom {
                command_topic: topic(&a.command_topic),
                command_payload: a
                    .command_payload
                    .as_deref()
                    .and_then(|t| parse_template(t, true).ok())
                    .unwrap_or_else(|| vec![Part::Value]),
                answer_topic: topic(&a.answer_topic),
                match_field: a
                    .answer_match
                    .as_deref()
                    .and_then(|m| m.strip_prefix("field:"))
                    .map(str::to_owned),
                presence_topic: presence,
                online: a.online_payload.clone().unwrap_or_else(|| "online".into()),
                offline: a
                    .offline_payload
                    .clone()
                    .unwrap_or_else(|| "offline".into()),
            });
        }
        c
    }

    /// A template filled in.
    fn render(
        &self,
        parts: &[Part],
        entity: Option<&str>,
        command_id: &str,
        value: &str,
    ) -> String {
        let mut out = String::new();
        for p in parts {
            match p {
                Part::Text(s) => out.push_str(s),
                Part::Id => out.push_str(&self.id),
                Part::Topic => out.push_str(&self.device),
                Part::Entity => out.push_str(entity.unwrap_or_default()),
                Part::CommandId => out.push_str(command_id),
                Part::Value => out.push_str(value),
            }
        }
        out
    }

    /// The levels before a template's `{entity}` (all of it without one), filled in.
    fn root(&self, parts: &[Part]) -> (String, bool) {
        let root = template_root(parts, &self.id, &self.device);
        (root, parts.contains(&Part::Entity))
    }

    /// A template as a filter: exact without `{entity}`, its root and `#` with one.
    fn filter(&self, parts: &[Part]) -> String {
        match self.root(parts) {
            (root, true) => format!("{root}/#"),
            (_, false) => self.render(parts, None, "", ""),
        }
    }

    /// Whether `name` is a topic the template stands for, and with what `{entity}`.
    fn matches(&self, parts: &[Part], name: &str) -> Option<Option<String>> {
        template_match(parts, &self.id, &self.device, name)
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The topic the appliance's commands are published on.
    pub fn command_filter(&self) -> String {
        match self.profile {
            Profile::Tether => topic::cmd_topic(&self.prefix, &self.id),
            Profile::ShellyRpc => format!("{}/rpc", self.device),
            Profile::Tasmota => format!("cmnd/{}/#", self.device),
            Profile::Custom => match &self.custom {
                Some(c) => self.filter(&c.command_topic),
                None => String::new(),
            },
        }
    }

    /// What the gateway subscribes to for this appliance at an external broker: its
    /// answers, presence and events.
    pub fn inbound_filters(&self) -> Vec<String> {
        let (p, i, t) = (&self.prefix, &self.id, &self.device);
        match self.profile {
            Profile::Tether => ["result", "status", "events"]
                .map(|k| format!("{p}/{i}/{k}"))
                .to_vec(),
            Profile::ShellyRpc => vec![
                format!("{}/rpc", self.shelly_src()),
                format!("{t}/online"),
                format!("{t}/events/rpc"),
                format!("{t}/status/+"),
            ],
            Profile::Tasmota => vec![format!("stat/{t}/+"), format!("tele/{t}/+")],
            Profile::Custom => self
                .custom
                .iter()
                .flat_map(|c| {
                    std::iter::once(self.filter(&c.answer_topic)).chain(c.presence_topic.clone())
                })
                .collect(),
        }
    }

    /// The filters the appliance itself subscribes to, and the topics (as filters) it
    /// publishes on: what a broker's access list allows it (`tetherd mosquitto-acl`).
    pub fn acl(&self) -> (Vec<String>, Vec<String>) {
        let reads = match self.profile {
            Profile::Tether | Profile::Tasmota | Profile::Custom => vec![self.command_filter()],
            Profile::ShellyRpc => vec![
                self.command_filter(),
                format!("{}/command", self.device),
                format!("{}/command/+", self.device),
            ],
        };
        (reads, self.inbound_filters())
    }

    /// The topics the gateway publishes this appliance's commands on, as a filter.
    pub fn command_topics(&self) -> String {
        match self.profile {
            Profile::Tasmota => format!("cmnd/{}/+", self.device),
            _ => self.command_filter(),
        }
    }

    /// The topic a Shelly publishes its answers on (`src` + `/rpc`).
    fn shelly_src(&self) -> String {
        format!("{}/{}", self.prefix, self.id)
    }

    pub fn subscribe(&self, filter: &str) -> Subscribe {
        if filter == self.command_filter() {
            return Subscribe::Commands;
        }
        match self.profile {
            Profile::Tether => Subscribe::Denied,
            // Each of its command topics, exactly (an ESPHome device subscribes to one per
            // entity).
            Profile::Custom => match &self.custom {
                Some(c) if self.matches(&c.command_topic, filter).is_some() => Subscribe::Commands,
                _ => Subscribe::Denied,
            },
            Profile::ShellyRpc => {
                let own = filter
                    .strip_prefix(self.device.as_str())
                    .and_then(|r| r.strip_prefix("/command"));
                match own {
                    Some("") => Subscribe::Own,
                    Some(r) if one_level(r.strip_prefix('/')) => Subscribe::Own,
                    _ => Subscribe::Denied,
                }
            }
            Profile::Tasmota => {
                let fallback = format!("cmnd/{}_fb/#", self.id);
                if filter == TASMOTA_GROUP || filter == fallback {
                    Subscribe::Ignored
                } else {
                    Subscribe::Denied
                }
            }
        }
    }

    /// Classifies a PUBLISH to `name`; `None` means denied.
    pub fn classify(&self, name: &str) -> Option<Inbound> {
        match self.profile {
            Profile::Custom => {
                let c = self.custom.as_ref()?;
                if c.presence_topic.as_deref() == Some(name) {
                    Some(Inbound::Presence)
                } else if self.matches(&c.answer_topic, name).is_some() {
                    Some(Inbound::Answer)
                } else {
                    None
                }
            }
            Profile::Tether => Some(
                match topic::classify_publish(&self.prefix, &self.id, name)? {
                    topic::Inbound::Result => Inbound::Answer,
                    topic::Inbound::Status => Inbound::Presence,
                    topic::Inbound::Events => Inbound::Event,
                },
            ),
            Profile::ShellyRpc => {
                if name.strip_prefix(self.shelly_src().as_str()) == Some("/rpc") {
                    return Some(Inbound::Answer);
                }
                let rest = name.strip_prefix(self.device.as_str())?.strip_prefix('/')?;
                match rest {
                    "online" => Some(Inbound::Presence),
                    "events/rpc" => Some(Inbound::Event),
                    r if one_level(r.strip_prefix("status/")) => Some(Inbound::Event),
                    _ => None,
                }
            }
            Profile::Tasmota => {
                if name.starts_with(TASMOTA_DISCOVERY) {
                    return Some(Inbound::Ignored);
                }
                let (kind, rest) = name.split_once('/')?;
                let leaf = rest.strip_prefix(self.device.as_str())?.strip_prefix('/')?;
                if !one_level(Some(leaf)) {
                    return None;
                }
                match (kind, leaf) {
                    ("stat", "RESULT") => Some(Inbound::Answer),
                    ("tele", "LWT") => Some(Inbound::Presence),
                    ("stat" | "tele", _) => Some(Inbound::Event),
                    _ => None,
                }
            }
        }
    }

    /// Reads a presence message: `Some(true)` online, `Some(false)` offline.
    pub fn presence(&self, payload: &[u8]) -> Result<bool, &'static str> {
        if let Some(c) = &self.custom {
            return match payload {
                p if p == c.online.as_bytes() => Ok(true),
                p if p == c.offline.as_bytes() => Ok(false),
                _ => Err("presence is neither online_payload nor offline_payload"),
            };
        }
        let (on, off, why): (&[u8], &[u8], _) = match self.profile {
            // A custom profile without templates: the tether contract's words.
            Profile::Tether | Profile::Custom => (
                b"online",
                b"offline",
                "status must be \"online\" or \"offline\"",
            ),
            Profile::ShellyRpc => (b"true", b"false", "online must be \"true\" or \"false\""),
            Profile::Tasmota => (
                b"Online",
                b"Offline",
                "LWT must be \"Online\" or \"Offline\"",
            ),
        };
        match payload {
            p if p == on => Ok(true),
            p if p == off => Ok(false),
            _ => Err(why),
        }
    }

    /// An event's payload for the cloud: a Tether appliance's events are JSON of its own;
    /// a firmware's are whatever it publishes, so the topic goes with them.
    pub fn event(&self, name: &str, payload: &[u8]) -> Result<Value, String> {
        let parsed = serde_json::from_slice::<Value>(payload);
        let data = match (self.profile, parsed) {
            (_, Ok(v)) if nesting_depth(&v) > MAX_PAYLOAD_DEPTH => {
                return Err(format!(
                    "event nests deeper than {MAX_PAYLOAD_DEPTH} levels"
                ));
            }
            (Profile::Tether, Ok(v)) => return Ok(v),
            (Profile::Tether, Err(e)) => return Err(format!("event is not JSON: {e}")),
            (_, Ok(v)) => v,
            // Tasmota's `stat/<topic>/POWER` is a bare `ON`.
            (_, Err(_)) => match std::str::from_utf8(payload) {
                Ok(s) => Value::String(s.to_owned()),
                Err(_) => return Err("event is neither JSON nor UTF-8 text".into()),
            },
        };
        Ok(json!({ "topic": name, "data": data }))
    }

    /// The PUBLISH that carries a command: its topic, body, and the key its answer will be
    /// matched by. `seq` is a number unique among this appliance's waiting commands (a
    /// Shelly's request id).
    pub fn command(
        &self,
        command_id: &str,
        seq: u64,
        payload: &Value,
    ) -> Result<(String, Vec<u8>, String), String> {
        match self.profile {
            Profile::Tether => {
                let body = json!({ "id": command_id, "payload": payload });
                let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
                Ok((self.command_filter(), body, command_id.to_owned()))
            }
            Profile::ShellyRpc => {
                let fields = fields(payload, &["method", "params"])?;
                let method = match fields.get("method") {
                    Some(Value::String(m)) if !m.is_empty() => m,
                    _ => return Err("a shelly-rpc command's payload needs \"method\", a string such as \"Switch.Set\"".into()),
                };
                let mut req = json!({ "id": seq, "src": self.shelly_src(), "method": method });
                match fields.get("params") {
                    None | Some(Value::Null) => {}
                    Some(p @ Value::Object(_)) => req["params"] = p.clone(),
                    Some(_) => {
                        return Err("a shelly-rpc command's \"params\" must be an object".into());
                    }
                }
                let body = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
                Ok((self.command_filter(), body, seq.to_string()))
            }
            Profile::Tasmota => {
                let fields = fields(payload, &["command", "value"])?;
                let command = match fields.get("command") {
                    Some(Value::String(c))
                        if !c.is_empty()
                            && c.len() <= MAX_TASMOTA_COMMAND
                            && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                    {
                        c
                    }
                    _ => return Err("a tasmota command's payload needs \"command\", one Tasmota command name such as \"Power1\" (letters, digits, '_')".into()),
                };
                let body = match fields.get("value") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::String(s)) => s.clone().into_bytes(),
                    Some(v) => serde_json::to_vec(v).map_err(|e| e.to_string())?,
                };
                let name = format!("cmnd/{}/{command}", self.device);
                Ok((name, body, command_id.to_owned()))
            }
            Profile::Custom => {
                let Some(c) = &self.custom else {
                    return Err("the custom profile has no templates".into());
                };
                let fields = fields(payload, &["entity", "value"])?;
                let wants_entity = c.command_topic.contains(&Part::Entity);
                let entity = match (fields.get("entity"), wants_entity) {
                    (Some(Value::String(e)), true) if valid_entity(e) => Some(e.as_str()),
                    (_, true) => return Err("this appliance's command_topic has {entity}: the payload needs \"entity\", topic levels such as \"light/porch\" (letters, digits, '-', '_', '.')".into()),
                    (None, false) => None,
                    (Some(_), false) => return Err("\"entity\" given, but this appliance's command_topic has no {entity}".into()),
                };
                let value = match fields.get("value") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                };
                let name = self.render(&c.command_topic, entity, command_id, "");
                let body = self.render(&c.command_payload, entity, command_id, &value);
                let key = match &c.match_field {
                    Some(_) => command_id.to_owned(),
                    None => self.render(&c.answer_topic, entity, command_id, ""),
                };
                Ok((name, body.into_bytes(), key))
            }
        }
    }

    /// Whether an answer names the command it answers. Without (Tasmota), an answer when
    /// no command waits is the device reporting a change on its own: an event.
    pub fn answers_carry_ids(&self) -> bool {
        match self.profile {
            Profile::Tasmota => false,
            Profile::Custom => self
                .custom
                .as_ref()
                .is_some_and(|c| c.match_field.is_some()),
            Profile::Tether | Profile::ShellyRpc => true,
        }
    }

    /// Reads an answer that came on topic `name`.
    pub fn answer(&self, name: &str, payload: &[u8]) -> Answer {
        match self.profile {
            Profile::Custom => match self.custom.as_ref().and_then(|c| c.match_field.as_deref()) {
                None => Answer {
                    key: Some(name.to_owned()),
                    outcome: custom_value(payload).map(|v| Outcome::Ok(Some(v))),
                },
                Some(field) => {
                    let parsed: Result<Value, _> = serde_json::from_slice(payload);
                    match parsed {
                        Ok(v) => {
                            let key = match &v[field] {
                                Value::String(s) if s.len() <= MAX_COMMAND_ID => Some(s.clone()),
                                Value::Number(n) => Some(n.to_string()),
                                _ => None,
                            };
                            let outcome = match too_deep(&v) {
                                Some(why) => Ok(Outcome::Error(why)),
                                None if key.is_none() => {
                                    Err(format!("the answer has no {field:?} naming the command"))
                                }
                                None => Ok(Outcome::Ok(Some(v))),
                            };
                            Answer { key, outcome }
                        }
                        Err(e) => Answer {
                            key: None,
                            outcome: Err(format!("the answer is not JSON: {e}")),
                        },
                    }
                }
            },
            Profile::Tether => tether_answer(payload),
            Profile::ShellyRpc => shelly_answer(payload),
            Profile::Tasmota => Answer {
                key: None,
                outcome: tasmota_answer(payload),
            },
        }
    }
}

/// An answer or state message of a custom profile: JSON if it is, else its text.
fn custom_value(payload: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(v) => match too_deep(&v) {
            Some(why) => Err(why),
            None => Ok(v),
        },
        Err(_) => std::str::from_utf8(payload)
            .map(|s| Value::String(s.to_owned()))
            .map_err(|_| "the answer is neither JSON nor UTF-8 text".to_owned()),
    }
}

/// `Some(level)` with one non-empty topic level.
fn one_level(rest: Option<&str>) -> bool {
    rest.is_some_and(|r| !r.is_empty() && !r.contains('/') && !r.contains(['+', '#']))
}

/// A command payload's fields, none but `known`.
fn fields<'v>(payload: &'v Value, known: &[&str]) -> Result<&'v Map<String, Value>, String> {
    let Value::Object(map) = payload else {
        return Err(format!(
            "the payload must be an object with {}",
            known.join(" and ")
        ));
    };
    if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!(
            "unknown payload field {k:?} (expected {})",
            known.join(", ")
        ));
    }
    Ok(map)
}

fn too_deep(v: &Value) -> Option<String> {
    let depth = nesting_depth(v);
    (depth > MAX_PAYLOAD_DEPTH).then(|| {
        format!(
            "appliance answered with a payload nested {depth} levels deep; the limit is {MAX_PAYLOAD_DEPTH}"
        )
    })
}

fn tether_answer(payload: &[u8]) -> Answer {
    let msg: topic::ResultMessage = match serde_json::from_slice(payload) {
        Ok(m) => m,
        Err(e) => {
            return Answer {
                key: None,
                outcome: Err(format!("result is not valid: {e}")),
            };
        }
    };
    if msg.id.len() > MAX_COMMAND_ID {
        return Answer {
            key: None,
            outcome: Err("result id is longer than any command id".into()),
        };
    }
    let outcome = match (msg.ok, msg.payload.as_ref().and_then(too_deep)) {
        (_, Some(why)) => Outcome::Error(why),
        (true, None) => Outcome::Ok(msg.payload),
        (false, None) => Outcome::Error(
            msg.error
                .unwrap_or_else(|| "appliance reported failure".into()),
        ),
    };
    Answer {
        key: Some(msg.id),
        outcome: Ok(outcome),
    }
}

/// A Shelly RPC response frame: `{"id", "src", "dst", "result"}` or `{..., "error":
/// {"code", "message"}}`.
fn shelly_answer(payload: &[u8]) -> Answer {
    let frame: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => {
            return Answer {
                key: None,
                outcome: Err(format!("shelly answer is not JSON: {e}")),
            };
        }
    };
    let key = match &frame["id"] {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if s.len() <= MAX_COMMAND_ID => Some(s.clone()),
        _ => None,
    };
    if let Some(why) = too_deep(&frame) {
        return Answer {
            key,
            outcome: Ok(Outcome::Error(why)),
        };
    }
    let outcome = match (&frame["result"], &frame["error"]) {
        (_, Value::Object(e)) => {
            let code = e.get("code").map_or_else(|| "?".into(), Value::to_string);
            let message = e.get("message").and_then(Value::as_str).unwrap_or("");
            Ok(Outcome::Error(format!("shelly error {code}: {message}")))
        }
        (Value::Null, _) if frame.get("result").is_none() => {
            Err("shelly answer has neither \"result\" nor \"error\"".to_owned())
        }
        (r, _) => Ok(Outcome::Ok(Some(r.clone()))),
    };
    match (&key, outcome) {
        (None, _) => Answer {
            key: None,
            outcome: Err("shelly answer has no usable \"id\"".into()),
        },
        (Some(_), outcome) => Answer { key, outcome },
    }
}

/// Tasmota answers a command with JSON on `stat/<topic>/RESULT`, and an unknown or
/// malformed command with `{"Command": "Unknown"}` or `{"Command": "Error"}`.
fn tasmota_answer(payload: &[u8]) -> Result<Outcome, String> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| format!("tasmota answer is not JSON: {e}"))?;
    if let Some(why) = too_deep(&v) {
        return Ok(Outcome::Error(why));
    }
    match v.get("Command").and_then(Value::as_str) {
        Some(what @ ("Unknown" | "Error")) => Ok(Outcome::Error(format!(
            "tasmota answered {{\"Command\": \"{what}\"}}: the command or its value was not accepted"
        ))),
        _ => Ok(Outcome::Ok(Some(v))),
    }
}

#[cfg(test)]
mod tests;
