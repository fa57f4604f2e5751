//! The cloud link's identity and trust, with the real binary: bearer token (never logged),
//! wrong credentials, a wrong CA, and mTLS with a client certificate made here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use serde_json::json;

const TOKEN: &str = "tkn-7f3a9c2e5b8d1f4a6c0e9b2d7a5f3c1e";

fn secret_file(path: &Path, contents: &str) -> PathBuf {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_owned()
}

#[tokio::test]
async fn the_token_works_and_never_reaches_a_log_line() {
    let dir = TempDir::new("token");
    let cloud = DevCloud::start(dir.path(), &["--token", TOKEN]);
    let token = secret_file(&dir.path().join("token"), &format!("{TOKEN}\n"));
    let cfg = config(dir.path(), &cloud, &["t-1"], "");
    use_token_file(&cfg, &token);
    let daemon = Tetherd::start(&cfg);
    let _app = Appliance::connect(daemon.mqtt, "t-1", Behaviour::Echo).await;
    let id = cloud.enqueue(json!({"target": "t-1"})).await;
    assert_eq!(cloud.result(&id).await["result"]["status"], "ok");
    // Debug level, everything the daemon said: no token, not even part of it.
    let log = daemon.log.all().join("\n");
    assert!(log.contains("cloud link online"));
    assert!(!log.contains(&TOKEN[4..20]), "the token reached the log");
}

#[tokio::test]
async fn wrong_credentials_are_reported_once_and_retried_slowly() {
    let dir = TempDir::new("badtoken");
    let cloud = DevCloud::start(dir.path(), &["--token", TOKEN]);
    let token = secret_file(&dir.path().join("token"), "not-the-token");
    let cfg = config(dir.path(), &cloud, &["t-1"], "");
    use_token_file(&cfg, &token);
    let daemon = Tetherd::start(&cfg);
    let line = daemon
        .log
        .wait_async("refused the gateway's credentials")
        .await;
    assert!(line.contains("401"), "{line}");
    assert!(!line.contains("not-the-token"), "{line}");
    // One poll, then a slow retry (minutes), not a hammering loop.
    let stats = cloud.stats().await;
    assert!(stats["polls"].as_u64().unwrap() <= 1, "{stats}");
    // A world-readable token file is refused outright.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tetherd"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("permissions are 644"), "{stderr}");
}

#[tokio::test]
async fn a_cloud_with_a_certificate_from_another_ca_gets_no_connection() {
    let dir = TempDir::new("wrongca");
    let cloud = DevCloud::start(dir.path(), &[]);
    // A second devcloud's CA: valid, but not the one this cloud's certificate chains to.
    let other = TempDir::new("wrongca-other");
    let impostor = DevCloud::start(other.path(), &[]);
    let cfg = config(dir.path(), &cloud, &["t-1"], "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &cloud.ca_file().display().to_string(),
        &impostor.ca_file().display().to_string(),
    );
    std::fs::write(&cfg, text).unwrap();
    let daemon = Tetherd::start(&cfg);
    let line = daemon.log.wait_async("cloud request failed").await;
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    assert_eq!(cloud.stats().await["tls_handshakes"], 0);
    assert_eq!(cloud.stats().await["polls"], 0);
}

/// A client CA (written as `client-ca.pem`) and a gateway certificate it signed
/// (`client.pem`, `client-key.pem`). Returns the paths and the CA, to sign a renewal.
fn client_identity(dir: &Path) -> (PathBuf, PathBuf, PathBuf, Issuer<'static, KeyPair>) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Test gateway CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let ca_path = dir.join("client-ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let (cert_path, key_path) = client_leaf(dir, &issuer);
    (ca_path, cert_path, key_path, issuer)
}

/// A fresh key and gateway certificate signed by `issuer`, written over the previous ones.
fn client_leaf(dir: &Path, issuer: &Issuer<'static, KeyPair>) -> (PathBuf, PathBuf) {
    let mut leaf = CertificateParams::new(vec!["gw-test".to_owned()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "gw-test");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, issuer).unwrap();
    let cert_path = dir.join("client.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    let key_path = secret_file(&dir.join("client-key.pem"), &key.serialize_pem());
    (cert_path, key_path)
}

/// Writes `client_cert`/`client_key` into the test config; returns the config as it was.
fn with_client_identity(cfg: &Path, cert: &Path, key: &Path) -> String {
    let base = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(
        cfg,
        base.replace(
            "backoff_max = \"2s\"\n",
            &format!(
                "backoff_max = \"2s\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
                cert.display(),
                key.display()
            ),
        ),
    )
    .unwrap();
    base
}

#[tokio::test]
async fn mtls_identity_is_accepted_and_its_absence_refused() {
    let dir = TempDir::new("mtls");
    let (client_ca, cert, key, _) = client_identity(dir.path());
    let cloud = DevCloud::start(
        dir.path(),
        &["--client-ca", client_ca.to_str().unwrap(), "--token", TOKEN],
    );
    let cfg = config(dir.path(), &cloud, &["m-1"], "");
    let base = with_client_identity(&cfg, &cert, &key);
    {
        let daemon = Tetherd::start(&cfg);
        let _app = Appliance::connect(daemon.mqtt, "m-1", Behaviour::Echo).await;
        let id = cloud.enqueue(json!({"target": "m-1"})).await;
        assert_eq!(cloud.result(&id).await["result"]["status"], "ok");
    }
    // Without the client certificate (and no token), the TLS handshake is refused.
    std::fs::write(&cfg, base).unwrap();
    let daemon = Tetherd::start(&cfg);
    let line = daemon.log.wait_async("cloud request failed").await;
    assert!(!line.contains("cloud link online"));
    assert!(
        daemon.log.count("cloud link online") == 0,
        "{:#?}",
        daemon.log.all()
    );
}

/// A certificate renewed in place (same paths, new contents) is picked up by a reload; a
/// reload that changes nothing keeps the connection.
#[tokio::test]
async fn a_client_certificate_renewed_in_place_is_used_after_a_reload() {
    let dir = TempDir::new("mtls-renew");
    let (client_ca, cert, key, issuer) = client_identity(dir.path());
    let cloud = DevCloud::start(dir.path(), &["--client-ca", client_ca.to_str().unwrap()]);
    let cfg = config(dir.path(), &cloud, &["m-1"], "");
    with_client_identity(&cfg, &cert, &key);
    let daemon = Tetherd::start(&cfg);
    let _app = Appliance::connect(daemon.mqtt, "m-1", Behaviour::Echo).await;
    let round_trip = async || {
        let id = cloud.enqueue(json!({"target": "m-1"})).await;
        assert_eq!(cloud.result(&id).await["result"]["status"], "ok");
    };
    let handshakes = async || cloud.stats().await["tls_handshakes"].as_u64().unwrap();
    round_trip().await;
    assert_eq!(handshakes().await, 1);

    daemon.signal("HUP");
    daemon.log.wait_async("configuration reloaded").await;
    round_trip().await;
    assert_eq!(
        handshakes().await,
        1,
        "an unchanged identity costs no reconnect"
    );
    assert_eq!(daemon.log.count("cloud settings reloaded"), 0);

    let before = daemon.log.len();
    let (renewed_cert, renewed_key) = client_leaf(dir.path(), &issuer);
    assert_eq!((renewed_cert, renewed_key), (cert, key));
    daemon.signal("HUP");
    daemon
        .log
        .wait_from_async(
            before,
            "cloud settings reloaded; the next request uses them",
        )
        .await;
    // The held poll ends on the old connection; what follows goes out with the new
    // certificate on a new one.
    round_trip().await;
    round_trip().await;
    assert_eq!(handshakes().await, 2);
}
