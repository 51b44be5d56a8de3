//! A rate limit per user for an HTTP route (governor's GCRA, one cell per user). The user ids
//! are authenticated, and users quiet for longer than their burst takes to refill are dropped
//! once a minute, so the table holds the recently active users only.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};

pub struct PerUserLimit {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl PerUserLimit {
    /// `per_second` requests per second, in bursts of `burst`; `None` when `per_second` is 0.
    pub fn new(per_second: u32, burst: u32) -> Option<Arc<Self>> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate).max(rate);
        Some(Arc::new(Self { limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)) }))
    }

    /// `Err(seconds)`: over the limit, retry after that long (at least one second).
    pub fn check(&self, user: &str) -> Result<(), u64> {
        self.limiter.check_key(&user.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }

    /// Drops users whose limit is full again, every minute, until `stop`.
    pub fn spawn_cleanup(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                let Some(limit) = this.upgrade() else { return };
                limit.limiter.retain_recent();
                limit.limiter.shrink_to_fit();
            }
        });
    }

    #[cfg(test)]
    fn users(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_past_the_burst_is_told_when_to_retry_and_others_are_not_affected() {
        let limit = PerUserLimit::new(1, 3).unwrap();
        assert!((0..3).all(|_| limit.check("ann").is_ok()));
        assert_eq!(limit.check("ann"), Err(1));
        assert!(limit.check("ben").is_ok());
        assert_eq!(limit.users(), 2);
    }

    #[test]
    fn zero_is_no_limit() {
        assert!(PerUserLimit::new(0, 10).is_none());
    }

    #[test]
    fn users_whose_burst_refilled_are_forgotten() {
        let limit = PerUserLimit::new(1000, 1).unwrap();
        limit.check("ann").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        limit.limiter.retain_recent();
        assert_eq!(limit.users(), 0);
    }
}
