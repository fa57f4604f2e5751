//! Liveness and the cloud link's state, for systemd's watchdog, the STATUS line,
//! `tetherd status` and the metrics.
//!
//! The uplink driver beats once per loop turn (it turns at least every
//! [`BEAT_INTERVAL`], even while a poll is held), records the link state and the last
//! error, and counts its requests by outcome. The watchdog task (`systemd.rs`) reads this,
//! probes the router's and the hub's locks, and pings systemd only while all of that
//! answers: a wedged loop or a deadlocked lock stops the pings and systemd restarts the
//! daemon.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::cloud::session::{Failure, LinkState};

/// How often the driver loop turns when nothing else wakes it.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);

/// The two requests the gateway makes, as the metrics name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Poll = 0,
    Results = 1,
}

/// How a request ended, as the metrics name it.
pub const OUTCOMES: [&str; 5] = ["ok", "refused", "auth", "busy", "error"];
pub const REQUESTS: [&str; 2] = ["poll", "results"];

pub struct Health {
    start: Instant,
    /// Milliseconds since `start` of the driver loop's last turn.
    uplink_beat: AtomicU64,
    link: Mutex<Link>,
    /// By [`RequestKind`], then by [`OUTCOMES`].
    requests: [[AtomicU64; 5]; 2],
    /// Times the link came back online after it had failed.
    reconnects: AtomicU64,
    /// Woken when the link changes state (the STATUS line follows at once).
    pub changed: tokio::sync::Notify,
}

#[derive(Debug, Clone)]
pub struct Link {
    pub state: LinkState,
    /// When the link entered `state`.
    pub since: SystemTime,
    pub last_error: Option<String>,
    /// The link has been online at least once.
    ever_online: bool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            start: Instant::now(),
            uplink_beat: AtomicU64::new(0),
            link: Mutex::new(Link {
                state: LinkState::Connecting,
                since: SystemTime::now(),
                last_error: None,
                ever_online: false,
            }),
            requests: Default::default(),
            reconnects: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
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
        if link.state != state {
            if state == LinkState::Online {
                if link.ever_online {
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                link.ever_online = true;
            }
            link.state = state;
            link.since = SystemTime::now();
            self.changed.notify_one();
        }
        if error.is_some() || state == LinkState::Online {
            link.last_error = error;
        }
    }

    pub fn link(&self) -> Link {
        self.link.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts one request: `None` for an answer the gateway took, else how it failed.
    pub fn count(&self, request: RequestKind, failure: Option<Failure>) {
        let outcome = match failure {
            None => 0,
            Some(Failure::Refused) => 1,
            Some(Failure::Auth) => 2,
            Some(Failure::Busy(_)) => 3,
            Some(Failure::Transient) => 4,
        };
        self.requests[request as usize][outcome].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests by [`REQUESTS`] and [`OUTCOMES`].
    pub fn requests(&self) -> [[u64; 5]; 2] {
        let mut out = [[0; 5]; 2];
        for (r, row) in self.requests.iter().enumerate() {
            for (o, n) in row.iter().enumerate() {
                out[r][o] = n.load(Ordering::Relaxed);
            }
        }
        out
    }

    /// Polls the cloud answered.
    pub fn polls(&self) -> u64 {
        self.requests[RequestKind::Poll as usize][0].load(Ordering::Relaxed)
    }

    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// The cloud part of the STATUS line.
    pub fn link_summary(&self) -> String {
        let link = self.link();
        match link.last_error {
            Some(e) => format!("cloud {} ({e})", link.state.as_str()),
            None => format!("cloud {}", link.state.as_str()),
        }
    }
}
