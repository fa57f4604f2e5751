use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
[gateway]
id = "gw-1"

[cloud]
url = "https://cloud.example.com"

[[appliance]]
id = "lamp-1"
transport = "mqtt"
password = "pw"
"#;

fn problems(text: &str) -> Vec<Problem> {
    Config::parse(text).expect_err("config should be refused")
}

fn has(problems: &[Problem], key: &str, line: Option<usize>) -> bool {
    problems.iter().any(|p| p.key == key && p.line == line)
}

#[test]
fn example_file_is_valid() {
    let text = include_str!("../../config.example.toml");
    let c = Config::parse(text).unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(c.appliances.len(), 2);
    assert_eq!(c.groups["lights"], vec!["lamp-1", "lamp-2"]);
}

#[test]
fn defaults_apply() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.gateway.state_dir, PathBuf::from("/var/lib/tether"));
    assert_eq!(c.cloud.poll_wait, Duration::from_secs(30));
    assert_eq!(c.cloud.backoff_max, Duration::from_secs(60));
    assert_eq!(c.cloud.result_linger, Duration::ZERO);
    assert_eq!(c.mqtt.listen, "0.0.0.0:1883".parse().unwrap());
    assert_eq!(c.mqtt.topic_prefix, "tether");
    assert_eq!(c.router.default_timeout, Duration::from_secs(5));
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let text = MINIMAL.replace("[cloud]\n", "[cloud]\npoll_wiat = \"5s\"\n");
    let p = problems(&text);
    assert!(has(&p, "cloud.poll_wiat", Some(6)), "{p:#?}");
    assert!(p[0].message.contains("unknown field"), "{p:#?}");
}

#[test]
fn bad_duration_is_named_with_its_line() {
    let text = MINIMAL.replace("[cloud]\n", "[cloud]\npoll_wait = \"soon\"\n");
    let p = problems(&text);
    assert!(has(&p, "cloud.poll_wait", Some(6)), "{p:#?}");
}

#[test]
fn every_problem_is_listed_not_just_the_first() {
    let text = r#"
[gateway]
id = "bad id!"

[cloud]
url = "http://insecure.example.com"

[mqtt]
listen = "not an address"

[[appliance]]
id = "a"
transport = "mqtt"

[[appliance]]
id = "a"
transport = "carrier-pigeon"

[groups]
g = ["a", "ghost"]
"#;
    let p = problems(text);
    assert!(has(&p, "gateway.id", Some(3)), "{p:#?}");
    assert!(has(&p, "cloud.url", Some(6)), "{p:#?}");
    assert!(has(&p, "mqtt.listen", Some(9)), "{p:#?}");
    assert!(
        has(&p, "appliance[0].password", None)
            || p.iter().any(|x| x.key == "appliance[0].password"),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|x| x.key == "appliance[1].transport" && x.line == Some(17)),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|x| x.key == "groups.g" && x.message.contains("ghost")),
        "{p:#?}"
    );
}

#[test]
fn plain_http_cloud_is_refused() {
    let p = problems(&MINIMAL.replace("https://", "http://"));
    assert!(
        p.iter()
            .any(|x| x.key == "cloud.url" && x.message.contains("https")),
        "{p:#?}"
    );
}

#[test]
fn missing_sections_and_syntax_errors_are_reported() {
    let p = problems("[gateway]\nid = \"x\"\n");
    assert!(p.iter().any(|x| x.key == "cloud"), "{p:#?}");
    let p = problems("[gateway\nid = 1");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].line, Some(1));
}

#[test]
fn duplicate_ids_and_missing_passwords_are_refused() {
    let text = format!("{MINIMAL}\n[[appliance]]\nid = \"lamp-1\"\ntransport = \"mqtt\"\n");
    let p = problems(&text);
    assert!(
        p.iter()
            .any(|x| x.key == "appliance[1].id" && x.message.contains("duplicate")),
        "{p:#?}"
    );
    assert!(p.iter().any(|x| x.key == "appliance[1].password"), "{p:#?}");
}

#[test]
fn debug_output_hides_passwords() {
    let c = Config::parse(MINIMAL).unwrap();
    let dbg = format!("{:?}", c.appliances[0]);
    assert!(!dbg.contains("\"pw\""), "{dbg}");
    assert!(dbg.contains("redacted"));
}

// ---- BLE: the [ble] section and BLE appliances ----

const BLE_LAMP: &str = r#"
[[appliance]]
id = "ble-lamp"
transport = "ble"
address = "AA:BB:CC:DD:EE:01"
service = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
command_char = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"
result_char = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"
"#;

/// MINIMAL plus `extra`, and the line number (1-based) where `extra` starts.
fn with(extra: &str) -> (String, usize) {
    let text = format!("{MINIMAL}{extra}");
    let first = MINIMAL.lines().count() + 1;
    (text, first)
}

#[test]
fn ble_defaults_apply_and_ble_appliances_parse() {
    let (text, _) = with(BLE_LAMP);
    let c = Config::parse(&text).unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(c.ble.adapter, None);
    assert_eq!(c.ble.max_connections, 4);
    assert_eq!(c.ble.idle_disconnect, Duration::from_secs(30));
    assert_eq!(c.ble.scan_timeout, Duration::from_secs(10));
    assert_eq!(c.ble.connect_timeout, Duration::from_secs(5));
    assert!(c.has_ble());
    let lamp = c.appliance("ble-lamp").unwrap();
    assert_eq!(lamp.transport, TransportKind::Ble);
    assert_eq!(
        lamp.encoding, None,
        "json is the default, applied by the transport"
    );
    assert!(!Config::parse(MINIMAL).unwrap().has_ble());
}

#[test]
fn a_ble_section_with_every_key() {
    let (text, _) = with(&format!(
        "{BLE_LAMP}encoding = \"base64\"\n\n[ble]\nadapter = \"hci1\"\nmax_connections = 7\nidle_disconnect = \"2m\"\nscan_timeout = \"20s\"\nconnect_timeout = \"3s\"\n"
    ));
    let c = Config::parse(&text).unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(c.ble.adapter.as_deref(), Some("hci1"));
    assert_eq!(c.ble.max_connections, 7);
    assert_eq!(c.ble.idle_disconnect, Duration::from_secs(120));
    assert_eq!(c.ble.scan_timeout, Duration::from_secs(20));
    assert_eq!(c.ble.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.appliances[1].encoding, Some(Encoding::Base64));
}

#[test]
fn a_ble_appliance_may_be_found_by_name_and_use_short_uuids() {
    let text = format!(
        "{MINIMAL}\n[[appliance]]\nid = \"hm10\"\ntransport = \"ble\"\nname = \"HMSoft\"\nservice = \"ffe0\"\ncommand_char = \"ffe1\"\nresult_char = \"ffe1\"\nencoding = \"utf8\"\n"
    );
    let c = Config::parse(&text).unwrap_or_else(|p| panic!("{p:#?}"));
    let a = c.appliance("hm10").unwrap();
    assert_eq!(a.name.as_deref(), Some("HMSoft"));
    assert_eq!(a.encoding, Some(Encoding::Utf8));
}

#[test]
fn ble_section_problems_are_named_with_their_line() {
    let (text, first) =
        with("\n[ble]\nmax_connections = 0\nidle_disconnect = \"0s\"\nscan_timeout = \"soon\"\n");
    let p = problems(&text);
    assert!(has(&p, "ble.scan_timeout", Some(first + 4)), "{p:#?}");
    // A section that does not deserialize hides its other problems (as for every section);
    // fix the duration and the rest are all reported.
    let (text, first) =
        with("\n[ble]\nmax_connections = 0\nidle_disconnect = \"0s\"\nadapter = \"hci 0\"\n");
    let p = problems(&text);
    assert!(has(&p, "ble.max_connections", Some(first + 2)), "{p:#?}");
    assert!(has(&p, "ble.idle_disconnect", Some(first + 3)), "{p:#?}");
    assert!(has(&p, "ble.adapter", Some(first + 4)), "{p:#?}");
    let (text, first) = with("\n[ble]\nmax_links = 3\n");
    let p = problems(&text);
    assert!(has(&p, "ble.max_links", Some(first + 2)), "{p:#?}");
    assert!(p[0].message.contains("unknown field"), "{p:#?}");
}

#[test]
fn ble_appliance_problems_are_named_with_their_line() {
    let text = format!(
        "{MINIMAL}
[[appliance]]
id = \"bad-ble\"
transport = \"ble\"
address = \"AA:BB:CC:DD:EE\"
service = \"not-a-uuid\"
command_char = \"6e400002-b5a3-f393-e0a9-e50e24dcca9e\"
password = \"pw\"
"
    );
    let first = MINIMAL.lines().count() + 2;
    let p = problems(&text);
    assert!(has(&p, "appliance[1].address", Some(first + 3)), "{p:#?}");
    assert!(has(&p, "appliance[1].service", Some(first + 4)), "{p:#?}");
    assert!(has(&p, "appliance[1].password", Some(first + 6)), "{p:#?}");
    // Missing keys have no line of their own: the appliance's table is the nearest.
    assert!(
        p.iter()
            .any(|x| x.key == "appliance[1].result_char" && x.message.contains("required")),
        "{p:#?}"
    );
    assert!(
        !p.iter().any(|x| x.key == "appliance[1].command_char"),
        "{p:#?}"
    );
}

#[test]
fn a_ble_appliance_needs_exactly_one_of_address_and_name() {
    let none = BLE_LAMP.replace("address = \"AA:BB:CC:DD:EE:01\"\n", "");
    let p = problems(&with(&none).0);
    assert!(
        p.iter()
            .any(|x| x.key == "appliance[1].address" && x.message.contains("name")),
        "{p:#?}"
    );
    let both = BLE_LAMP.replace(
        "transport = \"ble\"\n",
        "transport = \"ble\"\nname = \"lamp\"\n",
    );
    let p = problems(&with(&both).0);
    assert!(
        p.iter()
            .any(|x| x.key == "appliance[1].name" && x.message.contains("not both")),
        "{p:#?}"
    );
}

#[test]
fn a_bad_encoding_is_named_with_its_line() {
    let (text, first) = with(&format!("{BLE_LAMP}encoding = \"morse\"\n"));
    let p = problems(&text);
    assert!(has(&p, "appliance[1].encoding", Some(first + 8)), "{p:#?}");
}

#[test]
fn ble_keys_on_an_mqtt_appliance_are_refused() {
    let text = MINIMAL.replace(
        "password = \"pw\"\n",
        "password = \"pw\"\naddress = \"AA:BB:CC:DD:EE:01\"\nencoding = \"hex\"\n",
    );
    let p = problems(&text);
    assert!(has(&p, "appliance[0].address", Some(12)), "{p:#?}");
    assert!(has(&p, "appliance[0].encoding", Some(13)), "{p:#?}");
    assert!(
        p.iter().all(|x| x.message.contains("only for BLE")),
        "{p:#?}"
    );
}

#[test]
fn the_example_documents_every_ble_key() {
    let text = include_str!("../../config.example.toml");
    for key in [
        "[ble]",
        "adapter",
        "max_connections",
        "idle_disconnect",
        "scan_timeout",
        "connect_timeout",
        "transport = \"ble\"",
        "address",
        "name",
        "service",
        "command_char",
        "result_char",
        "encoding",
    ] {
        assert!(text.contains(key), "config.example.toml lacks {key}");
    }
    let c = Config::parse(text).unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(
        c.ble,
        BleConfig::default(),
        "the example shows the defaults"
    );
}

#[test]
fn two_ble_appliances_on_one_device_are_refused() {
    let twin = BLE_LAMP
        .replace("ble-lamp", "ble-twin")
        .replace("AA:BB:CC:DD:EE:01", "aa:bb:cc:dd:ee:01");
    let (text, first) = with(&format!("{BLE_LAMP}{twin}"));
    let p = problems(&text);
    assert!(has(&p, "appliance[2].address", Some(first + 12)), "{p:#?}");
    assert!(p[0].message.contains("ble-lamp"), "{p:#?}");
}

/// Durations beyond their bound are refused by key and line: some are added to the clock,
/// where an absurd one would overflow it (found by fuzzing the loader).
#[test]
fn durations_beyond_their_bound_are_refused() {
    let text = r#"
[gateway]
id = "gw-1"
stop_grace = "2h"

[cloud]
url = "https://cloud.example.com"
backoff_max = "18446744073709551615s"

[mqtt]
startup_grace = "18446744073709551615s"

[router]
max_timeout = "400d"
"#;
    let p = problems(text);
    assert!(has(&p, "gateway.stop_grace", Some(4)), "{p:#?}");
    assert!(has(&p, "cloud.backoff_max", Some(8)), "{p:#?}");
    assert!(has(&p, "mqtt.startup_grace", Some(11)), "{p:#?}");
    assert!(has(&p, "router.max_timeout", Some(14)), "{p:#?}");
    assert!(
        p.iter().all(|p| p.message.contains("must be at most")),
        "{p:#?}"
    );
}

#[test]
fn zero_sized_bounds_are_refused_by_key_and_line() {
    let (text, first) = with("\n[mqtt]\nmax_events = 0\n[router]\nmax_command_bytes = 0\n");
    let p = problems(&text);
    assert!(has(&p, "mqtt.max_events", Some(first + 2)), "{p:#?}");
    assert!(
        has(&p, "router.max_command_bytes", Some(first + 4)),
        "{p:#?}"
    );
}

/// One pass finds every problem: a value of the wrong type does not hide the rules'
/// findings in its own section or the others, and a missing required key is one problem
/// among the rest, not the only one.
#[test]
fn a_type_error_does_not_hide_the_other_problems() {
    let text = r#"
[gateway]
state_dir = "relative"

[cloud]
url = "http://insecure.example.com"
poll_wait = "soon"
max_batch = 0

[router]
max_pending = "many"
default_timeout = "0s"
"#;
    let p = problems(text);
    assert!(has(&p, "gateway.id", Some(2)), "{p:#?}");
    assert!(has(&p, "gateway.state_dir", Some(3)), "{p:#?}");
    assert!(has(&p, "cloud.url", Some(6)), "{p:#?}");
    assert!(has(&p, "cloud.poll_wait", Some(7)), "{p:#?}");
    assert!(has(&p, "cloud.max_batch", Some(8)), "{p:#?}");
    assert!(has(&p, "router.max_pending", Some(11)), "{p:#?}");
    assert!(has(&p, "router.default_timeout", Some(12)), "{p:#?}");
    assert_eq!(p.len(), 7, "one problem per key: {p:#?}");
}

/// A group naming an appliance whose own entry is refused reports the entry, not the group.
#[test]
fn a_refused_appliance_is_not_also_unknown_to_its_group() {
    let text = format!(
        "{MINIMAL}\n[[appliance]]\nid = \"fan\"\ntransport = \"pigeon\"\n\n[groups]\ng = [\"lamp-1\", \"fan\"]\n"
    );
    let p = problems(&text);
    assert!(
        p.iter().any(|x| x.key == "appliance[1].transport"),
        "{p:#?}"
    );
    assert!(!p.iter().any(|x| x.key.starts_with("groups")), "{p:#?}");
}

/// The list the "unknown section" message gives is the list the parser takes.
#[test]
fn the_sections_named_in_the_error_are_the_ones_parsed() {
    for name in SECTIONS.split(", ") {
        let text = if name == "appliance" {
            format!("{MINIMAL}\n[[appliance]]\nid = \"x\"\n")
        } else {
            format!("{MINIMAL}\n[{name}]\n")
        };
        let p = Config::parse(&text).err().unwrap_or_default();
        assert!(
            !p.iter().any(|p| p.message.contains("unknown section")),
            "{name}: {p:#?}"
        );
    }
    let p = problems(&format!("{MINIMAL}\n[extra]\n"));
    assert!(p[0].message.contains(SECTIONS), "{p:#?}");
}

#[test]
fn offline_policy_parses_and_a_bad_one_is_named_with_its_line() {
    let c = Config::parse(&MINIMAL.replace(
        "password = \"pw\"\n",
        "password = \"pw\"\noffline = \"queue\"\n",
    ))
    .unwrap();
    assert_eq!(c.appliances[0].offline, Offline::Queue);
    assert_eq!(c.router.max_offline_wait, Duration::from_secs(3600));
    let p = problems(&MINIMAL.replace(
        "password = \"pw\"\n",
        "password = \"pw\"\noffline = \"later\"\n",
    ));
    assert!(has(&p, "appliance[0].offline", Some(12)), "{p:#?}");
    let p = problems(&format!("{MINIMAL}[router]\nmax_offline_wait = \"8d\"\n"));
    assert!(
        p.iter()
            .any(|x| x.key == "router.max_offline_wait" && x.message.contains("at most")),
        "{p:#?}"
    );
}

#[test]
fn cloud_encoding_parses_and_a_bad_one_is_named_with_its_line() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.cloud.encoding, super::WireEncoding::Json);
    let c = Config::parse(&MINIMAL.replace(
        "url = \"https://cloud.example.com\"\n",
        "url = \"https://cloud.example.com\"\nencoding = \"protobuf\"\n",
    ))
    .unwrap();
    assert_eq!(c.cloud.encoding, super::WireEncoding::Protobuf);
    let p = problems(&MINIMAL.replace(
        "url = \"https://cloud.example.com\"\n",
        "url = \"https://cloud.example.com\"\nencoding = \"xml\"\n",
    ));
    assert!(has(&p, "cloud.encoding", Some(7)), "{p:#?}");
}

#[test]
fn profiles_parse_and_their_problems_are_named_with_their_line() {
    let ok = format!(
        "{MINIMAL}\n[[appliance]]\nid = \"plug\"\ntransport = \"mqtt\"\npassword = \"pw\"\nprofile = \"shelly-rpc\"\ntopic = \"shellyplus1-a8032ab1\"\n\n[[appliance]]\nid = \"hall\"\ntransport = \"mqtt\"\npassword = \"pw\"\nprofile = \"tasmota\"\n"
    );
    let c = Config::parse(&ok).unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(c.appliances[0].profile, Profile::Tether);
    assert_eq!(c.appliances[1].profile, Profile::ShellyRpc);
    assert_eq!(c.appliances[1].device_topic(), "shellyplus1-a8032ab1");
    assert_eq!(c.appliances[2].device_topic(), "hall");

    let entry = |extra: &str| {
        format!(
            "{MINIMAL}\n[[appliance]]\nid = \"x\"\ntransport = \"mqtt\"\npassword = \"pw\"\n{extra}"
        )
    };
    // Line 17 is the entry's first key after `password` (MINIMAL is 15 lines, then a blank).
    for (extra, key, says) in [
        (
            "profile = \"zigbee\"\n",
            "appliance[1].profile",
            "unknown variant",
        ),
        (
            "profile = \"tasmota\"\ntopic = \"cmnd/+\"\n",
            "appliance[1].topic",
            "one level",
        ),
        (
            "profile = \"shelly-rpc\"\ntopic = \"a/+/b\"\n",
            "appliance[1].topic",
            "no wildcard",
        ),
        (
            "profile = \"shelly-rpc\"\ntopic = \"a//b\"\n",
            "appliance[1].topic",
            "no empty level",
        ),
        (
            "topic = \"x\"\n",
            "appliance[1].topic",
            "follow from the id",
        ),
        // Under the endpoint's own prefix: would reach into lamp-1's `tether/lamp-1/...`.
        (
            "profile = \"shelly-rpc\"\ntopic = \"tether/lamp-1\"\n",
            "appliance[1].topic",
            "overlap appliance \"lamp-1\"",
        ),
    ] {
        let text = entry(extra);
        let p = problems(&text);
        let line = text
            .lines()
            .position(|l| l.starts_with(key.rsplit('.').next().unwrap()))
            .map(|i| i + 1);
        assert!(
            p.iter().any(|p| p.key == key
                && p.message.contains(says)
                && p.line.is_some()
                && p.line >= line.map(|l| l.min(17))),
            "{extra:?}: {p:#?}"
        );
    }
    // Two appliances claiming one device topic.
    let text = format!(
        "{MINIMAL}\n[[appliance]]\nid = \"a\"\ntransport = \"mqtt\"\npassword = \"pw\"\nprofile = \"tasmota\"\ntopic = \"hall\"\n\n[[appliance]]\nid = \"b\"\ntransport = \"mqtt\"\npassword = \"pw\"\nprofile = \"tasmota\"\ntopic = \"hall\"\n"
    );
    let p = problems(&text);
    let line = text
        .lines()
        .enumerate()
        .filter(|(_, l)| *l == "topic = \"hall\"")
        .last()
        .map(|(i, _)| i + 1);
    assert!(
        p.iter().any(|p| p.key == "appliance[2].topic"
            && p.message.contains("appliance \"a\"")
            && p.line == line),
        "{p:#?}"
    );
    // A profile is for MQTT appliances.
    let text = format!(
        "{MINIMAL}\n[[appliance]]\nid = \"t\"\ntransport = \"ble\"\naddress = \"AA:BB:CC:DD:EE:FF\"\nprofile = \"tasmota\"\n"
    );
    let line = text
        .lines()
        .position(|l| l.starts_with("profile"))
        .map(|i| i + 1);
    assert!(
        has(&problems(&text), "appliance[1].profile", line),
        "{:#?}",
        problems(&text)
    );
}

#[test]
fn external_broker_keys_are_checked_by_key_and_line() {
    let with_mqtt =
        |body: &str| MINIMAL.replace("[[appliance]]", &format!("[mqtt]\n{body}\n[[appliance]]"));
    let ok = with_mqtt(
        "mode = \"external\"\nbroker = \"mqtts://broker.lan\"\nbroker_username = \"gw\"\nbroker_password_file = \"/etc/tether/bp\"\n",
    );
    let c =
        Config::parse(&ok.replace("password = \"pw\"\n", "")).unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(c.mqtt.mode, MqttMode::External);
    assert_eq!(
        Broker::parse(c.mqtt.broker.as_deref().unwrap()).unwrap(),
        Broker {
            tls: true,
            host: "broker.lan".into(),
            port: 8883
        }
    );
    assert_eq!(Broker::parse("mqtt://[::1]:1884").unwrap().port, 1884);
    assert!(Broker::parse("mqtt://[::1]:1884").unwrap().is_loopback());
    for (body, key, says) in [
        ("mode = \"external\"\n", "mqtt.mode", "needs mqtt.broker"),
        (
            "mode = \"external\"\nbroker = \"http://b\"\n",
            "mqtt.broker",
            "mqtt://host",
        ),
        (
            "mode = \"external\"\nbroker = \"mqtt://b:0\"\n",
            "mqtt.broker",
            "mqtt://host",
        ),
        (
            "mode = \"external\"\nbroker = \"mqtt://b\"\nbroker_ca_file = \"/x\"\n",
            "mqtt.broker_ca_file",
            "mqtts://",
        ),
        (
            "mode = \"external\"\nbroker = \"mqtt://b\"\nbroker_password_file = \"/x\"\n",
            "mqtt.broker_password_file",
            "needs broker_username",
        ),
        (
            "broker = \"mqtt://b\"\n",
            "mqtt.broker",
            "only with mqtt.mode",
        ),
        ("mode = \"cloud\"\n", "mqtt.mode", "unknown variant"),
    ] {
        let p = problems(&with_mqtt(body));
        assert!(
            p.iter()
                .any(|p| p.key == key && p.message.contains(says) && p.line.is_some()),
            "{body:?}: {p:#?}"
        );
    }
    // An appliance's password is the broker's business in external mode, the endpoint's
    // otherwise.
    let p = problems(&MINIMAL.replace("password = \"pw\"\n", ""));
    assert!(p.iter().any(|p| p.key == "appliance[0].password"), "{p:#?}");
}

#[test]
fn custom_profile_templates_are_checked_by_key_and_line() {
    let entry = |extra: &str| {
        format!(
            "{MINIMAL}\n[[appliance]]\nid = \"x\"\ntransport = \"mqtt\"\npassword = \"pw\"\nprofile = \"custom\"\n{extra}"
        )
    };
    let ok = entry(
        "command_topic = \"a/{topic}/{entity}/set\"\nanswer_topic = \"a/{topic}/{entity}/state\"\n",
    );
    Config::parse(&ok).unwrap_or_else(|p| panic!("{p:#?}"));
    for (extra, key, says) in [
        (
            "answer_topic = \"a/x\"\n",
            "appliance[1].command_topic",
            "required",
        ),
        (
            "command_topic = \"a/{nope}\"\nanswer_topic = \"a/x\"\n",
            "appliance[1].command_topic",
            "unknown placeholder {nope}",
        ),
        (
            "command_topic = \"a/+/x\"\nanswer_topic = \"a/x\"\n",
            "appliance[1].command_topic",
            "no wildcard",
        ),
        (
            "command_topic = \"a/#\"\nanswer_topic = \"a/x\"\n",
            "appliance[1].command_topic",
            "no wildcard",
        ),
        (
            "command_topic = \"a/x{entity}\"\nanswer_topic = \"a/x{entity}\"\n",
            "appliance[1].command_topic",
            "whole levels",
        ),
        (
            "command_topic = \"a/{entity}/set\"\nanswer_topic = \"a/x\"\n",
            "appliance[1].answer_topic",
            "in both",
        ),
        (
            "command_topic = \"a/x\"\nanswer_topic = \"a/y\"\ncommand_payload = \"{value\"\n",
            "appliance[1].command_payload",
            "unmatched brace",
        ),
        (
            "command_topic = \"a/x\"\nanswer_topic = \"a/y\"\nanswer_match = \"first\"\n",
            "appliance[1].answer_match",
            "field:NAME",
        ),
        (
            "command_topic = \"a/x\"\nanswer_topic = \"a/y\"\nonline_payload = \"up\"\n",
            "appliance[1].online_payload",
            "needs presence_topic",
        ),
        (
            "command_topic = \"{entity}/set\"\nanswer_topic = \"{entity}/state\"\n",
            "appliance[1].command_topic",
            "levels of its own before {entity}",
        ),
        (
            "command_topic = \"a/x\"\nanswer_topic = \"a/x\"\n",
            "appliance[1].answer_topic",
            "also an answer topic",
        ),
        (
            "command_topic = \"dev/{entity}/set\"\nanswer_topic = \"dev/{entity}\"\n",
            "appliance[1].answer_topic",
            "also an answer topic",
        ),
    ] {
        let text = entry(extra);
        let p = problems(&text);
        assert!(
            p.iter()
                .any(|p| p.key == key && p.message.contains(says) && p.line.is_some()),
            "{extra:?}: {p:#?}"
        );
    }
    // Template keys belong to the custom profile only.
    let text = format!("{MINIMAL}answer_topic = \"a/x\"\n");
    assert!(
        problems(&text)
            .iter()
            .any(|p| p.key == "appliance[0].answer_topic")
    );
}
