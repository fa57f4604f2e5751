//! The `cloud_response` target: the bytes as the cloud's answer to a poll and to a flush.

use tokio::time::Instant;

use super::harness::{Harness, with_harness};
use crate::cloud::client::{RequestError, parse_retry_after};
use crate::cloud::session::{Failure, Session};
use crate::cloud::wire::{PollResponse, ResultsResponse};

/// A poll response, as the driver decodes and acts on it: `serde_json` into
/// [`PollResponse`] (a `BadJson` failure and its backoff otherwise), then the commands go to
/// [`Router::submit`](crate::router::Router::submit) (per-command parsing and validation, `rejected`/`expired` results,
/// dispatch to the appliances), the acks to [`Outbox::settle`](crate::outbox::Outbox::settle), the cadence to the
/// [`Session`]. The same response is then delivered a second time (the cloud resending it:
/// every id is now a replay) before everything owed is taken and acked. The bytes are also
/// tried as an early flush's response and as a `Retry-After` header value.
pub fn cloud_response(data: &[u8]) {
    with_harness(|h| h.enter("cloud_response", h.cloud_response(data)));
}

impl Harness {
    async fn cloud_response(&self, data: &[u8]) {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = parse_retry_after(text);
        }
        // As the response to an early flush.
        if let Ok(resp) = serde_json::from_slice::<ResultsResponse>(data) {
            let batch = self.outbox.take(self.config.cloud.max_batch, 0).await;
            self.outbox.settle(batch, &resp.acked, true).await;
        }
        // As the response to a poll (`Uplink::exchange`, then `Driver::run`).
        let now = Instant::now();
        let mut session = Session::new(
            crate::app::session_config(&self.config),
            now,
            fastrand::Rng::with_seed(7),
        );
        let _ = session.poll_action(now);
        let resp: PollResponse = match serde_json::from_slice(data) {
            Ok(resp) => resp,
            Err(e) => {
                let _ = RequestError::BadJson(e.to_string()).to_string();
                session.poll_done(now, Err(Failure::Transient));
                let _ = session.poll_timeout();
                return;
            }
        };
        for _ in 0..2 {
            let batch = self.take_for_request().await;
            self.router.submit(resp.commands.clone()).await;
            self.outbox.settle(batch, &resp.acked, true).await;
            let now = Instant::now();
            session.poll_done(now, Ok(resp.poll));
            for _ in 0..4 {
                if session.poll_action(now).is_none() {
                    break;
                }
            }
            session.results_ready(now);
            let _ = session.poll_timeout();
            self.settled("the poll response").await;
        }
        self.deliver_everything().await;
        if !resp.commands.is_empty() {
            self.forget_commands();
        }
    }
}
