//! Fuzzing entry points, shared by the cargo-fuzz targets in `fuzz/` and by the stable
//! regression test `tests/fuzz_regressions.rs`. Not part of the daemon's API.
//!
//! Each function takes arbitrary bytes, feeds them through the code the daemon runs on such
//! bytes, and must return normally for *every* input: a panic is a bug found. So is a hang,
//! which the harness turns into a panic (no input has a reason to wait for a timer: every
//! appliance used either is connected by the harness or answers `unreachable` at once).
//! Besides "does not panic", the harness checks two properties of the real code:
//! - every byte the MQTT endpoint writes back decodes as an MQTT packet;
//! - every result owed to the cloud can be read back from the journal (a result that
//!   cannot would never be delivered).
//!
//! The targets share one gateway per process, built from a small config (two MQTT
//! appliances with plain-text passwords, one BLE appliance, two groups, tight router
//! limits) by the same functions the daemon uses: [`Config::parse`](crate::config::Config::parse), [`Journal::open`](crate::journal::Journal::open) (in
//! a scratch directory under `/dev/shm`), [`Outbox`](crate::outbox::Outbox), [`mqtt::start`](crate::transport::mqtt::start) (listening on
//! 127.0.0.1, port chosen by the kernel) and [`Router::start`](crate::router::Router::start), on a current-thread tokio
//! runtime with real time. Command ids are forgotten between inputs, so every input is
//! handled as if the gateway saw it first. See `docs/fuzzing.md`.
//!
//! Only a build with the `fuzzing` feature has this module (the fuzz workspace and the
//! tests' build turn it on). One file per target holds its entry point and what it does on
//! the shared gateway; `harness` builds that gateway and checks it after each input;
//! `process` is the per-process plumbing (scratch directory, panic counting, logger).

mod appliance_message;
mod cloud_response;
mod config;
mod harness;
mod mqtt_stream;
mod process;

pub use appliance_message::appliance_message;
pub use cloud_response::{cloud_protobuf, cloud_response};
pub use config::config;
pub use mqtt_stream::mqtt_stream;
