//! contoso on a Redis Cluster whose topology changes under it: a slot that moves to another
//! master and a master killed with `kill -9` (its replica promoted). The notification log and
//! the sharded backplane follow, the backplane reports the gap (tabs get ResumeNeeded), and
//! readiness says Redis while a shard has no master. Private clusters, so the shared one
//! other tests use is never disturbed; the cases that need no change of topology are in the
//! conformance suites.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use contoso::{
    backplane::{Backplane, cluster::PubSub, redis::RedisBackplane},
    cache::{NotificationLog, RedisCache, Retention, StatusCache},
    domain::UserId,
    redis_client::{RedisMode, seeds},
    shutdown::Shutdown,
};
use deadpool_redis::redis;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::harness::{
    cluster::{PrivateCluster, node_query},
    env, eventually, unique_user,
};

const RETENTION: Retention = Retention { max_count: 100, max_age: Duration::from_secs(600) };

/// Two notify processes' backplanes on `urls` (sharded pub/sub), once both are subscribed.
async fn backplanes(urls: &str, shutdown: &Shutdown) -> Vec<(Arc<RedisBackplane>, UnboundedReceiver<(String, Bytes)>)> {
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let client = contoso::redis_client::RedisClient::new(RedisMode::Cluster, urls, 4).unwrap();
        let node =
            RedisBackplane::start_cluster(seeds(urls), PubSub::Sharded, client, Vec::new(), None, shutdown.connections.clone()).unwrap();
        eventually(Duration::from_secs(10), "the cluster backplane connected", || {
            let node = node.clone();
            async move { node.ping().await.ok() }
        })
        .await;
        let inbound = node.take_inbound().unwrap();
        nodes.push((node, inbound));
    }
    nodes
}

async fn subscribe(node: &RedisBackplane, channel: &str) {
    tokio::time::timeout(Duration::from_secs(10), node.subscribe(channel)).await.expect("confirmed").expect("running");
}

/// Every channel published once by `from` reaches `to`, whatever the order.
async fn every_channel_arrives(from: &RedisBackplane, to: &mut UnboundedReceiver<(String, Bytes)>, channels: &[String]) {
    for ch in channels {
        from.publish(ch, Bytes::from(ch.clone())).await.expect("published");
    }
    let mut missing: std::collections::HashSet<&String> = channels.iter().collect();
    while !missing.is_empty() {
        let (ch, _) = tokio::time::timeout(Duration::from_secs(10), to.recv())
            .await
            .unwrap_or_else(|_| panic!("{} channels never delivered", missing.len()))
            .unwrap();
        missing.remove(&ch);
    }
}

fn log_key(user: &str) -> String {
    format!("notify:{{{user}}}:log")
}

/// Moves `slot` from the master on `from` to the master on `to`, keys included, the way
/// `redis-cli --cluster reshard` does.
async fn move_slot(cluster_ports: &[u16], slot: u16, from: u16, to: u16) {
    let id = |port| async move { node_query::<String>(port, &redis::cmd("CLUSTER").arg("MYID").clone()).await.unwrap() };
    let (from_id, to_id) = (id(from).await, id(to).await);
    let setslot = |port: u16, args: Vec<String>| async move {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot).arg(args);
        let () = node_query(port, &cmd).await.unwrap();
    };
    setslot(to, vec!["IMPORTING".into(), from_id.clone()]).await;
    setslot(from, vec!["MIGRATING".into(), to_id.clone()]).await;
    loop {
        let keys: Vec<String> = node_query(from, redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(100)).await.unwrap();
        if keys.is_empty() {
            break;
        }
        let mut migrate = redis::cmd("MIGRATE");
        migrate.arg("127.0.0.1").arg(to).arg("").arg(0).arg(5000).arg("KEYS").arg(&keys);
        let _: String = node_query(from, &migrate).await.unwrap();
    }
    for port in [to, from].iter().chain(cluster_ports) {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot).arg("NODE").arg(&to_id);
        // Replicas refuse SETSLOT; the masters' answer is what counts.
        let _: redis::RedisResult<()> = node_query(*port, &cmd).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_moves_takes_its_subscriptions_and_its_keys_along() {
    let cluster = PrivateCluster::start().await;
    let shutdown = Shutdown::new(std::env::temp_dir().join("contoso-cluster-no-drain"));
    let mut nodes = backplanes(&cluster.urls(), &shutdown).await;
    let cache = RedisCache::new(RedisMode::Cluster, &cluster.urls(), 2, RETENTION).unwrap();
    let channel = format!("t-cluster-{}:user:moving", uuid::Uuid::new_v4().simple());
    subscribe(&nodes[0].0, &channel).await;
    let user = UserId::parse(&unique_user("moving")).unwrap();
    let before = cache.append(&user, "event-1", "OrderCompleted", &json!({ "n": 1 })).await.unwrap();
    let mut gaps = nodes[0].0.reconnections().unwrap();
    let seen = *gaps.borrow_and_update();

    let ports = cluster.ports();
    for key in [channel.clone(), log_key(user.as_str())] {
        let slot: u16 = node_query(ports[0], redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key)).await.unwrap();
        let from = cluster.master_of(&key).await;
        let to = *cluster.masters().await.iter().find(|p| **p != from).unwrap();
        move_slot(&ports, slot, from, to).await;
        assert_eq!(cluster.master_of(&key).await, to, "the slot moved");
    }

    // The old owner unsubscribed the channel; the backplane follows it and says messages may
    // have been missed meanwhile.
    tokio::time::timeout(Duration::from_secs(10), gaps.wait_for(|n| *n > seen)).await.expect("a gap reported").unwrap();
    let (sender, receiver) = nodes.split_at_mut(1);
    every_channel_arrives(&receiver[0].0, &mut sender[0].1, std::slice::from_ref(&channel)).await;
    // The log moved with its slot: what was written is read from the new owner, and written to.
    let after = cache.append(&user, "event-2", "OrderCompleted", &json!({ "n": 2 })).await.unwrap();
    let replay = cache.since(&user, None).await.unwrap();
    assert_eq!(replay.notifications.iter().map(|n| n.id.clone()).collect::<Vec<_>>(), vec![before.id, after.id]);
    shutdown.connections.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_and_the_log_and_the_backplane_follow() {
    let mut cluster = PrivateCluster::start().await;
    let shutdown = Shutdown::new(std::env::temp_dir().join("contoso-cluster-no-drain"));
    let mut nodes = backplanes(&cluster.urls(), &shutdown).await;
    let cache = RedisCache::new(RedisMode::Cluster, &cluster.urls(), 2, RETENTION).unwrap();
    // Channels on every shard, all subscribed by the first process.
    let prefix = format!("t-cluster-{}:user:", uuid::Uuid::new_v4().simple());
    let channels: Vec<String> = (0..24).map(|i| format!("{prefix}{i}")).collect();
    for ch in &channels {
        subscribe(&nodes[0].0, ch).await;
    }
    // A user whose log lives on the master about to die, with notifications logged (and
    // replicated) before it dies.
    let victim = cluster.master_of(&channels[0]).await;
    let mut user = None;
    for i in 0.. {
        let candidate = unique_user(&format!("failover-{i}"));
        if cluster.master_of(&log_key(&candidate)).await == victim {
            user = Some(UserId::parse(&candidate).unwrap());
            break;
        }
    }
    let user = user.unwrap();
    let mut logged = Vec::new();
    for n in 0..3 {
        logged.push(cache.append(&user, &format!("event-{n}"), "OrderCompleted", &json!({ "n": n })).await.unwrap().id);
    }
    cluster.replicated(victim).await;
    let mut gaps = nodes[0].0.reconnections().unwrap();
    let seen = *gaps.borrow_and_update();

    cluster.kill(victim);
    eventually(Duration::from_secs(5), "readiness failing while a shard has no master", || async {
        cache.ping().await.is_err().then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "the replica promoted and readiness back", || async { cache.ping().await.ok() }).await;
    tokio::time::timeout(Duration::from_secs(30), gaps.wait_for(|n| *n > seen)).await.expect("a gap reported").unwrap();
    eventually(Duration::from_secs(30), "the backplane subscribed again", || async { nodes[0].0.ping().await.ok() }).await;

    let (sender, receiver) = nodes.split_at_mut(1);
    every_channel_arrives(&receiver[0].0, &mut sender[0].1, &channels).await;
    let after = cache.append(&user, "event-3", "OrderCompleted", &json!({ "n": 3 })).await.unwrap();
    logged.push(after.id);
    let replay = cache.since(&user, None).await.unwrap();
    assert_eq!(replay.notifications.into_iter().map(|n| n.id).collect::<Vec<_>>(), logged, "nothing logged was lost");
    shutdown.connections.cancel();
}

/// A single Redis given as a cluster: readiness fails and says which setting is wrong; seeds
/// that do not answer fail readiness too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_not_in_cluster_mode_fails_readiness_naming_the_setting() {
    let cache = RedisCache::new(RedisMode::Cluster, &env::redis_url(), 2, RETENTION).unwrap();
    let err = cache.ping().await.unwrap_err().to_string();
    assert!(err.contains("--redis-mode cluster"), "{err}");
    // No seed answers: not ready either, saying so.
    let nowhere = RedisCache::new(RedisMode::Cluster, "redis://127.0.0.1:1,redis://127.0.0.1:2", 2, RETENTION).unwrap();
    let err = nowhere.ping().await.unwrap_err().to_string();
    assert!(err.contains("Failed to create initial connections"), "{err}");
}
