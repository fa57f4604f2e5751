//! The uplink driver: the one task that runs the cloud link.
//!
//! It performs what [`Session`] decides: a long poll (`POST .../poll` with `Prefer: wait`)
//! carrying owed results, pending ids, events and capacity; and, while a poll is held, an
//! early flush (`POST .../results`) on the same HTTP/2 connection. It hands received
//! commands to the [`Router`] before the next poll is built (so they are listed in
//! `pending`), settles the [`Outbox`] with the cloud's acks, and reports every failure to
//! the session as a [`Failure`]. The requests themselves go through [`Uplink`]
//! (`cloud::client`); how much each one carries is `cloud::batch`'s policy, which this
//! loop acts on. `app` builds the [`Driver`], sends it a [`Reconfigure`] on reload, and
//! the health supervisor watches it turn.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::batch::{ResultsRefused, Sizes, narrow_events, narrow_results};
use super::client::{Endpoint, RequestError};
use super::session::{Action, Failure, LinkState, Session, SessionConfig};
use super::wire::{Event, PollRequest, PollResponse, ResultsRequest, ResultsResponse};
use crate::health::{BEAT_INTERVAL, Health, RequestKind};
use crate::outbox::{Batch, Outbox};
use crate::router::Router;

// `app` names the client through the driver, which hands it requests.
pub use super::client::Uplink;

/// Least time between two client rebuilds for the cloud's `ping_s`.
const PING_REBUILD_SPACING: Duration = Duration::from_secs(600);

/// Longest poll wait while the gateway advertises no capacity.
const FULL_POLL_WAIT: Duration = Duration::from_secs(1);

type Request<T> = Option<Pin<Box<dyn Future<Output = Result<T, RequestError>> + Send>>>;

/// Resolves when the optional request does; never, if there is none.
async fn next<T>(fut: &mut Request<T>) -> Result<T, RequestError> {
    match fut {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// A new `[cloud]` section after a reload, with a client already built from it.
pub struct Reconfigure {
    pub uplink: Option<Uplink>,
    pub session: SessionConfig,
    pub max_batch: usize,
}

/// Everything the driver loop works with.
pub struct Driver {
    pub uplink: Uplink,
    pub session: Session,
    pub router: Router,
    pub outbox: Arc<Outbox>,
    pub health: Arc<Health>,
    pub max_batch: usize,
    pub reload: mpsc::Receiver<Reconfigure>,
}

/// What the loop carries from one turn to the next besides the driver's parts: the
/// requests in flight and what rides in them.
struct Turns {
    poll: Request<PollResponse>,
    poll_batch: Option<Batch>,
    flush: Request<ResultsResponse>,
    flush_batch: Option<Batch>,
    sizes: Sizes,
    logged_state: LinkState,
    draining: bool,
    /// When the client was last rebuilt for the cloud's `ping_s`.
    ping_rebuilt: Option<Instant>,
    /// The poll in flight told the cloud the gateway was full (`capacity: 0`).
    poll_full: bool,
    #[cfg(feature = "fault-injection")]
    wedge: bool,
}

impl Turns {
    fn new(max_batch: usize) -> Turns {
        Turns {
            poll: None,
            poll_batch: None,
            flush: None,
            flush_batch: None,
            sizes: Sizes::new(max_batch),
            logged_state: LinkState::Connecting,
            draining: false,
            ping_rebuilt: None,
            poll_full: false,
            #[cfg(feature = "fault-injection")]
            wedge: crate::fault::wedge_uplink(),
        }
    }

    /// The tests' fault hook (`crate::fault`): the loop stops turning after a poll that
    /// brought commands. (`&mut`: a shared borrow held across the await would make the
    /// loop's future not `Send`, the requests in `Turns` being `Send` but not `Sync`.)
    #[cfg(feature = "fault-injection")]
    async fn fault_after_poll(&mut self, had_commands: bool) {
        if self.wedge && had_commands {
            crate::fault::stall_uplink().await;
        }
    }

    /// The shipped build has no fault hooks.
    #[cfg(not(feature = "fault-injection"))]
    async fn fault_after_poll(&mut self, _had_commands: bool) {}
}

impl Driver {
    /// Polls until `drain`, then only flushes results until `cancel`.
    pub async fn run(mut self, drain: CancellationToken, cancel: CancellationToken) {
        let mut turns = Turns::new(self.max_batch);
        let mut beat = tokio::time::interval(BEAT_INTERVAL);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.health.beat_uplink();
            self.start_requests(&mut turns).await;
            let deadline = self.session.poll_timeout();
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = drain.cancelled(), if !turns.draining => self.stop_polling(&mut turns).await,
                out = next(&mut turns.poll) => self.poll_answered(&mut turns, out).await,
                out = next(&mut turns.flush) => self.flush_answered(&mut turns, out).await,
                Some(change) = self.reload.recv() => self.reconfigure(&mut turns, change),
                _ = self.outbox.changed() => self.session.results_ready(Instant::now()),
                _ = self.router.room(), if turns.poll_full && turns.poll.is_some() => {
                    self.room_freed(&mut turns).await;
                }
                _ = beat.tick() => {}
                _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {}
            }
        }
        // Whatever was riding in an unfinished request stays owed (it is in the journal).
        for batch in [turns.poll_batch, turns.flush_batch].into_iter().flatten() {
            self.outbox.settle(batch, &[], false).await;
        }
    }

    /// Starts the requests the session asks for now.
    async fn start_requests(&mut self, turns: &mut Turns) {
        let now = Instant::now();
        while let Some(action) = self.session.poll_action(now) {
            match action {
                Action::Poll { wait } => self.start_poll(turns, wait).await,
                Action::Flush => self.start_flush(turns, now).await,
            }
        }
    }

    async fn start_poll(&mut self, turns: &mut Turns, wait: Duration) {
        let (results, events) = turns.sizes.next(self.outbox.results_waiting());
        let batch = self.outbox.take(results, events).await;
        let mut pending = self.router.pending_ids();
        pending.extend(self.outbox.in_flight_ids());
        let capacity = self.router.capacity();
        // A full gateway must not sit out a whole held poll once room frees up: the poll
        // is cut as soon as there is room worth a poll (`room_freed`), and held at most
        // FULL_POLL_WAIT where that does not come (slow appliances, a journal that was
        // full) or where it is not cut (below).
        let wait = if capacity == 0 {
            wait.min(FULL_POLL_WAIT)
        } else {
            wait
        };
        let body = PollRequest {
            results: batch.results.clone(),
            pending,
            waiting: self.router.waiting_ids(),
            events: batch.events.clone(),
            capacity,
        };
        // Cut only where that is cheap and harmless: over HTTP/2 (on HTTP/1.1 a dropped
        // request costs the connection), when polls follow at once (with `interval_s` the
        // next would wait anyway), and with no events on board (they have no id: sent
        // again, the cloud would store them twice).
        turns.poll_full = capacity == 0
            && batch.events.is_empty()
            && self.session.long_polling()
            && self.uplink.multiplexed();
        turns.poll_batch = Some(batch);
        let uplink = self.uplink.clone();
        turns.poll = Some(Box::pin(uplink.post(Endpoint::Poll, body, wait)));
    }

    async fn start_flush(&mut self, turns: &mut Turns, now: Instant) {
        let (results, events) = turns.sizes.next(self.outbox.results_waiting());
        let batch = self.outbox.take(results, events).await;
        if batch.results.is_empty() && batch.events.is_empty() {
            // Everything owed already rides in a request.
            self.outbox.settle(batch, &[], false).await;
            self.session.flush_done(now, true);
            return;
        }
        let body = ResultsRequest {
            results: batch.results.clone(),
            events: batch.events.clone(),
        };
        turns.flush_batch = Some(batch);
        let uplink = self.uplink.clone();
        turns.flush = Some(Box::pin(uplink.post(
            Endpoint::Results,
            body,
            Duration::ZERO,
        )));
    }

    /// Commands finished while the held poll said the gateway was full (`Router::room`:
    /// a quarter of its bound is free): the cloud would hold that poll with nothing to
    /// send. It is cut (a stream reset; the connection stays) and a poll that offers the
    /// room goes out at once. What rode in it stays owed and goes again: the cloud keeps
    /// the first of any result it stored twice.
    async fn room_freed(&mut self, turns: &mut Turns) {
        turns.poll_full = false;
        // Answered in the same turn: the answer (its acks, its cadence) is taken, not
        // thrown away with the request.
        if let Some(out) = turns.poll.as_mut().and_then(|p| p.as_mut().now_or_never()) {
            return self.poll_answered(turns, out).await;
        }
        turns.poll = None;
        if let Some(batch) = turns.poll_batch.take() {
            self.outbox.settle(batch, &[], false).await;
        }
        self.session.poll_cut(Instant::now());
        log::trace!("room freed while a full poll was held; polling again");
    }

    async fn stop_polling(&mut self, turns: &mut Turns) {
        turns.draining = true;
        // The held poll is dropped: its results become eligible for flushes.
        turns.poll = None;
        if let Some(batch) = turns.poll_batch.take() {
            self.outbox.settle(batch, &[], false).await;
        }
        self.session.drain(Instant::now());
        log::info!("stopped polling; owed results still go out while the link is up");
    }

    async fn poll_answered(&mut self, turns: &mut Turns, out: Result<PollResponse, RequestError>) {
        turns.poll = None;
        let mut batch = turns.poll_batch.take().unwrap_or_default();
        let now = Instant::now();
        match out {
            Ok(resp) => {
                self.health.count(RequestKind::Poll, None);
                turns.sizes.delivered(&batch);
                let had_commands = !resp.commands.is_empty();
                // Commands first, so the next poll lists them as pending.
                self.router.submit(resp.commands).await;
                self.outbox.settle(batch, &resp.acked, true).await;
                self.session.poll_done(now, Ok(resp.poll));
                self.follow_ping_interval(turns, now);
                turns.fault_after_poll(had_commands).await;
            }
            Err(e) => {
                let failure = self.failed(&mut turns.sizes, &mut batch, &e).await;
                self.health.count(RequestKind::Poll, Some(failure));
                self.outbox.settle(batch, &[], false).await;
                self.session.poll_done(now, Err(failure));
                if failure == Failure::Refused {
                    log::warn!("cloud refused the request ({e}); retrying at once with less in it");
                } else {
                    self.log_failure(&e, turns.logged_state);
                }
                self.health
                    .set_link(self.session.state(), Some(e.to_string()));
            }
        }
        turns.logged_state = self.log_transition(turns.logged_state);
    }

    async fn flush_answered(
        &mut self,
        turns: &mut Turns,
        out: Result<ResultsResponse, RequestError>,
    ) {
        turns.flush = None;
        let mut batch = turns.flush_batch.take().unwrap_or_default();
        let ok = match out {
            Ok(resp) => {
                self.health.count(RequestKind::Results, None);
                // A cloud that answers 200 but takes none of the results must not be
                // flushed at again in a tight loop: they wait for the next poll.
                let progressed = batch.results.is_empty() || !resp.acked.is_empty();
                turns.sizes.delivered(&batch);
                self.outbox.settle(batch, &resp.acked, true).await;
                progressed
            }
            Err(e) => {
                // Narrowed like a poll's (while stopping, no poll will).
                let failure = self.failed(&mut turns.sizes, &mut batch, &e).await;
                self.health.count(RequestKind::Results, Some(failure));
                log::debug!("early flush failed ({failure:?}), results ride the next request: {e}");
                self.outbox.settle(batch, &[], false).await;
                false
            }
        };
        self.session.flush_done(Instant::now(), ok);
        // More owed than one request carried: keep flushing (at the linger pace) instead of
        // leaving the rest for the next poll.
        if ok && self.outbox.results_waiting() {
            self.session.results_ready(Instant::now());
        }
    }

    fn reconfigure(&mut self, turns: &mut Turns, change: Reconfigure) {
        self.session.reconfigure(change.session);
        if let Some(mut uplink) = change.uplink {
            // A fresh client has made no connection yet: giving it the interval the
            // cloud asked for costs nothing, so it is not held to the spacing below.
            let want = self.session.ping_interval();
            if want != uplink.ping_interval() {
                match uplink.with_ping_interval(want) {
                    Ok(steered) => uplink = steered,
                    Err(e) => log::warn!("cannot apply the cloud's PING interval: {e}"),
                }
            }
            // Requests in flight finish on the old client; new ones use the new.
            self.uplink = uplink;
            self.session.link_changed();
            log::info!("cloud settings reloaded; the next request uses them");
            self.session.retry_now(Instant::now());
        }
        self.max_batch = change.max_batch;
        turns.sizes.set_max_results(self.max_batch);
    }

    /// Rebuilds the client when the PING interval it uses is not the one the session
    /// wants (the server's `ping_s`, or the config's). hyper fixes the interval when it
    /// opens a connection, so a change costs one new connection (a TLS handshake); at
    /// most one such rebuild per `PING_REBUILD_SPACING`, so a cloud whose answers
    /// disagree (backends on two versions behind one balancer) cannot make the gateway
    /// reconnect at every poll. A value held back is applied once the spacing has passed.
    fn follow_ping_interval(&mut self, turns: &mut Turns, now: Instant) {
        let want = self.session.ping_interval();
        if want == self.uplink.ping_interval() {
            return;
        }
        if turns
            .ping_rebuilt
            .is_some_and(|at| now.duration_since(at) < PING_REBUILD_SPACING)
        {
            return;
        }
        turns.ping_rebuilt = Some(now);
        match self.uplink.with_ping_interval(want) {
            Ok(uplink) => {
                log::info!(
                    "cloud asks for an HTTP/2 PING every {} s (was {} s); the next request opens a connection with it",
                    want.as_secs(),
                    self.uplink.ping_interval().as_secs()
                );
                self.uplink = uplink;
                self.session.link_changed();
            }
            Err(e) => log::warn!("cannot apply the cloud's PING interval: {e}"),
        }
    }

    /// A request failed: how the session should take it. A refusal of its content
    /// (400/413/422) narrows what the next requests carry (`cloud::batch`).
    async fn failed(&self, sizes: &mut Sizes, batch: &mut Batch, e: &RequestError) -> Failure {
        let failure = e.failure(!batch.results.is_empty() || !batch.events.is_empty());
        if failure == Failure::Refused {
            if batch.events.is_empty() {
                sizes.results = match narrow_results(batch) {
                    ResultsRefused::Halve(n) => n,
                    ResultsRefused::Quarantine(command_id) => {
                        self.quarantine(&command_id, e).await;
                        self.max_batch
                    }
                };
            } else {
                sizes.events = narrow_events(batch, e);
            }
        }
        failure
    }

    /// The cloud refuses this one result: it is never resent, and the cloud hears of it
    /// in a `quarantined` event.
    async fn quarantine(&self, command_id: &str, e: &RequestError) {
        self.outbox.quarantine(command_id).await;
        log::error!(command_id = command_id;
            "cloud refuses this result ({e}); quarantined, it will not be resent");
        self.outbox.push_event(Event {
            appliance: None,
            kind: "quarantined".into(),
            payload: serde_json::json!({ "command_id": command_id, "error": e.to_string() }),
        });
    }

    fn log_failure(&self, e: &RequestError, previous: LinkState) {
        let state = self.session.state();
        if state == previous && self.session.failures() > 1 {
            log::debug!("cloud request failed again: {e}");
            return;
        }
        match state {
            LinkState::AuthFailed => log::error!(
                "cloud refused the gateway's credentials ({e}); check cloud.token_file or the client certificate; retrying every few minutes"
            ),
            _ => log::warn!("cloud request failed: {e}; retrying with backoff"),
        }
    }

    fn log_transition(&self, previous: LinkState) -> LinkState {
        let state = self.session.state();
        if state != previous && state == LinkState::Online {
            log::info!("cloud link {}", state.as_str());
            self.health.set_link(state, None);
        }
        state
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
