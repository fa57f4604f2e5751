//! `tetherd diagnose`: what a support engineer runs on a gateway, and the support bundle.
//!
//! Each check prints one line, `ok`, `warn` or `fail`, with what it saw and, when it is not
//! `ok`, a hint. The checks go from the file to the cloud to the box: the configuration and
//! the files it names; DNS, TCP and TLS to the cloud (the same trust and client identity as
//! the daemon's client, and one `HEAD` of the cloud's base URL, which takes no command);
//! the cloud's and the client's certificate expiry; the clock against the cloud's `Date`;
//! the MQTT listen addresses and the MQTT TLS endpoint's certificate expiry; the BLE
//! adapter when BLE appliances are configured; the journal's integrity; whether the
//! daemon answers on its control socket.
//! `--bundle FILE` writes the report with the configuration (secrets redacted), versions,
//! the daemon's status and metrics, the journal summary and its recent log, as a tar file;
//! every secret the configuration names (token, appliance passwords) is scrubbed from all
//! of it, whatever part it turned up in.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::config::Config;

pub mod tar;
pub mod x509;

/// Certificates expiring sooner than this are warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);
/// A clock further than this from the cloud's is warned about.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// A clock before this cannot be right (this code did not exist): 2026-01-01.
const CLOCK_FLOOR_SECS: u64 = 1_767_225_600;
/// Bound on each network step.
const NET_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
    pub hint: Option<String>,
}

/// Every check's line.
#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    fn ok(&mut self, name: &'static str, detail: impl Into<String>) {
        self.push(name, Level::Ok, detail.into(), None);
    }

    fn warn(&mut self, name: &'static str, detail: impl Into<String>, hint: impl Into<String>) {
        self.push(name, Level::Warn, detail.into(), Some(hint.into()));
    }

    fn fail(&mut self, name: &'static str, detail: impl Into<String>, hint: impl Into<String>) {
        self.push(name, Level::Fail, detail.into(), Some(hint.into()));
    }

    fn push(&mut self, name: &'static str, level: Level, detail: String, hint: Option<String>) {
        self.checks.push(Check {
            name,
            level,
            detail,
            hint,
        });
    }

    /// The worst level of any check.
    pub fn worst(&self) -> Level {
        self.checks
            .iter()
            .map(|c| c.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let _ = writeln!(out, "{:<4} {:<18} {}", c.level.as_str(), c.name, c.detail);
            if let Some(hint) = &c.hint {
                let _ = writeln!(out, "     {:<18} hint: {hint}", "");
            }
        }
        let count = |l| self.checks.iter().filter(|c| c.level == l).count();
        let _ = writeln!(
            out,
            "{} ok, {} warning(s), {} failure(s)",
            count(Level::Ok),
            count(Level::Warn),
            count(Level::Fail)
        );
        out
    }
}

/// Runs every check against the configuration at `path`.
pub async fn run(path: &Path) -> (Report, Option<Config>) {
    let mut r = Report::default();
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            let mut detail = e.to_string();
            if let crate::config::ConfigError::Invalid { problems, .. } = &e {
                for p in problems {
                    let _ = write!(detail, "; {p}");
                }
            }
            r.fail(
                "config",
                detail,
                format!(
                    "`tetherd check-config --config {}` lists every problem with its line",
                    path.display()
                ),
            );
            return (r, None);
        }
    };
    r.ok(
        "config",
        format!(
            "{} is valid (gateway {}, {} appliance(s) in the file)",
            path.display(),
            config.gateway.id,
            config.appliances.len()
        ),
    );
    match crate::app::check_files(&config) {
        Ok(()) => r.ok(
            "files",
            "the CA, client identity, token and MQTT TLS files it names can be read",
        ),
        Err(e) => r.fail(
            "files",
            e.to_string(),
            "check the path, the file's contents and its permissions (the service reads them as user tether; secrets at most 0640)",
        ),
    }
    cloud(&mut r, &config).await;
    client_certificate(&mut r, &config);
    if config.mqtt.mode == crate::config::MqttMode::External {
        broker(&mut r, &config).await;
    } else {
        listen_addresses(&mut r, &config);
        mqtt_certificate(&mut r, &config);
    }
    ble_adapter(&mut r, &config);
    journal(&mut r, &config);
    daemon(&mut r, &config);
    (r, Some(config))
}

/// DNS, TCP, TLS and HTTP to the cloud, the cloud's certificate and the clock.
async fn cloud(r: &mut Report, config: &Config) {
    let url = match reqwest::Url::parse(&config.cloud.url) {
        Ok(u) => u,
        Err(e) => {
            r.fail(
                "dns",
                format!("cloud.url: {e}"),
                "cloud.url must be an https URL",
            );
            return;
        }
    };
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let host_for_lookup = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(
        NET_TIMEOUT,
        tokio::net::lookup_host((host_for_lookup.as_str(), port)),
    )
    .await
    {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => {
            r.fail(
                "dns",
                format!("cannot resolve {host}: {e}"),
                "check the network's DNS (/etc/resolv.conf, `resolvectl status`) and the host in cloud.url",
            );
            return;
        }
        Err(_) => {
            r.fail(
                "dns",
                format!("no answer resolving {host} within {NET_TIMEOUT:?}"),
                "check the network's DNS (/etc/resolv.conf, `resolvectl status`)",
            );
            return;
        }
    };
    if addrs.is_empty() {
        r.fail(
            "dns",
            format!("{host} resolves to no address"),
            "check the DNS records of the host in cloud.url",
        );
        return;
    }
    let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    r.ok("dns", format!("{host} is {}", shown.join(", ")));
    let mut last_error = None;
    let mut reached = None;
    for addr in &addrs {
        match tokio::time::timeout(
            config.cloud.connect_timeout,
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(_)) => {
                reached = Some(*addr);
                break;
            }
            Ok(Err(e)) => last_error = Some(e.to_string()),
            Err(_) => {
                last_error = Some(format!(
                    "no answer within {:?} (cloud.connect_timeout)",
                    config.cloud.connect_timeout
                ))
            }
        }
    }
    match reached {
        Some(addr) => r.ok("tcp", format!("connected to {addr}")),
        None => {
            r.fail(
                "tcp",
                format!(
                    "cannot connect to {host}:{port}: {}",
                    last_error.unwrap_or_default()
                ),
                "the cloud may be down, or a firewall or proxy blocks outbound TCP to this port; the gateway needs only this one outbound connection",
            );
            return;
        }
    }
    let trust = match &config.cloud.ca_file {
        Some(ca) => format!("cloud.ca_file {}", ca.display()),
        None => "the system's trust store".to_owned(),
    };
    let client = match crate::cloud::tls::Credentials::load(&config.cloud)
        .and_then(|c| crate::cloud::tls::build_probe_client(&config.cloud, &c))
    {
        Ok(c) => c,
        Err(e) => {
            r.fail("tls", e.to_string(), "see the files check above");
            return;
        }
    };
    let started = SystemTime::now();
    let response = tokio::time::timeout(NET_TIMEOUT, client.head(url.clone()).send()).await;
    let response = match response {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            let why = crate::cloud::client::error_chain(&e);
            // BadSignature: a CA of the same name but another key signed it.
            let hint = if ["UnknownIssuer", "unknown issuer", "BadSignature"]
                .iter()
                .any(|w| why.contains(w))
            {
                format!(
                    "the cloud's certificate is not signed by a CA in {trust}: point cloud.ca_file at the CA that signs it"
                )
            } else if why.contains("Expired") || why.contains("expired") {
                format!(
                    "the cloud's certificate has expired, or this machine's clock is wrong (it reads {})",
                    humantime::format_rfc3339_seconds(SystemTime::now())
                )
            } else if why.contains("NotValidForName") || why.contains("not valid for name") {
                format!("the cloud's certificate is not for {host}: check the host in cloud.url")
            } else {
                "the TLS handshake or the HTTP exchange failed; the error says where".to_owned()
            };
            r.fail("tls", format!("{host}:{port}: {why}"), hint);
            return;
        }
        Err(_) => {
            r.fail(
                "tls",
                format!("{host}:{port}: no answer within {NET_TIMEOUT:?}"),
                "the server accepts TCP but does not complete TLS or HTTP: is it the cloud, and does it speak HTTPS on this port?",
            );
            return;
        }
    };
    let version = match response.version() {
        reqwest::Version::HTTP_2 => "HTTP/2",
        reqwest::Version::HTTP_11 => "HTTP/1.1",
        _ => "another HTTP version",
    };
    r.ok(
        "tls",
        format!(
            "certificate chain verified against {trust}; {version}; HEAD {url} answered {}",
            response.status().as_u16()
        ),
    );
    let leaf = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .and_then(x509::validity);
    match leaf {
        Some((_, not_after)) => expiry(
            r,
            "cloud certificate",
            not_after,
            "the cloud's operator must renew it",
        ),
        None => r.warn(
            "cloud certificate",
            "could not read its validity",
            "the TLS check above verified it; only its expiry date is unknown",
        ),
    }
    clock(
        r,
        started,
        response
            .headers()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(x509::http_date),
    );
}

fn expiry(r: &mut Report, name: &'static str, not_after: SystemTime, renew: &str) {
    let date = humantime::format_rfc3339_seconds(not_after);
    match not_after.duration_since(SystemTime::now()) {
        Err(_) => r.fail(name, format!("expired on {date}"), renew.to_owned()),
        Ok(left) if left < EXPIRY_WARNING => r.warn(
            name,
            format!("expires on {date}, in {} day(s)", left.as_secs() / 86_400),
            renew.to_owned(),
        ),
        Ok(left) => r.ok(
            name,
            format!("valid until {date} ({} days)", left.as_secs() / 86_400),
        ),
    }
}

fn clock(r: &mut Report, asked: SystemTime, cloud: Option<SystemTime>) {
    let now = SystemTime::now();
    let shown = humantime::format_rfc3339_seconds(now);
    let floor = SystemTime::UNIX_EPOCH + Duration::from_secs(CLOCK_FLOOR_SECS);
    if now < floor {
        r.fail(
            "clock",
            format!("reads {shown}, before this version of tetherd existed"),
            "enable time synchronisation (`timedatectl set-ntp true`); a Pi has no battery-backed clock",
        );
        return;
    }
    let Some(cloud) = cloud else {
        r.ok(
            "clock",
            format!("reads {shown} (the cloud sent no Date to compare)"),
        );
        return;
    };
    // The Date is whole seconds, taken somewhere between asking and answering.
    let skew = match cloud.duration_since(now) {
        Ok(ahead) => ahead,
        Err(_) => asked
            .duration_since(cloud)
            .unwrap_or_default()
            .saturating_sub(Duration::from_secs(1)),
    };
    if skew > CLOCK_SKEW {
        r.warn(
            "clock",
            format!(
                "reads {shown}, {} s from the cloud's",
                skew.as_secs()
            ),
            "enable time synchronisation (`timedatectl set-ntp true`): TTLs and certificate checks depend on the clock",
        );
    } else {
        r.ok(
            "clock",
            format!(
                "reads {shown}, within {} s of the cloud's",
                CLOCK_SKEW.as_secs()
            ),
        );
    }
}

fn client_certificate(r: &mut Report, config: &Config) {
    if let Some(path) = &config.cloud.client_cert {
        certificate_file(
            r,
            "client certificate",
            "cloud.client_cert",
            path,
            "the gateway's certificate",
        );
    }
}

/// The MQTT TLS endpoint's certificate: when it runs out, every appliance on TLS is
/// refused at once, and nothing on the cloud side says so.
fn mqtt_certificate(r: &mut Report, config: &Config) {
    if config.mqtt.tls_listen.is_none() {
        return;
    }
    if let Some(path) = &config.mqtt.tls_cert {
        certificate_file(
            r,
            "mqtt certificate",
            "mqtt.tls_cert",
            path,
            "the endpoint's certificate",
        );
    }
}

/// The expiry of the first certificate in a PEM file (the leaf, by convention).
fn certificate_file(r: &mut Report, name: &'static str, key: &str, path: &Path, what: &str) {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let first = CertificateDer::pem_file_iter(path)
        .ok()
        .and_then(|mut certs| certs.next())
        .and_then(Result::ok);
    match first.as_deref().and_then(x509::validity) {
        Some((_, not_after)) => expiry(
            r,
            name,
            not_after,
            &format!("renew {key} ({}) before then", path.display()),
        ),
        None => r.fail(
            name,
            format!(
                "{}: no certificate whose validity can be read",
                path.display()
            ),
            format!("{key} must hold {what} (PEM), first in the file"),
        ),
    }
}

/// External broker mode: the broker reachable, its certificate verified, the login taken.
async fn broker(r: &mut Report, config: &Config) {
    let url = config.mqtt.broker.clone().unwrap_or_default();
    let link = match crate::transport::mqtt::external::Link::load(config) {
        Ok(link) => link,
        Err(e) => {
            return r.fail(
                "mqtt broker",
                e.to_string(),
                "fix the mqtt.broker* keys or the files they name",
            );
        }
    };
    match link.probe().await {
        Ok(how) => r.ok("mqtt broker", format!("{url}: logged in ({how})")),
        Err(e) => r.fail(
            "mqtt broker",
            format!("{url}: {e}"),
            "is the broker running and reachable from here? mqtt.broker_username and mqtt.broker_password_file must be a user of the broker; an mqtts:// broker's certificate must name its host and chain to mqtt.broker_ca_file or the system's trust store",
        ),
    }
}

fn listen_addresses(r: &mut Report, config: &Config) {
    let mut addrs = vec![("mqtt.listen", config.mqtt.listen)];
    if let Some(tls) = config.mqtt.tls_listen {
        addrs.push(("mqtt.tls_listen", tls));
    }
    for (key, addr) in addrs {
        // Port 0: whether the address is this machine's, whatever holds the port.
        match std::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)) {
            Ok(_) => r.ok(
                "mqtt listen",
                format!("{key} {addr}: an address of this machine"),
            ),
            Err(e) => r.fail(
                "mqtt listen",
                format!("{key} {addr}: {e}"),
                format!(
                    "{key} must be an address of this machine (`ip -br addr`), or 0.0.0.0 for all"
                ),
            ),
        }
    }
}

fn ble_adapter(r: &mut Report, config: &Config) {
    if !config.has_ble() {
        return;
    }
    let found: Vec<String> = std::fs::read_dir("/sys/class/bluetooth")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("hci") && !n.contains(':'))
                .collect()
        })
        .unwrap_or_default();
    let wanted = config.ble.adapter.clone();
    let present = match &wanted {
        Some(name) => found.contains(name),
        None => !found.is_empty(),
    };
    if present {
        r.ok("ble adapter", format!("present: {}", found.join(", ")));
    } else {
        r.fail(
            "ble adapter",
            match &wanted {
                Some(name) => format!(
                    "ble.adapter {name} is not present (found: {})",
                    found.join(", ")
                ),
                None => "no Bluetooth adapter, and BLE appliances are configured".to_owned(),
            },
            "check `bluetoothctl list`, `rfkill list` and that bluetooth.service runs",
        );
    }
}

fn journal(r: &mut Report, config: &Config) {
    match crate::journal::inspect::check(&config.gateway.state_dir) {
        Ok(Some(detail)) => r.ok("journal", detail),
        Ok(None) => r.warn(
            "journal",
            format!("no journal in {} yet", config.gateway.state_dir.display()),
            "the daemon makes it at its first start; if it has run, check gateway.state_dir",
        ),
        Err(e) => r.fail(
            "journal",
            e,
            "at its next start the daemon moves a damaged journal aside (kept for inspection) and begins a new one",
        ),
    }
}

fn daemon(r: &mut Report, config: &Config) {
    let path = &config.gateway.control_socket;
    if path.as_os_str().is_empty() {
        return;
    }
    match crate::status::socket::ask(path, "status") {
        Ok(answer) => {
            let s: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
            let apps = s["appliances"].as_array().map_or(0, Vec::len);
            let online = s["appliances"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|a| a["online"] == true).count());
            r.ok(
                "daemon",
                format!(
                    "running {} for {} s; cloud {}; {online} of {apps} appliance(s) online",
                    s["version"].as_str().unwrap_or("?"),
                    s["uptime_s"].as_u64().unwrap_or(0),
                    s["cloud"]["state"].as_str().unwrap_or("?"),
                ),
            );
        }
        Err(e) => r.warn(
            "daemon",
            e.to_string(),
            "`systemctl start tetherd`; `journalctl -u tetherd` tells why it stopped",
        ),
    }
}

/// The support bundle: the report, the configuration redacted, versions, the daemon's
/// status, metrics and recent log, the journal's summary.
pub fn bundle(report: &Report, config_path: &Path, config: Option<&Config>) -> Vec<u8> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, text: String| {
        files.push((format!("tether-diagnose/{name}"), text.into_bytes()));
    };
    add("report.txt", report.text());
    add("config.toml", redacted_file(config_path));
    add("versions.txt", versions());
    if let Some(config) = config {
        let store = crate::fleet::Store::path_in(&config.gateway.state_dir);
        if store.exists() {
            add("managed.toml", redacted_file(&store));
        }
        let sock = &config.gateway.control_socket;
        for (request, name) in [("status", "status.json"), ("metrics", "metrics.txt")] {
            let text = crate::status::socket::ask(sock, request)
                .unwrap_or_else(|e| format!("not available: {e}\n"));
            add(name, text);
        }
        let journal = crate::journal::inspect::summary(&config.gateway.state_dir, 50)
            .unwrap_or_else(|e| format!("not available: {e}\n"));
        add("journal.txt", journal);
    }
    add("log.txt", recent_log());
    let secrets = config.map(secrets).unwrap_or_default();
    for (_, bytes) in &mut files {
        *bytes = scrub(bytes, &secrets);
    }
    tar::archive(&files)
}

/// Every secret the configuration holds or names: the bearer token and the appliances'
/// passwords (plain ones; hashes are redacted by key).
fn secrets(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(Some(token)) = crate::cloud::tls::load_token(&config.cloud)
        && let Ok(text) = token.to_str()
    {
        out.push(text.trim_start_matches("Bearer ").to_owned());
    }
    for a in &config.appliances {
        if let Some(p) = &a.password {
            out.push(p.clone());
        }
    }
    out.retain(|s| s.len() >= 4);
    out
}

fn scrub(bytes: &[u8], secrets: &[String]) -> Vec<u8> {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    for s in secrets {
        text = text.replace(s.as_str(), "<redacted>");
    }
    text.into_bytes()
}

/// A TOML file with the value of every key that may hold a secret replaced.
fn redacted_file(path: &Path) -> String {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return format!("# {}: {e}\n", path.display()),
    };
    let mut table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            return format!(
                "# {} does not parse ({}); not included\n",
                path.display(),
                e.message()
            );
        }
    };
    redact(&mut table);
    let body = toml::to_string(&table).unwrap_or_default();
    format!(
        "# {}, secrets redacted by tetherd diagnose\n{body}",
        path.display()
    )
}

fn redact(table: &mut toml::Table) {
    for (key, value) in table.iter_mut() {
        let secret = matches!(key.as_str(), "password" | "token" | "secret")
            || key.ends_with("_password")
            || key.ends_with("_secret");
        match value {
            toml::Value::String(s) if secret => *s = "<redacted>".into(),
            toml::Value::Table(t) => redact(t),
            toml::Value::Array(items) => {
                for item in items {
                    if let toml::Value::Table(t) = item {
                        redact(t);
                    }
                }
            }
            _ => {}
        }
    }
}

fn versions() -> String {
    let mut out = format!("tetherd {}\n", env!("CARGO_PKG_VERSION"));
    for path in [
        "/proc/version",
        "/etc/os-release",
        "/proc/device-tree/model",
    ] {
        if let Ok(text) = std::fs::read_to_string(path) {
            let _ = writeln!(
                out,
                "--- {path}\n{}",
                text.trim_end_matches('\0').trim_end()
            );
        }
    }
    out
}

/// The daemon's last log lines from journald, when it is there to ask.
fn recent_log() -> String {
    let out = std::process::Command::new("journalctl")
        .args([
            "-u",
            "tetherd",
            "-n",
            "2000",
            "--no-pager",
            "-o",
            "short-iso",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => format!(
            "journalctl failed: {}\n",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("journalctl not available: {e}\n"),
    }
}

/// Writes the bundle to `path`, readable by its owner only.
pub fn write_bundle(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
