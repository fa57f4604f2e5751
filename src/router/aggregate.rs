//! Folding the targets' results into the command's one result, and handing it to the
//! outbox.
//!
//! Workers (and the intake, for targets refused before they ran) report each target's
//! result here; the last one completes the command, which then leaves the pending set.

use std::sync::Arc;

use super::{Pending, Shared, millis};
use crate::cloud::wire::{CommandResult, ItemResult, Status};

impl Shared {
    /// Records one target's result; the last one completes the command. The command
    /// stays listed as pending until its result is journalled, so no poll in between can
    /// make the cloud think it was lost. Returns once the result is queued in the journal
    /// and on its way, not committed: the appliance's lane goes on at once, and its next
    /// command's `sent` mark, queued after this record, commits with it (one fsync for
    /// both) and can never be on disk without it.
    pub(super) async fn complete_item(
        self: &Arc<Self>,
        command_id: &str,
        index: usize,
        item: ItemResult,
    ) {
        let result = {
            let mut state = self.lock();
            if item.target != super::GATEWAY_TARGET {
                let tally = state.tallies.entry(item.target.clone()).or_default();
                if item.status == Status::Ok {
                    tally.0 += 1;
                } else {
                    tally.1 += 1;
                }
            }
            let Some(p) = state.pending.get_mut(command_id) else {
                return;
            };
            if let Some(slot) = p.items.get_mut(index)
                && slot.is_none()
            {
                *slot = Some(item);
                p.remaining -= 1;
            }
            if p.remaining > 0 {
                return;
            }
            aggregate(command_id, p)
        };
        let committed = self.outbox.begin_result(result);
        let shared = self.clone();
        let id = command_id.to_owned();
        self.tracker.spawn(async move {
            committed.await;
            let mut state = shared.lock();
            state.pending.remove(&id);
            drop(state);
            shared.changed.notify_waiters();
        });
    }
}

fn aggregate(command_id: &str, p: &Pending) -> CommandResult {
    let duration_ms = millis(p.before + p.received.elapsed());
    let mut items: Vec<ItemResult> = p.items.iter().flatten().cloned().collect();
    if !p.multi && items.len() == 1 {
        let item = items.remove(0);
        return CommandResult {
            command_id: command_id.to_owned(),
            status: item.status,
            payload: item.payload,
            error: item.error,
            items: None,
            duration_ms,
        };
    }
    let ok = items.iter().filter(|i| i.status == Status::Ok).count();
    let (status, error) = if ok == items.len() {
        (Status::Ok, None)
    } else if ok > 0 {
        let failed = items.len() - ok;
        (
            Status::Partial,
            Some(format!("{failed} of {} targets failed", items.len())),
        )
    } else {
        (
            Status::Error,
            Some(format!("all {} targets failed", items.len())),
        )
    };
    CommandResult {
        command_id: command_id.to_owned(),
        status,
        payload: None,
        error,
        items: Some(items),
        duration_ms,
    }
}
