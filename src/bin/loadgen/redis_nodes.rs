//! The Redis a run publishes through, seen node by node: the one server, or every master of a
//! Redis Cluster (`--redis-mode cluster`), each asked for its own PUBLISH / SPUBLISH count,
//! CPU time and channel subscribers, so a run can show that each notification cost one shard.

use contoso::redis_client::{RedisClient, RedisMode, seeds};
use deadpool_redis::redis;
use serde::Serialize;

/// One node's counters at a point in time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// PUBLISH plus SPUBLISH calls so far.
    pub publishes: u64,
    /// used_cpu_sys + used_cpu_user, in seconds.
    pub cpu_seconds: f64,
    /// Every command's calls, and the bytes in from clients and out to them.
    pub commands: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// What one node did during a step.
#[derive(Debug, Serialize)]
pub struct NodeStep {
    pub node: String,
    pub publishes: u64,
    /// Its share of the step's notifications (the shares of a sharded run sum to 1).
    pub publishes_per_notification: f64,
    pub cpu_us_per_notification: f64,
    pub commands_per_notification: f64,
    pub bytes_in_per_notification: f64,
    pub bytes_out_per_notification: f64,
}

pub struct Nodes {
    mode: RedisMode,
    /// host:port of each master.
    masters: Vec<String>,
}

impl Nodes {
    /// The masters of `url` (a seed list in cluster mode).
    pub async fn discover(mode: RedisMode, url: &str) -> anyhow::Result<Self> {
        let masters = match mode {
            RedisMode::Standalone => vec![url.split("://").nth(1).unwrap_or(url).split('/').next().unwrap_or_default().to_owned()],
            RedisMode::Cluster => {
                let seed = seeds(url).into_iter().next().ok_or_else(|| anyhow::anyhow!("no seed node"))?;
                let nodes: String = node_query(&seed, redis::cmd("CLUSTER").arg("NODES")).await?;
                nodes
                    .lines()
                    .filter(|l| l.contains("master") && !l.contains("fail") && l.split(' ').count() > 8)
                    .filter_map(|l| l.split(' ').nth(1)?.split('@').next().map(str::to_owned))
                    .collect()
            }
        };
        Ok(Self { mode, masters })
    }

    pub fn masters(&self) -> &[String] {
        &self.masters
    }

    pub async fn counters(&self) -> anyhow::Result<Vec<Counters>> {
        let mut all = Vec::new();
        for node in &self.masters {
            let url = format!("redis://{node}");
            let stats: String = node_query(&url, redis::cmd("INFO").arg("commandstats")).await?;
            let cpu: String = node_query(&url, redis::cmd("INFO").arg("cpu")).await?;
            let net: String = node_query(&url, redis::cmd("INFO").arg("stats")).await?;
            let calls = |name: &str| -> u64 {
                stats
                    .lines()
                    .find(|l| l.starts_with(&format!("cmdstat_{name}:")))
                    .and_then(|l| l.split("calls=").nth(1)?.split(',').next()?.parse().ok())
                    .unwrap_or(0)
            };
            let field = |text: &str, name: &str| -> f64 {
                text.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
            };
            let commands = stats.lines().filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok()).sum();
            all.push(Counters {
                publishes: calls("publish") + calls("spublish"),
                cpu_seconds: field(&cpu, "used_cpu_sys") + field(&cpu, "used_cpu_user"),
                commands,
                bytes_in: field(&net, "total_net_input_bytes") as u64,
                bytes_out: field(&net, "total_net_output_bytes") as u64,
            });
        }
        Ok(all)
    }

    /// Subscribers of `channels`, summed over the nodes (sharded subscriptions live on the
    /// channel's shard only; classic ones are counted by the server they were made on).
    pub async fn subscribers(&self, channels: &[String]) -> anyhow::Result<u64> {
        let command = match self.mode {
            RedisMode::Standalone => "NUMSUB",
            RedisMode::Cluster => "SHARDNUMSUB",
        };
        let mut total = 0;
        for node in &self.masters {
            for chunk in channels.chunks(500) {
                let mut cmd = redis::cmd("PUBSUB");
                cmd.arg(command).arg(chunk);
                let counts: Vec<(String, u64)> = node_query(&format!("redis://{node}"), &cmd).await?;
                total += counts.iter().map(|(_, n)| n).sum::<u64>();
            }
        }
        Ok(total)
    }

    /// Per node, what it did between `before` and `after` for `notifications`.
    pub fn step(&self, before: &[Counters], after: &[Counters], notifications: usize) -> Vec<NodeStep> {
        let n = notifications.max(1) as f64;
        self.masters
            .iter()
            .zip(before.iter().zip(after))
            .map(|(node, (b, a))| NodeStep {
                node: node.clone(),
                publishes: a.publishes.saturating_sub(b.publishes),
                publishes_per_notification: a.publishes.saturating_sub(b.publishes) as f64 / n,
                cpu_us_per_notification: (a.cpu_seconds - b.cpu_seconds).max(0.0) * 1e6 / n,
                commands_per_notification: a.commands.saturating_sub(b.commands) as f64 / n,
                bytes_in_per_notification: a.bytes_in.saturating_sub(b.bytes_in) as f64 / n,
                bytes_out_per_notification: a.bytes_out.saturating_sub(b.bytes_out) as f64 / n,
            })
            .collect()
    }
}

/// The client notify would use for `mode`: PUBLISH on one server, SPUBLISH on a cluster.
pub fn publisher(mode: RedisMode, url: &str) -> anyhow::Result<(RedisClient, &'static str)> {
    let command = match mode {
        RedisMode::Standalone => "PUBLISH",
        RedisMode::Cluster => "SPUBLISH",
    };
    Ok((RedisClient::new(mode, url, 8)?, command))
}

async fn node_query<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> anyhow::Result<T> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    Ok(cmd.query_async(&mut conn).await?)
}
