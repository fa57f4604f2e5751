//! tether-conformance, tested: the devcloud passes every case; each deliberate break of
//! the protocol (`tether-devcloud --break`) fails the case that names it, and only by the
//! sentence that says why; a cloud that misbehaves badly (garbage, wrong statuses, a
//! stalled stream, a silent HTTP/2 peer) fails cases with a reason while the run goes on
//! to its summary. The example clouds in examples/ (Python on Starlette and Hypercorn,
//! Node.js on its http2 module) pass the kit and serve the real tetherd.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "conformance-token";

struct KitRun {
    success: bool,
    stdout: String,
}

impl KitRun {
    /// The line of case `id`.
    fn line(&self, id: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(id))
            .unwrap_or_else(|| panic!("no line for {id} in:\n{}", self.stdout))
    }

    fn verdict(&self, id: &str) -> &str {
        self.line(id).split_whitespace().next().unwrap()
    }

    fn summary(&self) -> &str {
        self.stdout
            .lines()
            .last()
            .filter(|l| l.ends_with(" skipped"))
            .unwrap_or_else(|| panic!("no closing line in:\n{}", self.stdout))
    }
}

async fn kit(url: &str, ca: &Path, fixture: &str, args: &[&str]) -> KitRun {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether-conformance"))
        .args(["--url", url, "--token", TOKEN, "--fixture", fixture, "--ca"])
        .arg(ca)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run tether-conformance");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.trim().is_empty() || out.status.code() != Some(2),
        "usage error: {stderr}"
    );
    KitRun {
        success: out.status.success(),
        stdout: String::from_utf8(out.stdout).unwrap(),
    }
}

async fn kit_on(cloud: &DevCloud, args: &[&str]) -> KitRun {
    let fixture = format!("http://{}/admin", cloud.admin);
    kit(&cloud.url(), &cloud.ca_file(), &fixture, args).await
}

fn devcloud(dir: &Path, extra: &[&str]) -> DevCloud {
    let mut args = vec!["--token", TOKEN];
    args.extend_from_slice(extra);
    DevCloud::start(dir, &args)
}

#[tokio::test]
async fn the_devcloud_passes_every_case_in_both_encodings() {
    let dir = TempDir::new("kit-pass");
    let cloud = devcloud(dir.path(), &[]);
    let junit = dir.path().join("junit.xml");
    // "At once" with room for a loaded machine: the runs that must pass are not about
    // speed, and a held poll (10 s) is still told apart.
    let run = kit_on(
        &cloud,
        &[
            "--strict",
            "--prompt-ms",
            "5000",
            "--junit",
            junit.to_str().unwrap(),
        ],
    )
    .await;
    assert!(run.success, "{}", run.stdout);

    let list = Command::new(env!("CARGO_BIN_EXE_tether-conformance"))
        .arg("--list")
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert!(ids.len() > 30, "{ids:?}");
    assert!(ids.iter().any(|id| id.ends_with("@protobuf")));
    for id in &ids {
        let expected = match id.as_str() {
            // The devcloud serves protobuf, so it has no refusal to check.
            "protobuf.refusal" => "SKIP",
            _ => "PASS",
        };
        assert_eq!(run.verdict(id), expected, "{}", run.line(id));
    }
    assert_eq!(
        run.summary(),
        format!("{} passed, 0 failed, 1 skipped", ids.len() - 1)
    );

    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), ids.len(), "{xml}");
    assert!(xml.contains("failures=\"0\""), "{xml}");
    assert!(
        xml.contains("name=\"results.first-stays@protobuf\""),
        "{xml}"
    );
}

/// Each break of `tether-devcloud --break`, and the cases that must fail because of it
/// (with a word of the reason they must give).
const BREAKS: &[(&str, &[(&str, &str)])] = &[
    ("http1-only", &[("transport.h2", "http/1.1")]),
    ("no-auth", &[("auth.refused", "not 401 or 403")]),
    (
        "overhold",
        &[
            ("poll.wait-zero", "at once"),
            ("poll.wait-honoured", "held"),
        ],
    ),
    ("no-hold", &[("poll.held", "does not hold polls")]),
    (
        "hold-queued",
        &[
            ("poll.queued-at-once", "at once"),
            ("poll.queued-at-once@protobuf", "at once"),
        ],
    ),
    ("no-wake", &[("poll.wakes", "must end at once")]),
    (
        "shared-queue",
        &[("gateways.isolated", "was delivered to gateway")],
    ),
    (
        "ignore-capacity",
        &[
            ("capacity.zero", "capacity 0"),
            ("capacity.limit", "never more than capacity"),
            ("capacity.zero@protobuf", "capacity 0"),
            ("capacity.limit@protobuf", "never more than capacity"),
        ],
    ),
    (
        "unbounded-answer",
        &[
            ("poll.answer-size", "keep an answer under 4 MiB"),
            ("poll.answer-size@protobuf", "keep an answer under 4 MiB"),
        ],
    ),
    (
        "resend-pending",
        &[
            ("pending.not-resent", "listed it in pending"),
            ("pending.not-resent@protobuf", "listed it in pending"),
        ],
    ),
    (
        "no-resend",
        &[
            ("resend.lost", "is lost"),
            ("resend.lost@protobuf", "is lost"),
        ],
    ),
    (
        "keep-last",
        &[
            ("results.first-stays", "replaced the first"),
            ("results.first-stays@protobuf", "replaced the first"),
        ],
    ),
    (
        "store-duplicates",
        &[
            ("results.duplicate", "stored 2 times"),
            ("results.duplicate@protobuf", "stored 2 times"),
        ],
    ),
    (
        "ack-unstored",
        &[
            ("results.acked-stored", "ack only what is stored"),
            ("results.acked-stored@protobuf", "ack only what is stored"),
        ],
    ),
    (
        "no-ack",
        &[
            ("results.acked-stored", "was not acked"),
            ("results.duplicate", "was not acked"),
        ],
    ),
    (
        "flush-waits",
        &[
            ("flush.second-stream", "must not wait for the poll"),
            ("flush.second-stream@protobuf", "must not wait for the poll"),
        ],
    ),
    (
        "strict-fields",
        &[
            ("unknown-fields", "400"),
            ("unknown-fields@protobuf", "400"),
        ],
    ),
    (
        "reset-oversize",
        &[("limits.body-413", "got no complete answer")],
    ),
    (
        "lenient",
        &[
            ("errors.malformed-400", "500"),
            ("errors.malformed-400@protobuf", "500"),
        ],
    ),
    (
        "protobuf-as-json",
        &[("protobuf.encoding", "Content-Type \"application/json\"")],
    ),
];

#[tokio::test]
async fn each_deliberate_break_fails_the_case_that_names_it() {
    let dir = TempDir::new("kit-breaks");
    let runs = BREAKS.iter().map(|(rule, cases)| {
        let sub = dir.path().join(rule);
        async move {
            let cloud = devcloud(&sub, &["--break", rule]);
            let only = cases
                .iter()
                .map(|(id, _)| *id)
                .collect::<Vec<_>>()
                .join(",");
            let run = kit_on(&cloud, &["--strict", "--only", &only]).await;
            (rule, cases, run)
        }
    });
    // A few at a time: twenty debug clouds and kits at once on two cores would test the
    // machine's patience more than the kit.
    use futures_util::StreamExt;
    let done: Vec<_> = futures_util::stream::iter(runs)
        .buffer_unordered(5)
        .collect()
        .await;
    for (rule, cases, run) in done {
        assert!(
            !run.success,
            "--break {rule}: the kit passed:\n{}",
            run.stdout
        );
        for (id, why) in *cases {
            let line = run.line(id);
            assert!(
                line.starts_with("FAIL") && line.contains(why),
                "--break {rule}: {id} should fail saying {why:?}:\n{line}"
            );
        }
    }
}

#[tokio::test]
async fn should_failures_count_only_with_strict() {
    let dir = TempDir::new("kit-strict");
    let cloud = devcloud(&dir.path().join("no-hold"), &["--break", "no-hold"]);
    // A cloud that does not hold polls breaks a SHOULD only: the MUST cases that need a
    // held poll to show anything are skipped, not failed.
    let only = "poll.held,poll.wait-zero,poll.wakes,flush.second-stream,transport.ping";
    let lenient = kit_on(&cloud, &["--only", only]).await;
    assert!(lenient.success, "{}", lenient.stdout);
    assert_eq!(lenient.verdict("poll.held"), "FAIL");
    assert_eq!(lenient.verdict("poll.wakes"), "SKIP");
    assert_eq!(lenient.verdict("flush.second-stream"), "SKIP");
    assert_eq!(lenient.summary(), "2 passed, 1 failed, 2 skipped");
    let strict = kit_on(&cloud, &["--strict", "--only", "poll.held"]).await;
    assert!(!strict.success, "{}", strict.stdout);
    // --skip leaves a case out entirely.
    let skipped = kit_on(
        &cloud,
        &[
            "--strict",
            "--only",
            "poll.*",
            "--skip",
            "poll.held,poll.wakes,poll.queued*,poll.wait-honoured",
        ],
    )
    .await;
    assert!(skipped.success, "{}", skipped.stdout);
    assert!(!skipped.stdout.contains("poll.held"), "{}", skipped.stdout);

    // An HTTP/1.1-only cloud: transport.h2 (a SHOULD) fails, everything else is skipped.
    let h1 = devcloud(&dir.path().join("h1"), &["--break", "http1-only"]);
    let run = kit_on(&h1, &[]).await;
    assert!(run.success, "{}", run.stdout);
    assert_eq!(run.verdict("transport.h2"), "FAIL");
    assert!(
        run.summary().starts_with("0 passed, 1 failed, "),
        "{}",
        run.stdout
    );
    assert!(!kit_on(&h1, &["--strict"]).await.success);
}

#[tokio::test]
async fn a_json_only_cloud_skips_protobuf_and_should_refuse_it_with_415() {
    let dir = TempDir::new("kit-json-only");
    let cases = ["--only", "protobuf.*,*@protobuf,poll.wait-zero"];
    let cloud = devcloud(&dir.path().join("415"), &["--json-only"]);
    let run = kit_on(&cloud, &[&["--strict"], &cases[..]].concat()).await;
    assert!(run.success, "{}", run.stdout);
    assert_eq!(run.verdict("protobuf.refusal"), "PASS");
    assert_eq!(run.verdict("poll.wait-zero"), "PASS");
    assert_eq!(run.verdict("protobuf.encoding"), "SKIP");
    assert!(
        run.line("results.first-stays@protobuf")
            .contains("JSON-only")
    );

    let cloud = devcloud(
        &dir.path().join("400"),
        &["--json-only", "--json-only-status", "400"],
    );
    let run = kit_on(&cloud, &cases).await;
    assert!(run.success, "a SHOULD failure alone: {}", run.stdout);
    assert!(run.line("protobuf.refusal").starts_with("FAIL"));
    assert!(run.line("protobuf.refusal").contains("415"));
}

#[tokio::test]
async fn a_misbehaving_cloud_fails_cases_with_a_reason_and_the_run_goes_on() {
    let dir = TempDir::new("kit-faults");
    let faults = [
        (json!({"mode": "malformed"}), "not a valid json answer"),
        (json!({"mode": "status", "status": 500}), "answered 500"),
        (json!({"mode": "stall"}), "did not finish within 4 s"),
        (json!({"mode": "reset"}), "reset the stream"),
        (
            json!({"mode": "huge", "bytes": 8_000_000}),
            "body over 4194304 bytes",
        ),
        (json!({"mode": "refuse"}), "TLS handshake"),
    ];
    let runs = faults.iter().enumerate().map(|(n, (fault, why))| {
        let sub = dir.path().join(n.to_string());
        async move {
            let cloud = devcloud(&sub, &[]);
            cloud.post("/admin/faults", fault.clone()).await;
            let only = "poll.queued-at-once,results.first-stays";
            // The stall is what the case timeout is for; the other faults get room to
            // show their own reason on a loaded machine.
            let limit = if fault["mode"] == "stall" { "4" } else { "30" };
            let run = kit_on(&cloud, &["--only", only, "--case-timeout", limit]).await;
            (fault, why, run)
        }
    });
    for (fault, why, run) in futures_util::future::join_all(runs).await {
        assert!(!run.success, "{fault}: {}", run.stdout);
        for id in ["poll.queued-at-once", "results.first-stays"] {
            let line = run.line(id);
            assert!(
                line.starts_with("FAIL") && line.contains(why),
                "{fault}: {line}"
            );
        }
        assert_eq!(run.summary(), "0 passed, 2 failed, 0 skipped", "{fault}");
    }
}

/// A TLS peer that takes HTTP/2 (its SETTINGS go out) and then never says another word:
/// no PING answer, no response.
#[tokio::test]
async fn a_silent_http2_peer_fails_the_ping_case_within_its_timeout() {
    let dir = TempDir::new("kit-silent");
    // The devcloud only mints the certificates.
    let cloud = devcloud(dir.path(), &[]);
    let certs = &cloud.cert_dir;
    tether::cloud::tls::install_crypto_provider();
    let chain = rustls_pki_types::CertificateDer::pem_file_iter(certs.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    use rustls_pki_types::pem::PemObject;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(certs.join("server-key.pem")).unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // An empty SETTINGS frame: the server's connection preface.
                let _ = tls.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
                let mut sink = [0u8; 4096];
                while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    let url = format!("https://localhost:{port}");
    let fixture = format!("http://{}/admin", cloud.admin);
    let run = kit(
        &url,
        &cloud.ca_file(),
        &fixture,
        &[
            "--only",
            "transport.ping,poll.wait-zero",
            "--case-timeout",
            "8",
        ],
    )
    .await;
    server.abort();
    assert!(!run.success, "{}", run.stdout);
    assert!(
        run.line("transport.ping")
            .contains("no answer to a PING within 5s"),
        "{}",
        run.stdout
    );
    assert!(
        run.line("poll.wait-zero")
            .contains("did not finish within 8 s"),
        "{}",
        run.stdout
    );
    assert_eq!(run.summary(), "0 passed, 2 failed, 0 skipped");
}

// ---- the example clouds --------------------------------------------------------------

/// An example cloud from examples/, on a free loopback port with the devcloud's
/// certificates; killed when dropped.
struct Example {
    _child: KillOnDrop,
    port: u16,
    /// Its stderr (a line per request), shown when a test fails.
    log: std::path::PathBuf,
}

impl Example {
    fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

/// The end of a log file, for a failure message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.char_indices().rev().nth(6000).map_or(0, |(i, _)| i);
    text[start..].to_owned()
}

fn start_example(program: &str, script: &str, dir: &Path, certs: &Path) -> Example {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let log = dir.join("cloud.log");
    let mut child = Command::new(program)
        .arg(&script)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--test-fixtures",
            "--token",
            TOKEN,
        ])
        .arg("--cert")
        .arg(certs.join("server.pem"))
        .arg("--key")
        .arg(certs.join("server-key.pem"))
        .arg("--db")
        .arg(dir.join("cloud.db"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} {}: {e}", script.display()));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child = KillOnDrop(Some(child));
    let port = line
        .trim()
        .strip_prefix("READY https=")
        .and_then(|addr| addr.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{} did not start (READY line {line:?}): {}",
                script.display(),
                tail(&log)
            )
        });
    Example {
        _child: child,
        port,
        log,
    }
}

/// The kit passes (SHOULDs included; protobuf skipped, since the examples speak JSON
/// only and refuse it with 415), then a real tetherd runs a command through the cloud.
async fn example_passes_and_serves_tetherd(tag: &str, program: &str, script: &str) {
    let dir = TempDir::new(tag);
    let certs_from = devcloud(&dir.path().join("devcloud"), &[]);
    let example = start_example(program, script, dir.path(), &certs_from.cert_dir);
    let url = format!("https://localhost:{}", example.port);
    let fixture = format!("{url}/test");
    let ca = certs_from.ca_file();
    let run = kit(
        &url,
        &ca,
        &fixture,
        &["--strict", "--prompt-ms", "5000", "--max-body", "1048576"],
    )
    .await;
    let log = example.log_tail();
    assert!(run.success, "{}\ncloud log:\n{log}", run.stdout);
    assert_eq!(run.verdict("protobuf.refusal"), "PASS", "{}", run.stdout);
    assert!(run.summary().contains(" 0 failed"), "{}", run.stdout);

    // The real daemon against it.
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = dir.path().join("tetherd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"{GATEWAY}\"\nstate_dir = \"{}\"\ncontrol_socket = \"\"\n\n[cloud]\nurl = \"{url}\"\nca_file = \"{}\"\ntoken_file = \"{}\"\nbackoff_max = \"2s\"\n\n[mqtt]\nlisten = \"127.0.0.1:0\"\nstartup_grace = \"0s\"\n\n{}",
            dir.path().join("state").display(),
            ca.display(),
            token.display(),
            mqtt_appliance("lamp-1"),
        ),
    )
    .unwrap();
    let daemon = Tetherd::start(&cfg);
    let _lamp = Appliance::connect(daemon.mqtt, "lamp-1", Behaviour::Echo).await;

    let http = certs_from.http.clone();
    let id = format!("{tag}-1");
    let enqueued = http
        .post(format!("{fixture}/gateways/{GATEWAY}/commands"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(json!({"id": id, "target": "lamp-1", "payload": {"power": "on"}}).to_string())
        .send()
        .await
        .unwrap();
    assert!(enqueued.status().is_success(), "{enqueued:?}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let stored = loop {
        let bytes = http
            .get(format!("{fixture}/gateways/{GATEWAY}/results"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        let found: Vec<Value> = body["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["command_id"] == id.as_str())
            .cloned()
            .collect();
        if !found.is_empty() {
            break found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no result for {id}; cloud log:\n{}",
            example.log_tail()
        );
        // Polls the cloud's store, which has no way to wait for a result.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["status"], "ok", "{stored:?}");
    assert_eq!(stored[0]["payload"]["echo"], json!({"power": "on"}));
}

#[tokio::test]
async fn the_python_example_cloud_passes_the_kit_and_serves_tetherd() {
    example_passes_and_serves_tetherd(
        "py-cloud",
        "/usr/bin/python3",
        "examples/python-cloud/cloud.py",
    )
    .await;
}

#[tokio::test]
async fn the_node_example_cloud_passes_the_kit_and_serves_tetherd() {
    example_passes_and_serves_tetherd("node-cloud", "node", "examples/node-cloud/cloud.js").await;
}
