//! Test harness: `spawn_app` runs the real app in-process on port 0 with its own database,
//! bus prefix and user ids; `BusObserver` watches what reaches RabbitMQ; `ChaosProxy` cuts a
//! dependency's connections to model an outage without touching the shared services.

pub mod app;
pub mod bus;
pub mod chaos;
pub mod cluster;
pub mod env;
pub mod ws;

pub use app::{AppOptions, TestApp, spawn_app};
pub use bus::BusObserver;
pub use chaos::ChaosProxy;

use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`, also when a
/// check itself never returns. Conditions are awaited, never slept for.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        match tokio::time::timeout(left, check()).await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(_) => panic!("timed out after {timeout:?} waiting for {what} (the last check did not return)"),
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A user id no other test uses.
pub fn unique_user(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

/// For tests that place many orders as one user at once: the per-user order rate limit
/// (tested on its own) is not what they are about.
pub fn unlimited_orders() -> Vec<String> {
    vec!["--orders-per-second-per-user".into(), "0".into()]
}

/// Waits until a process subscribes `channel` on the shared Redis: the handshake reply goes out
/// before a connection is registered, so a test that publishes right after it waits for this.
pub async fn subscribed(channel: &str) {
    let redis = deadpool_redis::redis::Client::open(env::redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    eventually(Duration::from_secs(10), &format!("{channel} to be subscribed"), || {
        let mut redis = redis.clone();
        async move {
            let subs: Vec<(String, u64)> =
                deadpool_redis::redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query_async(&mut redis).await.ok()?;
            (subs.first().map(|(_, n)| *n).unwrap_or(0) > 0).then_some(())
        }
    })
    .await;
}
