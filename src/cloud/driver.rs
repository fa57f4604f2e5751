//! The uplink driver: the only code that talks HTTP.
//!
//! It performs what [`Session`] decides: a long poll (`POST .../poll` with `Prefer: wait`)
//! carrying owed results, pending ids, events and capacity; and, while a poll is held, an
//! early flush (`POST .../results`) on the same HTTP/2 connection. It hands received
//! commands to the [`Router`] before the next poll is built (so they are listed in
//! `pending`), settles the [`Outbox`] with the cloud's acks, and classifies every failure
//! into a [`Failure`] for the session's timing rules.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::session::{Action, Failure, LinkState, Session, SessionConfig};
use super::tls;
use super::wire::{PollRequest, PollResponse, ResultsRequest, ResultsResponse};
use crate::config::CloudConfig;
use crate::health::{BEAT_INTERVAL, Health};
use crate::outbox::{Batch, Outbox};
use crate::router::Router;

/// Longest poll wait while the gateway advertises no capacity.
const FULL_POLL_WAIT: Duration = Duration::from_secs(1);

/// Events carried by one request at most; the rest wait for the next.
const MAX_EVENTS_PER_REQUEST: usize = 1000;

/// Why a request failed, with enough detail for one clear log line.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Transport(String),
    #[error("HTTP {status}: {body}")]
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
        body: String,
    },
    #[error("response body exceeds {0} bytes (cloud.max_response_bytes)")]
    TooLarge(usize),
    #[error("response is not valid protocol v1 JSON: {0}")]
    BadJson(String),
}

impl RequestError {
    /// `carried` is whether the request carried results or events: only then can a
    /// 400/413/422 be about its content.
    fn failure(&self, carried: bool) -> Failure {
        match self {
            RequestError::Status {
                status,
                retry_after,
                ..
            } => match status.as_u16() {
                401 | 403 => Failure::Auth,
                429 | 503 => Failure::Busy(*retry_after),
                400 | 413 | 422 if carried => Failure::Refused,
                _ => Failure::Transient,
            },
            _ => Failure::Transient,
        }
    }
}

/// The HTTP side of the uplink; cheap to clone.
#[derive(Clone)]
pub struct Uplink {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    poll_url: String,
    results_url: String,
    authorization: Option<HeaderValue>,
    request_timeout: Duration,
    max_response_bytes: usize,
}

impl Uplink {
    /// Builds the HTTP client (TLS settings, identity, token) for gateway `gateway_id`.
    pub fn new(cfg: &CloudConfig, gateway_id: &str) -> Result<Uplink, tls::SetupError> {
        let client = tls::build_client(cfg)?;
        let authorization = tls::load_token(cfg)?;
        let base = cfg.url.trim_end_matches('/');
        Ok(Uplink {
            inner: Arc::new(Inner {
                client,
                poll_url: format!("{base}/v1/gateways/{gateway_id}/poll"),
                results_url: format!("{base}/v1/gateways/{gateway_id}/results"),
                authorization,
                request_timeout: cfg.request_timeout,
                max_response_bytes: cfg.max_response_bytes,
            }),
        })
    }

    /// One request, abandoned as a whole (headers and body) after `wait` plus
    /// `cloud.request_timeout`: a server that sends headers and then stalls cannot hold the
    /// uplink, even while it keeps answering HTTP/2 PINGs.
    async fn post<B: Serialize, R: DeserializeOwned>(
        self,
        url_is_poll: bool,
        body: B,
        wait: Duration,
    ) -> Result<R, RequestError> {
        let limit = wait + self.inner.request_timeout;
        log::debug!(
            "request {} (limit {limit:?})",
            if url_is_poll { "poll" } else { "flush" }
        );
        match tokio::time::timeout(limit, self.exchange(url_is_poll, body, wait)).await {
            Ok(out) => out,
            Err(_) => Err(RequestError::Transport(format!(
                "no complete response within {limit:?}"
            ))),
        }
    }

    async fn exchange<B: Serialize, R: DeserializeOwned>(
        &self,
        url_is_poll: bool,
        body: B,
        wait: Duration,
    ) -> Result<R, RequestError> {
        let inner = &self.inner;
        let url = if url_is_poll {
            &inner.poll_url
        } else {
            &inner.results_url
        };
        let body = serde_json::to_vec(&body).map_err(|e| RequestError::Transport(e.to_string()))?;
        let mut req = inner
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .timeout(wait + inner.request_timeout)
            .body(body);
        if url_is_poll {
            req = req.header("prefer", format!("wait={}", wait.as_secs()));
        }
        if let Some(auth) = &inner.authorization {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| RequestError::Transport(chain(&e)))?;
        let status = resp.status();
        let max = inner.max_response_bytes;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(RequestError::TooLarge(max));
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| RequestError::Transport(chain(&e)))?
        {
            if buf.len() + chunk.len() > max {
                return Err(RequestError::TooLarge(max));
            }
            buf.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let text = String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned();
            return Err(RequestError::Status {
                status,
                retry_after,
                body: text,
            });
        }
        serde_json::from_slice(&buf).map_err(|e| RequestError::BadJson(e.to_string()))
    }
}

/// `Retry-After`: delta-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// An error with its sources, so "error sending request" says *why* (TLS, DNS, reset).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

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

impl Driver {
    /// Polls until `drain`, then only flushes results until `cancel`.
    pub async fn run(mut self, drain: CancellationToken, cancel: CancellationToken) {
        let mut poll: Request<PollResponse> = None;
        let mut poll_batch = None;
        let mut flush: Request<ResultsResponse> = None;
        let mut flush_batch = None;
        let mut sizes = Sizes::new(self.max_batch);
        let mut logged_state = LinkState::Connecting;
        let mut draining = false;
        let wedge = std::env::var("TETHER_FAULT").is_ok_and(|f| f == "wedge-uplink");
        let mut beat = tokio::time::interval(BEAT_INTERVAL);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.health.beat_uplink();
            let now = Instant::now();
            while let Some(action) = self.session.poll_action(now) {
                match action {
                    Action::Poll { wait } => {
                        let (results, events) = sizes.next(self.outbox.results_waiting());
                        let batch = self.outbox.take(results, events).await;
                        let mut pending = self.router.pending_ids();
                        pending.extend(self.outbox.in_flight_ids());
                        let capacity = self.router.capacity();
                        // A full gateway must not sit out a whole held poll once room
                        // frees up: poll again soon to take the commands waiting upstream.
                        let wait = if capacity == 0 {
                            wait.min(FULL_POLL_WAIT)
                        } else {
                            wait
                        };
                        let body = PollRequest {
                            results: batch.results.clone(),
                            pending,
                            events: batch.events.clone(),
                            capacity,
                        };
                        poll_batch = Some(batch);
                        let uplink = self.uplink.clone();
                        poll = Some(Box::pin(uplink.post(true, body, wait)));
                    }
                    Action::Flush => {
                        let (results, events) = sizes.next(self.outbox.results_waiting());
                        let batch = self.outbox.take(results, events).await;
                        if batch.results.is_empty() && batch.events.is_empty() {
                            // Everything owed already rides in a request.
                            self.outbox.settle(batch, &[], false).await;
                            self.session.flush_done(now, true);
                            continue;
                        }
                        let body = ResultsRequest {
                            results: batch.results.clone(),
                            events: batch.events.clone(),
                        };
                        flush_batch = Some(batch);
                        let uplink = self.uplink.clone();
                        flush = Some(Box::pin(uplink.post(false, body, Duration::ZERO)));
                    }
                }
            }
            let deadline = self.session.poll_timeout();
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = drain.cancelled(), if !draining => {
                    draining = true;
                    // The held poll is dropped: its results become eligible for flushes.
                    poll = None;
                    if let Some(batch) = poll_batch.take() {
                        self.outbox.settle(batch, &[], false).await;
                    }
                    self.session.drain(Instant::now());
                    log::info!("stopped polling; owed results still go out while the link is up");
                }
                out = next(&mut poll) => {
                    poll = None;
                    let mut batch = poll_batch.take().unwrap_or_default();
                    let now = Instant::now();
                    match out {
                        Ok(resp) => {
                            sizes.delivered(&batch);
                            let had_commands = !resp.commands.is_empty();
                            // Commands first, so the next poll lists them as pending.
                            self.router.submit(resp.commands).await;
                            self.outbox.settle(batch, &resp.acked, true).await;
                            self.session.poll_done(now, Ok(resp.poll));
                            if wedge && had_commands {
                                log::warn!("TETHER_FAULT=wedge-uplink: the uplink loop stops turning now");
                                std::future::pending::<()>().await;
                            }
                        }
                        Err(e) => {
                            let failure = self.failed(&mut sizes, &mut batch, &e).await;
                            self.outbox.settle(batch, &[], false).await;
                            self.session.poll_done(now, Err(failure));
                            if failure == Failure::Refused {
                                log::warn!("cloud refused the request ({e}); retrying at once with less in it");
                            } else {
                                self.log_failure(&e, logged_state);
                            }
                            self.health.set_link(self.session.state(), Some(e.to_string()));
                        }
                    }
                    logged_state = self.log_transition(logged_state);
                }
                out = next(&mut flush) => {
                    flush = None;
                    let mut batch = flush_batch.take().unwrap_or_default();
                    let ok = match out {
                        Ok(resp) => {
                            // A cloud that answers 200 but takes none of the results must
                            // not be flushed at again in a tight loop: they wait for the
                            // next poll.
                            let progressed = batch.results.is_empty() || !resp.acked.is_empty();
                            sizes.delivered(&batch);
                            self.outbox.settle(batch, &resp.acked, true).await;
                            progressed
                        }
                        Err(e) => {
                            // Narrowed like a poll's (while stopping, no poll will).
                            let failure = self.failed(&mut sizes, &mut batch, &e).await;
                            log::debug!("early flush failed ({failure:?}), results ride the next request: {e}");
                            self.outbox.settle(batch, &[], false).await;
                            false
                        }
                    };
                    self.session.flush_done(Instant::now(), ok);
                    // More owed than one request carried: keep flushing (at the linger pace)
                    // instead of leaving the rest for the next poll.
                    if ok && self.outbox.results_waiting() {
                        self.session.results_ready(Instant::now());
                    }
                }
                Some(change) = self.reload.recv() => {
                    if let Some(uplink) = change.uplink {
                        // Requests in flight finish on the old client; new ones use the new.
                        self.uplink = uplink;
                        self.session.link_changed();
                        log::info!("cloud settings reloaded; the next request uses them");
                        self.session.retry_now(Instant::now());
                    }
                    self.session.reconfigure(change.session);
                    self.max_batch = change.max_batch;
                    sizes.set_max_results(self.max_batch);
                }
                _ = self.outbox.changed() => self.session.results_ready(Instant::now()),
                _ = beat.tick() => {}
                _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {}
            }
        }
        // Whatever was riding in an unfinished request stays owed (it is in the journal).
        for batch in [poll_batch, flush_batch].into_iter().flatten() {
            self.outbox.settle(batch, &[], false).await;
        }
    }

    /// A request failed: how the session should take it. A refusal of its content
    /// (400/413/422) narrows what the next requests carry: see `Sizes`, `narrow` and
    /// `narrow_events`.
    async fn failed(&self, sizes: &mut Sizes, batch: &mut Batch, e: &RequestError) -> Failure {
        let failure = e.failure(!batch.results.is_empty() || !batch.events.is_empty());
        if failure == Failure::Refused {
            if batch.events.is_empty() {
                sizes.results = self.narrow(batch, e).await;
            } else {
                sizes.events = narrow_events(batch, e);
            }
        }
        failure
    }

    /// The cloud refused a batch of results only: halve it, and quarantine a lone result
    /// so the queue never wedges on one bad result.
    async fn narrow(&self, batch: &Batch, e: &RequestError) -> usize {
        if let [only] = batch.results.as_slice() {
            self.outbox.quarantine(&only.command_id).await;
            log::error!(command_id = only.command_id.as_str();
                "cloud refuses this result ({e}); quarantined, it will not be resent");
            self.outbox.push_event(crate::cloud::wire::Event {
                appliance: None,
                kind: "quarantined".into(),
                payload: serde_json::json!({ "command_id": only.command_id, "error": e.to_string() }),
            });
            return self.max_batch;
        }
        (batch.results.len() / 2).max(1)
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

/// How many results and events the next request takes. Both shrink when the cloud refuses
/// a request's content and grow back (doubling) as requests get through.
#[derive(Debug)]
struct Sizes {
    results: usize,
    max_results: usize,
    /// 0 after a refused request that held results and events: results then go alone.
    events: usize,
    /// At `events == 0`, a results-only request got through: the next takes one event
    /// alone, so events are not held back for as long as results keep coming.
    events_turn: bool,
}

impl Sizes {
    fn new(max_results: usize) -> Sizes {
        Sizes {
            results: max_results,
            max_results,
            events: MAX_EVENTS_PER_REQUEST,
            events_turn: false,
        }
    }

    /// (results, events) for the next request.
    fn next(&mut self, results_waiting: bool) -> (usize, usize) {
        if self.events > 0 {
            (self.results, self.events)
        } else if std::mem::take(&mut self.events_turn) {
            (0, 1)
        } else if results_waiting {
            (self.results, 0)
        } else {
            (self.results, 1)
        }
    }

    /// A request with `batch` in it got through.
    fn delivered(&mut self, batch: &Batch) {
        self.results = (self.results * 2).min(self.max_results);
        if !batch.events.is_empty() {
            self.events = (self.events * 2).clamp(1, MAX_EVENTS_PER_REQUEST);
        } else if self.events == 0 && !batch.results.is_empty() {
            self.events_turn = true;
        }
    }

    fn set_max_results(&mut self, max: usize) {
        self.max_results = max;
        self.results = self.results.min(max);
    }
}

/// The cloud refused a request that carried events; returns the next requests' event
/// limit. Results are never blamed here: with results in the request, the next ones carry
/// results alone (limit 0), and a refusal of those narrows the results. Events alone are
/// halved down to one, and a lone event the cloud refuses is dropped (events are not
/// journalled; holding it would wedge every event behind it).
fn narrow_events(batch: &mut Batch, e: &RequestError) -> usize {
    if !batch.results.is_empty() {
        return 0;
    }
    if let [only] = batch.events.as_slice() {
        log::error!(appliance = only.appliance.as_deref().unwrap_or("-");
            "cloud refuses an event of kind {} ({e}); dropped", only.kind);
        batch.events.clear();
        return 1;
    }
    (batch.events.len() / 2).max(1)
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::wire::{CommandResult, Event, Status};

    fn batch(results: usize, events: usize) -> Batch {
        Batch {
            results: (0..results)
                .map(|n| CommandResult {
                    command_id: format!("c{n}"),
                    status: Status::Ok,
                    payload: None,
                    error: None,
                    items: None,
                    duration_ms: 0,
                })
                .collect(),
            events: (0..events)
                .map(|_| Event {
                    appliance: Some("a".into()),
                    kind: "event".into(),
                    payload: serde_json::Value::Null,
                })
                .collect(),
        }
    }

    #[test]
    fn a_refused_event_never_costs_a_result_nor_starves_the_events() {
        let refused = RequestError::Status {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            retry_after: None,
            body: String::new(),
        };
        let mut sizes = Sizes::new(100);
        assert_eq!(sizes.next(true), (100, MAX_EVENTS_PER_REQUEST));
        // Results and events refused together: results go alone next, untouched.
        let mut b = batch(10, 3);
        sizes.events = narrow_events(&mut b, &refused);
        assert_eq!(b.results.len(), 10, "no result dropped");
        assert_eq!(b.events.len(), 3, "no event dropped yet");
        assert_eq!(sizes.next(true), (100, 0));
        // They got through: one event alone next, even with results still waiting.
        sizes.delivered(&batch(10, 0));
        assert_eq!(sizes.next(true), (0, 1));
        assert_eq!(sizes.next(true), (100, 0), "one turn, then results again");
        // That lone event is refused: it is dropped, and events go one at a time.
        let mut b = batch(0, 1);
        sizes.events = narrow_events(&mut b, &refused);
        assert!(b.events.is_empty(), "the refused event is dropped");
        assert_eq!(sizes.next(true), (100, 1));
        // Events alone are halved; as they get through the limit grows back.
        let mut b = batch(0, 8);
        sizes.events = narrow_events(&mut b, &refused);
        assert_eq!((sizes.events, b.events.len()), (4, 8));
        sizes.delivered(&batch(0, 4));
        assert_eq!(sizes.next(false), (100, 8));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH);
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(600));
        let d = parse_retry_after(&future).unwrap();
        assert!(
            d > Duration::from_secs(590) && d <= Duration::from_secs(600),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn status_codes_map_to_failures() {
        let status = |code: u16| RequestError::Status {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after: Some(Duration::from_secs(3)),
            body: String::new(),
        };
        assert_eq!(status(401).failure(true), Failure::Auth);
        assert_eq!(status(403).failure(false), Failure::Auth);
        assert_eq!(
            status(429).failure(false),
            Failure::Busy(Some(Duration::from_secs(3)))
        );
        assert_eq!(
            status(503).failure(true),
            Failure::Busy(Some(Duration::from_secs(3)))
        );
        assert_eq!(status(413).failure(true), Failure::Refused);
        assert_eq!(status(400).failure(false), Failure::Transient);
        assert_eq!(status(500).failure(true), Failure::Transient);
        assert_eq!(RequestError::TooLarge(1).failure(true), Failure::Transient);
    }
}
