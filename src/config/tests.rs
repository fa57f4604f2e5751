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
    assert_eq!(c.cloud.result_linger, Duration::from_millis(20));
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
