//! The command line: `check-config` and `--version`, run as the real binary.

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
fn version_is_printed() {
    let out = tetherd(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}
