//! The committed protobuf types (src/cloud/proto/tether.v1.rs) are what prost-build makes
//! of docs/proto/tether/v1/tether.proto, so the schema clouds compile against and the code
//! the gateway runs cannot drift apart. Compiled with protox (pure Rust): no protoc needed.
//!
//! After changing the .proto: `TETHER_BLESS=1 cargo test --test proto_schema`, then review
//! the diff.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn committed_types_match_the_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto_dir = root.join("docs/proto");
    let fds = protox::compile(["tether/v1/tether.proto"], [&proto_dir]).expect("schema compiles");
    let out = tempdir();
    prost_build::Config::new()
        .out_dir(&out)
        .compile_fds(fds)
        .expect("prost-build runs");
    let generated = std::fs::read_to_string(out.join("tether.v1.rs")).unwrap();
    let committed_path = root.join("src/cloud/proto/tether.v1.rs");
    if std::env::var_os("TETHER_BLESS").is_some() {
        std::fs::write(&committed_path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        committed == generated,
        "src/cloud/proto/tether.v1.rs is stale: run TETHER_BLESS=1 cargo test --test proto_schema"
    );
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-proto-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
