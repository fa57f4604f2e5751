//! Liveness and status, for systemd's watchdog and STATUS line.
//!
//! The uplink driver beats once per loop turn (it turns at least every
//! [`BEAT_INTERVAL`], even while a poll is held) and records the link state and the last
//! error. The watchdog task (`systemd.rs`) reads this, probes the router's and the hub's
//! locks, and pings systemd only while all of that answers: a wedged loop or a deadlocked
//! lock stops the pings and systemd restarts the daemon.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::cloud::session::LinkState;

/// How often the driver loop turns when nothing else wakes it.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);

pub struct Health {
    start: Instant,
    /// Milliseconds since `start` of the driver loop's last turn.
    uplink_beat: AtomicU64,
    link: Mutex<Link>,
}

#[derive(Clone)]
struct Link {
    state: LinkState,
    last_error: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            start: Instant::now(),
            uplink_beat: AtomicU64::new(0),
            link: Mutex::new(Link {
                state: LinkState::Connecting,
                last_error: None,
            }),
        }
    }
}

impl Health {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn beat_uplink(&self) {
        self.uplink_beat.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Whether the driver loop turned within `within`.
    pub fn uplink_alive(&self, within: Duration) -> bool {
        let last = self.uplink_beat.load(Ordering::Relaxed);
        self.now_ms().saturating_sub(last) <= u64::try_from(within.as_millis()).unwrap_or(u64::MAX)
    }

    pub fn set_link(&self, state: LinkState, error: Option<String>) {
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        link.state = state;
        if error.is_some() || state == LinkState::Online {
            link.last_error = error;
        }
    }

    /// The cloud part of the STATUS line.
    pub fn link_summary(&self) -> String {
        let link = self.link.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match link.last_error {
            Some(e) => format!("cloud {} ({e})", link.state.as_str()),
            None => format!("cloud {}", link.state.as_str()),
        }
    }
}
