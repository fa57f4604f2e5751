//! `tetherd demo`: the whole round trip on one machine, with no setup.
//!
//! Starts `tether-devcloud` (the reference cloud, a sibling binary) on loopback with a
//! fresh CA, runs the daemon in this process against it with the MQTT endpoint on a free
//! port, connects simulated appliances (real MQTT clients), then sends commands through
//! the devcloud's admin API and prints each round trip with its latency.
//!
//! Only a build with the `devcloud` feature (the default) has it; `main` answers `tetherd
//! demo` with exit 69 in one without, such as the .deb's.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::app::App;
use crate::config::Config;

const GATEWAY: &str = "demo-gw";
/// Appliances that connect; `sensor-9` is configured but never connects.
const ONLINE: [&str; 3] = ["lamp-1", "lamp-2", "thermostat-1"];

pub async fn run() -> ExitCode {
    match demo().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

type DemoResult<T> = Result<T, String>;

async fn demo() -> DemoResult<()> {
    let dir = std::env::temp_dir().join(format!("tether-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let outcome = demo_in(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn demo_in(dir: &Path) -> DemoResult<()> {
    let (mut devcloud, https, admin) = start_devcloud(dir).await?;
    let result = with_devcloud(dir, &https, &admin).await;
    let _ = devcloud.kill().await;
    result
}

async fn with_devcloud(dir: &Path, https: &str, admin: &str) -> DemoResult<()> {
    let port = https.rsplit(':').next().unwrap_or_default();
    let config = Config::parse(&format!(
        r#"
[gateway]
id = "{GATEWAY}"
state_dir = "{state}"
control_socket = "{state}/control.sock"
[cloud]
url = "https://localhost:{port}"
ca_file = "{ca}"
[mqtt]
listen = "127.0.0.1:0"
# The simulated appliances connect before any command is sent.
startup_grace = "0s"
[[appliance]]
id = "lamp-1"
transport = "mqtt"
password = "pw-lamp-1"
[[appliance]]
id = "lamp-2"
transport = "mqtt"
password = "pw-lamp-2"
[[appliance]]
id = "thermostat-1"
transport = "mqtt"
password = "pw-thermostat-1"
[[appliance]]
id = "sensor-9"
transport = "mqtt"
password = "pw-sensor-9"
[groups]
lights = ["lamp-1", "lamp-2"]
"#,
        state = dir.join("state").display(),
        ca = dir.join("certs/ca.pem").display(),
    ))
    .map_err(|p| format!("demo config: {p:?}"))?;
    let app = App::start(&config).await.map_err(|e| e.to_string())?;
    let endpoint = app
        .mqtt_addr
        .ok_or("demo: the MQTT endpoint did not start")?;
    println!("tetherd demo");
    println!("  devcloud   https://{https} (TLS, HTTP/2), admin http://{admin}");
    println!("  tetherd    MQTT endpoint on {endpoint}");
    for id in ONLINE {
        spawn_appliance(id, endpoint.port()).await?;
    }
    println!(
        "  appliances {} online, sensor-9 offline",
        ONLINE.join(", ")
    );
    println!();
    // Plain HTTP to the admin API; trusting only the devcloud CA keeps the OS store out of it.
    let ca = std::fs::read(dir.join("certs/ca.pem")).map_err(|e| e.to_string())?;
    let ca = reqwest::Certificate::from_pem_bundle(&ca).map_err(|e| e.to_string())?;
    let http = reqwest::Client::builder()
        .tls_certs_only(ca)
        .build()
        .map_err(|e| e.to_string())?;
    let steps = [
        (
            "one appliance",
            json!({"target": "lamp-1", "payload": {"power": "on"}}),
        ),
        (
            "a group",
            json!({"target": "group:lights", "payload": {"power": "off"}}),
        ),
        (
            "a list",
            json!({"target": ["lamp-2", "thermostat-1"], "payload": {"ping": true}}),
        ),
        (
            "an offline appliance",
            json!({"target": "sensor-9", "payload": {"read": "temp"}}),
        ),
        (
            "an unknown appliance",
            json!({"target": "toaster", "payload": {}}),
        ),
    ];
    println!(
        "{:<22} {:<6} {:<12} {:>9}  detail",
        "command to", "id", "status", "latency"
    );
    for (what, cmd) in steps {
        let start = Instant::now();
        let id = enqueue(&http, admin, &cmd).await?;
        let stored = wait_result(&http, admin, &id).await?;
        let latency = start.elapsed();
        let result = &stored["result"];
        println!(
            "{what:<22} {id:<6} {:<12} {:>7.2}ms  {}",
            result["status"].as_str().unwrap_or("?"),
            latency.as_secs_f64() * 1000.0,
            detail(result)
        );
    }
    let stats: Value = get_json(&http, &format!("http://{admin}/admin/stats")).await?;
    println!();
    println!(
        "cloud link: {} TCP connection(s), {} TLS handshake(s), {} poll(s), {} early flush(es), HTTP/2 requests: {}",
        stats["connections"],
        stats["tls_handshakes"],
        stats["polls"],
        stats["results_posts"],
        stats["requests_http2"]
    );
    app.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

fn detail(result: &Value) -> String {
    if let Some(items) = result["items"].as_array() {
        let parts: Vec<String> = items
            .iter()
            .map(|i| {
                format!(
                    "{}={}",
                    i["target"].as_str().unwrap_or("?"),
                    i["status"].as_str().unwrap_or("?")
                )
            })
            .collect();
        return parts.join(" ");
    }
    match (&result["payload"], &result["error"]) {
        (Value::Null, Value::String(e)) => e.clone(),
        (p, _) => p.to_string(),
    }
}

fn devcloud_binary() -> DemoResult<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe.with_file_name("tether-devcloud");
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: the demo needs the reference cloud, built with the `devcloud` feature (cargo build --release)",
            path.display()
        ))
    }
}

async fn start_devcloud(dir: &Path) -> DemoResult<(Child, String, String)> {
    let mut child = Command::new(devcloud_binary()?)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--cert-dir",
        ])
        .arg(dir.join("certs"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start tether-devcloud: {e}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or("no stdout from tether-devcloud")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .map_err(|_| "tether-devcloud did not start within 20s".to_string())?
        .map_err(|e| e.to_string())?
        .ok_or("tether-devcloud exited before it was ready")?;
    let field = |name: &str| {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_owned)
            .ok_or_else(|| format!("unexpected devcloud output: {ready}"))
    };
    Ok((child, field("https=")?, field("admin=")?))
}

/// A simulated appliance: answers every command at once with `ok` and a small payload.
async fn spawn_appliance(id: &'static str, port: u16) -> DemoResult<()> {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_credentials(id, format!("pw-{id}"));
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_last_will(LastWill::new(
        format!("tether/{id}/status"),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut events) = AsyncClient::new(opts, 16);
    // Without it the result waits for the ACK of the PUBACK (Nagle + delayed ACK: ~40 ms).
    events.network_options.set_tcp_nodelay(true);
    client
        .subscribe(format!("tether/{id}/cmd"), QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let Ok(cmd) = serde_json::from_slice::<Value>(&p.payload) else {
                        continue;
                    };
                    let answer = json!({"id": cmd["id"], "ok": true, "payload": {"appliance": id, "done": cmd["payload"]}});
                    let _ = client.try_publish(
                        format!("tether/{id}/result"),
                        QoS::AtLeastOnce,
                        false,
                        answer.to_string(),
                    );
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .map_err(|_| format!("appliance {id} did not connect"))?
        .map_err(|_| format!("appliance {id} stopped"))
}

async fn enqueue(http: &reqwest::Client, admin: &str, cmd: &Value) -> DemoResult<String> {
    let resp = http
        .post(format!("http://{admin}/admin/gateways/{GATEWAY}/commands"))
        .body(cmd.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Value = resp.json_value().await?;
    body["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no id in {body}"))
}

async fn wait_result(http: &reqwest::Client, admin: &str, id: &str) -> DemoResult<Value> {
    get_json(
        http,
        &format!("http://{admin}/admin/gateways/{GATEWAY}/results/{id}?wait_ms=15000"),
    )
    .await
}

async fn get_json(http: &reqwest::Client, url: &str) -> DemoResult<Value> {
    let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", resp.status()));
    }
    resp.json_value().await
}

trait JsonValue {
    async fn json_value(self) -> DemoResult<Value>;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> DemoResult<Value> {
        let bytes = self.bytes().await.map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }
}
