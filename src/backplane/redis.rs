//! The Redis backplane, wire-compatible with ASP.NET Core's (signalr-protocol.md §8). One
//! dedicated pub/sub connection per process, owned by a supervisor task that reconnects with
//! backoff and re-subscribes every wanted channel; SUBSCRIBE/UNSUBSCRIBE requests that pile up
//! are sent as one command, and PUBLISHes queued together go out as one pipeline on the
//! ordinary connection pool.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_redis::redis;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Backplane, BackplaneError};

pub mod names {
    pub const CONNECTED: &str = "contoso_backplane_connected";
    pub const RECONNECTS: &str = "contoso_backplane_reconnects_total";
    pub const PUBLISH_BATCH: &str = "contoso_backplane_publish_batch_size";
}

/// How long `subscribe` waits for Redis to confirm before reporting an error (the channel stays
/// wanted and is subscribed when Redis is back).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Most PUBLISHes in one pipeline.
const MAX_PUBLISH_BATCH: usize = 512;

enum Command {
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
}

struct PublishRequest {
    channel: String,
    payload: Bytes,
    done: oneshot::Sender<Result<(), BackplaneError>>,
}

pub struct RedisBackplane {
    commands: mpsc::UnboundedSender<Command>,
    publishes: mpsc::Sender<PublishRequest>,
    inbound: Mutex<Option<mpsc::UnboundedReceiver<(String, Bytes)>>>,
    connected: Arc<AtomicBool>,
    reconnections: tokio::sync::watch::Receiver<u64>,
}

impl RedisBackplane {
    /// Starts the subscriber and publisher tasks; `always` channels are subscribed for the
    /// whole life of the process (e.g. the hub's `:all`).
    pub fn start(url: &str, pool: deadpool_redis::Pool, always: Vec<String>, token: CancellationToken) -> anyhow::Result<Arc<Self>> {
        let client = redis::Client::open(url)?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (pub_tx, pub_rx) = mpsc::channel(16 * MAX_PUBLISH_BATCH);
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(false));
        let (gap_tx, gap_rx) = tokio::sync::watch::channel(0u64);
        tokio::spawn(subscriber(client, always.into_iter().collect(), cmd_rx, in_tx, connected.clone(), gap_tx, token.clone()));
        tokio::spawn(publisher(pool, pub_rx, token));
        Ok(Arc::new(Self { commands: cmd_tx, publishes: pub_tx, inbound: Mutex::new(Some(in_rx)), connected, reconnections: gap_rx }))
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), BackplaneError> {
        let (done, rx) = oneshot::channel();
        let request = PublishRequest { channel: channel.to_owned(), payload, done };
        self.publishes.send(request).await.map_err(|_| BackplaneError::Unavailable("backplane stopped".into()))?;
        rx.await.map_err(|_| BackplaneError::Unavailable("backplane stopped".into()))?
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BackplaneError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Subscribe(channel.to_owned(), tx))
            .map_err(|_| BackplaneError::Unavailable("backplane stopped".into()))?;
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, rx).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(BackplaneError::Unavailable("subscription not confirmed yet; it will be made when redis is back".into())),
        }
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BackplaneError> {
        self.commands.send(Command::Unsubscribe(channel.to_owned())).map_err(|_| BackplaneError::Unavailable("backplane stopped".into()))
    }

    fn take_inbound(&self) -> Option<mpsc::UnboundedReceiver<(String, Bytes)>> {
        self.inbound.lock().expect("lock").take()
    }

    async fn ping(&self) -> Result<(), BackplaneError> {
        if self.connected.load(Ordering::SeqCst) { Ok(()) } else { Err(BackplaneError::Unavailable("redis pub/sub not connected".into())) }
    }

    fn reconnections(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.reconnections.clone())
    }
}

/// Owns the pub/sub connection for the life of the process.
async fn subscriber(
    client: redis::Client,
    mut wanted: HashSet<String>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    inbound: mpsc::UnboundedSender<(String, Bytes)>,
    connected: Arc<AtomicBool>,
    gaps: tokio::sync::watch::Sender<u64>,
    token: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut ever_connected = false;
    // Confirmations owed to `subscribe` callers while Redis is away.
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let attempt = tokio::select! {
            res = tokio::time::timeout(Duration::from_secs(3), client.get_async_pubsub()) => res.map_err(|_| "connect timed out".to_owned()).and_then(|r| r.map_err(|e| e.to_string())),
            () = token.cancelled() => return,
        };
        let pubsub = match attempt {
            Ok(p) => p,
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "redis backplane unreachable");
                // Keep the wanted set current while waiting.
                let deadline = tokio::time::Instant::now() + backoff;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => break,
                        cmd = commands.recv() => match cmd {
                            Some(cmd) => apply(&mut wanted, cmd, &mut waiting),
                            None => return,
                        },
                        () = token.cancelled() => return,
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        if !wanted.is_empty() {
            let all: Vec<&String> = wanted.iter().collect();
            if let Err(err) = sink.subscribe(all).await {
                tracing::warn!(error = %err, "re-subscribing failed, reconnecting");
                continue;
            }
        }
        waiting.drain(..).for_each(|tx| {
            let _ = tx.send(());
        });
        connected.store(true, Ordering::SeqCst);
        metrics::gauge!(names::CONNECTED).set(1.0);
        if ever_connected {
            metrics::counter!(names::RECONNECTS).increment(1);
            gaps.send_modify(|n| *n += 1);
            tracing::warn!(
                channels = wanted.len(),
                "redis backplane reconnected; messages published while it was away were not delivered live"
            );
        } else {
            tracing::info!("redis backplane connected");
        }
        ever_connected = true;
        backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => {
                        let _ = inbound.send((msg.get_channel_name().to_owned(), Bytes::copy_from_slice(msg.get_payload_bytes())));
                    }
                    None => break,
                },
                cmd = commands.recv() => {
                    let Some(first) = cmd else { return };
                    let before = wanted.clone();
                    let mut confirm = Vec::new();
                    apply(&mut wanted, first, &mut confirm);
                    while let Ok(more) = commands.try_recv() {
                        apply(&mut wanted, more, &mut confirm);
                    }
                    let subscribe: Vec<&String> = wanted.difference(&before).collect();
                    let unsubscribe: Vec<&String> = before.difference(&wanted).collect();
                    let ok = (subscribe.is_empty() || sink.subscribe(subscribe).await.is_ok())
                        && (unsubscribe.is_empty() || sink.unsubscribe(unsubscribe).await.is_ok());
                    if ok {
                        confirm.into_iter().for_each(|tx| { let _ = tx.send(()); });
                    } else {
                        waiting.extend(confirm);
                        break;
                    }
                }
                () = token.cancelled() => return,
            }
        }
        connected.store(false, Ordering::SeqCst);
        metrics::gauge!(names::CONNECTED).set(0.0);
        tracing::warn!("redis backplane connection lost, reconnecting");
    }
}

fn apply(wanted: &mut HashSet<String>, cmd: Command, confirm: &mut Vec<oneshot::Sender<()>>) {
    match cmd {
        Command::Subscribe(channel, tx) => {
            wanted.insert(channel);
            confirm.push(tx);
        }
        Command::Unsubscribe(channel) => {
            wanted.remove(&channel);
        }
    }
}

/// Sends queued PUBLISHes, as many as are waiting, in one pipeline.
async fn publisher(pool: deadpool_redis::Pool, mut rx: mpsc::Receiver<PublishRequest>, token: CancellationToken) {
    loop {
        let first = tokio::select! {
            req = rx.recv() => match req { Some(r) => r, None => return },
            () = token.cancelled() => return,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_PUBLISH_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        metrics::histogram!(names::PUBLISH_BATCH).record(batch.len() as f64);
        let mut pipe = redis::pipe();
        for req in &batch {
            pipe.publish(&req.channel, req.payload.as_ref()).ignore();
        }
        let res = async {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            match tokio::time::timeout(PUBLISH_TIMEOUT, pipe.query_async::<()>(&mut conn)).await {
                Ok(res) => res.map_err(|e| e.to_string()),
                Err(_) => Err("publish timed out".to_owned()),
            }
        }
        .await;
        for req in batch {
            let _ = req.done.send(res.clone().map_err(BackplaneError::Unavailable));
        }
    }
}
