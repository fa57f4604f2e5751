//! Tether: an inside-out edge gateway.
//!
//! `tetherd` keeps one outbound HTTPS long poll to the cloud and fans the commands it
//! receives out to LAN appliances; results travel back in the next poll. Data flow:
//!
//! ```text
//! cloud::client <- cloud::driver --commands--> router --jobs--> worker --> transport::{mqtt,ble}
//!   (HTTP/2)           ^                        |  \                          |
//!                      +------- outbox <--------+   journal (SQLite)          v
//!                                 ^ <---------------results, events------ appliances
//! ```
//!
//! Modules import downwards only (`tests/layering.rs`): `config` and `cloud::wire` at the
//! bottom; `journal`, `outbox`; `transport`; `router`; the cloud link and `health`;
//! `status`; `fleet`; `app` at the top.
//!
//! - [`config`]: the TOML file, parsed strictly, one file per section.
//! - [`cloud`]: protocol types ([`cloud::wire`]), the sans-IO session ([`cloud::session`]),
//!   the uplink loop ([`cloud::driver`]) and its HTTP client ([`cloud::client`]).
//! - [`router`]: targets, groups, per-appliance order, TTLs, aggregation.
//! - [`transport`]: the appliance side; [`transport::mqtt`] is the daemon's own endpoint.
//! - [`journal`]: commands and results on disk before they are acted on or owed.
//! - [`outbox`]: results and events owed to the cloud.
//! - [`fleet`]: gateway commands (`$gateway`): cloud-managed appliances and groups over
//!   the file's.
//! - [`diagnose`]: `tetherd diagnose` and the support bundle.
//! - [`status`]: the STATUS line, `tetherd status`, the metrics and the control socket.
//! - [`app`]: wiring, signals and ordered shutdown.

pub mod app;
pub mod cloud;
pub mod config;
// `tetherd demo` runs the reference cloud, so only a build with it has the demo.
#[cfg(feature = "devcloud")]
pub mod demo;
// Fault hooks for the end-to-end tests; only their build has them.
#[cfg(feature = "fault-injection")]
mod fault;
// Entry points for the fuzz targets in fuzz/ and tests/fuzz_regressions.rs (docs/fuzzing.md);
// only a build with the `fuzzing` feature has them.
pub mod diagnose;
pub mod fleet;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod journal;
pub mod logging;
pub mod outbox;
pub mod router;
pub mod status;
pub mod systemd;
pub mod transport;
