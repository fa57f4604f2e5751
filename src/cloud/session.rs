//! The long-poll session as a pure state machine: no sockets, no clock of its own.
//!
//! The driver (`cloud::driver`) feeds it what happened (`poll_done`, `flush_done`,
//! `results_ready`) with the current instant, asks it what to do next (`poll_action`) and
//! sleeps until `poll_timeout`. Keeping the timing rules here lets them be tested with
//! plain `Instant` arithmetic: backoff with full jitter, `Retry-After`, the server-steered
//! cadence and the result linger.
//!
//! Rules it enforces:
//! - exactly one poll in flight; the next starts when the previous one ends (plus the
//!   server's `interval_s`, or a backoff after a failure);
//! - the first poll on a new link asks for no wait, so the connection is proven at once;
//! - an early flush of results only while a poll is held on a connection already proven by
//!   a successful response (a cold client firing two requests opens two connections);
//! - one early flush at a time: a result goes at once when none is in flight, and results
//!   finishing while one is in flight share the next request instead of one request each;
//!   a `linger` above 0 (off by default) also spaces early flushes at least that far apart;
//! - failures back off exponentially with full jitter (base 500 ms, cap `backoff_max`);
//!   401/403 retries slowly; 429/503 honour `Retry-After`.

use std::time::Duration;

use tokio::time::Instant;

use super::wire::Cadence;

/// Backoff base: the first retry waits up to this long.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Credentials were refused: retrying fast cannot help and may look like an attack.
pub const AUTH_RETRY: Duration = Duration::from_secs(300);
/// A server asking for more than this is capped, so a typo in `Retry-After` cannot park a
/// gateway for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// While stopping, a failed flush is tried again this soon (no poll will carry its results).
const DRAIN_RETRY: Duration = Duration::from_secs(1);

/// Timing knobs, from `[cloud]`.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub poll_wait: Duration,
    pub backoff_max: Duration,
    pub linger: Duration,
    /// `cloud.ping_interval`: the HTTP/2 PING interval unless the server sets `ping_s`.
    pub ping_interval: Duration,
}

/// The range a server's `ping_s` is held to: more often than every 10 s costs a metered
/// link for nothing; less often than hourly leaves a dead link unnoticed for too long.
pub const PING_S_RANGE: std::ops::RangeInclusive<u64> = 10..=3600;

/// What the driver should start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start a poll the server may hold for `wait`.
    Poll { wait: Duration },
    /// Send the owed results on a second stream while the poll is held.
    Flush,
}

/// How a request failed, as far as timing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 401/403: credentials are wrong; retry slowly.
    Auth,
    /// 429/503: the server said when to come back (or did not).
    Busy(Option<Duration>),
    /// Network, TLS, timeouts, other 5xx, unparseable responses.
    Transient,
    /// 400/413/422 on a request carrying results: the driver narrows the batch and retries
    /// at once; it quarantines a lone refused result, so this cannot loop.
    Refused,
}

/// Where the link stands, for STATUS lines and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Online,
    Backoff,
    AuthFailed,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Online => "online",
            LinkState::Backoff => "backoff",
            LinkState::AuthFailed => "auth-failed",
        }
    }
}

/// The poll cadence in force: the config's wait until the server steers it.
#[derive(Debug, Clone, Copy)]
struct Timing {
    wait_s: u64,
    interval_s: u64,
}

#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    cadence: Timing,
    next_poll: Instant,
    poll_in_flight: bool,
    flush_in_flight: bool,
    flush_due: Option<Instant>,
    /// When the last early flush started; the next may not start before this + linger.
    last_flush: Option<Instant>,
    /// Results became ready while a flush was in flight: flush again after it.
    more_ready: bool,
    /// The last poll succeeded, so the pooled connection is known and multiplexed.
    link_proven: bool,
    /// A poll was in flight when the client was replaced: its success proves the old
    /// client's connection, not the new one's.
    stale_poll: bool,
    /// The server set the wait (`poll.wait_s`): a reload's `cloud.poll_wait` does not
    /// replace it.
    steered: bool,
    /// The PING interval the server set (`poll.ping_s`); `None`: the config's.
    ping: Option<Duration>,
    /// An early flush failed (a 503, a 401, a broken stream) or moved nothing: no more
    /// until the held poll ends, so a cloud shedding load is not sent one request per
    /// finished result; the results ride the next poll.
    flush_held: bool,
    /// Polls started so far, and the number of the one a running flush went out beside.
    polls: u64,
    flush_beside: u64,
    failures: u32,
    state: LinkState,
    /// Stopping: no more polls; owed results still go out by flush.
    draining: bool,
    rng: fastrand::Rng,
}

impl Session {
    pub fn new(cfg: SessionConfig, now: Instant, rng: fastrand::Rng) -> Session {
        let cadence = Timing {
            wait_s: cfg.poll_wait.as_secs(),
            interval_s: 0,
        };
        Session {
            cfg,
            cadence,
            next_poll: now,
            poll_in_flight: false,
            flush_in_flight: false,
            flush_due: None,
            last_flush: None,
            more_ready: false,
            link_proven: false,
            stale_poll: false,
            steered: false,
            ping: None,
            flush_held: false,
            polls: 0,
            flush_beside: 0,
            failures: 0,
            state: LinkState::Connecting,
            draining: false,
            rng,
        }
    }

    pub fn state(&self) -> LinkState {
        self.state
    }

    /// Consecutive failed polls.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The next thing to start, if any is due at `now`. Call until it returns `None`.
    pub fn poll_action(&mut self, now: Instant) -> Option<Action> {
        if !self.draining && !self.poll_in_flight && self.next_poll <= now {
            self.poll_in_flight = true;
            self.polls += 1;
            // Results that were waiting for a flush ride in this poll instead.
            self.flush_due = None;
            self.more_ready = false;
            // Until a response proves the connection, poll without waiting: the link is
            // then known (and multiplexed) at once, so early flushes and owed results do
            // not wait a whole poll period after every (re)connect.
            let wait = if self.link_proven {
                Duration::from_secs(self.cadence.wait_s)
            } else {
                Duration::ZERO
            };
            return Some(Action::Poll { wait });
        }
        if let Some(due) = self.flush_due
            && due <= now
            && self.can_flush()
        {
            self.flush_due = None;
            self.flush_in_flight = true;
            self.flush_beside = self.polls;
            self.last_flush = Some(now);
            return Some(Action::Flush);
        }
        None
    }

    /// When `poll_action` next has something to return; `None`: only an event will tell.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let poll = (!self.poll_in_flight && !self.draining).then_some(self.next_poll);
        let flush = self.flush_due.filter(|_| self.can_flush());
        match (poll, flush) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn can_flush(&self) -> bool {
        (self.poll_in_flight || self.draining)
            && self.link_proven
            && !self.flush_in_flight
            && !self.flush_held
    }

    /// Stop polling (the daemon is stopping); the driver drops the held poll. Results
    /// that finish from now on still go out by early flush while the link is up.
    pub fn drain(&mut self, now: Instant) {
        self.draining = true;
        self.poll_in_flight = false;
        self.flush_held = false;
        self.results_ready(now);
    }

    /// New timing knobs (after a configuration reload); they apply from the next decision.
    pub fn reconfigure(&mut self, cfg: SessionConfig) {
        if !self.steered {
            self.cadence.wait_s = cfg.poll_wait.as_secs();
        }
        self.cfg = cfg;
    }

    /// The HTTP/2 PING interval the link should use now: the server's `ping_s`, else
    /// `cloud.ping_interval`. The driver rebuilds its client when this changes.
    pub fn ping_interval(&self) -> Duration {
        self.ping.unwrap_or(self.cfg.ping_interval)
    }

    /// New credentials or settings arrived: retry at once instead of after the backoff
    /// (an operator who fixed the token should not wait five minutes).
    pub fn retry_now(&mut self, now: Instant) {
        if !self.poll_in_flight && self.next_poll > now {
            self.next_poll = now;
        }
    }

    /// The HTTP client was replaced: its first request opens a connection, so nothing may
    /// run beside it (two requests on a cold client open two connections) until a poll on
    /// it succeeds.
    pub fn link_changed(&mut self) {
        self.link_proven = false;
        self.stale_poll = self.poll_in_flight;
    }

    /// New results are owed to the cloud.
    pub fn results_ready(&mut self, now: Instant) {
        if !(self.poll_in_flight || self.draining) || !self.link_proven {
            // They ride in the next poll.
            return;
        }
        if self.flush_in_flight {
            self.more_ready = true;
        } else if self.flush_due.is_none() {
            let earliest = self.last_flush.map_or(now, |t| t + self.cfg.linger);
            self.flush_due = Some(earliest.max(now));
        }
    }

    /// A poll ended. `Ok` carries the cadence the server asked for, if any.
    pub fn poll_done(&mut self, now: Instant, outcome: Result<Option<Cadence>, Failure>) {
        self.poll_in_flight = false;
        self.flush_due = None;
        self.flush_held = false;
        match outcome {
            Ok(cadence) => {
                if let Some(c) = cadence {
                    self.steered |= c.wait_s.is_some();
                    // Like `wait_s`, an absent `ping_s` keeps the value in force: answers
                    // that leave it out must not flip the interval (and reconnect).
                    if let Some(s) = c.ping_s {
                        let s = s.clamp(*PING_S_RANGE.start(), *PING_S_RANGE.end());
                        self.ping = Some(Duration::from_secs(s));
                    }
                    self.cadence = Timing {
                        wait_s: c.wait_s.map_or(self.cadence.wait_s, |w| w.min(3600)),
                        interval_s: c.interval_s.unwrap_or(0).min(86_400),
                    };
                }
                self.failures = 0;
                self.link_proven = !std::mem::take(&mut self.stale_poll);
                self.state = LinkState::Online;
                self.next_poll = now + Duration::from_secs(self.cadence.interval_s);
            }
            Err(failure) => {
                self.link_proven = false;
                self.stale_poll = false;
                let delay = self.delay_after(failure);
                self.next_poll = now + delay;
            }
        }
    }

    /// Polls follow each other at once (no `interval_s` from the cloud): only then does
    /// cutting a held poll bring the next one forward.
    pub fn long_polling(&self) -> bool {
        self.cadence.interval_s == 0
    }

    /// The driver dropped the poll in flight (the gateway has room again, the poll said
    /// it had none): poll again at once. Nothing about the link is learnt from it.
    pub fn poll_cut(&mut self, now: Instant) {
        if !self.poll_in_flight {
            return;
        }
        self.poll_in_flight = false;
        self.flush_due = None;
        self.flush_held = false;
        // A poll still on a replaced client proved nothing; the next is on the new one.
        self.stale_poll = false;
        // As after an answer: a cloud that spaces polls (`interval_s`) is still obeyed.
        self.next_poll = now + Duration::from_secs(self.cadence.interval_s);
    }

    /// An early flush ended; `ok` false (it failed, or the cloud took none of its results)
    /// leaves its results, and any that finish meanwhile, for the next poll.
    pub fn flush_done(&mut self, now: Instant, ok: bool) {
        self.flush_in_flight = false;
        if ok {
            if std::mem::take(&mut self.more_ready) {
                self.results_ready(now);
            }
        } else if self.draining {
            // No poll will carry them: try again shortly, within the stop grace.
            self.flush_due = Some(now + DRAIN_RETRY);
        } else if self.poll_in_flight && self.flush_beside == self.polls {
            // Held until the poll it went out beside ends.
            self.flush_held = true;
        } else {
            // It outlived its poll; the one held now was built on a fresh answer, so its
            // results may try once more beside it.
            self.more_ready = false;
            self.results_ready(now);
        }
    }

    fn delay_after(&mut self, failure: Failure) -> Duration {
        match failure {
            Failure::Refused => {
                self.state = LinkState::Online;
                Duration::ZERO
            }
            Failure::Auth => {
                self.failures = self.failures.saturating_add(1);
                self.state = LinkState::AuthFailed;
                AUTH_RETRY.max(self.cfg.backoff_max)
            }
            Failure::Busy(Some(after)) => {
                self.failures = self.failures.saturating_add(1);
                self.state = LinkState::Backoff;
                after.min(MAX_RETRY_AFTER)
            }
            Failure::Busy(None) | Failure::Transient => {
                self.failures = self.failures.saturating_add(1);
                self.state = LinkState::Backoff;
                self.jittered_backoff()
            }
        }
    }

    /// Full jitter: uniform in [0, min(cap, base * 2^(failures-1))].
    fn jittered_backoff(&mut self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(20);
        let ceiling = BACKOFF_BASE
            .saturating_mul(1u32 << exp)
            .min(self.cfg.backoff_max);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.rng.u64(0..=ms))
    }
}

#[cfg(test)]
mod tests;
