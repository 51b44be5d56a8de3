//! One handle on Redis for its ordinary commands (status cache, notification log, backplane
//! publishes): a pool of connections to a single server, or one multiplexed connection to a
//! Redis Cluster that sends each command to the node owning its slot and follows MOVED / ASK.
//! Callers stay cluster-safe by giving every command and script keys of one slot.

use std::{sync::Arc, time::Duration};

use deadpool_redis::{
    Config, Runtime, Timeouts,
    redis::{
        self, FromRedisValue,
        cluster::{ClusterClient, ClusterClientBuilder},
        cluster_async::ClusterConnection,
        cluster_routing::Slot,
    },
};
use futures_util::future::try_join_all;
use serde::Deserialize;
use tokio::sync::OnceCell;

/// How `--redis-url` is read: one server, or seed nodes of a Redis Cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    #[default]
    Standalone,
    Cluster,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisClientError {
    #[error("no redis connection: {0}")]
    Pool(String),
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis cluster state is {0}, not ok")]
    ClusterState(String),
}

type Result<T> = std::result::Result<T, RedisClientError>;

#[derive(Clone)]
pub enum RedisClient {
    Standalone(deadpool_redis::Pool),
    Cluster(Arc<Cluster>),
}

/// The cluster's connection, made on first use (and again after a failed attempt), so a
/// process starts while the cluster is away and readiness says why.
pub struct Cluster {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

/// Connect and per-command bounds of the cluster connection (the pool has its own).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The seed nodes of a comma-separated `--redis-url`. A comma starts a new address only before
/// a scheme: one inside a password stays where it is.
pub fn seeds(url: &str) -> Vec<String> {
    let mut seeds: Vec<String> = Vec::new();
    for part in url.split(',') {
        match seeds.last_mut() {
            Some(last) if !part.trim_start().starts_with("redis://") && !part.trim_start().starts_with("rediss://") => {
                last.push(',');
                last.push_str(part);
            }
            _ => seeds.push(part.to_owned()),
        }
    }
    seeds.into_iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
}

/// A cluster client on `seeds`; `push` receives pub/sub messages (RESP3) when given.
pub fn cluster_client(
    seeds: &[String],
    push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
) -> anyhow::Result<ClusterClient> {
    let mut builder =
        ClusterClientBuilder::new(seeds.to_vec()).connection_timeout(CONNECT_TIMEOUT).response_timeout(RESPONSE_TIMEOUT).retries(4);
    if let Some(push) = push {
        builder = builder.use_protocol(redis::ProtocolVersion::RESP3).push_sender(push);
    }
    Ok(builder.build()?)
}

impl RedisClient {
    /// Builds the client; no connection is opened until the first command.
    pub fn new(mode: RedisMode, url: &str, pool_size: usize) -> anyhow::Result<Self> {
        let seeds = seeds(url);
        match mode {
            RedisMode::Standalone => {
                anyhow::ensure!(
                    seeds.len() == 1,
                    "--redis-url lists {} addresses: a Redis Cluster needs --redis-mode cluster",
                    seeds.len()
                );
                let mut cfg = Config::from_url(url);
                let mut pool = deadpool_redis::PoolConfig::new(pool_size);
                pool.timeouts = Timeouts {
                    wait: Some(Duration::from_secs(2)),
                    create: Some(Duration::from_secs(2)),
                    recycle: Some(Duration::from_secs(1)),
                };
                cfg.pool = Some(pool);
                Ok(Self::Standalone(cfg.create_pool(Some(Runtime::Tokio1))?))
            }
            RedisMode::Cluster => {
                anyhow::ensure!(!seeds.is_empty(), "--redis-url names no cluster node");
                Ok(Self::Cluster(Arc::new(Cluster { client: cluster_client(&seeds, None)?, conn: OnceCell::new() })))
            }
        }
    }

    pub fn mode(&self) -> RedisMode {
        match self {
            Self::Standalone(_) => RedisMode::Standalone,
            Self::Cluster(_) => RedisMode::Cluster,
        }
    }

    async fn pooled(pool: &deadpool_redis::Pool) -> Result<deadpool_redis::Connection> {
        pool.get().await.map_err(|e| RedisClientError::Pool(e.to_string()))
    }

    /// One command.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        match self {
            Self::Standalone(pool) => Ok(cmd.query_async(&mut Self::pooled(pool).await?).await?),
            Self::Cluster(c) => Ok(cmd.query_async(&mut c.conn().await?).await?),
        }
    }

    /// One script call (loaded again where Redis forgot it).
    pub async fn invoke<T: FromRedisValue>(&self, call: &redis::ScriptInvocation<'_>) -> Result<T> {
        // The client loads a forgotten script and calls again; Redis may forget it once more in
        // between (a second SCRIPT FLUSH): a few rounds, not one.
        let mut rounds = 0;
        loop {
            let res = match self {
                Self::Standalone(pool) => call.invoke_async(&mut Self::pooled(pool).await?).await,
                Self::Cluster(c) => call.invoke_async(&mut c.conn().await?).await,
            };
            match res {
                Err(err) if no_script(&err) && rounds < 2 => rounds += 1,
                other => return Ok(other?),
            }
        }
    }

    /// Commands whose keys may live on different slots, answered in order: one pipeline on a
    /// single server; on a cluster one pipeline per slot (the commands of a slot keep their
    /// order: two publishes to one channel, two appends to one log), the slots at once.
    pub async fn query_all<T: FromRedisValue>(&self, cmds: Vec<redis::Cmd>) -> Result<Vec<T>> {
        match self {
            // The commands move into the pipeline: the publish path copies no payload.
            Self::Standalone(pool) => {
                let mut pipe = redis::pipe();
                cmds.into_iter().for_each(|cmd| {
                    pipe.add_command(cmd);
                });
                Ok(pipe.query_async(&mut Self::pooled(pool).await?).await?)
            }
            Self::Cluster(c) => {
                let pipeline = |indices: &[usize], _load: bool| {
                    let mut pipe = redis::pipe();
                    indices.iter().for_each(|&i| {
                        pipe.add_command(cmds[i].clone());
                    });
                    pipe
                };
                let conn = c.conn().await?;
                by_slot(cmds.iter().map(first_key)).run(pipeline, conn).await
            }
        }
    }

    /// Calls of one script, each with its first key, as `query_all`. A pipeline does not load a
    /// missing script on its own: one that Redis forgot (SCRIPT FLUSH, a restart, a new node)
    /// answers NOSCRIPT, and the pipeline goes again with the script loaded first. Sending the
    /// script only then keeps it off every batch.
    pub async fn invoke_all<T: FromRedisValue>(
        &self,
        script: &redis::Script,
        calls: &[(String, redis::ScriptInvocation<'_>)],
    ) -> Result<Vec<T>> {
        let pipeline = |indices: &[usize], load: bool| {
            let mut pipe = redis::pipe();
            if load {
                pipe.load_script(script).ignore();
            }
            indices.iter().for_each(|&i| {
                pipe.invoke_script(&calls[i].1);
            });
            pipe
        };
        match self {
            Self::Standalone(pool) => run_pipeline(&pipeline, &(0..calls.len()).collect::<Vec<_>>(), &mut Self::pooled(pool).await?).await,
            Self::Cluster(c) => {
                let conn = c.conn().await?;
                by_slot(calls.iter().map(|(key, _)| Slot::for_key(key))).run(pipeline, conn).await
            }
        }
    }

    /// Whether commands can be served now: PING (on a cluster, every master answers), and a
    /// cluster that says its state is ok (a shard without a master is not).
    pub async fn ping(&self) -> Result<()> {
        let _: String = self.query(&redis::cmd("PING")).await?;
        match self {
            Self::Standalone(_) => Ok(()),
            Self::Cluster(c) => cluster_state_ok(&mut c.conn().await?).await,
        }
    }
}

/// The slot of a command's first key (its first argument after the name).
fn first_key(cmd: &redis::Cmd) -> Slot {
    match cmd.args_iter().nth(1) {
        Some(redis::Arg::Simple(key)) => Slot::for_key(key),
        _ => Slot::for_key(b""),
    }
}

/// One pipeline of the batch's `indices`; again with its script loaded first when Redis does
/// not know it (every call of the pipeline failed then: they are calls of that one script).
async fn run_pipeline<T: FromRedisValue, C: redis::aio::ConnectionLike>(
    pipeline: &impl Fn(&[usize], bool) -> redis::Pipeline,
    indices: &[usize],
    conn: &mut C,
) -> Result<Vec<T>> {
    let mut load = false;
    for _ in 0..3 {
        match pipeline(indices, load).query_async(conn).await {
            Err(err) if no_script(&err) => load = true,
            other => return Ok(other?),
        }
    }
    Ok(pipeline(indices, true).query_async(conn).await?)
}

fn no_script(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// Positions of a batch grouped by slot, each group in batch order.
struct Groups(Vec<Vec<usize>>);

fn by_slot(slots: impl Iterator<Item = Slot>) -> Groups {
    let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
    let mut index: std::collections::HashMap<Slot, usize> = std::collections::HashMap::new();
    for (i, slot) in slots.enumerate() {
        let g = *index.entry(slot).or_insert_with(|| {
            groups.push((slot, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    Groups(groups.into_iter().map(|(_, indices)| indices).collect())
}

impl Groups {
    /// One pipeline per group, all at once; the answers put back in batch order.
    async fn run<T: FromRedisValue>(self, pipeline: impl Fn(&[usize], bool) -> redis::Pipeline, conn: ClusterConnection) -> Result<Vec<T>> {
        let total = self.0.iter().map(Vec::len).sum();
        let pipeline = &pipeline;
        let answers = try_join_all(self.0.into_iter().map(|indices| {
            let mut conn = conn.clone();
            async move {
                let values = run_pipeline(pipeline, &indices, &mut conn).await?;
                Ok::<_, RedisClientError>((indices, values))
            }
        }))
        .await?;
        let mut ordered: Vec<Option<T>> = std::iter::repeat_with(|| None).take(total).collect();
        for (indices, values) in answers {
            for (i, v) in indices.into_iter().zip(values) {
                ordered[i] = Some(v);
            }
        }
        ordered.into_iter().map(|v| v.ok_or_else(|| RedisClientError::Pool("a pipeline answered short".into()))).collect()
    }
}

/// Whether the cluster says its state is ok (every slot served by a reachable master).
pub async fn cluster_state_ok(conn: &mut ClusterConnection) -> Result<()> {
    let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(conn).await?;
    let state = info.lines().find_map(|l| l.strip_prefix("cluster_state:")).unwrap_or("unknown").trim();
    if state == "ok" { Ok(()) } else { Err(RedisClientError::ClusterState(state.to_owned())) }
}

impl Cluster {
    /// The shared connection (a cheap clone), connecting first when there is none yet.
    async fn conn(&self) -> Result<ClusterConnection> {
        let conn = self.conn.get_or_try_init(|| self.client.get_async_connection()).await.map_err(explain)?;
        Ok(conn.clone())
    }
}

/// A node that is not in cluster mode answers the slot query with an error that does not say
/// which setting is wrong: say it.
fn explain(err: redis::RedisError) -> RedisClientError {
    if err.to_string().contains("cluster support disabled") {
        RedisClientError::Pool(format!("{err} (--redis-mode cluster needs Redis Cluster nodes in --redis-url)"))
    } else {
        RedisClientError::Redis(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_list_splits_at_schemes_only() {
        assert_eq!(seeds("redis://a:1, rediss://b:2"), ["redis://a:1", "rediss://b:2"]);
        assert_eq!(seeds("redis://:pa,ss@host:6379/0"), ["redis://:pa,ss@host:6379/0"]);
        assert_eq!(seeds("redis://:p,w@a:1,redis://:p,w@b:2"), ["redis://:p,w@a:1", "redis://:p,w@b:2"]);
    }

    #[test]
    fn a_batch_groups_by_slot_keeping_its_order() {
        let slots = ["{u1}:log", "{u2}:log", "{u1}:log", "{u1}:event:x"].map(Slot::for_key);
        assert_eq!(by_slot(slots.into_iter()).0, vec![vec![0, 2, 3], vec![1]]);
    }
}
