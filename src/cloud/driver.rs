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
        let mut batch_limit = self.max_batch;
        // Events per request: cut when the cloud refuses a request that carried events, so
        // a refusal caused by events never costs a result (see `narrow_events`).
        let mut event_limit = MAX_EVENTS_PER_REQUEST;
        let mut logged_state = LinkState::Connecting;
        let mut draining = false;
        // Which client a request went out on: a poll answered on a replaced client proves
        // nothing about the new one, which starts cold (see `Session::link_changed`).
        let mut uplink_gen = 0u64;
        let mut poll_gen = 0u64;
        let wedge = std::env::var("TETHER_FAULT").is_ok_and(|f| f == "wedge-uplink");
        let mut beat = tokio::time::interval(BEAT_INTERVAL);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.health.beat_uplink();
            let now = Instant::now();
            while let Some(action) = self.session.poll_action(now) {
                match action {
                    Action::Poll { wait } => {
                        let events = self.events_cap(event_limit);
                        let batch = self.outbox.take(batch_limit, events).await;
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
                        poll_gen = uplink_gen;
                        let uplink = self.uplink.clone();
                        poll = Some(Box::pin(uplink.post(true, body, wait)));
                    }
                    Action::Flush => {
                        let events = self.events_cap(event_limit);
                        let batch = self.outbox.take(batch_limit, events).await;
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
                            if !batch.events.is_empty() {
                                event_limit = (event_limit * 2).clamp(1, MAX_EVENTS_PER_REQUEST);
                            }
                            let had_commands = !resp.commands.is_empty();
                            // Commands first, so the next poll lists them as pending.
                            self.router.submit(resp.commands).await;
                            self.outbox.settle(batch, &resp.acked, true).await;
                            batch_limit = (batch_limit * 2).min(self.max_batch);
                            self.session.poll_done(now, Ok(resp.poll));
                            if poll_gen != uplink_gen {
                                self.session.link_changed();
                            }
                            if wedge && had_commands {
                                log::warn!("TETHER_FAULT=wedge-uplink: the uplink loop stops turning now");
                                std::future::pending::<()>().await;
                            }
                        }
                        Err(e) => {
                            let carried = !batch.results.is_empty() || !batch.events.is_empty();
                            let failure = e.failure(carried);
                            if failure == Failure::Refused {
                                if batch.events.is_empty() {
                                    batch_limit = self.narrow(&batch, &e).await;
                                } else {
                                    event_limit = narrow_events(&mut batch, &e);
                                }
                            }
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
                    let batch = flush_batch.take().unwrap_or_default();
                    let ok = match out {
                        Ok(resp) => {
                            // A cloud that answers 200 but takes none of the results must
                            // not be flushed at again in a tight loop: they wait for the
                            // next poll.
                            let progressed = batch.results.is_empty() || !resp.acked.is_empty();
                            if !batch.events.is_empty() {
                                event_limit = (event_limit * 2).clamp(1, MAX_EVENTS_PER_REQUEST);
                            }
                            self.outbox.settle(batch, &resp.acked, true).await;
                            progressed
                        }
                        Err(e) => {
                            log::debug!("early flush failed, results ride the next poll: {e}");
                            self.outbox.settle(batch, &[], false).await;
                            false
                        }
                    };
                    self.session.flush_done(Instant::now(), ok);
                    // More owed than one request carried: keep flushing (at the linger pace)
                    // instead of leaving the rest for the next poll.
                    if ok && self.outbox.owed() > self.outbox.in_flight_ids().len() {
                        self.session.results_ready(Instant::now());
                    }
                }
                Some(change) = self.reload.recv() => {
                    if let Some(uplink) = change.uplink {
                        // Requests in flight finish on the old client; new ones use the new.
                        self.uplink = uplink;
                        uplink_gen += 1;
                        self.session.link_changed();
                        log::info!("cloud settings reloaded; the next request uses them");
                        self.session.retry_now(Instant::now());
                    }
                    self.session.reconfigure(change.session);
                    self.max_batch = change.max_batch;
                    batch_limit = batch_limit.min(self.max_batch);
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

    /// Events for the next request. At 0 (a request with events was refused), results go
    /// alone while any are waiting, then events one at a time.
    fn events_cap(&self, event_limit: usize) -> usize {
        if event_limit == 0 && self.outbox.owed() <= self.outbox.in_flight_ids().len() {
            1
        } else {
            event_limit
        }
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
