//! The per-appliance worker: runs one appliance's lane of jobs in order, one at a time,
//! and ends when the lane is empty.
//!
//! Started by the intake when a job lands on an idle lane; it checks the TTL just before
//! dispatch, gives the transport the job's [`Hold`] (how long it may wait for an appliance
//! that is away), calls the appliance's transport with the job's send gate (the transport
//! passes it, journalling the command as sent, right before the command leaves), and
//! reports each job's result to `aggregate.rs`, which hands it on without waiting for
//! its commit, so the lane goes on at once.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Head, Job, Shared, millis};
use crate::cloud::wire::{ItemResult, Status};
use crate::config::TransportKind;
use crate::transport::{Dispatch, Hold, SendGate, Transports};

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
            let (job, hold) = {
                let mut state = self.shared.lock();
                let Some(lane) = state.lanes.get_mut(&self.appliance) else {
                    return;
                };
                let Some(job) = lane.pop_front() else {
                    state.lanes.remove(&self.appliance);
                    return;
                };
                let hold = Hold::new(job.offline, job.hold_until, self.shared.changed.clone());
                let head = Head {
                    command_id: job.command_id.clone(),
                    hold: hold.clone(),
                };
                state.heads.insert(self.appliance.clone(), head);
                (job, hold)
            };
            let run = self.run_job(&job, hold.clone());
            tokio::pin!(run);
            let item = loop {
                let changed = hold.changed();
                let waiting = hold.is_waiting();
                if waiting && cancel.is_cancelled() {
                    // Stopping: a command waiting for its appliance was never sent; it
                    // stays pending in the journal and waits again after the restart. One
                    // on its way is let finish.
                    return;
                }
                // While the head waits for its appliance, the commands queued behind it
                // run out of TTL on time, not when the appliance is back.
                let next_expiry = if waiting {
                    self.expire_queued().await
                } else {
                    None
                };
                let expiry = async {
                    match next_expiry {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    item = &mut run => break item,
                    _ = changed => {}
                    // A stop matters only to a waiting command (one on its way finishes);
                    // one that starts waiting after the stop is caught by `changed`.
                    _ = cancel.cancelled(), if waiting && !cancel.is_cancelled() => {}
                    _ = expiry, if next_expiry.is_some() => {}
                }
            };
            self.shared.lock().heads.remove(&self.appliance);
            self.shared
                .complete_item(&job.command_id, job.index, item)
                .await;
        }
    }

    /// Answers the jobs queued on this lane whose TTL ran out, as `expired`; returns when
    /// the next one does.
    async fn expire_queued(&self) -> Option<Instant> {
        let now = Instant::now();
        let (expired, next) = {
            let mut state = self.shared.lock();
            let lane = state.lanes.get_mut(&self.appliance)?;
            let (expired, kept): (VecDeque<Job>, VecDeque<Job>) = std::mem::take(lane)
                .into_iter()
                .partition(|j| j.deadline.is_some_and(|d| d <= now));
            *lane = kept;
            let next = lane.iter().filter_map(|j| j.deadline).min();
            (expired, next)
        };
        for job in expired {
            log::info!(command_id = job.command_id.as_str(), appliance = self.appliance.as_str(), status = "expired";
                "ttl ran out while the command waited for the appliance");
            let item = ItemResult {
                target: self.appliance.clone(),
                status: Status::Expired,
                payload: None,
                error: Some(
                    "ttl ran out while waiting for the appliance to come back; not sent".into(),
                ),
                duration_ms: 0,
            };
            self.shared
                .complete_item(&job.command_id, job.index, item)
                .await;
        }
        next
    }

    async fn run_job(&self, job: &Job, hold: Hold) -> ItemResult {
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
                hold,
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
