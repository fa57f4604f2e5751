//! The metrics, in the Prometheus text exposition format (version 0.0.4), written by hand:
//! a few dozen series do not justify a metrics crate's dependencies on a Pi.
//!
//! Counters live where the events happen (results in the outbox's `ResultCounts`,
//! cloud requests in `Health`, refusals in the MQTT hub's `Stats`); gauges are read when a
//! scrape asks. Served by the control socket (`tetherd metrics`) and, when
//! `metrics.listen` is set, by a loopback HTTP listener (`socket.rs`).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::Watched;
use crate::health::{OUTCOMES, REQUESTS};
use crate::outbox::{BUCKETS, STATUSES};

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.head(name, kind, help);
        let _ = writeln!(self.0, "{name} {value}");
    }
}

/// A label value, escaped as the format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every series, as one scrape's text.
pub fn render(w: &Watched) -> String {
    let mut o = Out(String::new());
    o.head(
        "tether_build_info",
        "gauge",
        "The running tetherd's version.",
    );
    let _ = writeln!(
        o.0,
        "tether_build_info{{version=\"{}\",gateway=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        label(&w.gateway)
    );
    let started = w
        .started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    o.one(
        "tether_start_time_seconds",
        "gauge",
        "When the daemon started, in seconds since the Unix epoch.",
        started,
    );

    let link = w.health.link();
    o.one(
        "tether_cloud_up",
        "gauge",
        "1 while the cloud link is online.",
        u8::from(link.state == crate::cloud::session::LinkState::Online),
    );
    o.head(
        "tether_cloud_requests_total",
        "counter",
        "Requests to the cloud, by request and outcome.",
    );
    for (r, row) in w.health.requests().iter().enumerate() {
        for (i, n) in row.iter().enumerate() {
            let _ = writeln!(
                o.0,
                "tether_cloud_requests_total{{request=\"{}\",outcome=\"{}\"}} {n}",
                REQUESTS[r], OUTCOMES[i]
            );
        }
    }
    o.one(
        "tether_cloud_reconnects_total",
        "counter",
        "Times the cloud link came back online after failing.",
        w.health.reconnects(),
    );

    let counts = w.outbox.result_counts();
    o.head(
        "tether_commands_total",
        "counter",
        "Commands finished, by the status of their result.",
    );
    for (s, n) in STATUSES.iter().zip(counts.by_status()) {
        let _ = writeln!(
            o.0,
            "tether_commands_total{{status=\"{}\"}} {}",
            s.as_str(),
            n
        );
    }
    o.head(
        "tether_command_duration_seconds",
        "histogram",
        "Time from a command's acceptance to its result.",
    );
    for (n, bound) in counts.buckets().into_iter().zip(BUCKETS) {
        let _ = writeln!(
            o.0,
            "tether_command_duration_seconds_bucket{{le=\"{bound}\"}} {n}"
        );
    }
    let count = counts.count();
    let _ = writeln!(
        o.0,
        "tether_command_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    #[allow(clippy::cast_precision_loss)]
    let sum = counts.sum_ms() as f64 / 1000.0;
    let _ = writeln!(o.0, "tether_command_duration_seconds_sum {sum}");
    let _ = writeln!(o.0, "tether_command_duration_seconds_count {count}");

    let fleet = w.fleet();
    o.head(
        "tether_appliances",
        "gauge",
        "Appliances in force, by transport and source.",
    );
    for transport in ["mqtt", "ble"] {
        for source in ["file", "cloud"] {
            let n = fleet
                .appliances
                .iter()
                .filter(|a| a.transport == transport && a.source == source)
                .count();
            let _ = writeln!(
                o.0,
                "tether_appliances{{transport=\"{transport}\",source=\"{source}\"}} {n}"
            );
        }
    }
    o.one(
        "tether_appliances_online",
        "gauge",
        "MQTT appliances connected and not reporting offline.",
        w.mqtt.online(),
    );
    let waiting = w.router.waiting_ids().len();
    o.one(
        "tether_results_owed",
        "gauge",
        "Results not yet acknowledged by the cloud.",
        w.outbox.owed(),
    );
    o.one(
        "tether_commands_running",
        "gauge",
        "Commands accepted and not finished, other than those waiting.",
        w.router.pending_count().saturating_sub(waiting),
    );
    o.one(
        "tether_commands_waiting",
        "gauge",
        "Commands waiting for an appliance that is away.",
        waiting,
    );
    o.one(
        "tether_journal_bytes",
        "gauge",
        "Size of the journal on disk.",
        w.journal.bytes(),
    );
    o.one(
        "tether_journal_max_bytes",
        "gauge",
        "The journal's size bound (state.max_journal_bytes).",
        w.max_journal_bytes,
    );
    let stats = w.mqtt.stats();
    for (name, help, v) in [
        (
            "tether_mqtt_auth_failures_total",
            "MQTT connections refused for their credentials.",
            &stats.auth_failures,
        ),
        (
            "tether_mqtt_denied_total",
            "MQTT publishes and subscriptions refused by an appliance's topic rules.",
            &stats.denied,
        ),
        (
            "tether_mqtt_malformed_total",
            "Appliance messages that could not be used.",
            &stats.malformed,
        ),
        (
            "tether_mqtt_events_rate_limited_total",
            "Appliance events dropped over mqtt.max_event_rate.",
            &stats.events_rate_limited,
        ),
    ] {
        o.one(name, "counter", help, v.load(Ordering::Relaxed));
    }
    o.0
}
