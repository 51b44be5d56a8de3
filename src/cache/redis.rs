//! `StatusCache` on Redis through a deadpool-redis pool. Every command is bounded by the
//! pool's timeouts, so a Redis outage turns into a quick `CacheError`, never a hang.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::{Config, Pool, Runtime, Timeouts, redis};

use super::{CacheError, StatusCache, map_key, status_key};
use crate::domain::{CorrelationId, OrderStatus, UserId};

#[derive(Clone)]
pub struct RedisCache {
    pool: Pool,
}

fn unavailable(err: impl std::fmt::Display) -> CacheError {
    CacheError::Unavailable(err.to_string())
}

impl RedisCache {
    /// Builds the pool; no connection is opened until the first command.
    pub fn new(url: &str, size: usize) -> anyhow::Result<Self> {
        let mut cfg = Config::from_url(url);
        let mut pool_cfg = deadpool_redis::PoolConfig::new(size);
        pool_cfg.timeouts =
            Timeouts { wait: Some(Duration::from_secs(2)), create: Some(Duration::from_secs(2)), recycle: Some(Duration::from_secs(1)) };
        cfg.pool = Some(pool_cfg);
        let pool = cfg.create_pool(Some(Runtime::Tokio1))?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, CacheError> {
        self.pool.get().await.map_err(unavailable)
    }
}

/// A bound on one command's round trip, so a Redis that accepts but never answers cannot hang a request.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

async fn bounded<T>(fut: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, CacheError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
        Ok(res) => res.map_err(unavailable),
        Err(_) => Err(CacheError::Unavailable("command timed out".into())),
    }
}

/// SETEX only when the new status is further along than the stored one, so two workers
/// racing on a redelivered event can never move `order:status:*` backwards.
const ADVANCE_STATUS: &str = r#"
local rank = { ACCEPTED = 0, PROCESSING = 1, COMPLETED = 2, FAILED = 2 }
local current = redis.call('GET', KEYS[1])
if current and rank[current] and rank[current] >= rank[ARGV[1]] then
  if current == ARGV[1] then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
  return 0
end
redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
return 1
"#;

#[async_trait]
impl StatusCache for RedisCache {
    async fn put_new_order(&self, id: CorrelationId, user: &UserId, status: OrderStatus, ttl: Duration) -> Result<(), CacheError> {
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.set_ex(map_key(id), user.as_str(), ttl.as_secs()).ignore().set_ex(status_key(id), status.as_str(), ttl.as_secs()).ignore();
        bounded(pipe.query_async::<()>(&mut conn)).await
    }

    async fn set_status(&self, id: CorrelationId, status: OrderStatus, ttl: Duration) -> Result<(), CacheError> {
        let mut conn = self.conn().await?;
        let script = redis::Script::new(ADVANCE_STATUS);
        let mut invocation = script.key(status_key(id));
        invocation.arg(status.as_str()).arg(ttl.as_secs());
        bounded(invocation.invoke_async::<i64>(&mut conn)).await.map(drop)
    }

    async fn status(&self, id: CorrelationId) -> Result<Option<OrderStatus>, CacheError> {
        let mut conn = self.conn().await?;
        let raw: Option<String> = bounded(redis::cmd("GET").arg(status_key(id)).query_async(&mut conn)).await?;
        Ok(raw.as_deref().and_then(OrderStatus::parse))
    }

    async fn user_of(&self, id: CorrelationId) -> Result<Option<UserId>, CacheError> {
        let mut conn = self.conn().await?;
        let raw: Option<String> = bounded(redis::cmd("GET").arg(map_key(id)).query_async(&mut conn)).await?;
        Ok(raw.and_then(|r| UserId::parse(&r).ok()))
    }

    async fn ping(&self) -> Result<(), CacheError> {
        let mut conn = self.conn().await?;
        bounded(redis::cmd("PING").query_async::<String>(&mut conn)).await.map(drop)
    }
}
