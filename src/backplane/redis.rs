//! The Redis backplane, wire-compatible with ASP.NET Core's (signalr-protocol.md §8). One
//! dedicated pub/sub connection per process, owned by a supervisor task that reconnects with
//! backoff and re-subscribes every wanted channel; SUBSCRIBE/UNSUBSCRIBE requests that pile up
//! are sent as one command, and PUBLISHes queued together go out as one pipeline on the
//! ordinary connection pool. A Redis Cluster uses the same struct with its own subscriber
//! (`cluster.rs`).

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

use super::{
    Backplane, BackplaneError,
    canary::{self, CanarySettings, CanaryState, Verdict},
};
use crate::redis_client::RedisClient;

pub mod names {
    pub const CONNECTED: &str = "contoso_backplane_connected";
    pub const RECONNECTS: &str = "contoso_backplane_reconnects_total";
    pub const PUBLISH_BATCH: &str = "contoso_backplane_publish_batch_size";
}

const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Most PUBLISHes in one pipeline.
const MAX_PUBLISH_BATCH: usize = 512;

pub(super) enum Command {
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
    /// Drop the pub/sub connection and make every subscription again.
    Reconnect,
}

pub(super) struct PublishRequest {
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
    canary: Arc<CanaryState>,
}

/// What a subscriber task owns besides its connection.
pub(super) struct Subscriber {
    pub wanted: HashSet<String>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub inbound: mpsc::UnboundedSender<(String, Bytes)>,
    pub connected: Arc<AtomicBool>,
    pub gaps: tokio::sync::watch::Sender<u64>,
    /// The canary channel, whose messages go to `canary` instead of `inbound`.
    pub canary: Option<(String, Arc<CanaryState>)>,
}

impl Subscriber {
    /// Hands a received message on: to the canary's judge, or to the hub.
    pub fn deliver(&self, channel: &str, payload: &[u8]) {
        match &self.canary {
            Some((canary, state)) if channel == canary => state.arrived(payload),
            _ => {
                let _ = self.inbound.send((channel.to_owned(), Bytes::copy_from_slice(payload)));
            }
        }
    }

    /// The connection is up with every wanted channel subscribed: confirm who waited, and
    /// count a reconnect (messages published meanwhile were not delivered live).
    pub fn up(&self, waiting: &mut Vec<oneshot::Sender<()>>, ever_connected: &mut bool) {
        waiting.drain(..).for_each(|tx| {
            let _ = tx.send(());
        });
        self.connected.store(true, Ordering::SeqCst);
        metrics::gauge!(names::CONNECTED).set(1.0);
        if *ever_connected {
            metrics::counter!(names::RECONNECTS).increment(1);
            self.gaps.send_modify(|n| *n += 1);
            tracing::warn!(
                channels = self.wanted.len(),
                "redis backplane reconnected; messages published while it was away were not delivered live"
            );
        } else {
            tracing::info!("redis backplane connected");
        }
        *ever_connected = true;
    }

    pub fn down(&self) {
        self.connected.store(false, Ordering::SeqCst);
        metrics::gauge!(names::CONNECTED).set(0.0);
        tracing::warn!("redis backplane connection lost, reconnecting");
    }

    /// Waits out a reconnect backoff while keeping the wanted set current (nothing can be
    /// sent now: the next connection subscribes the whole set). False when it is time to stop.
    pub async fn wait(&mut self, backoff: Duration, waiting: &mut Vec<oneshot::Sender<()>>, token: &CancellationToken) -> bool {
        let deadline = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return true,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => {
                        let mut changes = Changes::default();
                        changes.apply(&mut self.wanted, cmd);
                        waiting.extend(changes.confirm);
                    }
                    None => return false,
                },
                () = token.cancelled() => return false,
            }
        }
    }

    /// Takes a burst of commands (the first one and whatever else is queued) as one change.
    pub fn burst(&mut self, first: Command) -> Changes {
        let mut changes = Changes::default();
        changes.apply(&mut self.wanted, first);
        while let Ok(more) = self.commands.try_recv() {
            changes.apply(&mut self.wanted, more);
        }
        changes
    }
}

impl RedisBackplane {
    /// Starts the subscriber and publisher tasks (and the canary's, when given) on a single
    /// Redis; `always` channels are subscribed for the whole life of the process (e.g. the
    /// hub's `:all`). `publish` is the client for the PUBLISHes.
    pub fn start(
        url: &str,
        publish: RedisClient,
        always: Vec<String>,
        canary: Option<CanarySettings>,
        token: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let client = redis::Client::open(url)?;
        Ok(Self::assemble(publish, "PUBLISH", always, canary, token, |sub, token| {
            tokio::spawn(subscriber(client, sub, token));
        }))
    }

    /// The parts every flavour shares; `spawn_subscriber` starts the task that owns the
    /// subscriptions, and messages are published with `publish_command`.
    pub(super) fn assemble(
        publish: RedisClient,
        publish_command: &'static str,
        always: Vec<String>,
        canary: Option<CanarySettings>,
        token: CancellationToken,
        spawn_subscriber: impl FnOnce(Subscriber, CancellationToken),
    ) -> Arc<Self> {
        let (cmd_tx, commands) = mpsc::unbounded_channel();
        let (pub_tx, pub_rx) = mpsc::channel(16 * MAX_PUBLISH_BATCH);
        let (inbound, in_rx) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(false));
        let (gaps, gap_rx) = tokio::sync::watch::channel(0u64);
        let state = Arc::new(CanaryState::default());
        let mut wanted: HashSet<String> = always.into_iter().collect();
        wanted.extend(canary.iter().map(|c| c.channel.clone()));
        let sub_canary = canary.as_ref().map(|c| (c.channel.clone(), state.clone()));
        spawn_subscriber(Subscriber { wanted, commands, inbound, connected: connected.clone(), gaps, canary: sub_canary }, token.clone());
        if let Some(settings) = canary {
            tokio::spawn(check(settings, state.clone(), pub_tx.clone(), cmd_tx.clone(), token.clone()));
        }
        tokio::spawn(publisher(publish, publish_command, pub_rx, token));
        let inbound = Mutex::new(Some(in_rx));
        Arc::new(Self { commands: cmd_tx, publishes: pub_tx, inbound, connected, reconnections: gap_rx, canary: state })
    }
}

/// Publishes a canary every interval and judges whether the previous ones came back; a dead
/// subscription is reconnected. Runs until `token`.
async fn check(
    settings: CanarySettings,
    state: Arc<CanaryState>,
    publishes: mpsc::Sender<PublishRequest>,
    commands: mpsc::UnboundedSender<Command>,
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    metrics::gauge!(canary::names::OK).set(1.0);
    let mut misses = 0;
    loop {
        let n = state.next();
        let (done, _) = oneshot::channel();
        // A publish that fails is a canary that does not come back: the judgement says so.
        let request = PublishRequest { channel: settings.channel.clone(), payload: Bytes::from(n.to_string()), done };
        let _ = publishes.try_send(request);
        tokio::select! {
            _ = tick.tick() => {}
            () = token.cancelled() => return,
        }
        match state.judge(&mut misses) {
            Verdict::Fine | Verdict::Missed => {}
            Verdict::Dead => {
                metrics::counter!(canary::names::FAILURES).increment(1);
                metrics::gauge!(canary::names::OK).set(0.0);
                tracing::warn!(
                    interval_ms = settings.interval.as_millis() as u64,
                    "the backplane's own canaries stopped coming back; renewing its subscription"
                );
                let _ = commands.send(Command::Reconnect);
            }
            Verdict::Recovered => {
                metrics::gauge!(canary::names::OK).set(1.0);
                tracing::info!("the backplane's canaries come back again");
            }
        }
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

    fn subscribe(&self, channel: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        // A stopped backplane drops `tx`: the caller sees the subscription unconfirmed.
        let _ = self.commands.send(Command::Subscribe(channel.to_owned(), tx));
        rx
    }

    fn unsubscribe(&self, channel: &str) {
        let _ = self.commands.send(Command::Unsubscribe(channel.to_owned()));
    }

    fn take_inbound(&self) -> Option<mpsc::UnboundedReceiver<(String, Bytes)>> {
        self.inbound.lock().expect("lock").take()
    }

    async fn ping(&self) -> Result<(), BackplaneError> {
        if !self.connected.load(Ordering::SeqCst) {
            return Err(BackplaneError::Unavailable("redis pub/sub not connected".into()));
        }
        self.canary.problem().map_or(Ok(()), |why| Err(BackplaneError::Unavailable(why)))
    }

    fn reconnections(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.reconnections.clone())
    }
}

/// Owns the pub/sub connection for the life of the process.
async fn subscriber(client: redis::Client, mut sub: Subscriber, token: CancellationToken) {
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
                if !sub.wait(backoff, &mut waiting, &token).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        if !sub.wanted.is_empty() {
            let all: Vec<&String> = sub.wanted.iter().collect();
            if let Err(err) = answered(sink.subscribe(all)).await {
                tracing::warn!(error = %err, "re-subscribing failed, reconnecting");
                continue;
            }
        }
        sub.up(&mut waiting, &mut ever_connected);
        backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => sub.deliver(msg.get_channel_name(), msg.get_payload_bytes()),
                    None => break,
                },
                cmd = sub.commands.recv() => {
                    let Some(first) = cmd else { return };
                    // Only what these commands change is sent: the cost does not grow with the
                    // number of channels already subscribed.
                    let Changes { subscribe, unsubscribe, confirm, reconnect } = sub.burst(first);
                    if reconnect {
                        // The new connection subscribes the whole wanted set, these included.
                        waiting.extend(confirm);
                        break;
                    }
                    let ok = (subscribe.is_empty() || answered(sink.subscribe(subscribe.iter().collect::<Vec<_>>())).await.is_ok())
                        && (unsubscribe.is_empty() || answered(sink.unsubscribe(unsubscribe.iter().collect::<Vec<_>>())).await.is_ok());
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
        sub.down();
    }
}

/// How long Redis has to answer a (UN)SUBSCRIBE. A connection that went silent without closing
/// never answers; waiting forever would stop the subscriber, reconnects included.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) async fn answered(request: impl std::future::Future<Output = redis::RedisResult<()>>) -> Result<(), String> {
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, request).await {
        Ok(res) => res.map_err(|e| e.to_string()),
        Err(_) => Err("no answer from redis".into()),
    }
}

/// What a burst of commands changes in the wanted set: channels to subscribe and to
/// unsubscribe (a channel wanted and unwanted within the burst cancels out), and who waits.
#[derive(Default)]
pub(super) struct Changes {
    pub subscribe: HashSet<String>,
    pub unsubscribe: HashSet<String>,
    pub confirm: Vec<oneshot::Sender<()>>,
    /// The connection is to be made again.
    pub reconnect: bool,
}

impl Changes {
    fn apply(&mut self, wanted: &mut HashSet<String>, cmd: Command) {
        match cmd {
            Command::Subscribe(channel, tx) => {
                self.confirm.push(tx);
                if !self.unsubscribe.remove(&channel) && !wanted.contains(&channel) {
                    self.subscribe.insert(channel.clone());
                }
                wanted.insert(channel);
            }
            Command::Unsubscribe(channel) => {
                if wanted.remove(&channel) && !self.subscribe.remove(&channel) {
                    self.unsubscribe.insert(channel);
                }
            }
            Command::Reconnect => self.reconnect = true,
        }
    }
}

/// Sends queued PUBLISHes (or SPUBLISHes), as many as are waiting, together: one pipeline on a
/// single Redis, each to its shard at once on a cluster.
async fn publisher(client: RedisClient, command: &'static str, mut rx: mpsc::Receiver<PublishRequest>, token: CancellationToken) {
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
        let cmds: Vec<redis::Cmd> = batch
            .iter()
            .map(|req| {
                let mut cmd = redis::cmd(command);
                cmd.arg(&req.channel).arg(req.payload.as_ref());
                cmd
            })
            .collect();
        let res = match tokio::time::timeout(PUBLISH_TIMEOUT, client.query_all::<()>(cmds)).await {
            Ok(res) => res.map(drop).map_err(|e| e.to_string()),
            Err(_) => Err("publish timed out".to_owned()),
        };
        for req in batch {
            let _ = req.done.send(res.clone().map_err(BackplaneError::Unavailable));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(ch: &str) -> (Command, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Command::Subscribe(ch.to_owned(), tx), rx)
    }

    fn unsub(ch: &str) -> Command {
        Command::Unsubscribe(ch.to_owned())
    }

    #[test]
    fn a_burst_sends_only_what_it_changes() {
        let mut wanted: HashSet<String> = ["old".to_owned(), "kept".to_owned()].into();
        let mut changes = Changes::default();
        let (a, _ra) = sub("new");
        changes.apply(&mut wanted, a);
        let (b, _rb) = sub("kept");
        changes.apply(&mut wanted, b);
        changes.apply(&mut wanted, unsub("old"));
        let (c, _rc) = sub("brief");
        changes.apply(&mut wanted, c);
        changes.apply(&mut wanted, unsub("brief"));
        assert_eq!(changes.subscribe, ["new".to_owned()].into());
        assert_eq!(changes.unsubscribe, ["old".to_owned()].into());
        assert_eq!(changes.confirm.len(), 3, "every subscriber is confirmed, even of a channel already wanted");
        assert_eq!(wanted, ["new".to_owned(), "kept".to_owned()].into());
    }

    #[test]
    fn unsubscribing_and_subscribing_again_in_one_burst_changes_nothing() {
        let mut wanted: HashSet<String> = ["a".to_owned()].into();
        let mut changes = Changes::default();
        changes.apply(&mut wanted, unsub("a"));
        let (s, _r) = sub("a");
        changes.apply(&mut wanted, s);
        assert!(changes.subscribe.is_empty() && changes.unsubscribe.is_empty());
        assert!(wanted.contains("a"));
    }
}
