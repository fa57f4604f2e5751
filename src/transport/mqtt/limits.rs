//! Rate limits of the LAN endpoint, so one device cannot keep the gateway busy.
//!
//! - [`ConnectRate`]: new connections per source address, checked by the accept loops
//!   (`mod.rs`) before a socket is read. A device in a reconnect loop, or one guessing
//!   passwords (each guess costs an Argon2 verification), is closed at once.
//! - [`Bucket`] is also used per appliance by the hub (events and the reports of an
//!   appliance's refused or malformed messages) and per connection by `conn.rs`
//!   (SUBSCRIBE/UNSUBSCRIBE churn).
//!
//! Time is tokio's `Instant`, so the limits are tested with paused time.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use tokio::time::Instant;

/// A token bucket: holds up to `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
    /// Something was refused since the last token was granted (one log line per spell).
    limited: bool,
}

/// What [`Bucket::take`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    Granted,
    /// Refused; `first` is true for the first refusal of a spell.
    Refused {
        first: bool,
    },
}

impl Bucket {
    pub fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
            limited: false,
        }
    }

    pub fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Take {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.limited = false;
            Take::Granted
        } else {
            let first = !self.limited;
            self.limited = true;
            Take::Refused { first }
        }
    }

    /// Full again: forgetting it loses nothing.
    fn is_full(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        self.tokens >= burst
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
    }
}

/// Source addresses tracked at once. Beyond it, sources whose bucket is full again are
/// forgotten; if none is, new sources are refused until some are (a flood of spoofed or
/// rotating addresses cannot grow the table).
pub const MAX_SOURCES: usize = 4096;

/// Connection attempts per source address.
#[derive(Debug)]
pub struct ConnectRate {
    rate: f64,
    burst: f64,
    sources: HashMap<IpAddr, Bucket>,
}

impl ConnectRate {
    /// `per_second` sustained, bursts of three times that.
    pub fn new(per_second: u32) -> ConnectRate {
        let mut limiter = ConnectRate {
            rate: 0.0,
            burst: 0.0,
            sources: HashMap::new(),
        };
        limiter.set_rate(per_second);
        limiter
    }

    pub fn set_rate(&mut self, per_second: u32) {
        self.rate = f64::from(per_second.max(1));
        self.burst = self.rate * 3.0;
    }

    /// Whether a connection from `peer` may proceed now.
    pub fn admit(&mut self, peer: IpAddr, now: Instant) -> Take {
        let key = source_key(peer);
        let (rate, burst) = (self.rate, self.burst);
        if !self.sources.contains_key(&key) && self.sources.len() >= MAX_SOURCES {
            self.sources.retain(|_, b| !b.is_full(rate, burst, now));
            if self.sources.len() >= MAX_SOURCES {
                return Take::Refused { first: false };
            }
        }
        self.sources
            .entry(key)
            .or_insert_with(|| Bucket::full(burst, now))
            .take(rate, burst, now)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.sources.len()
    }
}

/// One device usually owns a whole IPv6 /64 and can pick any address in it; an
/// IPv4-mapped address is the IPv4 device it stands for.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let now = Instant::now();
        let mut b = Bucket::full(4.0, now);
        for _ in 0..4 {
            assert_eq!(b.take(2.0, 4.0, now), Take::Granted);
        }
        assert_eq!(b.take(2.0, 4.0, now), Take::Refused { first: true });
        assert_eq!(b.take(2.0, 4.0, now), Take::Refused { first: false });
        // Half a second at 2/s buys one more.
        let later = now + Duration::from_millis(500);
        assert_eq!(b.take(2.0, 4.0, later), Take::Granted);
        assert_eq!(b.take(2.0, 4.0, later), Take::Refused { first: true });
        // It never holds more than the burst, however long it rested.
        let much_later = later + Duration::from_secs(3600);
        for _ in 0..4 {
            assert_eq!(b.take(2.0, 4.0, much_later), Take::Granted);
        }
        assert!(matches!(b.take(2.0, 4.0, much_later), Take::Refused { .. }));
    }

    #[test]
    fn connect_rate_is_per_source() {
        let now = Instant::now();
        let mut r = ConnectRate::new(1); // burst 3
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(r.admit(a, now), Take::Granted);
        }
        assert_eq!(r.admit(a, now), Take::Refused { first: true });
        assert_eq!(
            r.admit(b, now),
            Take::Granted,
            "another device is not affected"
        );
        assert_eq!(r.admit(a, now + Duration::from_secs(1)), Take::Granted);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let now = Instant::now();
        let mut r = ConnectRate::new(1);
        for i in 0..3 {
            let ip: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            assert_eq!(r.admit(ip, now), Take::Granted);
        }
        let other_address_same_64: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(matches!(
            r.admit(other_address_same_64, now),
            Take::Refused { .. }
        ));
        let v4: IpAddr = "192.0.2.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(r.admit(v4, now), Take::Granted);
        }
        assert!(matches!(r.admit(mapped, now), Take::Refused { .. }));
    }

    #[test]
    fn source_table_is_bounded() {
        let now = Instant::now();
        let mut r = ConnectRate::new(1);
        for i in 0..MAX_SOURCES as u32 {
            let ip = IpAddr::V4((0x0a00_0000 + i).into());
            assert_eq!(r.admit(ip, now), Take::Granted);
        }
        assert_eq!(r.tracked(), MAX_SOURCES);
        let newcomer: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(
            matches!(r.admit(newcomer, now), Take::Refused { .. }),
            "table full of active sources: a new one waits"
        );
        // Once the others' buckets have refilled they are forgotten and room is made.
        let later = now + Duration::from_secs(10);
        assert_eq!(r.admit(newcomer, later), Take::Granted);
        assert_eq!(r.tracked(), 1);
    }
}
