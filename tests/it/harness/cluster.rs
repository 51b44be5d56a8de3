//! A private Redis Cluster (3 masters, 3 replicas) for tests that break it: killing a master
//! or moving slots must not disturb the shared cluster other tests run on. redis-server
//! processes on loopback ports of their own, stopped when the value is dropped.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use deadpool_redis::redis;

use super::eventually;

pub struct PrivateCluster {
    nodes: Vec<(u16, Option<Child>)>,
    dir: std::path::PathBuf,
}

/// Ports the system has free, each with its cluster bus port (+10,000) free too.
fn free_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    while ports.len() < n {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port < 55_000 && !ports.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            ports.push(port);
        }
    }
    ports
}

impl PrivateCluster {
    pub async fn start() -> Self {
        let ports = free_ports(6);
        let dir = std::env::temp_dir().join(format!("contoso-cluster-{}-{}", ports[0], std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let nodes = ports
            .into_iter()
            .map(|port| {
                let node_dir = dir.join(port.to_string());
                std::fs::create_dir_all(&node_dir).unwrap();
                let child = Command::new("redis-server")
                    .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--cluster-enabled", "yes"])
                    .args(["--cluster-node-timeout", "1000", "--save", "", "--appendonly", "no"])
                    .arg("--dir")
                    .arg(&node_dir)
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server installed (scripts/services.sh)");
                (port, Some(child))
            })
            .collect();
        let cluster = Self { nodes, dir };
        for (port, _) in &cluster.nodes {
            eventually(Duration::from_secs(10), "a cluster node listening", || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", *port)).await.ok()
            })
            .await;
        }
        let addrs: Vec<String> = cluster.nodes.iter().map(|(p, _)| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(created.success(), "redis-cli --cluster create");
        for (port, _) in &cluster.nodes {
            eventually(Duration::from_secs(20), "every node sees cluster_state:ok", || async move {
                let info: String = node_query(*port, redis::cmd("CLUSTER").arg("INFO")).await.ok()?;
                info.contains("cluster_state:ok").then_some(())
            })
            .await;
        }
        cluster
    }

    /// Seed nodes, as `--redis-url` takes them in cluster mode.
    pub fn urls(&self) -> String {
        self.nodes.iter().take(3).map(|(p, _)| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// The port of the master that owns `key`'s slot now.
    pub async fn master_of(&self, key: &str) -> u16 {
        let alive = self.nodes.iter().find(|(_, c)| c.is_some()).unwrap().0;
        let slot: u16 = node_query(alive, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await.unwrap();
        let slots: redis::Value = node_query(alive, redis::cmd("CLUSTER").arg("SLOTS")).await.unwrap();
        let redis::Value::Array(ranges) = slots else { panic!("CLUSTER SLOTS: {slots:?}") };
        for range in ranges {
            let redis::Value::Array(items) = range else { continue };
            let (from, to): (u16, u16) = (redis::from_redis_value_ref(&items[0]).unwrap(), redis::from_redis_value_ref(&items[1]).unwrap());
            if (from..=to).contains(&slot) {
                let redis::Value::Array(master) = &items[2] else { panic!("node entry") };
                return redis::from_redis_value_ref(&master[1]).unwrap();
            }
        }
        panic!("no master owns slot {slot}")
    }

    /// Ports of every node started, dead or alive.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(p, _)| *p).collect()
    }

    /// Ports of the masters that own slots now.
    pub async fn masters(&self) -> Vec<u16> {
        let alive = self.nodes.iter().find(|(_, c)| c.is_some()).unwrap().0;
        let nodes: String = node_query(alive, redis::cmd("CLUSTER").arg("NODES")).await.unwrap();
        nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail") && l.split(' ').count() > 8)
            .filter_map(|l| l.split(' ').nth(1)?.split(['@', ':']).nth(1)?.parse().ok())
            .collect()
    }

    /// Waits until the master on `port` has its replica caught up with every write so far.
    pub async fn replicated(&self, port: u16) {
        eventually(Duration::from_secs(10), "the replica caught up", || async move {
            let info: String = node_query(port, redis::cmd("INFO").arg("replication")).await.ok()?;
            let offset = info.lines().find_map(|l| l.strip_prefix("master_repl_offset:"))?.trim().to_owned();
            let replica = info.lines().find(|l| l.starts_with("slave0:"))?;
            replica.contains(&format!("offset={offset},")).then_some(())
        })
        .await;
    }

    /// `kill -9` of one node.
    pub fn kill(&mut self, port: u16) {
        let (_, child) = self.nodes.iter_mut().find(|(p, _)| *p == port).expect("a node of this cluster");
        let mut child = child.take().expect("node still running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One command to one node, not routed.
pub async fn node_query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    cmd.query_async(&mut conn).await
}
