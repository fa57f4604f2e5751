//! The topic contract, which is also the access-control list.
//!
//! An appliance `A` may subscribe only to `{prefix}/A/cmd` and publish only to
//! `{prefix}/A/result`, `{prefix}/A/status` and `{prefix}/A/events`. Matching is exact
//! string equality: a wildcard, a NUL, an extra level or another appliance's id simply
//! does not match, so there is no parsing to get wrong.

use serde::Deserialize;
use serde_json::Value;

/// What an allowed publish is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    Result,
    Status,
    Events,
}

pub fn cmd_topic(prefix: &str, appliance: &str) -> String {
    format!("{prefix}/{appliance}/cmd")
}

/// Whether `appliance` may subscribe to `filter`.
pub fn may_subscribe(prefix: &str, appliance: &str, filter: &str) -> bool {
    filter == cmd_topic(prefix, appliance)
}

/// Classifies a publish by `appliance` to `topic`; `None` means denied.
pub fn classify_publish(prefix: &str, appliance: &str, topic: &str) -> Option<Inbound> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let rest = rest.strip_prefix(appliance)?.strip_prefix('/')?;
    match rest {
        "result" => Some(Inbound::Result),
        "status" => Some(Inbound::Status),
        "events" => Some(Inbound::Events),
        _ => None,
    }
}

/// `{prefix}/{appliance}/result` payload.
#[derive(Debug, Deserialize)]
pub struct ResultMessage {
    pub id: String,
    pub ok: bool,
    #[serde(default)]
    pub payload: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_own_topics_are_allowed() {
        assert!(may_subscribe("tether", "a", "tether/a/cmd"));
        for f in [
            "tether/b/cmd",
            "tether/+/cmd",
            "tether/#",
            "#",
            "$SYS/#",
            "tether/a/cmd/#",
            "tether/a/+",
        ] {
            assert!(!may_subscribe("tether", "a", f), "{f}");
        }
        assert_eq!(
            classify_publish("tether", "a", "tether/a/result"),
            Some(Inbound::Result)
        );
        assert_eq!(
            classify_publish("tether", "a", "tether/a/status"),
            Some(Inbound::Status)
        );
        assert_eq!(
            classify_publish("tether", "a", "tether/a/events"),
            Some(Inbound::Events)
        );
        for t in [
            "tether/b/result",
            "tether/a/cmd",
            "tether/a/result/x",
            "tether/ab/result",
            "tether/a\0/result",
            "tether/+/result",
            "tetherx/a/result",
            "other/a/result",
        ] {
            assert_eq!(classify_publish("tether", "a", t), None, "{t}");
        }
        // An appliance id that is a prefix of another's must not reach the other's topics.
        assert_eq!(
            classify_publish("tether", "lamp", "tether/lamp-2/result"),
            None
        );
    }
}
