//! The link pool: [`Slots`] (the policy) plus what it decides about, for async callers.
//!
//! A command calls [`Pool::acquire`] and waits, up to its deadline, for a [`Permit`]; the
//! permit carries the appliance's idle link when one is kept. When the command is done it
//! hands the link back ([`Permit::release`]): kept idle, to be closed, or gone. Idle links
//! live here, under the same lock as the policy, so "the policy says idle" and "the link
//! object is here" never disagree. Links the policy closes go to the closer (a channel
//! read by the transport, which disconnects them and calls [`Pool::closed`]); the reaper
//! task ([`Pool::reap_idle`]) closes links idle for `ble.idle_disconnect`.
//!
//! The std `Mutex` is held for map updates only, never across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::scheduler::{Action, Release, Slots, Ticket};

/// A link the closer must disconnect, then report with [`Pool::closed`].
pub type ToClose<L> = (String, L);

pub struct Pool<L> {
    inner: Mutex<Inner<L>>,
    closer: mpsc::UnboundedSender<ToClose<L>>,
    /// Wakes the reaper when an idle deadline may have moved.
    changed: Notify,
}

struct Inner<L> {
    slots: Slots,
    idle: HashMap<String, L>,
    /// Requests waiting for a grant; the value is the reused idle link, if any.
    waiters: HashMap<Ticket, oneshot::Sender<Option<L>>>,
}

/// How a command hands its link back.
pub enum Kept<L> {
    Idle(L),
    Close(L),
    Gone,
}

impl<L: Send + 'static> Pool<L> {
    pub fn new(
        max: usize,
        idle_after: Duration,
    ) -> (Arc<Pool<L>>, mpsc::UnboundedReceiver<ToClose<L>>) {
        let (closer, to_close) = mpsc::unbounded_channel();
        let pool = Pool {
            inner: Mutex::new(Inner {
                slots: Slots::new(max, idle_after),
                idle: HashMap::new(),
                waiters: HashMap::new(),
            }),
            closer,
            changed: Notify::new(),
        };
        (Arc::new(pool), to_close)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<L>> {
        // Plain data, consistent at every unlock: a panic elsewhere does not spoil it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (links open, requests waiting, cap), for logs and errors.
    pub fn usage(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        (inner.slots.open(), inner.slots.waiting(), inner.slots.max())
    }

    /// Waits for a slot for `appliance` until `until`; `None` if none came in time.
    pub async fn acquire(self: &Arc<Self>, appliance: &str, until: Instant) -> Option<Permit<L>> {
        let (tx, rx) = oneshot::channel();
        let ticket = {
            let mut inner = self.lock();
            let (ticket, actions) = inner.slots.request(appliance, Instant::now());
            inner.waiters.insert(ticket, tx);
            self.apply(&mut inner, actions);
            ticket
        };
        let mut wait = Waiting {
            pool: self.clone(),
            appliance: appliance.to_owned(),
            ticket,
            rx: Some(rx),
        };
        let rx = wait.rx.as_mut()?;
        match tokio::time::timeout_at(until, rx).await {
            Ok(Ok(link)) => {
                wait.rx = None;
                Some(Permit {
                    pool: self.clone(),
                    appliance: appliance.to_owned(),
                    link,
                    released: false,
                })
            }
            // Sender dropped (cannot happen while the pool lives) or the deadline passed:
            // `wait`'s drop withdraws the request, or hands back a grant that raced it.
            _ => None,
        }
    }

    /// A close handed to the closer is done.
    pub fn closed(&self, appliance: &str) {
        let mut inner = self.lock();
        let actions = inner.slots.closed(appliance, Instant::now());
        self.apply(&mut inner, actions);
    }

    /// `appliance`'s link went down by itself. Returns the idle link object, if it was
    /// idle, for the caller to drop (a busy one is its command's business).
    pub fn dropped(&self, appliance: &str) -> Option<L> {
        let mut inner = self.lock();
        if !inner.slots.is_idle(appliance) {
            return None;
        }
        let link = inner.idle.remove(appliance);
        let actions = inner.slots.dropped(appliance, Instant::now());
        self.apply(&mut inner, actions);
        link
    }

    /// Every idle link is dead (the adapter went away); returns them to be dropped.
    pub fn drop_idle(&self) -> Vec<L> {
        let mut inner = self.lock();
        let links = inner.idle.drain().map(|(_, l)| l).collect();
        let actions = inner.slots.drop_idle(Instant::now());
        self.apply(&mut inner, actions);
        links
    }

    /// Closes idle links when they reach `idle_after`, until `cancel`.
    pub async fn reap_idle(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let changed = self.changed.notified();
            let next = self.lock().slots.next_reap();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = changed => continue,
                _ = sleep_until_some(next) => {}
            }
            let mut inner = self.lock();
            let actions = inner.slots.reap(Instant::now());
            self.apply(&mut inner, actions);
        }
    }

    fn release(&self, inner: &mut Inner<L>, appliance: &str, kept: Kept<L>) {
        let how = match kept {
            Kept::Idle(link) => {
                inner.idle.insert(appliance.to_owned(), link);
                Release::Idle
            }
            Kept::Close(link) => {
                // Parked where the Close action will find it.
                inner.idle.insert(appliance.to_owned(), link);
                Release::Close
            }
            Kept::Gone => Release::Gone,
        };
        let actions = inner.slots.release(appliance, how, Instant::now());
        self.apply(inner, actions);
        self.changed.notify_one();
    }

    /// Performs the policy's actions; some lead to more (a grant nobody takes, a close
    /// with nothing to close), hence the work list.
    fn apply(&self, inner: &mut Inner<L>, actions: Vec<Action>) {
        let mut work = actions;
        while let Some(action) = work.pop() {
            match action {
                Action::Grant {
                    ticket,
                    appliance,
                    reuse,
                } => {
                    let link = if reuse {
                        inner.idle.remove(&appliance)
                    } else {
                        None
                    };
                    let unsent = match inner.waiters.remove(&ticket) {
                        Some(tx) => tx.send(link).err(),
                        None => Some(link),
                    };
                    if let Some(link) = unsent {
                        // The waiter is gone: the slot goes back at once.
                        let how = match link {
                            Some(link) => {
                                inner.idle.insert(appliance.clone(), link);
                                Release::Idle
                            }
                            None => Release::Gone,
                        };
                        work.extend(inner.slots.release(&appliance, how, Instant::now()));
                    }
                }
                Action::Close { appliance } => match inner.idle.remove(&appliance) {
                    Some(link) => {
                        if let Err(mpsc::error::SendError((appliance, _))) =
                            self.closer.send((appliance, link))
                        {
                            // No closer (shutting down): the link object is dropped.
                            work.extend(inner.slots.closed(&appliance, Instant::now()));
                        }
                    }
                    None => work.extend(inner.slots.closed(&appliance, Instant::now())),
                },
            }
        }
    }
}

async fn sleep_until_some(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
}

/// A request in the queue; dropping it (deadline passed, caller cancelled) withdraws it.
struct Waiting<L: Send + 'static> {
    pool: Arc<Pool<L>>,
    appliance: String,
    ticket: Ticket,
    rx: Option<oneshot::Receiver<Option<L>>>,
}

impl<L: Send + 'static> Drop for Waiting<L> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut inner = self.pool.lock();
        if inner.slots.cancel(self.ticket) {
            inner.waiters.remove(&self.ticket);
            return;
        }
        // Granted just as we gave up: hand the slot (and any link) straight back.
        let kept = match rx.try_recv() {
            Ok(Some(link)) => Kept::Idle(link),
            _ => Kept::Gone,
        };
        self.pool.release(&mut inner, &self.appliance, kept);
    }
}

/// A held slot. Release it with [`Permit::release`]; dropping it releases it as gone.
pub struct Permit<L: Send + 'static> {
    pool: Arc<Pool<L>>,
    appliance: String,
    link: Option<L>,
    released: bool,
}

impl<L: Send + 'static> Permit<L> {
    /// The appliance's kept link, if the grant came with one.
    pub fn take_link(&mut self) -> Option<L> {
        self.link.take()
    }

    pub fn release(mut self, kept: Kept<L>) {
        self.released = true;
        let mut inner = self.pool.lock();
        self.pool.release(&mut inner, &self.appliance, kept);
    }
}

impl<L: Send + 'static> Drop for Permit<L> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Not released by its command (a panic, or the caller was cancelled): a link never
        // taken is still healthy; otherwise the command's link went with it.
        let kept = match self.link.take() {
            Some(link) => Kept::Idle(link),
            None => Kept::Gone,
        };
        let mut inner = self.pool.lock();
        self.pool.release(&mut inner, &self.appliance, kept);
    }
}

#[cfg(test)]
mod tests;
