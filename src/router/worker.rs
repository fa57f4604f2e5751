//! The per-appliance worker: runs one appliance's lane of jobs in order, one at a time,
//! and ends when the lane is empty.
//!
//! Started by the intake when a job lands on an idle lane; it checks the TTL just before
//! dispatch, calls the appliance's transport with the job's send gate (the transport
//! passes it, journalling the command as sent, right before the command leaves), and
//! reports each job's result to `aggregate.rs`, which hands it on without waiting for
//! its commit, so the lane goes on at once.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Job, Shared, millis};
use crate::cloud::wire::{ItemResult, Status};
use crate::config::TransportKind;
use crate::transport::{Dispatch, SendGate, Transports};

/// Runs one appliance's lane in order, and ends when the lane is empty.
pub(super) struct Worker {
    pub(super) appliance: String,
    pub(super) transports: Transports,
    pub(super) shared: Arc<Shared>,
}

impl Worker {
    pub(super) async fn run(self, cancel: CancellationToken) {
        loop {
            if cancel.is_cancelled() {
                // Stopping: what is still queued stays pending and is reported as
                // interrupted at the next start.
                return;
            }
            let job = {
                let mut state = self.shared.lock();
                let Some(lane) = state.lanes.get_mut(&self.appliance) else {
                    return;
                };
                match lane.pop_front() {
                    Some(job) => job,
                    None => {
                        state.lanes.remove(&self.appliance);
                        return;
                    }
                }
            };
            let item = self.run_job(&job).await;
            self.shared
                .complete_item(&job.command_id, job.index, item)
                .await;
        }
    }

    async fn run_job(&self, job: &Job) -> ItemResult {
        let start = Instant::now();
        let transport = match job.kind {
            TransportKind::Mqtt => "mqtt",
            TransportKind::Ble => "ble",
        };
        let outcome = if job.deadline.is_some_and(|d| d <= start) {
            None
        } else {
            let dispatch = Dispatch {
                command_id: job.command_id.clone(),
                payload: (*job.payload).clone(),
                timeout: job.timeout,
                deadline: job.deadline,
                gate: SendGate::new(
                    self.shared.journal.clone(),
                    &job.command_id,
                    &self.appliance,
                ),
            };
            Some(
                self.transports
                    .execute(job.kind, &self.appliance, dispatch)
                    .await,
            )
        };
        let duration_ms = millis(start.elapsed());
        let (status, payload, error) = match outcome {
            None => (
                Status::Expired,
                None,
                Some("ttl ran out before dispatch".to_owned()),
            ),
            Some(o) => {
                let status = o.status();
                let (payload, error) = o.into_parts();
                (status, payload, error)
            }
        };
        log::info!(
            command_id = job.command_id.as_str(),
            appliance = self.appliance.as_str(),
            transport = transport,
            status = status.as_str(),
            duration_ms = duration_ms;
            "appliance finished command"
        );
        ItemResult {
            target: self.appliance.clone(),
            status,
            payload,
            error,
            duration_ms,
        }
    }
}
