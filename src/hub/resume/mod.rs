//! Stateful reconnect's shared state (the `ResumeStore` seam): per stateful connection, the
//! counted messages sent and not acknowledged yet, the last client message executed and who
//! holds the socket, kept where every notify process reads it, so a dropped connection resumes
//! on any of them. `claim` is the one rule for taking a record over; `upkeep` keeps records alive.

mod memory;
mod redis;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;

pub use self::{memory::MemoryResumeStore, redis::RedisResumeStore};
use super::protocol::Protocol;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ResumeError {
    #[error("resume store unavailable: {0}")]
    Unavailable(String),
}

/// How long a dropped connection may be resumed, and how many unacknowledged bytes it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub window: Duration,
    pub max_bytes: usize,
}

impl Limits {
    /// How often the records of open connections are refreshed.
    pub fn refresh_every(&self) -> Duration {
        (self.window / 3).max(BEAT_EVERY)
    }

    /// How long a record lives while its connection is open: refreshed well before it lapses,
    /// whatever the window (the window itself starts only when the socket drops).
    pub fn open_ttl(&self) -> Duration {
        self.window + 3 * self.refresh_every()
    }
}

impl Default for Limits {
    /// ASP.NET Core's buffer (100,000 bytes) and a window that covers a kill and a reconnect.
    fn default() -> Self {
        Self { window: Duration::from_secs(30), max_bytes: 100_000 }
    }
}

/// A stateful connection as it starts.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    pub id: &'a str,
    pub user: &'a str,
    pub protocol: Protocol,
    /// The process holding the socket.
    pub owner: &'a str,
    pub created_ms: u64,
}

/// What the holder of a connection writes: counted messages about to be sent (numbered after
/// those already kept), the last client message executed, the client's last Ack, the cursor
/// of the last message kept, and whether the socket is gone (the window starts).
#[derive(Debug, Clone, Copy, Default)]
pub struct Update<'a> {
    pub entries: &'a [Bytes],
    pub in_done: u64,
    pub acked: u64,
    pub cursor: Option<&'a str>,
    pub detach: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    Kept,
    /// Past the byte bound: the record stays, but can no longer be resumed.
    Overflowed,
    /// Another process took the connection over, or the record expired.
    Lost,
}

/// A record as `claim` looks at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub user: String,
    pub owner: String,
    pub attached: bool,
    pub overflowed: bool,
    pub detached_ms: u64,
}

/// What a resume starts from: the messages to send again (ids `acked + 1` on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub protocol: Protocol,
    pub acked: u64,
    pub journal: Vec<Bytes>,
    pub in_done: u64,
    pub cursor: Option<String>,
    pub created_ms: u64,
}

#[async_trait]
pub trait ResumeStore: Send + Sync + 'static {
    /// Starts a record; `false` if this id was used before (within `SEEN_FOR`).
    async fn create(&self, record: NewRecord<'_>, limits: Limits) -> Result<bool, ResumeError>;
    /// Whether a record of this id was started within `SEEN_FOR`, even if it is gone since: a
    /// connection token that opened one can only resume it, never open a new one.
    async fn seen(&self, id: &str) -> Result<bool, ResumeError>;
    /// Applies `update` if `owner` still holds the connection.
    async fn sync(&self, id: &str, owner: &str, update: Update<'_>, limits: Limits) -> Result<Synced, ResumeError>;
    /// Ends a record for good (a Close was sent), if `owner` still holds it.
    async fn forget(&self, id: &str, owner: &str) -> Result<(), ResumeError>;
    async fn record(&self, id: &str) -> Result<Option<Record>, ResumeError>;
    /// Hands the record from `from` to `owner` (compare and set; `None` if `from` no longer
    /// holds it or it cannot be resumed) and returns what the resume needs.
    async fn take(&self, id: &str, from: &str, owner: &str, limits: Limits) -> Result<Option<Claimed>, ResumeError>;
    /// Keeps the records of connections that are still open from expiring.
    async fn refresh(&self, ids: &[Arc<str>], limits: Limits) -> Result<(), ResumeError>;
    /// Says that process `instance` is alive for `ttl`.
    async fn beat(&self, instance: &str, ttl: Duration) -> Result<(), ResumeError>;
    async fn alive(&self, instance: &str) -> Result<bool, ResumeError>;
}

/// Why a resume is refused; the upgrade answers 404 (as ASP.NET does for a connection it does
/// not have), 409 or 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no such connection")]
    Unknown,
    #[error("the connection went past its buffer")]
    Overflowed,
    #[error("the connection is still open")]
    InUse,
    #[error("{0}")]
    Unavailable(String),
}

impl Refusal {
    /// Metric label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown",
            Refusal::Overflowed => "overflowed",
            Refusal::InUse => "in-use",
            Refusal::Unavailable(_) => "unavailable",
        }
    }
}

/// How long the id of a record is remembered: longer than a connection token is fresh.
pub const SEEN_FOR: Duration = Duration::from_secs(180);

/// How often a process says it is alive, and how long that lasts: a process killed without a
/// word gives its connections up this long after its last beat.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);
pub const BEAT_TTL: Duration = Duration::from_secs(3);
/// How long a resume waits for the old holder to let go before it is refused as in use.
const CLAIM_WAIT: Duration = Duration::from_secs(4);
const CLAIM_POLL: Duration = Duration::from_millis(50);

/// Everything a hub needs for stateful reconnect: the store, who this process is, the bounds.
pub struct Resume {
    pub store: Arc<dyn ResumeStore>,
    pub instance: Arc<str>,
    pub limits: Limits,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Resume {
    pub fn new(store: Arc<dyn ResumeStore>, limits: Limits) -> Self {
        Self { store, instance: uuid::Uuid::new_v4().simple().to_string().into(), limits }
    }

    /// Takes connection `id` of `user` over for this process: once its holder let it go (the
    /// socket dropped) or died (no beat for `BEAT_TTL`); refused while it is open elsewhere,
    /// past its window or buffer, or for another user.
    pub async fn claim(&self, id: &str, user: &str) -> Result<Claimed, Refusal> {
        let unavailable = |e: ResumeError| Refusal::Unavailable(e.to_string());
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        loop {
            let record = self.store.record(id).await.map_err(unavailable)?.ok_or(Refusal::Unknown)?;
            if record.user != user {
                return Err(Refusal::Unknown);
            }
            if record.overflowed {
                return Err(Refusal::Overflowed);
            }
            if !record.attached && now_ms() > record.detached_ms + self.limits.window.as_millis() as u64 {
                return Err(Refusal::Unknown);
            }
            let held = record.attached && self.store.alive(&record.owner).await.map_err(unavailable)?;
            if !held {
                if let Some(claimed) = self.store.take(id, &record.owner, &self.instance, self.limits).await.map_err(unavailable)? {
                    return Ok(claimed);
                }
            } else if tokio::time::Instant::now() >= deadline {
                return Err(Refusal::InUse);
            }
            tokio::time::sleep(CLAIM_POLL).await;
        }
    }

    /// Beats for this process and keeps the records of `open()`'s connections alive, until
    /// the process ends (the task holds only a weak reference to the caller's state).
    pub fn upkeep(self: &Arc<Self>, open: impl Fn() -> Option<Vec<Arc<str>>> + Send + 'static) {
        let resume = self.clone();
        tokio::spawn(async move {
            let refresh_every = resume.limits.refresh_every();
            let mut last_refresh = tokio::time::Instant::now();
            loop {
                if let Err(err) = resume.store.beat(&resume.instance, BEAT_TTL).await {
                    tracing::warn!(error = %err, "cannot say this process is alive: its stateful connections may be taken over");
                }
                if last_refresh.elapsed() >= refresh_every {
                    let Some(ids) = open() else { break };
                    for chunk in ids.chunks(1000) {
                        if let Err(err) = resume.store.refresh(chunk, resume.limits).await {
                            tracing::warn!(error = %err, "cannot keep stateful connections resumable");
                            break;
                        }
                    }
                    last_refresh = tokio::time::Instant::now();
                }
                tokio::time::sleep(BEAT_EVERY).await;
            }
        });
    }
}
