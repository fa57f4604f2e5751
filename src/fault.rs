//! Fault hooks that the end-to-end tests drive through the `TETHER_FAULT` variable.
//!
//! Only the tests' build has this module: the `fault-injection` feature is turned on by
//! the package's dev-dependency on itself, so `cargo test` and the `tetherd` the
//! integration tests run have it, while a plain `cargo build` and the .deb do not: the
//! shipped daemon neither reads the variable nor names it. Its callers keep a no-op path
//! for that build. The uplink driver (`cloud::driver`) and `app`'s start are its callers;
//! `tests/systemd.rs` and `tests/offline.rs` set the variable.

/// `TETHER_FAULT=wedge-uplink`: the uplink loop is to stop turning after a poll that
/// brings commands, as a deadlocked loop would, so that the tests can see the watchdog
/// pings stop. Read once, when the loop starts.
pub fn wedge_uplink() -> bool {
    std::env::var("TETHER_FAULT").is_ok_and(|f| f == "wedge-uplink")
}

/// Parks the calling task for good: the uplink loop after `wedge_uplink`.
pub async fn stall_uplink() {
    log::warn!("TETHER_FAULT=wedge-uplink: the uplink loop stops turning now");
    std::future::pending::<()>().await;
}

/// `TETHER_FAULT=slow-recovery`: the start settles what the last run left half a second
/// late, as a loaded Pi might, so that the tests can see no poll overtakes it.
pub async fn slow_recovery() {
    if std::env::var("TETHER_FAULT").is_ok_and(|f| f == "slow-recovery") {
        log::warn!("TETHER_FAULT=slow-recovery: recovery waits half a second");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
