//! `tetherd mosquitto-acl`: the access list a Mosquitto broker needs for external broker
//! mode, in its `acl_file` form.
//!
//! With `mqtt.mode = "external"` the broker, not the daemon, keeps each appliance to its
//! topics. This prints, from the configuration (and the cloud-managed entries in force),
//! one `user` block per MQTT appliance allowing exactly what its profile uses
//! ([`Contract::acl`]) and one for the gateway allowing its commands out and the
//! appliances' answers, presence and events in. Anything not listed is denied by Mosquitto
//! once an `acl_file` is set. Called by `main`; reads nothing but the configuration.

use std::fmt::Write;

use super::profile::Contract;
use crate::config::{Config, TransportKind};

/// The user name the gateway connects to the broker with: `mqtt.broker_username`, or its
/// client id (for a broker that takes the client id or certificate as the user name).
pub fn gateway_user(config: &Config) -> String {
    config
        .mqtt
        .broker_username
        .clone()
        .unwrap_or_else(|| super::external::client_id(config))
}

pub fn mosquitto_acl(config: &Config) -> String {
    let prefix = &config.mqtt.topic_prefix;
    let contracts: Vec<(String, Contract)> = config
        .appliances
        .iter()
        .filter(|a| a.transport == TransportKind::Mqtt)
        .map(|a| (a.id.clone(), Contract::new(prefix, a)))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Mosquitto access list for tetherd, gateway {:?}: {} MQTT appliance(s).",
        config.gateway.id,
        contracts.len()
    );
    out.push_str(
        "# Written by `tetherd mosquitto-acl`; write it again and reload Mosquitto (SIGHUP)\n\
         # when appliances change. In mosquitto.conf, with a listener for the LAN:\n\
         #   allow_anonymous false\n\
         #   password_file /etc/mosquitto/passwd   (mosquitto_passwd: each appliance's id, and the gateway)\n\
         #   acl_file /etc/mosquitto/tether.acl\n\
         # Each appliance's user name is its id. Whatever is not allowed here is denied.\n",
    );
    let gateway = gateway_user(config);
    let _ = writeln!(
        out,
        "\n# The gateway (client id {:?}): commands out; answers, presence and events in.",
        super::external::client_id(config)
    );
    let _ = writeln!(out, "user {gateway}");
    for (_, c) in &contracts {
        let _ = writeln!(out, "topic write {}", c.command_topics());
        for f in c.inbound_filters() {
            let _ = writeln!(out, "topic read {f}");
        }
    }
    for (id, c) in &contracts {
        let (reads, writes) = c.acl();
        let _ = writeln!(out, "\n# {id} (profile {})", c.profile().name());
        let _ = writeln!(out, "user {id}");
        for f in reads {
            let _ = writeln!(out, "topic read {f}");
        }
        for f in writes {
            let _ = writeln!(out, "topic write {f}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_appliance_gets_exactly_its_profiles_topics() {
        let text = r#"
[gateway]
id = "gw-1"
[cloud]
url = "https://cloud.example.com"
[mqtt]
mode = "external"
broker = "mqtt://127.0.0.1"
broker_username = "gw"
[[appliance]]
id = "lamp-1"
transport = "mqtt"
[[appliance]]
id = "plug"
transport = "mqtt"
profile = "shelly-rpc"
topic = "shellyplus1-a1"
[[appliance]]
id = "hall"
transport = "mqtt"
profile = "tasmota"
"#;
        let config = Config::parse(text).unwrap_or_else(|p| panic!("{p:#?}"));
        let acl = mosquitto_acl(&config);
        let block = |user: &str| {
            let start = acl.find(&format!("\nuser {user}\n")).unwrap();
            let rest = &acl[start + 1..];
            let end = rest[1..].find("\n\n").map_or(rest.len(), |e| e + 1);
            rest[..end]
                .lines()
                .skip(1)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            block("lamp-1"),
            [
                "topic read tether/lamp-1/cmd",
                "topic write tether/lamp-1/result",
                "topic write tether/lamp-1/status",
                "topic write tether/lamp-1/events"
            ]
        );
        assert_eq!(
            block("hall"),
            [
                "topic read cmnd/hall/#",
                "topic write stat/hall/+",
                "topic write tele/hall/+"
            ]
        );
        assert!(block("plug").contains(&"topic write tether/plug/rpc".to_owned()));
        assert!(block("plug").contains(&"topic read shellyplus1-a1/rpc".to_owned()));
        let gw = block("gw");
        assert!(gw.contains(&"topic write cmnd/hall/+".to_owned()), "{gw:?}");
        assert!(
            gw.contains(&"topic read tether/plug/rpc".to_owned()),
            "{gw:?}"
        );
        assert!(
            gw.contains(&"topic write shellyplus1-a1/rpc".to_owned()),
            "{gw:?}"
        );
    }
}
