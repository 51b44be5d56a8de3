//! `StatusCache` and `NotificationLog` on Redis, a single server or a Redis Cluster. Every
//! command is bounded, so a Redis outage turns into a quick `CacheError`, never a hang; every
//! command and script touches keys of one cluster slot.

use std::{sync::LazyLock, time::Duration};

use async_trait::async_trait;
use deadpool_redis::redis;

use serde_json::Value;

use super::{
    Append, CacheError, LoggedNotification, NotificationLog, Replay, Retention, StatusCache, map_key, parse_notification_id, status_key,
};
use crate::{
    domain::{CorrelationId, OrderStatus, UserId},
    redis_client::{RedisClient, RedisClientError, RedisMode},
};

#[derive(Clone)]
pub struct RedisCache {
    redis: RedisClient,
    retention: Retention,
}

fn unavailable(err: impl std::fmt::Display) -> CacheError {
    CacheError::Unavailable(err.to_string())
}

impl RedisCache {
    /// Builds the client; no connection is opened until the first command.
    pub fn new(mode: RedisMode, url: &str, size: usize, retention: Retention) -> anyhow::Result<Self> {
        Ok(Self { redis: RedisClient::new(mode, url, size)?, retention })
    }

    /// The client, shared with the backplane's publisher.
    pub fn client(&self) -> &RedisClient {
        &self.redis
    }
}

/// A bound on one command's round trip, so a Redis that accepts but never answers cannot hang a request.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

async fn bounded<T>(fut: impl std::future::Future<Output = Result<T, RedisClientError>>) -> Result<T, CacheError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
        Ok(res) => res.map_err(unavailable),
        Err(_) => Err(CacheError::Unavailable("command timed out".into())),
    }
}

/// SETEX only when the new status is further along than the stored one, so two workers
/// racing on a redelivered event can never move `order:status:*` backwards.
static ADVANCE_STATUS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local rank = { ACCEPTED = 0, PROCESSING = 1, COMPLETED = 2, FAILED = 2 }
local current = redis.call('GET', KEYS[1])
if current and rank[current] and rank[current] >= rank[ARGV[1]] then
  if current == ARGV[1] then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
  return 0
end
redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
return 1
"#,
    )
});

#[async_trait]
impl StatusCache for RedisCache {
    async fn put_new_order(&self, id: CorrelationId, user: &UserId, status: OrderStatus, ttl: Duration) -> Result<(), CacheError> {
        // Two keys, two slots on a cluster: two commands (one pipeline on a single server).
        let mut map = redis::cmd("SET");
        map.arg(map_key(id)).arg(user.as_str()).arg("EX").arg(ttl.as_secs());
        let mut status_cmd = redis::cmd("SET");
        status_cmd.arg(status_key(id)).arg(status.as_str()).arg("EX").arg(ttl.as_secs());
        bounded(self.redis.query_all::<()>(vec![map, status_cmd])).await.map(drop)
    }

    async fn set_status(&self, id: CorrelationId, status: OrderStatus, ttl: Duration) -> Result<(), CacheError> {
        let mut invocation = ADVANCE_STATUS.key(status_key(id));
        invocation.arg(status.as_str()).arg(ttl.as_secs());
        bounded(self.redis.invoke::<i64>(&invocation)).await.map(drop)
    }

    async fn set_statuses(&self, updates: &[(CorrelationId, OrderStatus)], ttl: Duration) -> Result<(), CacheError> {
        if updates.is_empty() {
            return Ok(());
        }
        let calls: Vec<_> = updates
            .iter()
            .map(|&(id, status)| {
                let key = status_key(id);
                let mut invocation = ADVANCE_STATUS.key(&key);
                invocation.arg(status.as_str()).arg(ttl.as_secs());
                (key, invocation)
            })
            .collect();
        bounded(self.redis.invoke_all::<i64>(&ADVANCE_STATUS, &calls)).await.map(drop)
    }

    async fn status(&self, id: CorrelationId) -> Result<Option<OrderStatus>, CacheError> {
        let raw: Option<String> = bounded(self.redis.query(redis::cmd("GET").arg(status_key(id)))).await?;
        Ok(raw.as_deref().and_then(OrderStatus::parse))
    }

    async fn user_of(&self, id: CorrelationId) -> Result<Option<UserId>, CacheError> {
        let raw: Option<String> = bounded(self.redis.query(redis::cmd("GET").arg(map_key(id)))).await?;
        Ok(raw.and_then(|r| UserId::parse(&r).ok()))
    }

    async fn users_of(&self, ids: &[CorrelationId]) -> Result<Vec<Option<UserId>>, CacheError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One GET per key, not MGET: on a cluster the keys live on many slots.
        let gets: Vec<_> = ids
            .iter()
            .map(|id| {
                let mut get = redis::cmd("GET");
                get.arg(map_key(*id));
                get
            })
            .collect();
        let raw: Vec<Option<String>> = bounded(self.redis.query_all(gets)).await?;
        Ok(raw.into_iter().map(|r| r.and_then(|r| UserId::parse(&r).ok())).collect())
    }

    async fn ping(&self) -> Result<(), CacheError> {
        bounded(self.redis.ping()).await
    }
}

/// Keys of one user's log share a hash tag, so the append script stays on one cluster slot.
fn log_key(user: &UserId) -> String {
    format!("notify:{{{user}}}:log")
}

fn event_key(user: &UserId, event_id: &str) -> String {
    format!("notify:{{{user}}}:event:{event_id}")
}

/// Appends to the user's stream unless the event was logged before; trims by count and age
/// and refreshes the TTLs. Returns the notification id (the earlier one for a duplicate).
/// Trimming uses XDEL, not MAXLEN / XTRIM: only XDEL advances the stream's
/// `max-deleted-entry-id`, which `since` reads to tell a client whether its replay is complete.
static APPEND: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local existing = redis.call('GET', KEYS[2])
if existing then return existing end
local id = redis.call('XADD', KEYS[1], '*', 'target', ARGV[1], 'payload', ARGV[2])
local function delete(entries)
  local ids = {}
  for i, entry in ipairs(entries) do ids[i] = entry[1] end
  if #ids > 0 then redis.call('XDEL', KEYS[1], unpack(ids)) end
end
local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[3])
if excess > 0 then delete(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', excess)) end
delete(redis.call('XRANGE', KEYS[1], '-', '(' .. ARGV[5], 'COUNT', 1000))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], id, 'EX', ARGV[4])
return id
"#,
    )
});

impl RedisCache {
    /// The APPEND script call for one notification.
    fn append_call(&self, item: &Append<'_>) -> redis::ScriptInvocation<'static> {
        let max_age_ms = self.retention.max_age.as_millis() as u64;
        let min_id = (chrono::Utc::now().timestamp_millis() as u64).saturating_sub(max_age_ms);
        let mut call = APPEND.key(log_key(item.user));
        call.key(event_key(item.user, item.event_id))
            .arg(item.target)
            .arg(item.payload.to_string())
            .arg(self.retention.max_count)
            .arg(self.retention.max_age.as_secs().max(1))
            .arg(min_id);
        call
    }
}

#[async_trait]
impl NotificationLog for RedisCache {
    async fn append(&self, user: &UserId, event_id: &str, target: &str, payload: &Value) -> Result<LoggedNotification, CacheError> {
        let call = self.append_call(&Append { user, event_id, target, payload });
        let id: String = bounded(self.redis.invoke(&call)).await?;
        Ok(LoggedNotification { id, target: target.to_owned(), payload: payload.clone() })
    }

    async fn append_many(&self, items: &[Append<'_>]) -> Result<Vec<LoggedNotification>, CacheError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let calls: Vec<_> = items.iter().map(|item| (log_key(item.user), self.append_call(item))).collect();
        let ids: Vec<String> = bounded(self.redis.invoke_all(&APPEND, &calls)).await?;
        Ok(ids
            .into_iter()
            .zip(items)
            .map(|(id, item)| LoggedNotification { id, target: item.target.to_owned(), payload: item.payload.clone() })
            .collect())
    }

    async fn since(&self, user: &UserId, after: Option<&str>) -> Result<Replay, CacheError> {
        let after_id = after.map(parse_notification_id).transpose()?;
        let start = match after {
            Some(raw) => format!("({raw}"),
            None => "-".to_owned(),
        };
        let mut call = SINCE.key(log_key(user));
        call.arg(start).arg(self.retention.max_count);
        let (exists, max_deleted, first, entries): (i64, String, String, Vec<(String, Vec<(String, String)>)>) =
            bounded(self.redis.invoke(&call)).await?;
        if exists == 0 {
            // Nothing retained: complete only for a client that has seen nothing yet.
            return Ok(Replay { notifications: Vec::new(), complete: after.is_none() });
        }
        let notifications = entries
            .into_iter()
            .filter_map(|(id, fields)| {
                let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
                let payload = serde_json::from_str(&get("payload")?).ok()?;
                Some(LoggedNotification { id, target: get("target")?, payload })
            })
            .collect();
        // Complete when nothing newer than what the client saw was ever trimmed away (when
        // nothing was trimmed, see `nothing_lost_before`).
        let max_deleted = parse_notification_id(&max_deleted).unwrap_or((0, 0));
        let first = parse_notification_id(&first).unwrap_or((0, 0));
        let complete = match after_id {
            Some(seen) if max_deleted > (0, 0) => seen >= max_deleted,
            Some(seen) => super::nothing_lost_before(seen, first, self.retention.max_age),
            None => max_deleted == (0, 0),
        };
        Ok(Replay { notifications, complete })
    }
}

/// One round trip, and one point in time: the stream cannot expire between reading its
/// `XINFO` and its entries (separate commands could see it vanish in between).
/// Returns {exists, max-deleted-entry-id, recorded-first-entry-id, entries after ARGV[1]}.
static SINCE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, '0-0', '0-0', {}} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local max_deleted, first = '0-0', '0-0'
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then max_deleted = info[i + 1] end
  if info[i] == 'recorded-first-entry-id' then first = info[i + 1] end
end
return {1, max_deleted, first, redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])}
"#,
    )
});
