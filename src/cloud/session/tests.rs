use std::time::Duration;

use tokio::time::{Instant, advance};

use super::*;

fn cfg() -> SessionConfig {
    SessionConfig {
        poll_wait: Duration::from_secs(30),
        backoff_max: Duration::from_secs(60),
        linger: Duration::from_millis(20),
        ping_interval: Duration::from_secs(20),
    }
}

fn session() -> Session {
    Session::new(cfg(), Instant::now(), fastrand::Rng::with_seed(7))
}

fn ok_poll(s: &mut Session) {
    assert!(matches!(
        s.poll_action(Instant::now()),
        Some(Action::Poll { .. })
    ));
    s.poll_done(Instant::now(), Ok(None));
}

/// A poll succeeded and the next one is out, held by the server.
fn hold_poll(s: &mut Session) {
    ok_poll(s);
    assert!(matches!(
        s.poll_action(Instant::now()),
        Some(Action::Poll { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn first_poll_is_immediate_short_and_alone() {
    let mut s = session();
    let now = Instant::now();
    assert_eq!(
        s.poll_action(now),
        Some(Action::Poll {
            wait: Duration::ZERO
        })
    );
    // While the first poll is in flight nothing else may start, even with results owed:
    // the connection is not proven yet, and a second request would open a second one.
    s.results_ready(now);
    advance(Duration::from_secs(1)).await;
    assert_eq!(s.poll_action(Instant::now()), None);
    assert_eq!(s.poll_timeout(), None);
}

#[tokio::test(start_paused = true)]
async fn long_poll_repeats_at_once_after_success() {
    let mut s = session();
    ok_poll(&mut s);
    assert_eq!(s.state(), LinkState::Online);
    assert_eq!(s.poll_timeout(), Some(Instant::now()));
    assert!(matches!(
        s.poll_action(Instant::now()),
        Some(Action::Poll { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn server_cadence_steers_wait_and_interval() {
    let mut s = session();
    s.poll_action(Instant::now());
    s.poll_done(
        Instant::now(),
        Ok(Some(Cadence {
            wait_s: Some(5),
            interval_s: Some(10),
            ping_s: None,
        })),
    );
    assert_eq!(s.poll_action(Instant::now()), None);
    assert_eq!(
        s.poll_timeout(),
        Some(Instant::now() + Duration::from_secs(10))
    );
    advance(Duration::from_secs(10)).await;
    assert_eq!(
        s.poll_action(Instant::now()),
        Some(Action::Poll {
            wait: Duration::from_secs(5)
        })
    );
}

#[tokio::test(start_paused = true)]
async fn early_flushes_go_at_once_then_at_most_one_per_linger() {
    let mut s = session();
    hold_poll(&mut s);
    // After a quiet spell a result goes at once.
    s.results_ready(Instant::now());
    assert_eq!(s.poll_action(Instant::now()), Some(Action::Flush));
    assert_eq!(s.poll_action(Instant::now()), None, "one flush at a time");
    // Results finishing during that flush wait for it, and for the linger since it began.
    advance(Duration::from_millis(5)).await;
    s.results_ready(Instant::now());
    s.results_ready(Instant::now());
    s.flush_done(Instant::now(), true);
    assert_eq!(s.poll_action(Instant::now()), None);
    assert_eq!(
        s.poll_timeout(),
        Some(Instant::now() + Duration::from_millis(15))
    );
    advance(Duration::from_millis(15)).await;
    assert_eq!(s.poll_action(Instant::now()), Some(Action::Flush));
    s.flush_done(Instant::now(), true);
    // A result arriving long after the last flush goes at once again.
    advance(Duration::from_secs(1)).await;
    s.results_ready(Instant::now());
    assert_eq!(s.poll_action(Instant::now()), Some(Action::Flush));
}

#[tokio::test(start_paused = true)]
async fn a_new_poll_carries_what_was_waiting_for_a_flush() {
    let mut s = session();
    ok_poll(&mut s);
    s.poll_action(Instant::now());
    s.results_ready(Instant::now());
    assert_eq!(s.poll_action(Instant::now()), Some(Action::Flush));
    s.flush_done(Instant::now(), true);
    s.results_ready(Instant::now()); // due after the linger
    s.poll_done(Instant::now(), Ok(None)); // the held poll returns first
    assert!(matches!(
        s.poll_action(Instant::now()),
        Some(Action::Poll { .. })
    ));
    advance(Duration::from_millis(50)).await;
    assert_eq!(
        s.poll_action(Instant::now()),
        None,
        "the poll took those results"
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_with_full_jitter_up_to_the_cap() {
    let mut s = session();
    let mut ceilings_seen = Vec::new();
    for attempt in 1..=12u32 {
        let start = Instant::now();
        assert!(matches!(s.poll_action(start), Some(Action::Poll { .. })));
        s.poll_done(start, Err(Failure::Transient));
        assert_eq!(s.state(), LinkState::Backoff);
        assert_eq!(s.failures(), attempt);
        let delay = s.poll_timeout().expect("a retry is scheduled") - start;
        let ceiling = BACKOFF_BASE
            .saturating_mul(1 << (attempt - 1))
            .min(Duration::from_secs(60));
        assert!(
            delay <= ceiling,
            "attempt {attempt}: {delay:?} > {ceiling:?}"
        );
        ceilings_seen.push(delay);
        advance(delay).await;
    }
    // Jitter: the delays are not all at the ceiling.
    assert!(ceilings_seen.iter().any(|d| *d < Duration::from_secs(30)));
    // Success resets the count.
    s.poll_action(Instant::now());
    s.poll_done(Instant::now(), Ok(None));
    assert_eq!(s.failures(), 0);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_capped() {
    let mut s = session();
    s.poll_action(Instant::now());
    s.poll_done(
        Instant::now(),
        Err(Failure::Busy(Some(Duration::from_secs(120)))),
    );
    assert_eq!(
        s.poll_timeout(),
        Some(Instant::now() + Duration::from_secs(120))
    );
    advance(Duration::from_secs(119)).await;
    assert_eq!(s.poll_action(Instant::now()), None);
    advance(Duration::from_secs(1)).await;
    assert!(s.poll_action(Instant::now()).is_some());
    s.poll_done(
        Instant::now(),
        Err(Failure::Busy(Some(Duration::from_secs(1 << 30)))),
    );
    assert_eq!(s.poll_timeout(), Some(Instant::now() + MAX_RETRY_AFTER));
}

#[tokio::test(start_paused = true)]
async fn auth_failure_retries_slowly() {
    let mut s = session();
    s.poll_action(Instant::now());
    s.poll_done(Instant::now(), Err(Failure::Auth));
    assert_eq!(s.state(), LinkState::AuthFailed);
    assert_eq!(s.poll_timeout(), Some(Instant::now() + AUTH_RETRY));
}

#[tokio::test(start_paused = true)]
async fn refused_batch_retries_at_once_and_failure_stops_flushes() {
    let mut s = session();
    ok_poll(&mut s);
    s.poll_action(Instant::now());
    s.poll_done(Instant::now(), Err(Failure::Refused));
    assert_eq!(s.poll_timeout(), Some(Instant::now()));
    // After a transient failure the link is unproven: results wait for the next poll.
    s.poll_action(Instant::now());
    s.poll_done(Instant::now(), Err(Failure::Transient));
    let retry = s.poll_timeout().unwrap();
    advance(retry - Instant::now()).await;
    s.poll_action(Instant::now());
    s.results_ready(Instant::now());
    advance(Duration::from_secs(1)).await;
    assert_eq!(s.poll_action(Instant::now()), None);
}

#[tokio::test(start_paused = true)]
async fn draining_stops_polls_but_still_flushes_results() {
    let mut s = session();
    hold_poll(&mut s);
    // Whatever is owed gets a flush at once; later results too, at the linger pace.
    s.drain(Instant::now());
    assert_eq!(s.poll_action(Instant::now()), Some(Action::Flush));
    s.flush_done(Instant::now(), true);
    s.results_ready(Instant::now());
    advance(Duration::from_millis(20)).await;
    assert_eq!(s.poll_action(Instant::now()), Some(Action::Flush));
    s.flush_done(Instant::now(), true);
    advance(Duration::from_secs(60)).await;
    assert_eq!(
        s.poll_action(Instant::now()),
        None,
        "no poll while draining"
    );
    assert_eq!(s.poll_timeout(), None);
}

#[tokio::test(start_paused = true)]
async fn reconfigure_changes_the_wait_unless_the_server_steers_it() {
    let mut s = session();
    let mut new = cfg();
    new.poll_wait = Duration::from_secs(5);
    ok_poll(&mut s);
    s.reconfigure(new.clone());
    assert_eq!(
        s.poll_action(Instant::now()),
        Some(Action::Poll {
            wait: Duration::from_secs(5)
        })
    );
    s.poll_done(
        Instant::now(),
        Ok(Some(Cadence {
            wait_s: Some(20),
            interval_s: Some(0),
            ping_s: None,
        })),
    );
    new.poll_wait = Duration::from_secs(7);
    s.reconfigure(new);
    assert_eq!(
        s.poll_action(Instant::now()),
        Some(Action::Poll {
            wait: Duration::from_secs(20)
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_replaced_client_is_probed_alone_like_the_first() {
    let mut s = session();
    ok_poll(&mut s);
    // A held poll is out on the old client when the new one arrives.
    assert!(matches!(
        s.poll_action(Instant::now()),
        Some(Action::Poll { .. })
    ));
    s.link_changed();
    s.results_ready(Instant::now());
    advance(Duration::from_secs(1)).await;
    assert_eq!(
        s.poll_action(Instant::now()),
        None,
        "no flush on a cold client"
    );
    // The held poll's answer came over the old client: it proves nothing about the new.
    s.poll_done(Instant::now(), Ok(None));
    assert_eq!(
        s.poll_action(Instant::now()),
        Some(Action::Poll {
            wait: Duration::ZERO
        })
    );
    s.results_ready(Instant::now());
    advance(Duration::from_secs(1)).await;
    assert_eq!(s.poll_action(Instant::now()), None);
    // Once a poll on the new client succeeds, flushes may run beside the held poll.
    s.poll_done(Instant::now(), Ok(None));
    assert!(matches!(
        s.poll_action(Instant::now()),
        Some(Action::Poll { wait }) if wait > Duration::ZERO
    ));
    s.results_ready(Instant::now());
    assert_eq!(s.poll_action(Instant::now()), Some(Action::Flush));
}

#[tokio::test(start_paused = true)]
async fn a_failed_flush_holds_flushes_until_the_next_poll_ends() {
    let mut s = session();
    hold_poll(&mut s);
    s.results_ready(Instant::now());
    assert_eq!(s.poll_action(Instant::now()), Some(Action::Flush));
    // A 503 (or 200 with nothing acked): the next finished results do not flush.
    s.flush_done(Instant::now(), false);
    for _ in 0..3 {
        advance(Duration::from_secs(1)).await;
        s.results_ready(Instant::now());
        assert_eq!(s.poll_action(Instant::now()), None);
    }
    assert_eq!(s.poll_timeout(), None, "nothing to wake up for");
    // The held poll ends; flushes may run beside the next one.
    s.poll_done(Instant::now(), Ok(None));
    assert!(matches!(
        s.poll_action(Instant::now()),
        Some(Action::Poll { .. })
    ));
    s.results_ready(Instant::now());
    assert_eq!(s.poll_action(Instant::now()), Some(Action::Flush));
    // A flush that outlives its poll holds nothing: the next poll came of a fresh answer.
    s.poll_done(Instant::now(), Ok(None));
    assert!(matches!(
        s.poll_action(Instant::now()),
        Some(Action::Poll { .. })
    ));
    s.flush_done(Instant::now(), false);
    advance(cfg().linger).await;
    assert_eq!(s.poll_action(Instant::now()), Some(Action::Flush));
    // While stopping there is no next poll: a failed flush is tried again shortly.
    s.drain(Instant::now());
    s.flush_done(Instant::now(), false);
    assert_eq!(s.poll_action(Instant::now()), None);
    advance(Duration::from_secs(1)).await;
    assert_eq!(s.poll_action(Instant::now()), Some(Action::Flush));
}

#[tokio::test(start_paused = true)]
async fn a_cadence_with_only_an_interval_keeps_the_wait() {
    let mut s = session();
    ok_poll(&mut s);
    s.poll_action(Instant::now());
    s.poll_done(
        Instant::now(),
        Ok(Some(Cadence {
            wait_s: None,
            interval_s: Some(60),
            ping_s: None,
        })),
    );
    advance(Duration::from_secs(60)).await;
    assert_eq!(
        s.poll_action(Instant::now()),
        Some(Action::Poll {
            wait: cfg().poll_wait
        })
    );
}

#[tokio::test(start_paused = true)]
async fn server_steers_the_ping_interval_within_bounds() {
    let mut s = session();
    assert_eq!(s.ping_interval(), Duration::from_secs(20));
    let steer = |s: &mut Session, ping_s: Option<u64>| {
        assert!(matches!(
            s.poll_action(Instant::now()),
            Some(Action::Poll { .. })
        ));
        s.poll_done(
            Instant::now(),
            Ok(Some(Cadence {
                wait_s: Some(3600),
                interval_s: None,
                ping_s,
            })),
        );
    };
    steer(&mut s, Some(300));
    assert_eq!(s.ping_interval(), Duration::from_secs(300));
    // A poll without a cadence changes nothing.
    advance(Duration::from_secs(1)).await;
    assert!(matches!(
        s.poll_action(Instant::now()),
        Some(Action::Poll { .. })
    ));
    s.poll_done(Instant::now(), Ok(None));
    assert_eq!(s.ping_interval(), Duration::from_secs(300));
    // A failed poll neither.
    assert!(matches!(
        s.poll_action(Instant::now()),
        Some(Action::Poll { .. })
    ));
    s.poll_done(Instant::now(), Err(Failure::Transient));
    assert_eq!(s.ping_interval(), Duration::from_secs(300));
    advance(Duration::from_secs(120)).await;
    // Held to 10 s .. 1 h.
    steer(&mut s, Some(1));
    assert_eq!(s.ping_interval(), Duration::from_secs(10));
    steer(&mut s, Some(86_400));
    assert_eq!(s.ping_interval(), Duration::from_secs(3600));
    // A cadence without ping_s keeps the interval in force, so answers that disagree
    // cannot flip it.
    steer(&mut s, None);
    assert_eq!(s.ping_interval(), Duration::from_secs(3600));
    // The server's value outlives a reload's cloud.ping_interval.
    s.reconfigure(SessionConfig {
        ping_interval: Duration::from_secs(45),
        ..cfg()
    });
    assert_eq!(s.ping_interval(), Duration::from_secs(3600));
    steer(&mut s, Some(600));
    assert_eq!(s.ping_interval(), Duration::from_secs(600));
    // Until the server has set one, the config's interval applies, reloads included.
    let mut fresh = session();
    fresh.reconfigure(SessionConfig {
        ping_interval: Duration::from_secs(45),
        ..cfg()
    });
    assert_eq!(fresh.ping_interval(), Duration::from_secs(45));
}

#[tokio::test(start_paused = true)]
async fn a_cut_poll_is_followed_at_once_by_a_held_one_within_the_cadence() {
    let mut s = session();
    hold_poll(&mut s);
    assert!(s.long_polling());
    s.poll_cut(Instant::now());
    // Nothing learnt, nothing lost: still online, the next poll held as before, now.
    assert_eq!(s.state(), LinkState::Online);
    assert_eq!(s.failures(), 0);
    assert!(matches!(
        s.poll_action(Instant::now()),
        Some(Action::Poll { wait }) if wait == Duration::from_secs(30)
    ));
    // The cloud spaces its polls: 10 s after an answer.
    s.poll_done(
        Instant::now(),
        Ok(Some(Cadence {
            wait_s: Some(5),
            interval_s: Some(10),
            ping_s: None,
        })),
    );
    assert!(!s.long_polling());
    // A cut with no poll in flight moves nothing: still due 10 s after the answer, not
    // 10 s after the cut.
    advance(Duration::from_secs(5)).await;
    s.poll_cut(Instant::now());
    assert!(s.poll_action(Instant::now()).is_none());
    advance(Duration::from_secs(5)).await;
    assert!(matches!(
        s.poll_action(Instant::now()),
        Some(Action::Poll { wait }) if wait == Duration::from_secs(5)
    ));
    // A cut poll is followed within the cadence too.
    s.poll_cut(Instant::now());
    advance(Duration::from_secs(9)).await;
    assert!(s.poll_action(Instant::now()).is_none());
    advance(Duration::from_secs(1)).await;
    assert!(matches!(
        s.poll_action(Instant::now()),
        Some(Action::Poll { .. })
    ));
    // A poll cut after the client was replaced proved nothing: the next one probes the
    // new client with wait=0, alone.
    s.link_changed();
    s.poll_cut(Instant::now());
    advance(Duration::from_secs(10)).await;
    assert!(matches!(
        s.poll_action(Instant::now()),
        Some(Action::Poll { wait }) if wait.is_zero()
    ));
    s.results_ready(Instant::now());
    assert!(
        s.poll_action(Instant::now()).is_none(),
        "no flush beside a probe"
    );
}
