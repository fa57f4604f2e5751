//! The slot policy with simulated time (tokio's paused clock: `Instant::now()` moves only
//! with `advance`).

use std::time::Duration;

use tokio::time::{Instant, advance};

use super::*;

const IDLE: Duration = Duration::from_secs(30);

fn grant(ticket: Ticket, appliance: &str, reuse: bool) -> Action {
    Action::Grant {
        ticket,
        appliance: appliance.to_owned(),
        reuse,
    }
}

fn close(appliance: &str) -> Action {
    Action::Close {
        appliance: appliance.to_owned(),
    }
}

#[tokio::test(start_paused = true)]
async fn grants_up_to_the_cap_then_queues() {
    let mut s = Slots::new(2, IDLE);
    let now = Instant::now();
    let (a, act) = s.request("a", now);
    assert_eq!(act, vec![grant(a, "a", false)]);
    let (b, act) = s.request("b", now);
    assert_eq!(act, vec![grant(b, "b", false)]);
    let (_c, act) = s.request("c", now);
    assert!(act.is_empty(), "third link must wait: {act:?}");
    assert_eq!((s.open(), s.waiting()), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn a_released_link_is_reused_by_its_appliance_without_a_new_slot() {
    let mut s = Slots::new(1, IDLE);
    let (t1, _) = s.request("a", Instant::now());
    assert!(s.release("a", Release::Idle, Instant::now()).is_empty());
    assert!(s.is_idle("a"));
    let (t2, act) = s.request("a", Instant::now());
    assert_ne!(t1, t2);
    assert_eq!(act, vec![grant(t2, "a", true)]);
    assert_eq!(s.open(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gets_the_least_recently_used_idle_link_closed_for_it() {
    let mut s = Slots::new(2, IDLE);
    s.request("a", Instant::now());
    s.request("b", Instant::now());
    s.release("a", Release::Idle, Instant::now());
    advance(Duration::from_secs(1)).await;
    s.release("b", Release::Idle, Instant::now());
    // Both idle; "a" was used longest ago.
    let (c, act) = s.request("c", Instant::now());
    assert_eq!(act, vec![close("a")]);
    // Until the close finishes the slot is still taken: the cap holds.
    assert_eq!(s.open(), 2);
    let act = s.closed("a", Instant::now());
    assert_eq!(act, vec![grant(c, "c", false)]);
    assert_eq!(s.open(), 2);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order_across_appliances() {
    let mut s = Slots::new(1, IDLE);
    let (_a, _) = s.request("a", Instant::now());
    let (b, _) = s.request("b", Instant::now());
    let (c, _) = s.request("c", Instant::now());
    let (d, _) = s.request("d", Instant::now());
    let mut order = Vec::new();
    let mut holder = "a".to_owned();
    for _ in 0..3 {
        // The holder finishes and keeps its link idle: it is closed for the head waiter.
        let act = s.release(&holder, Release::Idle, Instant::now());
        assert_eq!(act, vec![close(&holder)]);
        let act = s.closed(&holder, Instant::now());
        let [
            Action::Grant {
                ticket, appliance, ..
            },
        ] = act.as_slice()
        else {
            panic!("expected one grant: {act:?}");
        };
        order.push(*ticket);
        holder = appliance.clone();
        advance(Duration::from_millis(10)).await;
    }
    assert_eq!(order, vec![b, c, d]);
}

#[tokio::test(start_paused = true)]
async fn a_busy_appliance_cannot_starve_a_waiting_one() {
    // "a" keeps sending commands back to back; "b" waits for the only slot.
    let mut s = Slots::new(1, IDLE);
    s.request("a", Instant::now());
    let (b, _) = s.request("b", Instant::now());
    let act = s.release("a", Release::Idle, Instant::now());
    // The release already decides: a's link closes for b.
    assert_eq!(act, vec![close("a")]);
    // a's next command arrives while its link is closing: it queues behind b.
    let (a2, act) = s.request("a", Instant::now());
    assert!(act.is_empty(), "{act:?}");
    let act = s.closed("a", Instant::now());
    assert_eq!(act, vec![grant(b, "b", false)]);
    let act = s.release("b", Release::Idle, Instant::now());
    assert_eq!(act, vec![close("b")]);
    assert_eq!(s.closed("b", Instant::now()), vec![grant(a2, "a", false)]);
}

#[tokio::test(start_paused = true)]
async fn closing_slots_are_promised_so_no_extra_link_is_closed() {
    let mut s = Slots::new(3, IDLE);
    for a in ["a", "b", "c"] {
        s.request(a, Instant::now());
        s.release(a, Release::Idle, Instant::now());
        advance(Duration::from_secs(1)).await;
    }
    let (x, act) = s.request("x", Instant::now());
    assert_eq!(act, vec![close("a")]);
    // A second waiter needs its own slot: the next LRU idle link, not a second close
    // for the first waiter.
    let (y, act) = s.request("y", Instant::now());
    assert_eq!(act, vec![close("b")]);
    assert_eq!(s.closed("b", Instant::now()), vec![grant(x, "x", false)]);
    assert_eq!(s.closed("a", Instant::now()), vec![grant(y, "y", false)]);
    assert!(s.is_idle("c"));
}

#[tokio::test(start_paused = true)]
async fn a_free_slot_is_used_before_waiting_for_a_closing_one() {
    let mut s = Slots::new(2, Duration::from_secs(5));
    s.request("a", Instant::now());
    s.release("a", Release::Idle, Instant::now());
    advance(Duration::from_secs(5)).await;
    assert_eq!(s.reap(Instant::now()), vec![close("a")]);
    let (b, act) = s.request("b", Instant::now());
    assert_eq!(act, vec![grant(b, "b", false)]);
}

#[tokio::test(start_paused = true)]
async fn idle_links_are_reaped_after_idle_after() {
    let mut s = Slots::new(4, IDLE);
    assert_eq!(s.next_reap(), None);
    s.request("a", Instant::now());
    let t0 = Instant::now();
    s.release("a", Release::Idle, t0);
    assert_eq!(s.next_reap(), Some(t0 + IDLE));
    advance(IDLE - Duration::from_millis(1)).await;
    assert!(s.reap(Instant::now()).is_empty());
    // Used again before the deadline: the clock restarts at its release.
    let (t, act) = s.request("a", Instant::now());
    assert_eq!(act, vec![grant(t, "a", true)]);
    let t1 = Instant::now();
    s.release("a", Release::Idle, t1);
    assert_eq!(s.next_reap(), Some(t1 + IDLE));
    advance(IDLE).await;
    assert_eq!(s.reap(Instant::now()), vec![close("a")]);
    assert_eq!(s.next_reap(), None);
    assert_eq!(s.open(), 1, "closing still counts");
    assert!(s.closed("a", Instant::now()).is_empty());
    assert_eq!(s.open(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_own_link_is_closing_waits_for_it_without_blocking_others() {
    let mut s = Slots::new(2, IDLE);
    s.request("a", Instant::now());
    s.release("a", Release::Close, Instant::now());
    let (a2, act) = s.request("a", Instant::now());
    assert!(act.is_empty(), "{act:?}");
    let (b, act) = s.request("b", Instant::now());
    assert_eq!(act, vec![grant(b, "b", false)]);
    assert_eq!(s.closed("a", Instant::now()), vec![grant(a2, "a", false)]);
}

#[tokio::test(start_paused = true)]
async fn cancel_withdraws_a_waiter_but_not_a_grant() {
    let mut s = Slots::new(1, IDLE);
    let (a, _) = s.request("a", Instant::now());
    let (b, _) = s.request("b", Instant::now());
    let (c, _) = s.request("c", Instant::now());
    assert!(s.cancel(b), "b was waiting");
    assert!(!s.cancel(a), "a holds the slot: the caller must release it");
    s.release("a", Release::Gone, Instant::now());
    assert_eq!(s.waiting(), 0);
    assert!(!s.cancel(c));
    assert_eq!(s.open(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_gone_link_frees_its_slot_at_once() {
    let mut s = Slots::new(1, IDLE);
    s.request("a", Instant::now());
    let (b, _) = s.request("b", Instant::now());
    assert_eq!(
        s.release("a", Release::Gone, Instant::now()),
        vec![grant(b, "b", false)]
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_link_that_drops_frees_its_slot() {
    let mut s = Slots::new(1, IDLE);
    s.request("a", Instant::now());
    s.release("a", Release::Idle, Instant::now());
    // A busy link is not affected by a drop report: its command releases it.
    let (b, act) = s.request("b", Instant::now());
    assert_eq!(act, vec![close("a")]);
    assert!(
        s.dropped("a", Instant::now()).is_empty(),
        "closing, not idle"
    );
    assert_eq!(s.closed("a", Instant::now()), vec![grant(b, "b", false)]);
    s.release("b", Release::Idle, Instant::now());
    let (c, act) = s.request("c", Instant::now());
    assert_eq!(act, vec![close("b")]);
    assert_eq!(s.closed("b", Instant::now()), vec![grant(c, "c", false)]);
    s.release("c", Release::Idle, Instant::now());
    assert!(s.dropped("c", Instant::now()).is_empty());
    assert_eq!(s.open(), 0);
}

#[tokio::test(start_paused = true)]
async fn losing_the_adapter_drops_every_idle_link_and_serves_waiters() {
    let mut s = Slots::new(2, IDLE);
    s.request("a", Instant::now());
    s.request("b", Instant::now());
    s.release("a", Release::Idle, Instant::now());
    let (c, _) = s.request("c", Instant::now());
    // "a" is being closed for "c"; "b" is still busy.
    let act = s.drop_idle(Instant::now());
    assert!(act.is_empty(), "{act:?}");
    assert_eq!(s.closed("a", Instant::now()), vec![grant(c, "c", false)]);
    s.release("c", Release::Idle, Instant::now());
    let (d, act) = s.request("d", Instant::now());
    assert_eq!(act, vec![close("c")]);
    s.closed("c", Instant::now());
    s.release("d", Release::Idle, Instant::now());
    assert_eq!(s.drop_idle(Instant::now()), vec![]);
    assert_eq!(s.open(), 1, "only b, still busy");
    let _ = d;
}

#[tokio::test(start_paused = true)]
async fn the_cap_holds_under_a_random_workload() {
    // Random requests, releases, drops and reaps over eight appliances and a cap of three:
    // the cap is never exceeded, every grant goes to a request in arrival order among
    // those that needed a new slot, and everything is served in the end.
    let mut rng = fastrand::Rng::with_seed(7);
    let names: Vec<String> = (0..8).map(|i| format!("dev-{i}")).collect();
    let mut s = Slots::new(3, Duration::from_secs(2));
    let mut holding: Vec<String> = Vec::new();
    let mut waiting: Vec<(Ticket, String)> = Vec::new();
    let mut closing: Vec<String> = Vec::new();
    let mut served = 0;
    let apply = |acts: Vec<Action>,
                 holding: &mut Vec<String>,
                 waiting: &mut Vec<(Ticket, String)>,
                 closing: &mut Vec<String>,
                 served: &mut usize| {
        for a in acts {
            match a {
                Action::Grant {
                    ticket, appliance, ..
                } => {
                    let pos = waiting.iter().position(|(t, _)| *t == ticket).unwrap();
                    waiting.remove(pos);
                    holding.push(appliance);
                    *served += 1;
                }
                Action::Close { appliance } => closing.push(appliance),
            }
        }
    };
    for _ in 0..2000 {
        advance(Duration::from_millis(rng.u64(0..400))).await;
        let now = Instant::now();
        let acts = match rng.u8(0..4) {
            0 => {
                // One request at a time per appliance, as the router guarantees.
                let name = &names[rng.usize(..names.len())];
                if holding.contains(name) || waiting.iter().any(|(_, n)| n == name) {
                    continue;
                }
                let (t, acts) = s.request(name, now);
                waiting.push((t, name.clone()));
                acts
            }
            1 if !holding.is_empty() => {
                let name = holding.remove(rng.usize(..holding.len()));
                let how = [Release::Idle, Release::Close, Release::Gone][rng.usize(..3)];
                s.release(&name, how, now)
            }
            2 if !closing.is_empty() => {
                let name = closing.remove(0);
                s.closed(&name, now)
            }
            _ => s.reap(now),
        };
        apply(acts, &mut holding, &mut waiting, &mut closing, &mut served);
        assert!(s.open() <= 3, "cap exceeded: {}", s.open());
        assert!(holding.len() <= 3);
    }
    // Drain: finish everything that holds or closes a link.
    while !holding.is_empty() || !closing.is_empty() {
        let now = Instant::now();
        let acts = if let Some(name) = holding.pop() {
            s.release(&name, Release::Idle, now)
        } else {
            let name = closing.remove(0);
            s.closed(&name, now)
        };
        apply(acts, &mut holding, &mut waiting, &mut closing, &mut served);
        assert!(s.open() <= 3);
    }
    assert!(waiting.is_empty(), "left waiting: {waiting:?}");
    assert!(served > 100, "served {served}");
}
