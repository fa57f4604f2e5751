//! The cloud link's identity and trust, with the real binary: bearer token (never logged),
//! wrong credentials, a wrong CA, and mTLS with a client certificate made here.

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

fn client_identity(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Test gateway CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["gw-test".to_owned()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "gw-test");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let ca_path = dir.join("client-ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let cert_path = dir.join("client.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    let key_path = secret_file(&dir.join("client-key.pem"), &key.serialize_pem());
    (ca_path, cert_path, key_path)
}

#[tokio::test]
async fn mtls_identity_is_accepted_and_its_absence_refused() {
    let dir = TempDir::new("mtls");
    let (client_ca, cert, key) = client_identity(dir.path());
    let cloud = DevCloud::start(
        dir.path(),
        &["--client-ca", client_ca.to_str().unwrap(), "--token", TOKEN],
    );
    let cfg = config(dir.path(), &cloud, &["m-1"], "");
    let base = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
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
