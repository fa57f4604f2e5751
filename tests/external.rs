//! External broker mode against a real Mosquitto (Debian's), started by the test with the
//! access list `tetherd mosquitto-acl` printed and a password file made by
//! `mosquitto_passwd`: round trips to a Tether appliance, a Tasmota and a Shelly through
//! the broker, the broker restarted mid-run with a command waiting (delivered once,
//! nothing lost), and an appliance refused by Mosquitto when it tries another's topics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::firmware::{PERSISTENT, SHELLY, TASMOTA, firmware};
use common::*;
use serde_json::{Value, json};

const APPLIANCES: &str = r#"
[[appliance]]
id = "lamp-1"
transport = "mqtt"

[[appliance]]
id = "hall"
transport = "mqtt"
profile = "tasmota"
topic = "hall-light"

[[appliance]]
id = "plug"
transport = "mqtt"
profile = "shelly-rpc"
topic = "shellyplus1-a8032ab1"
"#;

/// A client with lamp-1's credentials that subscribes to the Tasmota's command topic and
/// lamp-1's own, and prints the topic of every message it gets.
const SPY: &str = r#"
import sys
import paho.mqtt.client as mqtt
port, pw = int(sys.argv[1]), sys.argv[2]
c = mqtt.Client(client_id="lamp-1-spy", clean_session=True)
c.username_pw_set("lamp-1", pw)
c.on_connect = lambda c, u, f, rc: c.subscribe([("cmnd/hall-light/#", 1), ("tether/lamp-1/cmd", 1)])
c.on_subscribe = lambda c, u, mid, granted: print("READY", granted, flush=True)
c.on_message = lambda c, u, msg: print("GOT", msg.topic, flush=True)
c.connect("127.0.0.1", port, keepalive=10)
c.loop_forever()
"#;

/// A Mosquitto broker on a loopback port, its sessions kept in `dir` across restarts.
struct Mosquitto {
    process: KillOnDrop,
    conf: PathBuf,
    pub log: Lines,
}

impl Mosquitto {
    fn start(conf: &Path) -> Mosquitto {
        let mut child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(conf)
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto (Debian: mosquitto)");
        let log = Lines::default();
        log.follow(child.stderr.take().unwrap(), "mosquitto");
        log.wait_for(" running");
        Mosquitto {
            process: KillOnDrop(Some(child)),
            conf: conf.to_owned(),
            log,
        }
    }

    /// Stops it as an operator would (SIGTERM: it saves its sessions) and starts it again.
    fn restart(&mut self) {
        let child = self.process.0.as_mut().unwrap();
        let stopped = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(stopped.success());
        child.wait().unwrap();
        self.process.0 = None;
        *self = Mosquitto::start(&self.conf);
    }
}

fn write_broker_files(dir: &Path, port: u16, acl: &str) -> PathBuf {
    let passwd = dir.join("passwd");
    for (i, (user, pw)) in [
        ("gw", "gw-secret".to_owned()),
        ("lamp-1", password("lamp-1")),
        ("hall", password("hall")),
        ("plug", password("plug")),
    ]
    .iter()
    .enumerate()
    {
        let mut cmd = Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let ok = cmd
            .arg("-b")
            .arg(&passwd)
            .args([user, pw.as_str()])
            .status();
        assert!(ok.expect("mosquitto_passwd (Debian: mosquitto)").success());
    }
    std::fs::write(dir.join("tether.acl"), acl).unwrap();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\npersistence true\npersistence_location {}/\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
            passwd.display(),
            dir.join("tether.acl").display(),
            dir.display()
        ),
    )
    .unwrap();
    conf
}

/// `tetherd diagnose`'s lines about the broker.
fn diagnose(cfg: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tetherd"))
        .arg("--config")
        .arg(cfg)
        .arg("diagnose")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("mqtt broker"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn run(cloud: &DevCloud, target: &str, payload: Value, extra: Value) -> Value {
    let mut cmd = json!({"target": target, "payload": payload, "timeout_ms": 20000});
    cmd.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let id = cloud.enqueue(cmd).await;
    cloud.result(&id).await["result"].clone()
}

#[tokio::test]
async fn through_a_real_mosquitto_with_the_printed_acl() {
    let dir = TempDir::new("external");
    let cloud = DevCloud::start(dir.path(), &[]);
    let port = free_port();
    let broker: SocketAddr = ([127, 0, 0, 1], port).into();
    let pw_file = dir.path().join("broker-password");
    std::fs::write(&pw_file, "gw-secret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mqtt = format!(
        "mode = \"external\"\nbroker = \"mqtt://127.0.0.1:{port}\"\nbroker_username = \"gw\"\nbroker_password_file = \"{}\"\nstartup_grace = \"0s\"\n",
        pw_file.display()
    );
    let cfg = config_with_mqtt(dir.path(), &cloud, &[], &mqtt, APPLIANCES);

    // The access list, as an operator makes it.
    let out = Command::new(env!("CARGO_BIN_EXE_tetherd"))
        .arg("--config")
        .arg(&cfg)
        .arg("mosquitto-acl")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acl = String::from_utf8(out.stdout).unwrap();
    assert!(
        acl.contains("user gw\n") && acl.contains("user hall\n"),
        "{acl}"
    );
    let conf = write_broker_files(dir.path(), port, &acl);
    let mut mosquitto = Mosquitto::start(&conf);

    let daemon = Tetherd::start(&cfg);
    daemon.log.wait_async("subscribed at the MQTT broker").await;
    // What a support engineer sees: the broker reachable and the login taken (under
    // another client id: the daemon's session stays).
    let said = diagnose(&cfg);
    assert!(said.contains("logged in (plain MQTT)"), "{said}");
    let (_lamp, lamp_said, ready) = firmware(PERSISTENT, broker, "lamp-1", "tether");
    assert!(ready.starts_with("READY (1,)"), "lamp-1 said {ready:?}");
    let (_hall, _, ready) = firmware(TASMOTA, broker, "hall", "hall-light");
    assert!(ready.starts_with("READY (0,"), "hall said {ready:?}");

    let r = run(&cloud, "lamp-1", json!({"n": 1}), json!({})).await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"], json!({"got": {"n": 1}}));
    let r = run(
        &cloud,
        "hall",
        json!({"command": "Power1", "value": "ON"}),
        json!({}),
    )
    .await;
    assert_eq!(r["payload"], json!({"POWER1": "ON"}), "{r}");
    let (_plug, _, ready) = firmware(SHELLY, broker, "plug", "shellyplus1-a8032ab1");
    assert!(ready.starts_with("READY (1, 1)"), "plug said {ready:?}");
    let r = run(
        &cloud,
        "plug",
        json!({"method": "Switch.Set", "params": {"id": 0, "on": true}}),
        json!({}),
    )
    .await;
    assert_eq!(r["payload"], json!({"was_on": false}), "{r}");

    // Mosquitto keeps lamp-1 to its own topics. Mosquitto 2.0 grants a subscription its
    // access list denies but delivers nothing on it: a client with lamp-1's credentials
    // subscribed to the Tasmota's command topic and its own sees the gateway's command to
    // the lamp, and not the one to the Tasmota sent before it.
    let pw = password("lamp-1");
    let port_s = port.to_string();
    let mut spy = Command::new("/usr/bin/python3")
        .args(["-c", SPY, &port_s, &pw])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with paho-mqtt");
    let spied = Lines::default();
    spied.follow(spy.stdout.take().unwrap(), "spy");
    let _spy = KillOnDrop(Some(spy));
    spied.wait_for("READY");
    let r = run(
        &cloud,
        "hall",
        json!({"command": "Power1", "value": "OFF"}),
        json!({}),
    )
    .await;
    assert_eq!(r["payload"], json!({"POWER1": "OFF"}), "{r}");
    let r = run(&cloud, "lamp-1", json!({"n": "seen"}), json!({})).await;
    assert_eq!(r["status"], "ok", "{r}");
    spied.wait_for("tether/lamp-1/cmd");
    assert_eq!(spied.count("cmnd/hall-light"), 0, "{:?}", spied.all());
    // ...and a forged "Offline" for the Tasmota never reaches the gateway: the lamp's own
    // event, sent after it on the same connection, does, and the Tasmota stays reachable.
    let sent = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mosquitto_pub -h 127.0.0.1 -p {port} -i lamp-1-x -u lamp-1 -P {pw} -q 1 -t tele/hall-light/LWT -m Offline && \
             mosquitto_pub -h 127.0.0.1 -p {port} -i lamp-1-x -u lamp-1 -P {pw} -q 1 -t tether/lamp-1/events -m '{{\"after\": \"forgery\"}}'"
        ))
        .status()
        .unwrap();
    assert!(sent.success());
    let events = eventually("the lamp's event at the cloud", || async {
        let ev = cloud.events().await;
        ev.iter()
            .any(|e| e["payload"] == json!({"after": "forgery"}))
            .then_some(ev)
    })
    .await;
    assert!(
        !events
            .iter()
            .any(|e| e["appliance"] == "hall" && e["kind"] == "offline"),
        "{events:?}"
    );
    let r = run(
        &cloud,
        "hall",
        json!({"command": "Power1"}),
        json!({"ttl_ms": 10000}),
    )
    .await;
    assert_eq!(r["status"], "ok", "{r}");

    // The broker goes away with a command on its way: the command waits for the link,
    // and after the restart it reaches the appliance once and its answer comes back.
    let links = daemon.log.count("connected to the MQTT broker");
    mosquitto.restart();
    let id = cloud
        .enqueue(json!({"target": "lamp-1", "payload": {"n": 2}, "timeout_ms": 20000}))
        .await;
    let r = cloud.result(&id).await["result"].clone();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"], json!({"got": {"n": 2}}));
    assert!(daemon.log.count("connected to the MQTT broker") > links);
    assert_eq!(
        lamp_said.count(&format!("GOT {id}")),
        1,
        "{:?}",
        lamp_said.all()
    );

    // A new appliance, as an operator adds one: the gateway's config, reloaded; the
    // broker's password and access list, reloaded. The gateway subscribes to its topics on
    // the link it has.
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[[appliance]]\nid = \"lamp-2\"\ntransport = \"mqtt\"\n");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tetherd"))
        .arg("--config")
        .arg(&cfg)
        .arg("mosquitto-acl")
        .output()
        .unwrap();
    std::fs::write(dir.path().join("tether.acl"), out.stdout).unwrap();
    let added = Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(dir.path().join("passwd"))
        .args(["lamp-2", &password("lamp-2")])
        .status()
        .unwrap();
    assert!(added.success());
    let from = mosquitto.log.len();
    let hup = Command::new("kill")
        .args([
            "-HUP",
            &mosquitto.process.0.as_ref().unwrap().id().to_string(),
        ])
        .status()
        .unwrap();
    assert!(hup.success());
    mosquitto.log.wait_from(from, "Reloading config");
    daemon.signal("HUP");
    daemon.log.wait_async("configuration reloaded").await;
    let (_lamp2, _, ready) = firmware(PERSISTENT, broker, "lamp-2", "tether");
    assert!(ready.starts_with("READY (1,)"), "lamp-2 said {ready:?}");
    let r = run(&cloud, "lamp-2", json!({"n": 3}), json!({})).await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["payload"], json!({"got": {"n": 3}}));
}

#[tokio::test]
async fn a_broker_that_refuses_the_gateway_is_named_in_the_log() {
    let dir = TempDir::new("external-refused");
    let cloud = DevCloud::start(dir.path(), &[]);
    let port = free_port();
    let pw_file = dir.path().join("broker-password");
    std::fs::write(&pw_file, "wrong\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mqtt = format!(
        "mode = \"external\"\nbroker = \"mqtt://127.0.0.1:{port}\"\nbroker_username = \"gw\"\nbroker_password_file = \"{}\"\n",
        pw_file.display()
    );
    let cfg = config_with_mqtt(dir.path(), &cloud, &[], &mqtt, APPLIANCES);
    let conf = write_broker_files(dir.path(), port, "user gw\ntopic read #\n");
    let _mosquitto = Mosquitto::start(&conf);
    let daemon = Tetherd::start(&cfg);
    daemon
        .log
        .wait_async("the broker refused the connection: not authorized")
        .await;
    let said = diagnose(&cfg);
    assert!(said.contains("refused: not authorized"), "{said}");
    // The appliances are away while the link is down: a command with a TTL expires,
    // never sent.
    let r = run(&cloud, "lamp-1", json!({}), json!({"ttl_ms": 500})).await;
    assert_eq!(r["status"], "expired", "{r}");
}
