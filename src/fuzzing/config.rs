//! The `config` target: the bytes as a config file.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use super::harness::with_harness;
use crate::cloud::session::{Failure, Session};
use crate::config::{Config, ConfigError};

/// A config file (bytes decoded as UTF-8, invalid sequences replaced): the same text as
/// cloud-managed entries ([`Config::parse_entries`]) and the bytes as a DER certificate and
/// an HTTP date (`diagnose::x509`); then [`Config::parse`],
/// every problem formatted as `check-config` prints it; a valid config is formatted and
/// given to what the daemon builds from it without touching the network or other files:
/// the MQTT hub, and the cloud session's timing after each kind of failure.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // The same text as cloud-managed entries (`managed.toml`, a gateway command's entry),
    // which are checked by the file's rules on their own.
    if let Ok(entries) = Config::parse_entries(
        &text,
        &std::collections::HashSet::new(),
        &crate::config::MqttConfig::default(),
    ) {
        for a in &entries.appliances {
            let _ = format!("{a:?}");
        }
    }
    // `tetherd diagnose` reads a certificate's validity and an HTTP date by hand.
    let _ = crate::diagnose::x509::validity(data);
    let _ = crate::diagnose::x509::http_date(&text);
    match Config::parse(&text) {
        Ok(config) => {
            let _ = format!("{config:?}");
            with_harness(|h| {
                h.enter("config", async {
                    let _ = crate::transport::mqtt::new_hub(
                        &config,
                        h.outbox.clone(),
                        Default::default(),
                    )
                    .online();
                    // The cloud session's timing under each kind of failure, then a success.
                    let now = Instant::now();
                    let mut session = Session::new(
                        crate::app::session_config(&config),
                        now,
                        fastrand::Rng::with_seed(7),
                    );
                    for failure in [
                        Failure::Transient,
                        Failure::Auth,
                        Failure::Busy(None),
                        Failure::Busy(Some(Duration::from_secs(120))),
                        Failure::Refused,
                    ] {
                        session.retry_now(now);
                        let _ = session.poll_action(now);
                        session.poll_done(now, Err(failure));
                        let _ = session.poll_timeout();
                    }
                    session.retry_now(now);
                    let _ = session.poll_action(now);
                    session.poll_done(now, Ok(None));
                    session.results_ready(now);
                    let _ = session.poll_timeout();
                })
            });
        }
        Err(problems) => {
            for p in &problems {
                let _ = p.to_string();
            }
            let e = ConfigError::Invalid {
                path: PathBuf::from("/etc/tether/config.toml"),
                problems,
            };
            let _ = e.to_string();
        }
    }
}
