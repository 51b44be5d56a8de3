//! The `ResumeStore` on Redis (one server or a cluster): per connection a hash, a list and a
//! `seen` marker that share the hash tag `{<connectionId>}`, so each script touches one slot;
//! a beat key per process.
//! Hash fields: u user, p protocol, o owner, a attached, x overflowed, d detached at (ms),
//! k client's last Ack, i last client message executed, c cursor, b journal bytes, n journal
//! length, t created (ms).

use std::{sync::Arc, sync::LazyLock, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_redis::redis;

use super::{Claimed, Limits, NewRecord, Record, ResumeError, ResumeStore, Synced, Update, now_ms};
use crate::{hub::protocol::Protocol, redis_client::RedisClient};

pub struct RedisResumeStore {
    redis: RedisClient,
    /// e.g. `contoso-signalrContoso.OrderNotification.Hubs.OrderStatusHub:resume:`.
    prefix: String,
}

/// Every call is bounded, so a Redis outage is a quick error, never a stuck connection.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

async fn bounded<T>(fut: impl std::future::Future<Output = Result<T, crate::redis_client::RedisClientError>>) -> Result<T, ResumeError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
        Ok(res) => res.map_err(|e| ResumeError::Unavailable(e.to_string())),
        Err(_) => Err(ResumeError::Unavailable("command timed out".into())),
    }
}

static CREATE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[2], 1, 'PX', ARGV[6])
redis.call('HSET', KEYS[1], 'u', ARGV[1], 'p', ARGV[2], 'o', ARGV[3], 'a', 1, 'x', 0, 'd', 0, 'k', 0, 'i', 0, 'b', 0, 'n', 0, 't', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"#,
    )
});

/// ARGV: owner, in_done, acked, cursor ('' for none), detach (0/1), now (ms), ttl (ms), max bytes, entries...
/// Returns 0 (lost), 1 (kept), 2 (overflowed). Few commands: it runs for every batch a stateful
/// connection writes. An open record's TTL is kept by `refresh`, so only a new journal (which
/// has none yet) and a detach set one here.
static SYNC: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local f = redis.call('HMGET', KEYS[1], 'o', 'x', 'k', 'b', 'i', 'n')
if f[1] ~= ARGV[1] then return 0 end
local over = f[2] == '1'
local acked, bytes, len = tonumber(f[3]), tonumber(f[4]), tonumber(f[6] or 0)
local set = {}
if not over then
  local n = math.min(tonumber(ARGV[3]) - acked, len)
  if n > 0 then
    for _, e in ipairs(redis.call('LRANGE', KEYS[2], 0, n - 1)) do bytes = bytes - #e end
    redis.call('LTRIM', KEYS[2], n, -1)
    acked, len = acked + n, len - n
  end
  for i = 9, #ARGV do bytes = bytes + #ARGV[i] end
  if bytes > tonumber(ARGV[8]) then
    over = true
    redis.call('DEL', KEYS[2])
    set = { 'x', 1 }
  else
    if #ARGV >= 9 then
      redis.call('RPUSH', KEYS[2], unpack(ARGV, 9))
      if len == 0 and ARGV[5] ~= '1' then redis.call('PEXPIRE', KEYS[2], ARGV[7]) end
      len = len + #ARGV - 8
    end
    set = { 'k', acked, 'b', bytes, 'n', len }
  end
end
if tonumber(ARGV[2]) > tonumber(f[5]) then table.insert(set, 'i'); table.insert(set, ARGV[2]) end
if ARGV[4] ~= '' then table.insert(set, 'c'); table.insert(set, ARGV[4]) end
if ARGV[5] == '1' then
  table.insert(set, 'a'); table.insert(set, 0); table.insert(set, 'd'); table.insert(set, ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
end
if #set > 0 then redis.call('HSET', KEYS[1], unpack(set)) end
if ARGV[5] == '1' then redis.call('PEXPIRE', KEYS[1], ARGV[7]) end
if over then return 2 end
return 1
"#,
    )
});

static FORGET: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'o') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1], KEYS[2])
"#,
    )
});

/// ARGV: from, owner, ttl (ms). Returns nil, or {protocol, acked, in_done, cursor, created, {journal...}}.
static TAKE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'o') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'x') == '1' then return false end
redis.call('HSET', KEYS[1], 'o', ARGV[2], 'a', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local f = redis.call('HMGET', KEYS[1], 'p', 'k', 'i', 'c', 't')
return { f[1], f[2], f[3], f[4] or '', f[5], redis.call('LRANGE', KEYS[2], 0, -1) }
"#,
    )
});

type Taken = (String, u64, u64, String, u64, Vec<Vec<u8>>);

impl RedisResumeStore {
    pub fn new(redis: RedisClient, prefix: impl Into<String>) -> Self {
        Self { redis, prefix: prefix.into() }
    }

    fn keys(&self, id: &str) -> (String, String) {
        let hash = format!("{}{{{id}}}", self.prefix);
        let journal = format!("{hash}:journal");
        (hash, journal)
    }

    fn beat_key(&self, instance: &str) -> String {
        format!("{}alive:{instance}", self.prefix)
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

#[async_trait]
impl ResumeStore for RedisResumeStore {
    async fn create(&self, r: NewRecord<'_>, limits: Limits) -> Result<bool, ResumeError> {
        let (hash, _) = self.keys(r.id);
        let mut call = CREATE.prepare_invoke();
        call.key(&hash)
            .key(format!("{hash}:seen"))
            .arg(r.user)
            .arg(r.protocol.name())
            .arg(r.owner)
            .arg(r.created_ms)
            .arg(ms(limits.open_ttl()))
            .arg(ms(super::SEEN_FOR));
        bounded(self.redis.invoke::<i64>(&call)).await.map(|n| n == 1)
    }

    async fn seen(&self, id: &str) -> Result<bool, ResumeError> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(format!("{}:seen", self.keys(id).0));
        bounded(self.redis.query::<i64>(&cmd)).await.map(|n| n == 1)
    }

    async fn sync(&self, id: &str, owner: &str, s: Update<'_>, limits: Limits) -> Result<Synced, ResumeError> {
        let (hash, journal) = self.keys(id);
        let mut call = SYNC.prepare_invoke();
        call.key(&hash).key(&journal).arg(owner).arg(s.in_done).arg(s.acked).arg(s.cursor.unwrap_or_default());
        let ttl = if s.detach { limits.window } else { limits.open_ttl() };
        call.arg(u8::from(s.detach)).arg(now_ms()).arg(ms(ttl)).arg(limits.max_bytes);
        s.entries.iter().for_each(|e| {
            call.arg(&e[..]);
        });
        Ok(match bounded(self.redis.invoke::<i64>(&call)).await? {
            0 => Synced::Lost,
            2 => Synced::Overflowed,
            _ => Synced::Kept,
        })
    }

    async fn forget(&self, id: &str, owner: &str) -> Result<(), ResumeError> {
        let (hash, journal) = self.keys(id);
        let mut call = FORGET.prepare_invoke();
        call.key(&hash).key(&journal).arg(owner);
        bounded(self.redis.invoke::<i64>(&call)).await.map(drop)
    }

    async fn record(&self, id: &str) -> Result<Option<Record>, ResumeError> {
        let (hash, _) = self.keys(id);
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&hash).arg(&["u", "o", "a", "x", "d"]);
        let fields: Vec<Option<String>> = bounded(self.redis.query(&cmd)).await?;
        let [Some(user), Some(owner), attached, overflowed, detached] = <[Option<String>; 5]>::try_from(fields).unwrap_or_default() else {
            return Ok(None);
        };
        Ok(Some(Record {
            user,
            owner,
            attached: attached.as_deref() == Some("1"),
            overflowed: overflowed.as_deref() == Some("1"),
            detached_ms: detached.and_then(|d| d.parse().ok()).unwrap_or_default(),
        }))
    }

    async fn take(&self, id: &str, from: &str, owner: &str, limits: Limits) -> Result<Option<Claimed>, ResumeError> {
        let (hash, journal) = self.keys(id);
        let mut call = TAKE.prepare_invoke();
        call.key(&hash).key(&journal).arg(from).arg(owner).arg(ms(limits.open_ttl()));
        let taken: Option<Taken> = bounded(self.redis.invoke(&call)).await?;
        let Some((protocol, acked, in_done, cursor, created_ms, entries)) = taken else { return Ok(None) };
        let protocol = Protocol::from_name(&protocol).ok_or_else(|| ResumeError::Unavailable(format!("unknown protocol {protocol:?}")))?;
        Ok(Some(Claimed {
            protocol,
            acked,
            journal: entries.into_iter().map(Bytes::from).collect(),
            in_done,
            cursor: (!cursor.is_empty()).then_some(cursor),
            created_ms,
        }))
    }

    async fn refresh(&self, ids: &[Arc<str>], limits: Limits) -> Result<(), ResumeError> {
        let cmds = ids
            .iter()
            .flat_map(|id| {
                let (hash, journal) = self.keys(id);
                [hash, journal].map(|key| {
                    let mut cmd = redis::cmd("PEXPIRE");
                    cmd.arg(key).arg(ms(limits.open_ttl()));
                    cmd
                })
            })
            .collect();
        bounded(self.redis.query_all::<i64>(cmds)).await.map(drop)
    }

    async fn beat(&self, instance: &str, ttl: Duration) -> Result<(), ResumeError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.beat_key(instance)).arg(1).arg("PX").arg(ms(ttl));
        bounded(self.redis.query::<()>(&cmd)).await
    }

    async fn alive(&self, instance: &str) -> Result<bool, ResumeError> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.beat_key(instance));
        bounded(self.redis.query::<i64>(&cmd)).await.map(|n| n == 1)
    }
}
