//! `[router]`: command timeouts and the bounds on what is accepted and queued.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::spans::{Checker, DAY};
use super::{Apply, Section};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Appliance timeout for commands that carry no `timeout_ms`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Upper bound on any command's `timeout_ms`.
    #[serde(default = "default_max_timeout", with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Commands accepted and not finished, across all appliances (the advertised capacity).
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Commands accepted for one appliance and not finished: the one it runs (or that
    /// waits for it to come back) and those queued behind it.
    #[serde(default = "default_max_queue")]
    pub max_queue_per_appliance: usize,
    /// How long a command without a TTL waits for an appliance that is away.
    #[serde(default = "default_max_offline_wait", with = "humantime_serde")]
    pub max_offline_wait: Duration,
    /// Largest command payload accepted from the cloud, in bytes of JSON.
    #[serde(default = "default_max_command_bytes")]
    pub max_command_bytes: usize,
}

impl Section for RouterConfig {
    const NAME: &'static str = "router";
    // The router reads its limits per command (`Router::reconfigure`).
    const KEYS: &'static [(&'static str, Apply)] = &[
        ("default_timeout", Apply::Live),
        ("max_timeout", Apply::Live),
        ("max_pending", Apply::Live),
        ("max_queue_per_appliance", Apply::Live),
        ("max_offline_wait", Apply::Live),
        ("max_command_bytes", Apply::Live),
    ];
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_max_pending() -> usize {
    1024
}
fn default_max_queue() -> usize {
    256
}
fn default_max_offline_wait() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_command_bytes() -> usize {
    64 * 1024
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            default_timeout: default_timeout(),
            max_timeout: default_max_timeout(),
            max_pending: default_max_pending(),
            max_queue_per_appliance: default_max_queue(),
            max_offline_wait: default_max_offline_wait(),
            max_command_bytes: default_max_command_bytes(),
        }
    }
}

impl RouterConfig {
    pub(super) fn check(&self, v: &mut Checker) {
        v.above_zero("router", "default_timeout", self.default_timeout);
        if self.max_timeout < self.default_timeout {
            v.err(
                &["router", "max_timeout"],
                "must not be less than default_timeout",
            );
        }
        v.at_most("router", "default_timeout", self.default_timeout, DAY, "1d");
        v.at_most("router", "max_timeout", self.max_timeout, DAY, "1d");
        v.above_zero("router", "max_offline_wait", self.max_offline_wait);
        v.at_most(
            "router",
            "max_offline_wait",
            self.max_offline_wait,
            7 * DAY,
            "7d",
        );
        v.at_least_one("router", "max_command_bytes", self.max_command_bytes as u64);
        v.at_least_one("router", "max_pending", self.max_pending as u64);
        v.at_least_one(
            "router",
            "max_queue_per_appliance",
            self.max_queue_per_appliance as u64,
        );
    }
}
