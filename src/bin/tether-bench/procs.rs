//! The two child processes: the reference cloud (`tether-devcloud`) and the real daemon
//! (`tetherd`), each started from a binary path and stopped by its pid.
//!
//! Both are spawned with `kill_on_drop`, so an error anywhere in the bench still kills
//! them; `RUST_LOG` is removed from their environment because a debug level inherited
//! from the shell would change what is measured.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader as AsyncBufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::Ctx;

/// Bound on start-up waits (certificate generation, first poll); reached only if broken.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// A binary next to the bench's own executable, like `tetherd demo` finds the devcloud.
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .map(|exe| exe.with_file_name(name))
        .unwrap_or_else(|_| PathBuf::from(name))
}

pub struct DevCloud {
    child: Child,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub ca: PathBuf,
}

impl DevCloud {
    pub async fn start(bin: &Path, dir: &Path) -> Result<DevCloud, String> {
        DevCloud::start_with(bin, dir, &[]).await
    }

    /// Like [`DevCloud::start`], with more command-line arguments (its cadence).
    pub async fn start_with(bin: &Path, dir: &Path, args: &[&str]) -> Result<DevCloud, String> {
        let cert_dir = dir.join("devcloud-certs");
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(args)
            .arg("--cert-dir")
            .arg(&cert_dir)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or("no stdout from tether-devcloud")?;
        let mut lines = AsyncBufReader::new(stdout).lines();
        let ready = tokio::time::timeout(START_PATIENCE, lines.next_line())
            .await
            .map_err(|_| "tether-devcloud printed no READY line".to_owned())?
            .map_err(|e| e.to_string())?
            .ok_or("tether-devcloud exited before READY")?;
        // Keep draining so the devcloud never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let field = |name: &str| -> Result<SocketAddr, String> {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("unexpected devcloud output: {ready}"))
        };
        Ok(DevCloud {
            https: field("https=")?,
            admin: field("admin=")?,
            ca: cert_dir.join("ca.pem"),
            child,
        })
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// What a `tetherd` instance is configured with; one instance per measured setting.
pub struct Setup<'a> {
    pub gateway: &'a str,
    pub appliances: usize,
    pub linger: &'a str,
    pub sync: &'a str,
    /// `cloud.encoding`.
    pub encoding: &'a str,
}

pub fn appliance_id(i: usize) -> String {
    format!("a{i}")
}

pub fn password(id: &str) -> String {
    format!("pw-{id}")
}

/// The config file: defaults everywhere except what a benchmark must pin (loopback MQTT
/// on a free port, no start-up grace, logs to stderr whatever the environment, and a
/// connection rate for a whole fleet that connects from one address, 127.0.0.1).
fn config_text(setup: &Setup, cloud: &DevCloud, state_dir: &Path) -> String {
    let mut text = format!(
        "[gateway]\nid = \"{gw}\"\nstate_dir = \"{state}\"\ncontrol_socket = \"{state}/control.sock\"\n\n\
         [cloud]\nurl = \"https://localhost:{port}\"\nca_file = \"{ca}\"\nresult_linger = \"{linger}\"\nencoding = \"{encoding}\"\n\n\
         [mqtt]\nlisten = \"127.0.0.1:0\"\nstartup_grace = \"0s\"\nmax_connections = {maxconn}\nmax_connect_rate = 100000\n\n\
         [state]\nsync = \"{sync}\"\n\n[log]\ntarget = \"stderr\"\n\n",
        gw = setup.gateway,
        state = state_dir.display(),
        port = cloud.https.port(),
        ca = cloud.ca.display(),
        linger = setup.linger,
        encoding = setup.encoding,
        // The default (1024) unless a footprint step needs more.
        maxconn = (setup.appliances + 16).max(1024),
        sync = setup.sync,
    );
    for i in 0..setup.appliances {
        let id = appliance_id(i);
        text.push_str(&format!(
            "[[appliance]]\nid = \"{id}\"\ntransport = \"mqtt\"\npassword = \"{}\"\n",
            password(&id)
        ));
    }
    text
}

pub struct Tetherd {
    child: Child,
    pub pid: u32,
    pub mqtt: SocketAddr,
}

impl Tetherd {
    /// Starts the daemon and returns once its MQTT endpoint listens and its cloud link is
    /// online (first poll answered), so nothing measured afterwards includes start-up.
    pub async fn start(ctx: &Ctx<'_>, setup: &Setup<'_>) -> Result<Tetherd, String> {
        let (bin, dir, cloud) = (ctx.tetherd, ctx.dir, ctx.cloud);
        let state_dir = dir.join(format!("state-{}", setup.gateway));
        let _ = std::fs::remove_dir_all(&state_dir);
        let config = dir.join(format!("{}.toml", setup.gateway));
        std::fs::write(&config, config_text(setup, cloud, &state_dir))
            .map_err(|e| format!("{}: {e}", config.display()))?;
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .envs(ctx.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id().ok_or("tetherd exited at once")?;
        let stderr = child.stderr.take().ok_or("no stderr from tetherd")?;
        let log = match ctx.logs {
            Some(logs) => {
                let path = logs.join(format!("{}.log", setup.gateway));
                let file =
                    std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                Some(file)
            }
            None => None,
        };
        let fd = stderr.into_owned_fd().map_err(|e| e.to_string())?;
        let (mut marks, tail) = follow(fd, log);
        let mut mqtt = None;
        let waited = tokio::time::timeout(START_PATIENCE, async {
            while let Some(line) = marks.recv().await {
                if let Some(addr) = line.split("mqtt endpoint listening on ").nth(1) {
                    mqtt = addr.split_whitespace().next().and_then(|a| a.parse().ok());
                }
                if line.contains("cloud link online") && mqtt.is_some() {
                    return true;
                }
            }
            false
        })
        .await;
        match (waited, mqtt) {
            (Ok(true), Some(mqtt)) => Ok(Tetherd { child, pid, mqtt }),
            _ => {
                let _ = child.kill().await;
                let tail: Vec<String> = tail
                    .lock()
                    .map(|t| t.iter().cloned().collect())
                    .unwrap_or_default();
                Err(format!(
                    "tetherd did not come online; its last log lines:\n{}",
                    tail.join("\n")
                ))
            }
        }
    }

    /// SIGTERM (by pid, through `kill(1)`: the crate has no libc), then SIGKILL if it has
    /// not exited within 10 s.
    pub async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

type Tail = Arc<Mutex<VecDeque<String>>>;

/// Drains the daemon's stderr on a thread (it logs two lines per command at info level,
/// which must never block it), forwards the lines that mark start-up, keeps the last 40
/// lines for error messages, and copies everything to `log` when `--keep-logs` asks.
fn follow(
    fd: std::os::fd::OwnedFd,
    mut log: Option<std::fs::File>,
) -> (mpsc::UnboundedReceiver<String>, Tail) {
    let (tx, rx) = mpsc::unbounded_channel();
    let tail: Tail = Arc::default();
    let keep = tail.clone();
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        for line in BufReader::new(std::fs::File::from(fd)).lines() {
            let Ok(line) = line else { break };
            if let Some(file) = log.as_mut() {
                // tetherd's stderr lines carry no time; the bench's clock stands in.
                let _ = writeln!(file, "{:10.3} {line}", start.elapsed().as_secs_f64());
            }
            if line.contains("mqtt endpoint listening on ") || line.contains("cloud link ") {
                let _ = tx.send(line.clone());
            }
            if let Ok(mut t) = keep.lock() {
                if t.len() == 40 {
                    t.pop_front();
                }
                t.push_back(line);
            }
        }
    });
    (rx, tail)
}
