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
    /// MQTT appliances: how the appliance is spoken to (its firmware's own topics and
    /// messages), and the device's own topic where the profile has one.
    #[serde(default)]
    pub profile: Profile,
    #[serde(default)]
    pub topic: Option<String>,
    // The `custom` profile: templates (`{id}`, `{topic}`, `{entity}`; payloads also
    // `{value}` and `{command_id}`), how an answer is matched, the presence topic.
    #[serde(default)]
    pub command_topic: Option<String>,
    #[serde(default)]
    pub command_payload: Option<String>,
    #[serde(default)]
    pub answer_topic: Option<String>,
    #[serde(default)]
    pub answer_match: Option<String>,
    #[serde(default)]
    pub presence_topic: Option<String>,
    #[serde(default)]
    pub online_payload: Option<String>,
    #[serde(default)]
    pub offline_payload: Option<String>,
}

/// The keys every `[[appliance]]` may have; the BLE ones are `ble::BLE_KEYS`. All of
/// them apply live.
pub const COMMON_KEYS: [&str; 6] = ["id", "transport", "password", "offline", "profile", "topic"];
/// The `custom` profile's keys.
pub const CUSTOM_KEYS: [&str; 7] = [
    "command_topic",
    "command_payload",
    "answer_topic",
    "answer_match",
    "presence_topic",
    "online_payload",
    "offline_payload",
];

/// One piece of a `custom` profile's template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Id,
    Topic,
    /// One or more topic levels named by the command (`entity` in its payload).
    Entity,
    CommandId,
    /// The command's `value`: a string as it is, anything else as JSON text.
    Value,
}

/// A template: text and `{placeholder}`s.
pub type Template = Vec<Part>;

/// Parses a template; `payload` allows `{value}` and `{command_id}` too. `{{` and `}}`
/// stand for braces.
pub fn parse_template(t: &str, payload: bool) -> Result<Template, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = t;
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(r) = tail.strip_prefix("{{") {
            text.push('{');
            rest = r;
            continue;
        }
        if let Some(r) = tail.strip_prefix("}}") {
            text.push('}');
            rest = r;
            continue;
        }
        let Some(end) = tail.find('}').filter(|_| tail.starts_with('{')) else {
            return Err(format!(
                "{t:?}: unmatched brace (write {{{{ or }}}} for one)"
            ));
        };
        let name = &tail[1..end];
        let part = match name {
            "id" => Part::Id,
            "topic" => Part::Topic,
            "entity" => Part::Entity,
            "command_id" if payload => Part::CommandId,
            "value" if payload => Part::Value,
            other => {
                let known = if payload {
                    "{id}, {topic}, {entity}, {command_id}, {value}"
                } else {
                    "{id}, {topic}, {entity}"
                };
                return Err(format!(
                    "{t:?}: unknown placeholder {{{other}}} (known: {known})"
                ));
            }
        };
        if !text.is_empty() {
            parts.push(Part::Text(std::mem::take(&mut text)));
        }
        parts.push(part);
        rest = &tail[end + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

/// A topic template filled in: `entity` for `{entity}`, nothing for a payload placeholder.
pub fn fill_topic(parts: &[Part], id: &str, topic: &str, entity: Option<&str>) -> String {
    let mut out = String::new();
    for p in parts {
        match p {
            Part::Text(s) => out.push_str(s),
            Part::Id => out.push_str(id),
            Part::Topic => out.push_str(topic),
            Part::Entity => out.push_str(entity.unwrap_or_default()),
            Part::CommandId | Part::Value => {}
        }
    }
    out
}

/// Whether `name` is a topic the template stands for, and with what `{entity}`.
pub fn template_match(parts: &[Part], id: &str, topic: &str, name: &str) -> Option<Option<String>> {
    let Some(i) = parts.iter().position(|p| *p == Part::Entity) else {
        return (fill_topic(parts, id, topic, None) == name).then_some(None);
    };
    let head = fill_topic(&parts[..i], id, topic, None);
    let tail = fill_topic(&parts[i + 1..], id, topic, None);
    let entity = name
        .strip_prefix(head.as_str())?
        .strip_suffix(tail.as_str())?;
    valid_entity(entity).then(|| Some(entity.to_owned()))
}

/// `{entity}`: one or more levels of the id alphabet.
pub fn valid_entity(e: &str) -> bool {
    !e.is_empty() && e.len() <= 128 && e.split('/').all(|l| check_id(l).is_ok())
}

/// Checks a topic template: one topic, whatever fills it: no wildcard, no empty level,
/// `{entity}` standing for whole levels, at most once.
pub fn parse_topic_template(t: &str) -> Result<Template, String> {
    let parts = parse_template(t, false)?;
    if t.is_empty() || t.len() > 256 {
        return Err("must be 1 to 256 characters".into());
    }
    if parts.first() == Some(&Part::Entity) {
        return Err(format!(
            "{t:?}: a topic must start with levels of its own before {{entity}}"
        ));
    }
    let entities = parts.iter().filter(|p| **p == Part::Entity).count();
    if entities > 1 {
        return Err(format!("{t:?}: {{entity}} at most once"));
    }
    // With every placeholder as one plain level, it must be a valid topic name.
    let sample: String = parts
        .iter()
        .map(|p| match p {
            Part::Text(s) => s.as_str(),
            _ => "x",
        })
        .collect();
    if sample.contains(['+', '#', '\0']) || sample.starts_with('$') {
        return Err(format!(
            "{t:?} is not one topic: no wildcard (+ or #), not starting with $"
        ));
    }
    if sample.split('/').any(str::is_empty) {
        return Err(format!("{t:?} has an empty level"));
    }
    for (i, p) in parts.iter().enumerate() {
        if *p != Part::Entity {
            continue;
        }
        let before = i.checked_sub(1).map(|j| &parts[j]);
        let after = parts.get(i + 1);
        let starts = match before {
            None => true,
            Some(Part::Text(s)) => s.ends_with('/'),
            Some(_) => false,
        };
        let ends = match after {
            None => true,
            Some(Part::Text(s)) => s.starts_with('/'),
            Some(_) => false,
        };
        let whole = starts && ends;
        if !whole {
            return Err(format!(
                "{t:?}: {{entity}} must stand for whole levels (between '/')"
            ));
        }
    }
    Ok(parts)
}

/// How an MQTT appliance is spoken to (`profile`; docs/appliances.md): which topics carry
/// its commands, answers, presence and events, and what those messages look like. The
/// topics a profile names for an appliance are also its access-control list.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum Profile {
    /// Tether's own contract: `{prefix}/{id}/cmd`, `/result`, `/status`, `/events`.
    #[default]
    #[serde(rename = "tether")]
    Tether,
    /// Shelly Gen2 and later: JSON-RPC on `{topic}/rpc`, answers on `{prefix}/{id}/rpc`.
    #[serde(rename = "shelly-rpc")]
    ShellyRpc,
    /// Tasmota: `cmnd/{topic}/<Command>`, answered on `stat/{topic}/RESULT`.
    #[serde(rename = "tasmota")]
    Tasmota,
    /// Topics and payloads from templates in the appliance's entry (ESPHome's MQTT
    /// component, other firmware).
    #[serde(rename = "custom")]
    Custom,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Tether => "tether",
            Profile::ShellyRpc => "shelly-rpc",
            Profile::Tasmota => "tasmota",
            Profile::Custom => "custom",
        }
    }
}

impl ApplianceConfig {
    /// The device's own topic (a Shelly's topic prefix, a Tasmota's Topic): `topic`, or
    /// the appliance id.
    pub fn device_topic(&self) -> &str {
        self.topic.as_deref().unwrap_or(&self.id)
    }

    /// The topic subtrees this appliance owns on the endpoint (nothing for BLE): no two
    /// appliances' may overlap, so that one's access-control list never reaches into
    /// another's topics.
    pub fn topic_roots(&self, prefix: &str) -> Vec<String> {
        if self.transport != TransportKind::Mqtt {
            return Vec::new();
        }
        // Every profile uses `{prefix}/{id}`: the Shelly profile's answers come back there.
        let mut roots = vec![format!("{prefix}/{}", self.id)];
        let t = self.device_topic();
        match self.profile {
            Profile::Tether => {}
            Profile::ShellyRpc => roots.push(t.to_owned()),
            Profile::Tasmota => roots.extend(["cmnd", "stat", "tele"].map(|p| format!("{p}/{t}"))),
            Profile::Custom => {
                for template in [
                    &self.command_topic,
                    &self.answer_topic,
                    &self.presence_topic,
                ]
                .into_iter()
                .flatten()
                {
                    if let Ok(parts) = parse_topic_template(template) {
                        roots.push(template_root(&parts, &self.id, t));
                    }
                }
            }
        }
        roots
    }
}

/// The levels of a topic template before its `{entity}` (all of it without one), with
/// `{id}` and `{topic}` filled in: the subtree its topics lie in.
pub fn template_root(parts: &[Part], id: &str, topic: &str) -> String {
    let head = parts
        .iter()
        .position(|p| *p == Part::Entity)
        .map_or(parts, |i| &parts[..i]);
    fill_topic(head, id, topic, None)
        .trim_end_matches('/')
        .to_owned()
}

/// Another appliance in `list` whose topics overlap `entry`'s: its id and the topic.
pub fn topic_clash<'a>(
    prefix: &str,
    list: &'a [ApplianceConfig],
    entry: &ApplianceConfig,
) -> Option<(&'a str, String)> {
    let mine = entry.topic_roots(prefix);
    if mine.is_empty() {
        return None;
    }
    list.iter().filter(|a| a.id != entry.id).find_map(|a| {
        let theirs = a.topic_roots(prefix);
        mine.iter()
            .find_map(|m| theirs.iter().find(|t| nested(m, t)).cloned())
            .map(|t| (a.id.as_str(), t))
    })
}

/// Whether one topic is the other or lies under it, level by level.
fn nested(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    long.strip_prefix(short)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A device topic: levels of the id alphabet, so no wildcard, no empty level, nothing
/// that starts with `$`; Tasmota's is one level (its FullTopic puts it between the prefix
/// and the command).
fn check_topic(profile: Profile, topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    let mut levels = topic.split('/');
    if profile == Profile::Tasmota && topic.contains('/') {
        return Err(format!(
            "{topic:?}: a Tasmota Topic is one level (no '/'), as in its default FullTopic %prefix%/%topic%/"
        ));
    }
    if levels.any(|l| super::check_id(l).is_err()) {
        return Err(format!(
            "{topic:?} is not one topic: levels of letters, digits, '-', '_' and '.' separated by '/', no wildcard (+ or #) and no empty level"
        ));
    }
    Ok(())
}

impl fmt::Debug for ApplianceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplianceConfig")
            .field("id", &self.id)
            .field("transport", &self.transport)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("offline", &self.offline)
            .field("profile", &self.profile)
            .field("topic", &self.topic)
            .field("command_topic", &self.command_topic)
            .field("answer_topic", &self.answer_topic)
            .finish_non_exhaustive()
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
pub(super) fn check_appliances(
    v: &mut Checker,
    list: &[(usize, ApplianceConfig)],
    mqtt: &super::MqttConfig,
) {
    let prefix = mqtt.topic_prefix.as_str();
    // With an external broker, the broker authenticates the appliances.
    let external = mqtt.mode == super::MqttMode::External;
    let mut seen = HashSet::new();
    let mut checked: Vec<ApplianceConfig> = Vec::new();
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
            (TransportKind::Mqtt, None) if !external => v.err(
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
        check_profile(v, &idx, a);
        if let Some((other, topic)) = topic_clash(prefix, &checked, a) {
            let key = if a.topic.is_some() { "topic" } else { "id" };
            v.err(
                &["appliance", &idx, key],
                format!("its topics overlap appliance {other:?}'s ({topic}); each appliance needs topics of its own"),
            );
        }
        checked.push(a.clone());
    }
}

fn check_profile(v: &mut Checker, idx: &str, a: &ApplianceConfig) {
    if a.transport != TransportKind::Mqtt {
        if a.profile != Profile::Tether {
            v.err(&["appliance", idx, "profile"], "only for MQTT appliances");
        }
        if a.topic.is_some() {
            v.err(&["appliance", idx, "topic"], "only for MQTT appliances");
        }
        return;
    }
    let custom = [
        &a.command_topic,
        &a.command_payload,
        &a.answer_topic,
        &a.answer_match,
        &a.presence_topic,
        &a.online_payload,
        &a.offline_payload,
    ];
    if a.profile == Profile::Custom {
        check_custom(v, idx, a);
    } else {
        for (key, value) in CUSTOM_KEYS.iter().zip(custom) {
            if value.is_some() {
                v.err(&["appliance", idx, key], "only with profile = \"custom\"");
            }
        }
    }
    match (&a.topic, a.profile) {
        (Some(_), Profile::Tether) => v.err(
            &["appliance", idx, "topic"],
            "the tether profile's topics follow from the id; `topic` is for the shelly-rpc and tasmota profiles",
        ),
        (Some(t), profile) => {
            if let Err(e) = check_topic(profile, t) {
                v.err(&["appliance", idx, "topic"], e);
            }
        }
        // The id is one level of the same alphabet.
        (None, _) => {}
    }
}

fn check_custom(v: &mut Checker, idx: &str, a: &ApplianceConfig) {
    let mut entity = [false; 2];
    for (n, (key, value)) in [
        ("command_topic", &a.command_topic),
        ("answer_topic", &a.answer_topic),
    ]
    .into_iter()
    .enumerate()
    {
        match value {
            None => v.err(
                &["appliance", idx, key],
                "required with profile = \"custom\"",
            ),
            Some(t) => match parse_topic_template(t) {
                Ok(parts) => entity[n] = parts.contains(&Part::Entity),
                Err(e) => v.err(&["appliance", idx, key], e),
            },
        }
    }
    if a.command_topic.is_some() && a.answer_topic.is_some() && entity[0] != entity[1] {
        v.err(
            &["appliance", idx, "answer_topic"],
            "{entity} in both command_topic and answer_topic, or in neither: the answer is looked for where the command went",
        );
    }
    // At a broker the gateway gets its own commands back where it listens for answers (MQTT
    // 3.1.1 has no "no local"): a command topic must never be an answer topic.
    if let (Some(Ok(command)), Some(Ok(answer))) = (
        a.command_topic.as_deref().map(parse_topic_template),
        a.answer_topic.as_deref().map(parse_topic_template),
    ) {
        let t = a.device_topic();
        let samples: &[Option<&str>] = if entity[0] {
            &[Some("e"), Some("e/f/g")]
        } else {
            &[None]
        };
        for sample in samples {
            let name = fill_topic(&command, &a.id, t, *sample);
            if template_match(&answer, &a.id, t, &name).is_some() {
                v.err(
                    &["appliance", idx, "answer_topic"],
                    format!("the command topic {name:?} is also an answer topic: the gateway would take its own command for the answer"),
                );
                break;
            }
        }
    }
    if let Some(t) = &a.presence_topic {
        match parse_topic_template(t) {
            Ok(parts) if parts.contains(&Part::Entity) => v.err(
                &["appliance", idx, "presence_topic"],
                "{entity} names a command's part of the device; presence is the whole device's",
            ),
            Ok(_) => {}
            Err(e) => v.err(&["appliance", idx, "presence_topic"], e),
        }
    }
    if let Some(t) = &a.command_payload
        && let Err(e) = parse_template(t, true)
    {
        v.err(&["appliance", idx, "command_payload"], e);
    }
    if let Some(m) = &a.answer_match
        && m != "next"
        && m.strip_prefix("field:").is_none_or(|f| f.is_empty())
    {
        v.err(
            &["appliance", idx, "answer_match"],
            format!("{m:?}: \"next\" (the next message on the answer topic) or \"field:NAME\" (a JSON answer whose NAME is the command id)"),
        );
    }
    for (key, value) in [
        ("online_payload", &a.online_payload),
        ("offline_payload", &a.offline_payload),
    ] {
        if value.is_some() && a.presence_topic.is_none() {
            v.err(&["appliance", idx, key], "needs presence_topic");
        }
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
