//! Where a command goes and whether it may go at all: expanding its target (an id, a
//! list, or `group:NAME`) into configured appliances, and the configured bounds (pending
//! commands, payload size, timeout) a command must fit.
//!
//! Called by the intake for each new command; the error string is the `rejected` reason
//! the cloud gets.

use std::collections::HashSet;
use std::time::Duration;

use super::{Router, Routing};
use crate::cloud::wire::{Command, Target};
use crate::config::RouterConfig;
use crate::transport::Payload;

impl Router {
    /// Resolves the targets and checks the bounds; the error is the `rejected` reason.
    pub(super) fn validate(
        &self,
        routing: &Routing,
        cmd: &Command,
        payload: &Payload,
    ) -> Result<Vec<String>, String> {
        let cfg = &routing.cfg;
        if self.shared.lock().pending.len() >= cfg.max_pending {
            return Err("gateway at capacity; the cloud sent more commands than advertised".into());
        }
        fits(cfg, payload)?;
        match cmd.timeout_ms {
            Some(0) => return Err("timeout_ms must be greater than 0".into()),
            Some(ms) if Duration::from_millis(ms) > cfg.max_timeout => {
                return Err(format!(
                    "timeout_ms {ms} exceeds the gateway's limit of {} ms (router.max_timeout)",
                    cfg.max_timeout.as_millis()
                ));
            }
            _ => {}
        }
        let targets = resolve(routing, &cmd.target)?;
        let unknown: Vec<&str> = targets
            .iter()
            .filter(|t| !routing.appliances.contains_key(*t))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(format!("unknown target(s): {}", unknown.join(", ")));
        }
        Ok(targets)
    }
}

/// Whether a command's payload fits `router.max_command_bytes` (gateway commands too).
pub(super) fn fits(cfg: &RouterConfig, payload: &Payload) -> Result<(), String> {
    let size = payload.size();
    if size > cfg.max_command_bytes {
        return Err(format!(
            "payload is {size} bytes; the limit is {} (router.max_command_bytes)",
            cfg.max_command_bytes
        ));
    }
    Ok(())
}

/// Expands a target into appliance ids (duplicates removed, order kept).
fn resolve(routing: &Routing, target: &Target) -> Result<Vec<String>, String> {
    let list = match target {
        Target::One(t) => match t.strip_prefix("group:") {
            Some(name) => routing
                .groups
                .get(name)
                .cloned()
                .ok_or_else(|| format!("unknown group {name:?}"))?,
            None => vec![t.clone()],
        },
        Target::Many(list) => list.clone(),
    };
    if list.is_empty() {
        return Err("target list is empty".into());
    }
    if list.len() > routing.appliances.len().max(1) {
        return Err("more targets than configured appliances".into());
    }
    let mut seen = HashSet::new();
    Ok(list
        .into_iter()
        .filter(|t| seen.insert(t.clone()))
        .collect())
}
