//! The in-process status cache and notification log of `--role all`: the Redis semantics
//! (TTLs, forward-only status, stream ids `ms-seq`, trimming by count and age, "complete"
//! replays) in one mutex-guarded map. The conformance suite runs it beside `RedisCache`.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use serde_json::Value;

use super::{CacheError, LoggedNotification, NotificationLog, Replay, Retention, StatusCache, parse_notification_id};
use crate::domain::{CorrelationId, OrderStatus, UserId};

/// Expired entries are swept after this many writes, so keys nobody reads again do not pile up.
const SWEEP_EVERY: u64 = 1024;

type StreamId = (u64, u64);

pub struct MemoryCache {
    retention: Retention,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    users: HashMap<CorrelationId, Expiring<UserId>>,
    statuses: HashMap<CorrelationId, Expiring<OrderStatus>>,
    logs: HashMap<UserId, Log>,
    /// (user, event id) -> the notification id it was logged as (de-duplication).
    events: HashMap<(UserId, String), Expiring<String>>,
    writes: u64,
}

struct Expiring<T> {
    value: T,
    until: Instant,
}

impl<T> Expiring<T> {
    fn live(&self, now: Instant) -> bool {
        self.until > now
    }
}

struct Entry {
    id: StreamId,
    target: String,
    payload: Value,
}

/// One user's stream, with what Redis' `XINFO STREAM` would report about it.
struct Log {
    entries: VecDeque<Entry>,
    last_id: StreamId,
    max_deleted: StreamId,
    until: Instant,
}

impl Log {
    /// A stream with nothing in it, as a missing Redis key reads.
    fn empty(now: Instant) -> Self {
        Log { entries: VecDeque::new(), last_id: (0, 0), max_deleted: (0, 0), until: now }
    }
}

fn format_id((ms, seq): StreamId) -> String {
    format!("{ms}-{seq}")
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

impl MemoryCache {
    pub fn new(retention: Retention) -> Self {
        Self { retention, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind, still consistent enough to serve.
        self.inner.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

impl Inner {
    fn wrote(&mut self, now: Instant) {
        self.writes += 1;
        if self.writes.is_multiple_of(SWEEP_EVERY) {
            self.users.retain(|_, e| e.live(now));
            self.statuses.retain(|_, e| e.live(now));
            self.events.retain(|_, e| e.live(now));
            self.logs.retain(|_, l| l.until > now);
        }
    }
}

#[async_trait]
impl StatusCache for MemoryCache {
    async fn put_new_order(&self, id: CorrelationId, user: &UserId, status: OrderStatus, ttl: Duration) -> Result<(), CacheError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.users.insert(id, Expiring { value: user.clone(), until: now + ttl });
        inner.statuses.insert(id, Expiring { value: status, until: now + ttl });
        inner.wrote(now);
        Ok(())
    }

    async fn set_status(&self, id: CorrelationId, status: OrderStatus, ttl: Duration) -> Result<(), CacheError> {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.statuses.get_mut(&id).filter(|e| e.live(now)) {
            // Same status again: only its TTL is refreshed; an older one is ignored.
            Some(current) if current.value == status => current.until = now + ttl,
            Some(current) if !current.value.can_move_to(status) => {}
            _ => {
                inner.statuses.insert(id, Expiring { value: status, until: now + ttl });
            }
        }
        inner.wrote(now);
        Ok(())
    }

    async fn status(&self, id: CorrelationId) -> Result<Option<OrderStatus>, CacheError> {
        let now = Instant::now();
        Ok(self.lock().statuses.get(&id).filter(|e| e.live(now)).map(|e| e.value))
    }

    async fn user_of(&self, id: CorrelationId) -> Result<Option<UserId>, CacheError> {
        let now = Instant::now();
        Ok(self.lock().users.get(&id).filter(|e| e.live(now)).map(|e| e.value.clone()))
    }

    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }
}

#[async_trait]
impl NotificationLog for MemoryCache {
    async fn append(&self, user: &UserId, event_id: &str, target: &str, payload: &Value) -> Result<LoggedNotification, CacheError> {
        let now = Instant::now();
        let max_age = self.retention.max_age;
        let mut inner = self.lock();
        let key = (user.clone(), event_id.to_owned());
        if let Some(seen) = inner.events.get(&key).filter(|e| e.live(now)) {
            return Ok(LoggedNotification { id: seen.value.clone(), target: target.to_owned(), payload: payload.clone() });
        }
        let log = inner.logs.entry(user.clone()).or_insert_with(|| Log::empty(now));
        if log.until <= now {
            // The whole stream expired, as its Redis key would have.
            *log = Log::empty(now);
        }
        // Like XADD *: the clock's millisecond, or the last one with the next sequence number.
        let ms = now_ms();
        let id = if ms > log.last_id.0 { (ms, 0) } else { (log.last_id.0, log.last_id.1 + 1) };
        log.last_id = id;
        log.entries.push_back(Entry { id, target: target.to_owned(), payload: payload.clone() });
        let oldest_kept = ms.saturating_sub(max_age.as_millis() as u64);
        while let Some(first) = log.entries.front() {
            let too_many = log.entries.len() as u64 > self.retention.max_count;
            if !too_many && first.id.0 >= oldest_kept {
                break;
            }
            log.max_deleted = log.max_deleted.max(first.id);
            log.entries.pop_front();
        }
        // Redis' EXPIRE takes whole seconds, at least one.
        let until = now + max_age.max(Duration::from_secs(1));
        log.until = until;
        let id = format_id(id);
        inner.events.insert(key, Expiring { value: id.clone(), until });
        inner.wrote(now);
        Ok(LoggedNotification { id, target: target.to_owned(), payload: payload.clone() })
    }

    async fn since(&self, user: &UserId, after: Option<&str>) -> Result<Replay, CacheError> {
        let after_id = after.map(parse_notification_id).transpose()?;
        let now = Instant::now();
        let inner = self.lock();
        let Some(log) = inner.logs.get(user).filter(|l| l.until > now) else {
            return Ok(Replay { notifications: Vec::new(), complete: after.is_none() });
        };
        let notifications = log
            .entries
            .iter()
            .filter(|e| after_id.is_none_or(|seen| e.id > seen))
            .take(self.retention.max_count as usize)
            .map(|e| LoggedNotification { id: format_id(e.id), target: e.target.clone(), payload: e.payload.clone() })
            .collect();
        let first = log.entries.front().map_or((0, 0), |e| e.id);
        let complete = match after_id {
            Some(seen) if log.max_deleted > (0, 0) => seen >= log.max_deleted,
            Some(seen) => super::nothing_lost_before(seen, first, self.retention.max_age),
            None => log.max_deleted == (0, 0),
        };
        Ok(Replay { notifications, complete })
    }
}
