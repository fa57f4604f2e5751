//! The `--state` file format: what survives a restart (queues, deliveries, results and
//! the id counter; events are deliberately left out), as one JSON document.
//!
//! Commands that already have a result are left out of the queue and delivered lists:
//! they will never be sent again, so they need not survive.

use std::collections::{BTreeMap, HashMap};
use std::io;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::gateway::{Gateway, Queued, StoredResult};

/// Version of the layout; bump on incompatible changes.
const STATE_FORMAT: u32 = 1;

#[derive(Serialize)]
struct SnapshotOut<'a> {
    format: u32,
    last_id: u64,
    gateways: BTreeMap<&'a str, GatewayOut<'a>>,
}

#[derive(Serialize)]
struct GatewayOut<'a> {
    queue: Vec<&'a Value>,
    delivered: Vec<&'a Value>,
    results: &'a [StoredResult],
}

#[derive(Deserialize)]
struct SnapshotIn {
    format: u32,
    #[serde(default)]
    last_id: u64,
    #[serde(default)]
    gateways: HashMap<String, GatewayIn>,
}

#[derive(Deserialize)]
struct GatewayIn {
    #[serde(default)]
    queue: Vec<Value>,
    #[serde(default)]
    delivered: Vec<Value>,
    #[serde(default)]
    results: Vec<StoredResult>,
}

/// Serializes the durable part of the state.
pub fn encode(last_id: u64, gateways: &HashMap<String, Gateway>) -> io::Result<Vec<u8>> {
    let gateways = gateways
        .iter()
        .map(|(name, g)| {
            let out = GatewayOut {
                queue: g
                    .queue
                    .iter()
                    .filter(|q| g.is_live(q))
                    .map(|q| &q.body)
                    .collect(),
                delivered: g
                    .delivered
                    .iter()
                    .filter(|q| g.is_live(q))
                    .map(|q| &q.body)
                    .collect(),
                results: g.results(),
            };
            (name.as_str(), out)
        })
        .filter(|(_, g)| !(g.queue.is_empty() && g.delivered.is_empty() && g.results.is_empty()))
        .collect();
    let snapshot = SnapshotOut {
        format: STATE_FORMAT,
        last_id,
        gateways,
    };
    serde_json::to_vec(&snapshot).map_err(io::Error::other)
}

/// Parses a state file into the id counter and the gateways.
pub fn decode(bytes: &[u8]) -> Result<(u64, HashMap<String, Gateway>), String> {
    let snap: SnapshotIn =
        serde_json::from_slice(bytes).map_err(|e| format!("corrupt state: {e}"))?;
    if snap.format != STATE_FORMAT {
        return Err(format!("unsupported state format {}", snap.format));
    }
    let queued = |body: Value| {
        Queued::from_body(body).ok_or("corrupt state: a stored command has no string id")
    };
    let mut gateways = HashMap::with_capacity(snap.gateways.len());
    for (name, gin) in snap.gateways {
        let mut g = Gateway::default();
        g.queue = gin
            .queue
            .into_iter()
            .map(queued)
            .collect::<Result<_, _>>()?;
        g.delivered = gin
            .delivered
            .into_iter()
            .map(queued)
            .collect::<Result<_, _>>()?;
        for stored in gin.results {
            g.restore_result(stored);
        }
        gateways.insert(name, g);
    }
    Ok((snap.last_id, gateways))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_queues_and_results() {
        let mut g = Gateway::default();
        g.queue
            .extend(Queued::from_body(json!({ "id": "c1", "target": "a" })));
        g.queue
            .extend(Queued::from_body(json!({ "id": "c2", "target": "b" })));
        g.take(1);
        let mut gateways = HashMap::new();
        gateways.insert("gw".to_owned(), g);
        gateways.insert("empty".to_owned(), Gateway::default());

        let bytes = encode(7, &gateways).expect("encodes");
        let (last_id, loaded) = decode(&bytes).expect("decodes");
        assert_eq!(last_id, 7);
        assert_eq!(loaded.len(), 1, "empty gateways are not stored");
        let g = &loaded["gw"];
        assert_eq!(g.queued_ids(), ["c2"]);
        assert_eq!(g.delivered_ids(), ["c1"]);
    }

    #[test]
    fn rejects_unknown_formats() {
        assert!(decode(br#"{"format": 99}"#).is_err());
        assert!(decode(b"not json").is_err());
    }
}
