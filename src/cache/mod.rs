//! The status cache of CONTRACT §3 (`order:map:{id}` and `order:status:{id}` with the status
//! TTL) and the per-user notification log of §5. Traits, because `--role all` runs without
//! Redis: `RedisCache` in production, `MemoryCache` in one process.

mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

pub use self::{memory::MemoryCache, redis::RedisCache};
use crate::domain::{CorrelationId, OrderStatus, UserId};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    #[error("invalid notification id '{0}'")]
    InvalidNotificationId(String),
}

pub fn map_key(id: CorrelationId) -> String {
    format!("order:map:{id}")
}

pub fn status_key(id: CorrelationId) -> String {
    format!("order:status:{id}")
}

#[async_trait]
pub trait StatusCache: Send + Sync + 'static {
    /// Writes the user map and the first status in one round trip (`SETEX` both).
    async fn put_new_order(&self, id: CorrelationId, user: &UserId, status: OrderStatus, ttl: Duration) -> Result<(), CacheError>;
    /// Moves `order:status:*` forward (SETEX); a status that is not further along is ignored.
    async fn set_status(&self, id: CorrelationId, status: OrderStatus, ttl: Duration) -> Result<(), CacheError>;
    /// `set_status` for a batch; one round trip where the cache is remote.
    async fn set_statuses(&self, updates: &[(CorrelationId, OrderStatus)], ttl: Duration) -> Result<(), CacheError> {
        for &(id, status) in updates {
            self.set_status(id, status, ttl).await?;
        }
        Ok(())
    }
    async fn status(&self, id: CorrelationId) -> Result<Option<OrderStatus>, CacheError>;
    async fn user_of(&self, id: CorrelationId) -> Result<Option<UserId>, CacheError>;
    /// `user_of` for several orders (one round trip where the store allows it), in order.
    async fn users_of(&self, ids: &[CorrelationId]) -> Result<Vec<Option<UserId>>, CacheError> {
        let mut users = Vec::with_capacity(ids.len());
        for id in ids {
            users.push(self.user_of(*id).await?);
        }
        Ok(users)
    }
    async fn ping(&self) -> Result<(), CacheError>;
}

/// One notification as the per-user log keeps it: its id (increasing per user), the hub
/// method it is sent as, and its payload without the id (added when sent).
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedNotification {
    pub id: String,
    pub target: String,
    pub payload: Value,
}

impl LoggedNotification {
    /// The argument pushed to clients: the payload with its `notificationId`.
    pub fn argument(&self) -> Value {
        let mut payload = self.payload.clone();
        if let Value::Object(map) = &mut payload {
            map.insert("notificationId".into(), Value::String(self.id.clone()));
        }
        payload
    }
}

/// What `since` returns: the retained notifications after an id, in order, and whether
/// nothing after that id was lost to retention.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    pub notifications: Vec<LoggedNotification>,
    pub complete: bool,
}

/// One notification to append: for `user`, de-duplicated by `event_id`.
#[derive(Debug, Clone, Copy)]
pub struct Append<'a> {
    pub user: &'a UserId,
    pub event_id: &'a str,
    pub target: &'a str,
    pub payload: &'a Value,
}

/// The per-user notification log behind `ResumeNotifications` (CONTRACT §5).
#[async_trait]
pub trait NotificationLog: Send + Sync + 'static {
    /// Appends a notification unless `event_id` was logged before, in which case the earlier
    /// notification is returned (so a redelivered event keeps its notification id).
    async fn append(&self, user: &UserId, event_id: &str, target: &str, payload: &Value) -> Result<LoggedNotification, CacheError>;
    /// `append` for several notifications at once (one round trip where the store allows it),
    /// as if appended one by one in order.
    async fn append_many(&self, items: &[Append<'_>]) -> Result<Vec<LoggedNotification>, CacheError> {
        let mut logged = Vec::with_capacity(items.len());
        for item in items {
            logged.push(self.append(item.user, item.event_id, item.target, item.payload).await?);
        }
        Ok(logged)
    }
    /// The user's notifications after `after` (all retained ones when `None`), oldest first.
    async fn since(&self, user: &UserId, after: Option<&str>) -> Result<Replay, CacheError>;
}

/// How long and how many notifications the log keeps per user.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_count: u64,
    pub max_age: Duration,
}

/// A notification id as a Redis stream id `ms-seq`, for ordering.
pub(crate) fn parse_notification_id(raw: &str) -> Result<(u64, u64), CacheError> {
    let parse = || {
        let (ms, seq) = raw.split_once('-')?;
        Some((ms.parse().ok()?, seq.parse().ok()?))
    };
    parse().ok_or_else(|| CacheError::InvalidNotificationId(raw.to_owned()))
}

/// Whether a log that never trimmed anything lost nothing after `seen`, its oldest entry being
/// `first`. A resume point at or past `first` is inside the log. One before it may come from a
/// log that expired as a whole and started again: that one expired `max_age` after its last
/// entry, so everything it held is at least `max_age` older than `first`, and a point less than
/// `max_age` before `first` (a client rewinding a few seconds) saw all of it.
pub(crate) fn nothing_lost_before(seen: (u64, u64), first: (u64, u64), max_age: std::time::Duration) -> bool {
    seen >= first || seen.0.saturating_add(max_age.as_millis() as u64) > first.0
}

#[cfg(test)]
mod resume_tests {
    use std::time::Duration;

    use super::nothing_lost_before;

    #[test]
    fn a_point_shortly_before_the_first_entry_lost_nothing_and_one_a_retention_earlier_may_have() {
        let day = Duration::from_secs(86_400);
        let first = (1_000_000_000, 0);
        assert!(nothing_lost_before(first, first, day));
        assert!(nothing_lost_before((first.0 - 5_000, 0), first, day), "a client rewinding 5 s");
        assert!(!nothing_lost_before((first.0 - 86_400_000, 7), first, day), "an expired log's last entry could be there");
        assert!(!nothing_lost_before((0, 0), first, day));
    }
}
