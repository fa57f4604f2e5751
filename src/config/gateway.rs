//! `[gateway]`: who this gateway is at the cloud, where it keeps its state, how it stops.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::spans::{Checker, HOUR};
use super::{Apply, Section, check_id};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// This gateway's id at the cloud; part of every request path. Required: an empty one
    /// is reported by [`GatewayConfig::check`] with the other problems, not alone.
    #[serde(default)]
    pub id: String,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// On SIGTERM, how long running commands may take to finish (keep it below the
    /// unit's TimeoutStopSec).
    #[serde(default = "default_stop_grace", with = "humantime_serde")]
    pub stop_grace: Duration,
    /// The control socket `tetherd status` and `tetherd metrics` ask; empty: none.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
}

impl Section for GatewayConfig {
    const NAME: &'static str = "gateway";
    // The id is in every request path and the journal's directory; the stop grace is read
    // by the signal handler that started with the daemon.
    const KEYS: &'static [(&'static str, Apply)] = &[
        ("id", Apply::Restart),
        ("state_dir", Apply::Restart),
        ("stop_grace", Apply::Restart),
        ("control_socket", Apply::Restart),
    ];
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/tether")
}

fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/tether/control.sock")
}

fn default_stop_grace() -> Duration {
    Duration::from_secs(20)
}

impl GatewayConfig {
    pub(super) fn check(&self, v: &mut Checker) {
        if self.id.is_empty() {
            v.err(
                &["gateway", "id"],
                "required (this gateway's id at the cloud)",
            );
        } else if let Err(e) = check_id(&self.id) {
            v.err(&["gateway", "id"], e);
        }
        if !self.state_dir.is_absolute() {
            v.err(&["gateway", "state_dir"], "must be an absolute path");
        }
        v.at_most("gateway", "stop_grace", self.stop_grace, HOUR, "1h");
        if !self.control_socket.as_os_str().is_empty() && !self.control_socket.is_absolute() {
            v.err(
                &["gateway", "control_socket"],
                "must be an absolute path (or \"\" for none)",
            );
        }
    }
}
