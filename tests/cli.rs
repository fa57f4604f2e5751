//! The command line: `check-config` and `--version`, run as the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

use std::process::Command;

fn tetherd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tetherd"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn example_config_passes_check_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let out = tetherd(&["check-config", "--config", path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn broken_config_exits_78_naming_keys_and_lines() {
    let dir = std::env::temp_dir().join(format!("tether-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[gateway]\nid = \"gw\"\n[cloud]\nurl = \"https://c\"\npoll_wait = \"forever\"\n[mqtt]\nlisten = \"1.2.3.4:1883\"\nbogus = 1\n",
    )
    .unwrap();
    let out = tetherd(&["check-config", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("line 5: cloud.poll_wait"), "{stderr}");
    assert!(stderr.contains("line 8: mqtt.bogus"), "{stderr}");
    // Running the daemon with it fails the same way, before anything starts.
    let out = tetherd(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    let missing = tetherd(&["check-config", "--config", "/nonexistent/tether.toml"]);
    assert_eq!(missing.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/tether.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_opens_the_files_the_config_names() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("tether-cli-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = dir.join("files.toml");
    let write = |extra: &str| {
        std::fs::write(
            &path,
            format!("[gateway]\nid = \"gw\"\n[cloud]\nurl = \"https://c\"\n{extra}"),
        )
        .unwrap();
        tetherd(&["check-config", "--config", path.to_str().unwrap()])
    };
    // A token others can read: refused before the service ever starts, secret unsaid.
    let out = write(&format!("token_file = \"{}\"\n", token.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains(token.to_str().unwrap()), "{stderr}");
    assert!(!stderr.contains("s3cret-token"), "{stderr}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = write(&format!("token_file = \"{}\"\n", token.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A CA file that is not there.
    let ca = dir.join("missing-ca.pem");
    let out = write(&format!("ca_file = \"{}\"\n", ca.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("missing-ca.pem"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn version_is_printed() {
    let out = tetherd(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}
