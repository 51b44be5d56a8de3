//! The status cache of CONTRACT §3: `order:map:{id}` (user) and `order:status:{id}`, both
//! with the status TTL. A trait because `--role all` runs without Redis (in-memory version).

mod redis;

use std::time::Duration;

use async_trait::async_trait;

pub use self::redis::RedisCache;
use crate::domain::{CorrelationId, OrderStatus, UserId};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis unavailable: {0}")]
    Unavailable(String),
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
    async fn status(&self, id: CorrelationId) -> Result<Option<OrderStatus>, CacheError>;
    async fn user_of(&self, id: CorrelationId) -> Result<Option<UserId>, CacheError>;
    async fn ping(&self) -> Result<(), CacheError>;
}
