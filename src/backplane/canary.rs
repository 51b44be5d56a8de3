//! The Redis backplane checks itself: every interval the process publishes a numbered canary on
//! a channel only it subscribes, and expects it back. A subscription that died without its TCP
//! connection (a failover that kept the socket, a proxy that stopped forwarding) shows as
//! canaries that stop coming back: readiness fails with the reason, the subscription is made
//! again, and the reconnect counts as a gap (local clients are told to resume).

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

pub mod names {
    pub const OK: &str = "contoso_backplane_canary_ok";
    pub const FAILURES: &str = "contoso_backplane_canary_failures_total";
}

/// Canaries missed in a row before the subscription counts as dead.
const MISSES: u32 = 2;

#[derive(Debug, Clone)]
pub struct CanarySettings {
    /// A channel no other process subscribes.
    pub channel: String,
    pub interval: Duration,
}

/// What the subscriber and the check loop share.
#[derive(Debug, Default)]
pub struct CanaryState {
    sent: AtomicU64,
    received: AtomicU64,
    failing: AtomicBool,
}

/// What the check loop does after a round.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Missed, not yet enough to act on.
    Missed,
    /// The subscription is dead: reconnect it.
    Dead,
    /// Canaries come back again after a failure.
    Recovered,
}

impl CanaryState {
    /// A canary arrived on the subscription.
    pub fn arrived(&self, payload: &[u8]) {
        if let Some(n) = std::str::from_utf8(payload).ok().and_then(|s| s.parse::<u64>().ok()) {
            self.received.fetch_max(n, Ordering::AcqRel);
        }
    }

    /// The number of the next canary to publish.
    pub fn next(&self) -> u64 {
        self.sent.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Why the backplane is not trusted now, if it is not.
    pub fn problem(&self) -> Option<String> {
        self.failing
            .load(Ordering::Acquire)
            .then(|| "the backplane's own canaries stopped coming back: its subscription is being renewed".to_owned())
    }

    /// Judges the round that ends now (everything published one interval ago is due); `misses`
    /// counts the rounds missed in a row.
    pub fn judge(&self, misses: &mut u32) -> Verdict {
        let (sent, received) = (self.sent.load(Ordering::Acquire), self.received.load(Ordering::Acquire));
        if received >= sent {
            *misses = 0;
            return if self.failing.swap(false, Ordering::AcqRel) { Verdict::Recovered } else { Verdict::Fine };
        }
        *misses += 1;
        if *misses < MISSES {
            return Verdict::Missed;
        }
        *misses = 0;
        self.failing.store(true, Ordering::Release);
        Verdict::Dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canaries_that_come_back_are_fine_and_two_missed_rounds_are_a_dead_subscription() {
        let state = CanaryState::default();
        let mut misses = 0;
        let n = state.next();
        state.arrived(n.to_string().as_bytes());
        assert_eq!(state.judge(&mut misses), Verdict::Fine);
        state.next();
        assert_eq!(state.judge(&mut misses), Verdict::Missed);
        assert!(state.problem().is_none(), "one late canary is not yet a failure");
        state.next();
        assert_eq!(state.judge(&mut misses), Verdict::Dead);
        assert!(state.problem().is_some());
        let n = state.next();
        state.arrived(n.to_string().as_bytes());
        assert_eq!(state.judge(&mut misses), Verdict::Recovered);
        assert!(state.problem().is_none());
    }

    #[test]
    fn an_unreadable_canary_is_ignored() {
        let state = CanaryState::default();
        state.next();
        state.arrived(b"not a number");
        let mut misses = 0;
        assert_eq!(state.judge(&mut misses), Verdict::Missed);
    }
}
