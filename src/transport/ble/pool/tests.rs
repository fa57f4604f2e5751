//! The async pool around the policy, with a number standing in for a link and tokio's
//! paused clock.

use std::time::Duration;

use tokio::time::{Instant, advance};

use super::*;

fn soon(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

#[tokio::test(start_paused = true)]
async fn a_kept_link_comes_back_with_the_next_permit() {
    let (pool, _to_close) = Pool::<u32>::new(1, Duration::from_secs(30));
    let mut p = pool.acquire("a", soon(10)).await.expect("free slot");
    assert_eq!(p.take_link(), None, "first use: connect");
    p.release(Kept::Idle(7));
    let mut p = pool.acquire("a", soon(10)).await.expect("reuse");
    assert_eq!(p.take_link(), Some(7));
    p.release(Kept::Gone);
    assert_eq!(pool.usage(), (0, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_waiter_past_its_deadline_gets_nothing_and_leaves_the_queue() {
    let (pool, _to_close) = Pool::<u32>::new(1, Duration::from_secs(30));
    let held = pool.acquire("a", soon(10)).await.expect("free slot");
    let started = Instant::now();
    assert!(pool.acquire("b", soon(500)).await.is_none());
    assert_eq!(started.elapsed(), Duration::from_millis(500));
    assert_eq!(pool.usage(), (1, 0, 1), "b withdrew");
    drop(held);
    assert_eq!(pool.usage(), (0, 0, 1), "a dropped permit frees its slot");
}

#[tokio::test(start_paused = true)]
async fn an_idle_link_is_closed_for_a_waiter_through_the_closer() {
    let (pool, mut to_close) = Pool::<u32>::new(1, Duration::from_secs(30));
    let p = pool.acquire("a", soon(10)).await.unwrap();
    p.release(Kept::Idle(1));
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.acquire("b", soon(5_000))
                .await
                .map(|mut p| p.take_link())
        })
    };
    let (appliance, link) = to_close.recv().await.expect("a close");
    assert_eq!((appliance.as_str(), link), ("a", 1));
    advance(Duration::from_millis(100)).await;
    assert!(
        !waiter.is_finished(),
        "the slot is taken until the close is done"
    );
    pool.closed("a");
    assert_eq!(waiter.await.unwrap(), Some(None));
}

#[tokio::test(start_paused = true)]
async fn the_reaper_closes_links_idle_for_idle_after() {
    let (pool, mut to_close) = Pool::<u32>::new(2, Duration::from_secs(30));
    let cancel = CancellationToken::new();
    tokio::spawn(pool.clone().reap_idle(cancel.clone()));
    let p = pool.acquire("a", soon(10)).await.unwrap();
    let released = Instant::now();
    p.release(Kept::Idle(9));
    let (appliance, link) = to_close.recv().await.expect("reaped");
    assert_eq!((appliance.as_str(), link), ("a", 9));
    assert_eq!(released.elapsed(), Duration::from_secs(30));
    pool.closed("a");
    assert_eq!(pool.usage(), (0, 0, 2));
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_dropped_idle_link_frees_its_slot_for_a_waiter() {
    let (pool, _to_close) = Pool::<u32>::new(1, Duration::from_secs(30));
    let p = pool.acquire("a", soon(10)).await.unwrap();
    p.release(Kept::Idle(3));
    assert_eq!(pool.dropped("a"), Some(3));
    assert_eq!(pool.dropped("a"), None);
    assert!(pool.acquire("b", soon(10)).await.is_some());
}

#[tokio::test(start_paused = true)]
async fn losing_the_adapter_returns_every_idle_link() {
    let (pool, _to_close) = Pool::<u32>::new(3, Duration::from_secs(30));
    for (i, a) in ["a", "b"].into_iter().enumerate() {
        let p = pool.acquire(a, soon(10)).await.unwrap();
        p.release(Kept::Idle(u32::try_from(i).unwrap()));
    }
    let busy = pool.acquire("c", soon(10)).await.unwrap();
    let mut gone = pool.drop_idle();
    gone.sort();
    assert_eq!(gone, vec![0, 1]);
    assert_eq!(pool.usage(), (1, 0, 3));
    busy.release(Kept::Gone);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_first_come_first_served() {
    let (pool, mut to_close) = Pool::<u32>::new(1, Duration::from_secs(30));
    let first = pool.acquire("a", soon(10)).await.unwrap();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    for name in ["b", "c", "d"] {
        let (pool, done) = (pool.clone(), done_tx.clone());
        tokio::spawn(async move {
            let p = pool.acquire(name, soon(60_000)).await.expect("served");
            done.send(name).unwrap();
            p.release(Kept::Idle(0));
        });
        // Let it queue before the next one arrives.
        tokio::task::yield_now().await;
    }
    first.release(Kept::Idle(0));
    let mut order = Vec::new();
    for _ in 0..3 {
        let (appliance, _) = to_close.recv().await.unwrap();
        pool.closed(&appliance);
        order.push(done_rx.recv().await.unwrap());
    }
    assert_eq!(order, vec!["b", "c", "d"]);
}
