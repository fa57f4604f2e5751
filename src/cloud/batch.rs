//! How much each request to the cloud carries: the batch policy, without I/O.
//!
//! It owns [`Sizes`] (the results and events limits of the next request) and what a refusal
//! of a request's content (400/413/422) does to them. The driver (`cloud::driver`) is its
//! only user: it asks for the limits before taking a batch from the outbox, reports what
//! got through, and acts on the decisions (quarantining a result, logging) itself.

use super::client::RequestError;
use crate::outbox::Batch;

/// Events carried by one request at most; the rest wait for the next.
pub(super) const MAX_EVENTS_PER_REQUEST: usize = 1000;

/// How many results and events the next request takes. Both shrink when the cloud refuses
/// a request's content and grow back (doubling) as requests get through.
#[derive(Debug)]
pub(super) struct Sizes {
    pub(super) results: usize,
    max_results: usize,
    /// 0 after a refused request that held results and events: results then go alone.
    pub(super) events: usize,
    /// At `events == 0`, a results-only request got through: the next takes one event
    /// alone, so events are not held back for as long as results keep coming.
    events_turn: bool,
}

impl Sizes {
    pub(super) fn new(max_results: usize) -> Sizes {
        Sizes {
            results: max_results,
            max_results,
            events: MAX_EVENTS_PER_REQUEST,
            events_turn: false,
        }
    }

    /// (results, events) for the next request.
    pub(super) fn next(&mut self, results_waiting: bool) -> (usize, usize) {
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
    pub(super) fn delivered(&mut self, batch: &Batch) {
        self.results = (self.results * 2).min(self.max_results);
        if !batch.events.is_empty() {
            self.events = (self.events * 2).clamp(1, MAX_EVENTS_PER_REQUEST);
        } else if self.events == 0 && !batch.results.is_empty() {
            self.events_turn = true;
        }
    }

    pub(super) fn set_max_results(&mut self, max: usize) {
        self.max_results = max;
        self.results = self.results.min(max);
    }
}

/// The cloud refused a request that carried events; returns the next requests' event
/// limit. Results are never blamed here: with results in the request, the next ones carry
/// results alone (limit 0), and a refusal of those narrows the results. Events alone are
/// halved down to one, and a lone event the cloud refuses is dropped (events are not
/// journalled; holding it would wedge every event behind it).
pub(super) fn narrow_events(batch: &mut Batch, e: &RequestError) -> usize {
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

/// What to do after the cloud refused a request that carried results and no events.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ResultsRefused {
    /// The next requests carry at most this many results.
    Halve(usize),
    /// The cloud refuses this one result on its own: it is quarantined (never resent), so
    /// the queue never wedges on one bad result, and full batches resume.
    Quarantine(String),
}

/// The cloud refused a batch of results only: halve it, down to a lone result, which is
/// then the one to blame.
pub(super) fn narrow_results(batch: &Batch) -> ResultsRefused {
    if let [only] = batch.results.as_slice() {
        return ResultsRefused::Quarantine(only.command_id.clone());
    }
    ResultsRefused::Halve((batch.results.len() / 2).max(1))
}

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

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
    fn refused_results_are_halved_down_to_one() {
        let mut sizes = Sizes::new(10);
        for (carried, halved) in [(10, 5), (5, 2), (2, 1)] {
            let (results, _) = sizes.next(true);
            assert_eq!(results, carried);
            let ResultsRefused::Halve(n) = narrow_results(&batch(results, 0)) else {
                panic!("{results} results refused: halved, nothing quarantined");
            };
            assert_eq!(n, halved);
            sizes.results = n;
        }
        // An odd count rounds down, never to zero.
        assert_eq!(narrow_results(&batch(3, 0)), ResultsRefused::Halve(1));
        assert_eq!(sizes.next(true).0, 1);
    }

    #[test]
    fn a_lone_refused_result_is_the_one_quarantined() {
        assert_eq!(
            narrow_results(&batch(1, 0)),
            ResultsRefused::Quarantine("c0".into())
        );
        // Two refused together: neither is blamed yet.
        assert_eq!(narrow_results(&batch(2, 0)), ResultsRefused::Halve(1));
    }

    #[test]
    fn the_results_limit_grows_back_as_requests_get_through() {
        let mut sizes = Sizes::new(10);
        sizes.results = 1;
        let mut seen = Vec::new();
        for _ in 0..5 {
            let (results, _) = sizes.next(true);
            seen.push(results);
            sizes.delivered(&batch(results, 0));
        }
        assert_eq!(seen, [1, 2, 4, 8, 10], "doubling, up to cloud.max_batch");
        // A reload that lowers cloud.max_batch caps it at once.
        sizes.set_max_results(3);
        assert_eq!(sizes.next(true).0, 3);
        sizes.delivered(&batch(3, 0));
        assert_eq!(sizes.next(true).0, 3);
    }
}
