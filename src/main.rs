//! `tetherd`: the command line.
//!
//! `tetherd [--config PATH]` runs the daemon; `check-config` validates a file and exits 78
//! (EX_CONFIG) listing every problem; `status` and `metrics` ask the running daemon over
//! its control socket (69, EX_UNAVAILABLE, when none answers); `diagnose` checks what a
//! support engineer would; `demo` runs a self-contained round trip (a build
//! without the `devcloud` feature, such as the .deb's, has no demo and exits 69). Config
//! errors are printed before the daemon starts, and exit 78 so systemd does not restart
//! a daemon that cannot work (`RestartPreventExitStatus=78`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tether::app::{App, StartError};
use tether::config::{Config, ConfigError};
use tether::systemd;

/// sysexits.h EX_CONFIG.
const EX_CONFIG: u8 = 78;
/// sysexits.h EX_OSERR: systemd may restart (a port still held, say).
const EX_OSERR: u8 = 71;
/// sysexits.h EX_SOFTWARE.
const EX_SOFTWARE: u8 = 70;
/// sysexits.h EX_UNAVAILABLE: no daemon answers; `demo` in a build that has none.
const EX_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(name = "tetherd", version, about = "Tether edge gateway daemon")]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = "/etc/tether/config.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate the configuration file and exit (0: valid, 78: invalid).
    CheckConfig,
    /// Run a local devcloud, the daemon and simulated appliances, and show round trips.
    #[cfg_attr(
        not(feature = "devcloud"),
        command(
            about = "Not in this build: the demo needs a build from source with the default features"
        )
    )]
    Demo,
    /// Read a password on standard input and print its Argon2id hash for the config.
    HashPassword,
    /// Print the Mosquitto access list (acl_file) for mqtt.mode = "external": each
    /// appliance held to its own topics, the gateway to the ones it needs.
    MosquittoAcl,
    /// Show what the journal holds: results owed, commands running (read-only).
    Journal {
        /// Rows listed per section.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Ask the running daemon how it is: the cloud link, each appliance, the journal.
    Status {
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
        /// The control socket (default: gateway.control_socket of the config).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Check what the gateway needs, one line each (ok, warn, fail) with a hint; exit 1 on
    /// a failure.
    Diagnose {
        /// Also write a support bundle (tar): this report, the configuration with secrets
        /// redacted, versions, the daemon's status, metrics and recent log.
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
    },
    /// Print the running daemon's metrics (Prometheus text format).
    Metrics {
        /// The control socket (default: gateway.control_socket of the config).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::CheckConfig) => check_config(&cli.config),
        Some(Cmd::HashPassword) => hash_password(),
        Some(Cmd::MosquittoAcl) => mosquitto_acl(&cli.config),
        Some(Cmd::Journal { limit }) => {
            let config = match load(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match tether::journal::inspect::summary(&config.gateway.state_dir, limit) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tetherd: cannot read the journal: {e}");
                    ExitCode::from(EX_OSERR)
                }
            }
        }
        Some(Cmd::Status { json, socket }) => ask(&cli.config, socket, "status", |answer| {
            if json {
                return Ok(answer.to_owned());
            }
            serde_json::from_str(answer)
                .map(|v| tether::status::render(&v))
                .map_err(|e| format!("the daemon's answer is not a status snapshot: {e}"))
        }),
        Some(Cmd::Metrics { socket }) => ask(&cli.config, socket, "metrics", |answer| {
            Ok(answer.to_owned())
        }),
        Some(Cmd::Diagnose { bundle }) => runtime_then(diagnose(cli.config, bundle)),
        Some(Cmd::Demo) => demo(),
        None => {
            let config = match load(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            tether::logging::init(config.log.target, config.log.level_filter());
            runtime_then(run(cli.config, config))
        }
    }
}

#[cfg(feature = "devcloud")]
fn demo() -> ExitCode {
    tether::logging::init(tether::config::LogTarget::Stderr, log::LevelFilter::Error);
    runtime_then(tether::demo::run())
}

/// The demo runs the reference cloud, which this build (the .deb's) does not have.
#[cfg(not(feature = "devcloud"))]
fn demo() -> ExitCode {
    eprintln!(
        "tetherd: this build has no demo (it is built without the reference cloud); build from source with the default features to run it: cargo build --release && target/release/tetherd demo"
    );
    ExitCode::from(EX_UNAVAILABLE)
}

async fn diagnose(config: PathBuf, bundle: Option<PathBuf>) -> ExitCode {
    use tether::diagnose::{self, Level};
    let (report, loaded) = diagnose::run(&config).await;
    print!("{}", report.text());
    if let Some(path) = bundle {
        let bytes = diagnose::bundle(&report, &config, loaded.as_ref());
        match diagnose::write_bundle(&path, &bytes) {
            Ok(()) => println!("support bundle written to {}", path.display()),
            Err(e) => {
                eprintln!("tetherd: cannot write {}: {e}", path.display());
                return ExitCode::from(EX_OSERR);
            }
        }
    }
    if report.worst() == Level::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Asks the running daemon over its control socket and prints the answer as `show` makes
/// it. The socket is `--socket`, else the config's, else the default.
fn ask(
    config: &std::path::Path,
    socket: Option<PathBuf>,
    request: &str,
    show: impl Fn(&str) -> Result<String, String>,
) -> ExitCode {
    let path = socket.unwrap_or_else(|| match Config::load(config) {
        Ok(c) => c.gateway.control_socket,
        Err(_) => PathBuf::from("/run/tether/control.sock"),
    });
    if path.as_os_str().is_empty() {
        eprintln!(
            "tetherd: gateway.control_socket is \"\" in {}: the daemon has no control socket",
            config.display()
        );
        return ExitCode::from(EX_UNAVAILABLE);
    }
    match tether::status::socket::ask(&path, request) {
        Ok(answer) => match show(&answer) {
            Ok(text) => {
                print!("{text}");
                if !text.ends_with('\n') {
                    println!();
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tetherd: {e}");
                ExitCode::from(EX_SOFTWARE)
            }
        },
        Err(tether::status::socket::AskError::NotRunning { path }) => {
            eprintln!(
                "tetherd: not running (nothing answers on {path}; `systemctl status tetherd` tells more)"
            );
            ExitCode::from(EX_UNAVAILABLE)
        }
        Err(e) => {
            eprintln!("tetherd: {e}");
            ExitCode::from(EX_UNAVAILABLE)
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    match Config::load(path) {
        Ok(c) => Ok(c),
        Err(e) => {
            report(&e);
            Err(ExitCode::from(EX_CONFIG))
        }
    }
}

fn report(e: &ConfigError) {
    eprintln!("tetherd: {e}");
    if let ConfigError::Invalid { path, problems } = e {
        for p in problems {
            eprintln!("  {}: {p}", path.display());
        }
    }
}

fn hash_password() -> ExitCode {
    use std::io::{BufRead, IsTerminal};
    if std::io::stdin().is_terminal() {
        eprint!("password (shown as you type; use `read -rs` and a pipe to hide it): ");
    }
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("tetherd: cannot read the password: {e}");
        return ExitCode::from(EX_OSERR);
    }
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        eprintln!("tetherd: empty password");
        return ExitCode::from(EX_CONFIG);
    }
    match tether::transport::mqtt::auth::hash(password) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tetherd: cannot hash: {e}");
            ExitCode::from(EX_SOFTWARE)
        }
    }
}

fn mosquitto_acl(path: &std::path::Path) -> ExitCode {
    let file = match load(path) {
        Ok(c) => std::sync::Arc::new(c),
        Err(code) => return code,
    };
    // The cloud-managed appliances in force too, when this user may read the store.
    let running = match tether::fleet::Store::load(&file.gateway.state_dir) {
        Ok(store) => store.overlay(&file).0,
        Err(e) => {
            eprintln!("cloud-managed entries not included: {e}");
            file
        }
    };
    print!("{}", tether::transport::mqtt::acl::mosquitto_acl(&running));
    ExitCode::SUCCESS
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match load(path) {
        Ok(c) => {
            if let Err(e) = tether::app::check_files(&c) {
                eprintln!("{}: {e}", path.display());
                return ExitCode::from(EX_CONFIG);
            }
            println!(
                "{}: ok (gateway {}, {} appliance(s), {} group(s))",
                path.display(),
                c.gateway.id,
                c.appliances.len(),
                c.groups.len()
            );
            show_sources(&c);
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// The entries in force and where each comes from: the file, or the cloud (the store in
/// the state directory, when this user may read it).
fn show_sources(file: &Config) {
    use tether::fleet::Store;
    let store = match Store::load(&file.gateway.state_dir) {
        Ok(store) => store,
        Err(e) => {
            println!("cloud-managed entries: not read ({e})");
            return;
        }
    };
    let v = tether::fleet::sources(&std::sync::Arc::new(file.clone()), &store, None).view();
    let cloud = v.appliances.iter().filter(|a| a.source == "cloud").count();
    if cloud == 0 && v.ignored.is_empty() && v.groups.iter().all(|g| g.source == "file") {
        println!("cloud-managed entries: none ({})", store.path().display());
        return;
    }
    println!(
        "entries in force (source: file, or cloud = {}):",
        store.path().display()
    );
    for a in &v.appliances {
        let how = tether::status::transport_label(a.transport, a.profile);
        println!("  appliance {:<24} {how:<4} {}", a.id, a.source);
    }
    for g in &v.groups {
        println!("  group     {:<24}      {}", g.name, g.source);
    }
    for i in &v.ignored {
        println!(
            "  not in force: cloud-managed {} {}: {}",
            i.kind, i.id, i.why
        );
    }
}

fn runtime_then(fut: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(fut),
        Err(e) => {
            eprintln!("tetherd: cannot start the async runtime: {e}");
            ExitCode::from(EX_SOFTWARE)
        }
    }
}

async fn run(path: PathBuf, config: Config) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("tetherd: cannot install signal handlers");
        return ExitCode::from(EX_OSERR);
    };
    let grace = config.gateway.stop_grace;
    let started = App::start(&config).await;
    // The app keeps what it needs of it: one copy less on a box with 1 GB.
    drop(config);
    let mut app = match started {
        Ok(app) => app,
        Err(e @ (StartError::Uplink(_) | StartError::MqttTls(_))) => {
            log::error!("cannot start: {e}");
            return ExitCode::from(EX_CONFIG);
        }
        Err(e) => {
            log::error!("cannot start: {e}");
            return ExitCode::from(EX_OSERR);
        }
    };
    // Ready once the LAN endpoint listens and the journal is open, not when the cloud
    // answers: the appliances' side works without it.
    systemd::ready(&app.status_line());
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                systemd::reloading();
                log::info!("SIGHUP: reloading {}", path.display());
                match Config::load(&path) {
                    Ok(new) => app.reload(new).await,
                    Err(e) => {
                        log::error!("reload refused, the configuration in force is kept: {e}");
                        if let ConfigError::Invalid { problems, .. } = &e {
                            for p in problems {
                                log::error!("  {}: {p}", path.display());
                            }
                        }
                    }
                }
                systemd::ready(&app.status_line());
            }
        }
    }
    systemd::stopping();
    log::info!("stopping");
    app.shutdown(grace).await;
    ExitCode::SUCCESS
}
