//! Link slots: the policy that decides which BLE appliance may hold a radio link.
//!
//! A Pi's controller manages a handful of links at once (`ble.max_connections`, default 4),
//! and when every waiter retries at once BlueZ produces connection-slot storms. So links
//! are a scheduled resource: [`Slots`] is a pure state machine (no I/O, time passed in) that
//! the async wrapper in `pool.rs` drives. Rules:
//!
//! * A link is `Busy` (a command holds it, connecting or exchanging), `Idle` (kept open for
//!   the appliance's next command) or `Closing` (being disconnected). All three count
//!   against the cap, so the number of links up never exceeds it.
//! * Requests queue in arrival order (FIFO across appliances). A waiter whose appliance has
//!   an idle link takes it at once: that costs no slot, so it delays nobody. A waiter that
//!   needs a new link gets one in queue order: a free slot if there is one, else a slot
//!   already closing, else the least recently used idle link is closed for it. No later
//!   waiter overtakes an earlier one, and since every finished command leaves an idle
//!   link behind (or a free slot), the head of the queue is always served next: none
//!   starves.
//! * A link idle for `idle_after` is closed.
//!
//! The methods return [`Action`]s (grant a waiter, close an idle link) for the caller to
//! perform; a close ends with [`Slots::closed`].

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// Identifies one request.
pub type Ticket = u64;

/// What the caller must do after a state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `ticket` holds a slot for `appliance` now; `reuse`: hand it the appliance's idle link.
    Grant {
        ticket: Ticket,
        appliance: String,
        reuse: bool,
    },
    /// Disconnect `appliance`'s idle link, then call [`Slots::closed`].
    Close { appliance: String },
}

/// How a command leaves its link when it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Connected and healthy: keep it for the next command.
    Idle,
    /// Still up but unwanted: the caller disconnects it, then calls [`Slots::closed`].
    Close,
    /// Already down (or never came up): the slot is free at once.
    Gone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Busy,
    Idle { since: Instant },
    Closing,
}

struct Waiter {
    ticket: Ticket,
    appliance: String,
}

pub struct Slots {
    max: usize,
    idle_after: Duration,
    links: HashMap<String, Link>,
    queue: VecDeque<Waiter>,
    next_ticket: Ticket,
}

impl Slots {
    pub fn new(max: usize, idle_after: Duration) -> Slots {
        Slots {
            max: max.max(1),
            idle_after,
            links: HashMap::new(),
            queue: VecDeque::new(),
            next_ticket: 1,
        }
    }

    /// Links counted against the cap (busy, idle and closing).
    pub fn open(&self) -> usize {
        self.links.len()
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Queues a request for `appliance`; the returned actions may already grant it.
    pub fn request(&mut self, appliance: &str, now: Instant) -> (Ticket, Vec<Action>) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.queue.push_back(Waiter {
            ticket,
            appliance: appliance.to_owned(),
        });
        (ticket, self.pump(now))
    }

    /// Withdraws a request that is still waiting (its deadline passed). Returns false if
    /// it was already granted: the caller then owns the slot and must release it.
    pub fn cancel(&mut self, ticket: Ticket) -> bool {
        let before = self.queue.len();
        self.queue.retain(|w| w.ticket != ticket);
        self.queue.len() != before
    }

    /// The command holding `appliance`'s slot is done with it.
    pub fn release(&mut self, appliance: &str, how: Release, now: Instant) -> Vec<Action> {
        if self.links.get(appliance) != Some(&Link::Busy) {
            return Vec::new();
        }
        let mut actions = Vec::new();
        match how {
            Release::Idle => {
                self.links
                    .insert(appliance.to_owned(), Link::Idle { since: now });
            }
            Release::Close => {
                self.links.insert(appliance.to_owned(), Link::Closing);
                actions.push(Action::Close {
                    appliance: appliance.to_owned(),
                });
            }
            Release::Gone => {
                self.links.remove(appliance);
            }
        }
        actions.extend(self.pump(now));
        actions
    }

    /// A close asked for by a [`Action::Close`] (or [`Release::Close`]) has finished.
    pub fn closed(&mut self, appliance: &str, now: Instant) -> Vec<Action> {
        if self.links.get(appliance) == Some(&Link::Closing) {
            self.links.remove(appliance);
        }
        self.pump(now)
    }

    /// `appliance`'s link went down by itself; matters only while it is idle (a busy one is
    /// released by its command).
    pub fn dropped(&mut self, appliance: &str, now: Instant) -> Vec<Action> {
        if !matches!(self.links.get(appliance), Some(Link::Idle { .. })) {
            return Vec::new();
        }
        self.links.remove(appliance);
        self.pump(now)
    }

    /// Every idle link is gone at once (the adapter went away).
    pub fn drop_idle(&mut self, now: Instant) -> Vec<Action> {
        self.links.retain(|_, l| !matches!(l, Link::Idle { .. }));
        self.pump(now)
    }

    /// Whether `appliance` has an idle link.
    pub fn is_idle(&self, appliance: &str) -> bool {
        matches!(self.links.get(appliance), Some(Link::Idle { .. }))
    }

    /// Closes the links idle for `idle_after` or longer.
    pub fn reap(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        for (appliance, link) in self.links.iter_mut() {
            if let Link::Idle { since } = *link
                && now.saturating_duration_since(since) >= self.idle_after
            {
                *link = Link::Closing;
                actions.push(Action::Close {
                    appliance: appliance.clone(),
                });
            }
        }
        actions
    }

    /// When the next idle link is due for [`Slots::reap`].
    pub fn next_reap(&self) -> Option<Instant> {
        self.links
            .values()
            .filter_map(|l| match l {
                Link::Idle { since } => Some(*since + self.idle_after),
                _ => None,
            })
            .min()
    }

    /// Serves the queue as far as the cap allows.
    fn pump(&mut self, _now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        // First, waiters whose appliance has an idle link: no slot is spent, nobody waits
        // longer for it, and the link is no longer a candidate for eviction.
        let mut i = 0;
        while i < self.queue.len() {
            let appliance = &self.queue[i].appliance;
            if matches!(self.links.get(appliance), Some(Link::Idle { .. })) {
                if let Some(w) = self.queue.remove(i) {
                    self.links.insert(w.appliance.clone(), Link::Busy);
                    actions.push(Action::Grant {
                        ticket: w.ticket,
                        appliance: w.appliance,
                        reuse: true,
                    });
                }
            } else {
                i += 1;
            }
        }
        // Then new links, in queue order: a free slot, else a slot that is already closing
        // (each is promised to the earliest waiter without one, so no more links are
        // closed than needed), else the least recently used idle link is closed. Within
        // one pass free slots only shrink, so no waiter overtakes an earlier one.
        let mut promised = self.links.values().filter(|l| **l == Link::Closing).count();
        let mut i = 0;
        while i < self.queue.len() {
            let appliance = self.queue[i].appliance.clone();
            if self.links.contains_key(&appliance) {
                // Its own link is busy or closing: it waits for that, holding no promise.
                i += 1;
                continue;
            }
            if self.links.len() < self.max {
                if let Some(w) = self.queue.remove(i) {
                    self.links.insert(w.appliance.clone(), Link::Busy);
                    actions.push(Action::Grant {
                        ticket: w.ticket,
                        appliance: w.appliance,
                        reuse: false,
                    });
                }
                continue;
            }
            if promised > 0 {
                promised -= 1;
                i += 1;
                continue;
            }
            match self.least_recently_used_idle() {
                Some(victim) => {
                    self.links.insert(victim.clone(), Link::Closing);
                    actions.push(Action::Close { appliance: victim });
                    // This waiter takes the slot when the close finishes.
                    i += 1;
                }
                // Every slot is busy: nobody further back can get one either.
                None => break,
            }
        }
        actions
    }

    fn least_recently_used_idle(&self) -> Option<String> {
        self.links
            .iter()
            .filter_map(|(a, l)| match l {
                Link::Idle { since } => Some((*since, a)),
                _ => None,
            })
            .min()
            .map(|(_, a)| a.clone())
    }
}

#[cfg(test)]
mod tests;
