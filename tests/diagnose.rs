//! `tetherd diagnose`, with the real binaries: it passes against the devcloud with the
//! daemon running, fails with a hint against a wrong CA, an expired certificate and an
//! unreachable host, and its support bundle holds no secret.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

const TOKEN: &str = "diag-7c1e5b0f9a2d4e68b3a1c0ffee123456";

fn diagnose(cfg: &Path, extra: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tetherd"))
        .args(["diagnose", "--config", cfg.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, text)
}

/// The line of check `name` and the hint under it, if any.
fn check<'a>(report: &'a str, name: &str) -> (&'a str, Option<&'a str>) {
    let mut lines = report.lines();
    while let Some(line) = lines.next() {
        if line
            .get(5..)
            .is_some_and(|l| l.starts_with(&format!("{name} ")))
        {
            let hint = lines.next().filter(|l| l.contains("hint: "));
            return (line, hint);
        }
    }
    panic!("no {name} line in:\n{report}");
}

fn secret_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test]
async fn diagnose_passes_against_the_devcloud_and_its_bundle_holds_no_secret() {
    let dir = TempDir::new("diag-ok");
    let cloud = DevCloud::start(dir.path(), &["--token", TOKEN]);
    let cfg = config(dir.path(), &cloud, &["lamp-1"], "");
    let token = dir.path().join("token");
    secret_file(&token, &format!("{TOKEN}\n"));
    use_token_file(&cfg, &token);
    let daemon = Tetherd::start(&cfg);
    let _app = Appliance::connect(daemon.mqtt, "lamp-1", Behaviour::Echo).await;
    let bundle = dir.path().join("bundle.tar");
    let (out, report) = diagnose(&cfg, &["--bundle", bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{report}");
    for name in [
        "config",
        "files",
        "dns",
        "tcp",
        "tls",
        "cloud certificate",
        "clock",
        "mqtt listen",
        "journal",
        "daemon",
    ] {
        let (line, hint) = check(&report, name);
        assert!(line.starts_with("ok "), "{report}");
        assert!(hint.is_none(), "{report}");
    }
    assert!(check(&report, "tls").0.contains("HTTP/2"), "{report}");
    assert!(
        check(&report, "daemon")
            .0
            .contains("1 of 1 appliance(s) online"),
        "{report}"
    );
    assert!(report.contains("0 failure(s)"), "{report}");

    // The bundle: a tar that `tar` reads, with the parts named, and no secret in any.
    let mode = std::fs::metadata(&bundle).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let list = Command::new("tar")
        .args(["-tf", bundle.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(list.status.success());
    let names = String::from_utf8_lossy(&list.stdout);
    for part in [
        "report.txt",
        "config.toml",
        "versions.txt",
        "status.json",
        "metrics.txt",
        "journal.txt",
        "log.txt",
    ] {
        assert!(
            names.contains(&format!("tether-diagnose/{part}")),
            "{names}"
        );
    }
    let all = Command::new("tar")
        .args(["-xOf", bundle.to_str().unwrap()])
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&all.stdout);
    assert!(all.contains("lamp-1"), "the bundle lacks the config");
    assert!(
        all.contains("tether_commands_total"),
        "the bundle lacks metrics"
    );
    assert!(!all.contains(TOKEN), "the token is in the bundle");
    assert!(
        !all.contains(&TOKEN[4..20]),
        "part of the token is in the bundle"
    );
    assert!(
        !all.contains(&password("lamp-1")),
        "an appliance password is in the bundle"
    );
    assert!(all.contains("<redacted>"));
}

#[tokio::test]
async fn diagnose_fails_with_a_hint_against_a_wrong_ca() {
    let dir = TempDir::new("diag-ca");
    let cloud = DevCloud::start(dir.path(), &[]);
    let other = TempDir::new("diag-ca-other");
    let stranger = DevCloud::start(other.path(), &[]);
    let cfg = config(dir.path(), &cloud, &[], "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &cloud.ca_file().display().to_string(),
        &stranger.ca_file().display().to_string(),
    );
    std::fs::write(&cfg, text).unwrap();
    let (out, report) = diagnose(&cfg, &[]);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let (line, hint) = check(&report, "tls");
    assert!(line.starts_with("fail"), "{report}");
    assert!(
        hint.unwrap()
            .contains("not signed by a CA in cloud.ca_file"),
        "{report}"
    );
    assert!(check(&report, "tcp").0.starts_with("ok"), "{report}");
}

#[tokio::test]
async fn diagnose_fails_with_a_hint_against_an_expired_certificate() {
    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, date_time_ymd,
    };
    let dir = TempDir::new("diag-expired");
    // The devcloud serves what its certificate directory holds: a good CA, and a server
    // certificate that expired in 2021.
    let certs = dir.path().join("devcloud-certs");
    std::fs::create_dir_all(&certs).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = date_time_ymd(2020, 1, 1);
    ca.not_after = date_time_ymd(2100, 1, 1);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.not_before = date_time_ymd(2020, 1, 1);
    leaf.not_after = date_time_ymd(2021, 1, 1);
    let leaf_key = KeyPair::generate().unwrap();
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    std::fs::write(certs.join("ca.pem"), ca_pem).unwrap();
    secret_file(&certs.join("ca-key.pem"), &issuer.key().serialize_pem());
    std::fs::write(certs.join("server.pem"), leaf_cert.pem()).unwrap();
    secret_file(&certs.join("server-key.pem"), &leaf_key.serialize_pem());
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &[], "");
    let (out, report) = diagnose(&cfg, &[]);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let (line, hint) = check(&report, "tls");
    assert!(line.starts_with("fail"), "{report}");
    assert!(hint.unwrap().contains("expired"), "{report}");
}

/// The MQTT TLS endpoint's certificate, which nothing on the cloud side watches: expired
/// here, so the check fails and names the key to renew.
#[tokio::test]
async fn diagnose_fails_on_an_expired_mqtt_tls_certificate() {
    use rcgen::{CertificateParams, KeyPair, date_time_ymd};
    let dir = TempDir::new("diag-mqtt-cert");
    let mut params = CertificateParams::new(vec!["gateway.local".to_owned()]).unwrap();
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2021, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("mqtt.pem"), dir.path().join("mqtt-key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    secret_file(&key_path, &key.serialize_pem());
    let cloud = DevCloud::start(dir.path(), &[]);
    let mqtt = format!(
        "listen = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert_path.display(),
        key_path.display()
    );
    let cfg = config_with_mqtt(dir.path(), &cloud, &[], &mqtt, "");
    let (out, report) = diagnose(&cfg, &[]);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let (line, hint) = check(&report, "mqtt certificate");
    assert!(
        line.starts_with("fail") && line.contains("expired on 2021-01-01"),
        "{report}"
    );
    assert!(hint.unwrap().contains("renew mqtt.tls_cert"), "{report}");
    // The cloud side is fine: only this check fails.
    assert!(check(&report, "tls").0.starts_with("ok"), "{report}");
}

#[tokio::test]
async fn diagnose_fails_with_a_hint_against_an_unreachable_host() {
    let dir = TempDir::new("diag-down");
    let cloud = DevCloud::start(dir.path(), &[]);
    let cfg = config(dir.path(), &cloud, &[], "");
    let closed = free_port();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&cloud.url(), &format!("https://127.0.0.1:{closed}"));
    std::fs::write(&cfg, text).unwrap();
    let (out, report) = diagnose(&cfg, &[]);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let (line, hint) = check(&report, "tcp");
    assert!(line.starts_with("fail"), "{report}");
    assert!(line.contains(&format!("127.0.0.1:{closed}")), "{report}");
    assert!(hint.unwrap().contains("firewall"), "{report}");
    // No daemon runs: a warning, not a failure of its own.
    assert!(check(&report, "daemon").0.starts_with("warn"), "{report}");
}
