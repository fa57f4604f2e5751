//! The `cloud_response` and `cloud_protobuf` targets: the bytes as the cloud's answer to a
//! poll and to a flush, in JSON and in Protocol Buffers.

use tokio::time::Instant;

use super::harness::{Harness, with_harness};
use crate::cloud::client::{RequestError, parse_retry_after};
use crate::cloud::proto::Encoding;
use crate::cloud::session::{Failure, Session};
use crate::cloud::wire::{PollRequest, PollResponse, ResultsRequest, ResultsResponse};

/// A poll response, as the driver decodes and acts on it: `serde_json` into
/// [`PollResponse`] (a `BadBody` failure and its backoff otherwise), then the commands go to
/// [`Router::submit`](crate::router::Router::submit) (per-command parsing and validation, `rejected`/`expired` results,
/// dispatch to the appliances), the acks to [`Outbox::settle`](crate::outbox::Outbox::settle), the cadence to the
/// [`Session`]. The same response is then delivered a second time (the cloud resending it:
/// every id is now a replay) before everything owed is taken and acked. The bytes are also
/// tried as an early flush's response and as a `Retry-After` header value.
pub fn cloud_response(data: &[u8]) {
    with_harness(|h| h.enter("cloud_response", h.cloud_response(Encoding::Json, data)));
}

/// The same in Protocol Buffers (`cloud::proto`): the bytes decoded by prost and turned
/// into the commands the router takes (raw-bytes payloads, JSON text payloads that may
/// not parse), then acted on as above. They are also decoded as the requests a cloud
/// reads (`PollRequest`, `ResultsRequest`: the devcloud's side), which must not panic
/// either.
pub fn cloud_protobuf(data: &[u8]) {
    let _ = Encoding::Protobuf.decode::<PollRequest>(data);
    let _ = Encoding::Protobuf.decode::<ResultsRequest>(data);
    with_harness(|h| h.enter("cloud_protobuf", h.cloud_response(Encoding::Protobuf, data)));
}

impl Harness {
    async fn cloud_response(&self, encoding: Encoding, data: &[u8]) {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = parse_retry_after(text);
        }
        // As the response to an early flush.
        if let Ok(resp) = encoding.decode::<ResultsResponse>(data) {
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
        let resp: PollResponse = match encoding.decode(data) {
            Ok(resp) => resp,
            Err(e) => {
                let _ = RequestError::BadBody(encoding.as_str(), e).to_string();
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
