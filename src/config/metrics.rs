//! `[metrics]`: the optional loopback HTTP listener for Prometheus scrapes.
//!
//! The same metrics are always available on the control socket (`tetherd metrics`); the
//! listener is for a scraper on the gateway itself (a local Prometheus agent, or a tunnel),
//! so it binds to loopback only.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::spans::Checker;
use super::{Apply, Section};

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served; off when unset.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

impl Section for MetricsConfig {
    const NAME: &'static str = "metrics";
    // The listener is bound once, at start.
    const KEYS: &'static [(&'static str, Apply)] = &[("listen", Apply::Restart)];
}

impl MetricsConfig {
    pub(super) fn check(&self, v: &mut Checker) {
        if let Some(addr) = self.listen
            && !addr.ip().is_loopback()
        {
            v.err(
                &["metrics", "listen"],
                format!(
                    "{addr} is not a loopback address: the metrics listener has no authentication, so it binds to 127.0.0.1 or ::1 only (the control socket serves them too)"
                ),
            );
        }
    }
}
