//! The backplane on a Redis Cluster. Sharded pub/sub (SSUBSCRIBE / SPUBLISH, Redis 7) by
//! default, so a notification touches only the shard that owns its channel; classic pub/sub
//! (broadcast to every node) on request. One RESP3 cluster connection carries the
//! subscriptions; when a node drops or a slot moves, this task subscribes every wanted channel
//! again on a new connection (backing off while that keeps happening) and reports the gap.

use std::{collections::HashMap, sync::Arc, time::Duration};

use deadpool_redis::redis::{self, PushKind, cluster_async::ClusterConnection};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{
    canary::CanarySettings,
    redis::{Changes, RedisBackplane, Subscriber},
};
use crate::redis_client::{RedisClient, cluster_client, cluster_state_ok};

/// Which pub/sub a cluster backplane uses. Stock ASP.NET Core nodes speak classic only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PubSub {
    /// PUBLISH / SUBSCRIBE: every node receives every message.
    Classic,
    /// SPUBLISH / SSUBSCRIBE: only the shard owning the channel's slot.
    Sharded,
}

impl PubSub {
    fn publish(self) -> &'static str {
        match self {
            Self::Classic => "PUBLISH",
            Self::Sharded => "SPUBLISH",
        }
    }

    fn message(self) -> PushKind {
        match self {
            Self::Classic => PushKind::Message,
            Self::Sharded => PushKind::SMessage,
        }
    }

    fn unsubscribed(self) -> PushKind {
        match self {
            Self::Classic => PushKind::Unsubscribe,
            Self::Sharded => PushKind::SUnsubscribe,
        }
    }
}

/// Subscribing many channels: this many commands in flight at once.
const SUBSCRIBE_CONCURRENCY: usize = 256;

impl RedisBackplane {
    /// The backplane on the cluster whose `seeds` are given: publishes through `publish` (the
    /// cluster client of the cache), subscriptions on a connection of its own.
    pub fn start_cluster(
        seeds: Vec<String>,
        pubsub: PubSub,
        publish: RedisClient,
        always: Vec<String>,
        canary: Option<CanarySettings>,
        token: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        // Checked here, so a bad seed list is an error at start, not a warning in a loop.
        cluster_client(&seeds, None)?;
        Ok(Self::assemble(publish, pubsub.publish(), always, canary, token, move |sub, token| {
            tokio::spawn(subscriber(seeds, pubsub, sub, token));
        }))
    }
}

/// Why the subscriptions must be made again on a new connection.
enum Lost {
    /// Asked for (the canary stopped coming back), or a command failed.
    Reconnect,
    /// A node's connection dropped: what was subscribed on it may be gone.
    Node,
    /// The server unsubscribed a wanted channel: its slot moved to another shard. The client
    /// may also have taken that notice for the answer to another channel's pending SSUBSCRIBE,
    /// so everything is subscribed again rather than this one channel.
    Moved(String),
}

/// A connection that lasted this long was healthy: the next reconnect starts from the
/// shortest backoff again. A shorter one (a flapping node) keeps backing off.
const STABLE: Duration = Duration::from_secs(30);

async fn subscriber(seeds: Vec<String>, pubsub: PubSub, mut sub: Subscriber, token: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    let mut ever_connected = false;
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        // A new client (and push channel) per connection: what the old one still reports
        // cannot be mistaken for news of the new one.
        let (push_tx, mut pushes) = mpsc::unbounded_channel();
        let connected = async {
            let client = cluster_client(&seeds, Some(push_tx)).map_err(|e| e.to_string())?;
            let conn = tokio::time::timeout(Duration::from_secs(3), client.get_async_connection())
                .await
                .map_err(|_| "connect timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            let all: Vec<String> = sub.wanted.iter().cloned().collect();
            subscribe_all(&conn, pubsub, &all, true).await?;
            // Up (and the gap reported, so tabs replay) only once every shard has a master:
            // during a failover a replay would read the log from a shard that cannot answer.
            cluster_state_ok(&mut conn.clone()).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(conn)
        };
        let conn = tokio::select! {
            res = connected => res,
            () = token.cancelled() => return,
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "redis cluster backplane not subscribed");
                if !sub.wait(backoff, &mut waiting, &token).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        sub.up(&mut waiting, &mut ever_connected);
        let since = tokio::time::Instant::now();
        match serve(&conn, pubsub, &mut sub, &mut pushes, &mut waiting, &token).await {
            None => return,
            Some(Lost::Node) => tracing::warn!("a redis cluster node's connection dropped; subscribing every channel again"),
            Some(Lost::Moved(channel)) => {
                tracing::warn!(channel = %channel, "redis cluster moved a subscribed channel's slot; subscribing every channel again")
            }
            Some(Lost::Reconnect) => {}
        }
        sub.down();
        drop(conn);
        backoff = if since.elapsed() >= STABLE { Duration::from_millis(100) } else { (backoff * 2).min(Duration::from_secs(5)) };
        if !sub.wait(backoff, &mut waiting, &token).await {
            return;
        }
    }
}

/// Serves one connection until it is lost (`None`: time to stop).
async fn serve(
    conn: &ClusterConnection,
    pubsub: PubSub,
    sub: &mut Subscriber,
    pushes: &mut mpsc::UnboundedReceiver<redis::PushInfo>,
    waiting: &mut Vec<oneshot::Sender<()>>,
    token: &CancellationToken,
) -> Option<Lost> {
    // Unsubscribes this task sent whose confirmation has not come back: any other
    // unsubscribe of a wanted channel came from the server (its slot moved).
    let mut own_unsubscribes: HashMap<String, usize> = HashMap::new();
    loop {
        tokio::select! {
            push = pushes.recv() => {
                // The client's task ended with its sender: this connection is gone.
                let Some(push) = push else { return Some(Lost::Reconnect) };
                let channel = push.data.first().and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
                match (push.kind, channel) {
                    (kind, Some(channel)) if kind == pubsub.message() => {
                        if let Some(payload) = push.data.get(1).and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok()) {
                            sub.deliver(&channel, &payload);
                        }
                    }
                    (kind, Some(channel)) if kind == pubsub.unsubscribed() => {
                        if let Some(n) = own_unsubscribes.get_mut(&channel) {
                            *n -= 1;
                            if *n == 0 {
                                own_unsubscribes.remove(&channel);
                            }
                        } else if sub.wanted.contains(&channel) {
                            return Some(Lost::Moved(channel));
                        }
                    }
                    (PushKind::Disconnection, _) => return Some(Lost::Node),
                    _ => {}
                }
            }
            cmd = sub.commands.recv() => {
                let Changes { subscribe, unsubscribe, confirm, reconnect } = sub.burst(cmd?);
                if reconnect {
                    waiting.extend(confirm);
                    return Some(Lost::Reconnect);
                }
                let subscribe: Vec<String> = subscribe.into_iter().collect();
                let unsubscribe: Vec<String> = unsubscribe.into_iter().collect();
                unsubscribe.iter().for_each(|c| *own_unsubscribes.entry(c.clone()).or_default() += 1);
                let ok = subscribe_all(conn, pubsub, &subscribe, false).await.is_ok()
                    && unsubscribe_all(conn, pubsub, &unsubscribe).await.is_ok();
                if !ok {
                    waiting.extend(confirm);
                    return Some(Lost::Reconnect);
                }
                confirm.into_iter().for_each(|tx| { let _ = tx.send(()); });
            }
            () = token.cancelled() => return None,
        }
    }
}

/// One (S)SUBSCRIBE per channel (channels of different slots cannot share one), many in
/// flight, bounded in time: a few seconds, plus one per thousand channels on a (re)connect.
async fn subscribe_all(conn: &ClusterConnection, pubsub: PubSub, channels: &[String], bulk: bool) -> Result<(), String> {
    let bound = Duration::from_secs(3) + if bulk { Duration::from_millis(channels.len() as u64) } else { Duration::ZERO };
    each(conn, pubsub, channels, true, bound).await
}

async fn unsubscribe_all(conn: &ClusterConnection, pubsub: PubSub, channels: &[String]) -> Result<(), String> {
    each(conn, pubsub, channels, false, Duration::from_secs(3)).await
}

async fn each(conn: &ClusterConnection, pubsub: PubSub, channels: &[String], subscribe: bool, bound: Duration) -> Result<(), String> {
    let conn = conn.clone();
    let requests = stream::iter(channels.to_vec()).map(move |channel| {
        let mut conn = conn.clone();
        async move {
            match (pubsub, subscribe) {
                (PubSub::Classic, true) => conn.subscribe(channel).await,
                (PubSub::Sharded, true) => conn.ssubscribe(channel).await,
                (PubSub::Classic, false) => conn.unsubscribe(channel).await,
                (PubSub::Sharded, false) => conn.sunsubscribe(channel).await,
            }
        }
    });
    match tokio::time::timeout(bound, requests.buffer_unordered(SUBSCRIBE_CONCURRENCY).try_collect::<Vec<()>>()).await {
        Ok(res) => res.map(drop).map_err(|e| e.to_string()),
        Err(_) => Err("no answer from the redis cluster".into()),
    }
}
