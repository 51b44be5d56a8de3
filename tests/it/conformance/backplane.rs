//! The hub backplane: Redis pub/sub (a single server, and sharded pub/sub on the Redis
//! Cluster) against the in-process `MemoryBackplane`. Two nodes (two notify processes) on one
//! backplane: a subscribed node receives every publish to the channel, its own included;
//! unsubscribing stops it; subscribe and unsubscribe apply in call order; payloads arrive byte
//! for byte. Outside the shared cases: classic pub/sub on the cluster (for deployments that
//! share it with ASP.NET Core nodes). A lost connection and a moved slot are in `cluster.rs`
//! and `outages.rs`.

use std::{ops::Deref, sync::Arc, time::Duration};

use bytes::Bytes;
use contoso::{
    backplane::{
        Backplane,
        cluster::PubSub,
        memory::{MemoryBackplane, MemoryHub},
        redis::RedisBackplane,
    },
    redis_client::{RedisClient, RedisMode, seeds},
    shutdown::Shutdown,
};
use tokio::sync::mpsc::UnboundedReceiver;

use super::conformance;
use crate::harness::env;

/// Two nodes of one backplane, their inbound streams, and a channel namespace of their own.
pub struct Pair {
    nodes: [Arc<dyn Backplane>; 2],
    inbound: [tokio::sync::Mutex<UnboundedReceiver<(String, Bytes)>>; 2],
    prefix: String,
}

pub struct Fixture {
    pair: Pair,
    shutdown: Option<Shutdown>,
}

impl Deref for Fixture {
    type Target = Pair;
    fn deref(&self) -> &Pair {
        &self.pair
    }
}

impl Fixture {
    async fn cleanup(self) {
        if let Some(shutdown) = self.shutdown {
            shutdown.connections.cancel();
        }
    }
}

fn pair(nodes: [Arc<dyn Backplane>; 2]) -> Pair {
    let inbound = [0, 1].map(|i| tokio::sync::Mutex::new(nodes[i].take_inbound().expect("inbound taken once")));
    Pair { nodes, inbound, prefix: format!("t-bp-{}:", uuid::Uuid::new_v4().simple()) }
}

async fn redis() -> Fixture {
    running(single).await
}

/// One node on the single Redis.
pub fn single(token: tokio_util::sync::CancellationToken) -> Arc<RedisBackplane> {
    {
        let client = RedisClient::new(RedisMode::Standalone, &env::redis_url(), 4).unwrap();
        RedisBackplane::start(&env::redis_url(), client, Vec::new(), None, token).unwrap()
    }
}

async fn cluster() -> Fixture {
    cluster_with(PubSub::Sharded).await
}

async fn cluster_with(pubsub: PubSub) -> Fixture {
    running(|token| sharded_with(pubsub, token)).await
}

/// One node on the shared Redis Cluster.
pub fn sharded_with(pubsub: PubSub, token: tokio_util::sync::CancellationToken) -> Arc<RedisBackplane> {
    let urls = env::redis_cluster_urls();
    let client = RedisClient::new(RedisMode::Cluster, &urls, 4).unwrap();
    RedisBackplane::start_cluster(seeds(&urls), pubsub, client, Vec::new(), None, token).unwrap()
}

/// Two nodes made by `start`, once both are connected.
async fn running(start: impl Fn(tokio_util::sync::CancellationToken) -> Arc<RedisBackplane>) -> Fixture {
    let (nodes, shutdown) = nodes(start).await;
    Fixture { pair: pair(nodes), shutdown: Some(shutdown) }
}

/// Two nodes made by `start`, connected, with the shutdown that stops them.
pub async fn nodes(start: impl Fn(tokio_util::sync::CancellationToken) -> Arc<RedisBackplane>) -> ([Arc<dyn Backplane>; 2], Shutdown) {
    let shutdown = Shutdown::new(std::env::temp_dir().join("contoso-conformance-no-drain"));
    let nodes = [0, 1].map(|_| start(shutdown.connections.clone()) as Arc<dyn Backplane>);
    for n in &nodes {
        tokio::time::timeout(Duration::from_secs(10), async {
            while n.ping().await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("Redis reachable at TEST_REDIS_URL / TEST_REDIS_CLUSTER_URLS");
    }
    (nodes, shutdown)
}

async fn memory() -> Fixture {
    let hub = Arc::new(MemoryHub::default());
    let nodes = [0, 1].map(|_| Arc::new(MemoryBackplane::new(hub.clone())) as Arc<dyn Backplane>);
    Fixture { pair: pair(nodes), shutdown: None }
}

conformance!(redis, memory, cluster;
    a_subscribed_node_receives_every_publish_its_own_included,
    an_unsubscribed_channel_is_no_longer_delivered,
    subscribe_and_unsubscribe_apply_in_call_order,
    payloads_arrive_byte_for_byte,
);

/// `--backplane-pubsub classic` on a cluster: PUBLISH / SUBSCRIBE, as ASP.NET Core nodes speak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_pub_sub_on_a_cluster_delivers_too() {
    let fixture = cluster_with(PubSub::Classic).await;
    a_subscribed_node_receives_every_publish_its_own_included(&fixture).await;
    subscribe_and_unsubscribe_apply_in_call_order(&fixture).await;
    fixture.cleanup().await;
}

impl Pair {
    fn channel(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn subscribe(&self, node: usize, channel: &str) {
        tokio::time::timeout(Duration::from_secs(5), self.nodes[node].subscribe(channel))
            .await
            .expect("subscription confirmed within 5 s")
            .expect("backplane running");
    }

    async fn publish(&self, node: usize, channel: &str, payload: &'static [u8]) {
        self.nodes[node].publish(channel, Bytes::from_static(payload)).await.expect("published");
    }

    async fn next(&self, node: usize) -> (String, Bytes) {
        let mut inbound = self.inbound[node].lock().await;
        tokio::time::timeout(Duration::from_secs(5), inbound.recv()).await.expect("a message within 5 s").expect("inbound open")
    }

    /// Absence cannot be awaited, only bounded: nothing more arrives within `window`.
    async fn nothing_within(&self, node: usize, window: Duration) -> bool {
        tokio::time::timeout(window, self.inbound[node].lock().await.recv()).await.is_err()
    }
}

async fn a_subscribed_node_receives_every_publish_its_own_included(p: &Pair) {
    let ch = p.channel("user:a");
    p.subscribe(0, &ch).await;
    p.publish(0, &ch, b"from self").await;
    p.publish(1, &ch, b"from the other node").await;
    assert_eq!(p.next(0).await, (ch.clone(), Bytes::from_static(b"from self")));
    assert_eq!(p.next(0).await, (ch.clone(), Bytes::from_static(b"from the other node")));
    assert!(p.nothing_within(1, Duration::from_millis(300)).await, "a node receives only what it subscribed to");
}

async fn an_unsubscribed_channel_is_no_longer_delivered(p: &Pair) {
    let (gone, kept) = (p.channel("user:gone"), p.channel("user:kept"));
    p.subscribe(0, &gone).await;
    p.nodes[0].unsubscribe(&gone);
    // Requests apply in order: once this is confirmed, the unsubscribe has been applied too.
    p.subscribe(0, &kept).await;
    p.publish(1, &gone, b"missed").await;
    p.publish(1, &kept, b"seen").await;
    assert_eq!(p.next(0).await, (kept, Bytes::from_static(b"seen")), "nothing of the unsubscribed channel arrives first");
}

async fn subscribe_and_unsubscribe_apply_in_call_order(p: &Pair) {
    let ch = p.channel("user:flapping");
    // A user's last tab closes and a new one opens at once: the channel must end up subscribed.
    let first = p.nodes[0].subscribe(&ch);
    p.nodes[0].unsubscribe(&ch);
    let again = p.nodes[0].subscribe(&ch);
    for confirmation in [first, again] {
        tokio::time::timeout(Duration::from_secs(5), confirmation).await.expect("confirmed").expect("running");
    }
    p.publish(1, &ch, b"still here").await;
    assert_eq!(p.next(0).await, (ch, Bytes::from_static(b"still here")));
}

async fn payloads_arrive_byte_for_byte(p: &Pair) {
    let ch = p.channel("user:bytes");
    p.subscribe(1, &ch).await;
    let payload: &'static [u8] = b"\x92\x90\x82\xa4json\xc4\x00\x00\xff\x1e";
    p.publish(0, &ch, payload).await;
    assert_eq!(p.next(1).await.1, Bytes::from_static(payload));
}
