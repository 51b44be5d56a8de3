//! The lifetime manager: the local registry of connections (by id and by user) and fan-out
//! through the `Backplane`. A user's channel is subscribed on their first local connection and
//! unsubscribed after the last; the requests are queued in registry order under a short,
//! in-memory lock, so interleaved connects and disconnects cannot race and none waits on Redis.
//! Every user send goes through the backplane, local targets included (no sticky sessions, so
//! no short-cut): a process receives its own publishes.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use bytes::Bytes;
use serde_json::Value;

use super::{
    connection::{CloseRequest, ConnectionHandle, Frame},
    metrics_names as m,
    protocol::{HubMessage, Protocol},
};
use crate::{
    backplane::{Backplane, BackplaneError, Channels, Envelope, Target},
    telemetry::otel,
};

/// Where a message comes from: when its story began (for the latency of each write) and the
/// trace it continues. Both optional.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub at: Option<std::time::SystemTime>,
    pub traceparent: Option<String>,
}

/// The server push that asks a client to call `ResumeNotifications` with its last id.
pub const RESUME_NEEDED: &str = "ResumeNeeded";

pub struct HubLifetime {
    channels: Channels,
    backplane: Arc<dyn Backplane>,
    /// Connections by id and by user. Held only for in-memory work: SUBSCRIBE and
    /// UNSUBSCRIBE are queued to the backplane under it (so they reach Redis in the order of
    /// the registry's changes) but never awaited under it.
    registry: RwLock<Registry>,
}

#[derive(Default)]
struct Registry {
    users: HashMap<Arc<str>, Vec<ConnectionHandle>>,
    connections: HashMap<Arc<str>, ConnectionHandle>,
}

/// How long a new connection waits for its user's subscription to be confirmed before it is
/// served anyway (the backplane subscribes when Redis is back, and announces the gap).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);

impl HubLifetime {
    /// Builds the manager and starts the task that delivers inbound backplane messages.
    pub fn start(channels: Channels, backplane: Arc<dyn Backplane>) -> Arc<Self> {
        let lifetime = Arc::new(Self { channels, backplane: backplane.clone(), registry: RwLock::new(Registry::default()) });
        if let Some(mut gaps) = backplane.reconnections() {
            let weak = Arc::downgrade(&lifetime);
            tokio::spawn(async move {
                while gaps.changed().await.is_ok() {
                    let Some(lifetime) = weak.upgrade() else { break };
                    lifetime.announce_gap();
                }
            });
        }
        if let Some(mut inbound) = backplane.take_inbound() {
            let weak = Arc::downgrade(&lifetime);
            tokio::spawn(async move {
                while let Some((channel, payload)) = inbound.recv().await {
                    let Some(lifetime) = weak.upgrade() else { break };
                    lifetime.deliver(&channel, &payload);
                }
            });
        }
        lifetime
    }

    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    pub fn backplane(&self) -> &Arc<dyn Backplane> {
        &self.backplane
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection; subscribes the user's channel when it is their first here and
    /// waits (bounded, holding no lock) until Redis confirms. A connection whose id is already
    /// registered (one negotiate token used by two sockets) replaces the older one, which is closed.
    pub async fn add(&self, conn: &ConnectionHandle) {
        let (confirm, replaced) = {
            let mut registry = self.write();
            let replaced = registry.connections.insert(conn.id().clone(), conn.clone());
            if let Some(old) = &replaced {
                detach(&mut registry, old);
            }
            let list = registry.users.entry(conn.user_id().clone()).or_default();
            list.push(conn.clone());
            // A replaced connection had the same user (a connection token is bound to its user),
            // so the user's channel stays wanted.
            let confirm = (list.len() == 1).then(|| self.backplane.subscribe(&self.channels.user(conn.user_id())));
            (confirm, replaced)
        };
        metrics::gauge!(m::CONNECTIONS, "protocol" => conn.protocol().name()).increment(1.0);
        if let Some(old) = replaced {
            metrics::gauge!(m::CONNECTIONS, "protocol" => old.protocol().name()).decrement(1.0);
            old.close(CloseRequest {
                error: Some("Connection replaced by a newer one with the same connection token.".into()),
                allow_reconnect: false,
                reason: "replaced",
                hand_over: false,
            });
        }
        if let Some(confirm) = confirm
            && !matches!(tokio::time::timeout(SUBSCRIBE_WAIT, confirm).await, Ok(Ok(())))
        {
            tracing::warn!("subscription not confirmed yet, delivery resumes when the backplane is back");
        }
    }

    /// Unregisters exactly this connection (not another one that reused its id); unsubscribes
    /// the user's channel after their last one here.
    pub fn remove(&self, conn: &ConnectionHandle) {
        let mut registry = self.write();
        if !registry.connections.get(conn.id()).is_some_and(|c| c.same(conn)) {
            return;
        }
        registry.connections.remove(conn.id());
        detach(&mut registry, conn);
        if !registry.users.contains_key(conn.user_id()) {
            self.backplane.unsubscribe(&self.channels.user(conn.user_id()));
        }
        drop(registry);
        metrics::gauge!(m::CONNECTIONS, "protocol" => conn.protocol().name()).decrement(1.0);
    }

    /// Sends `target(arguments)` to every connection of `user_id`, on every process.
    /// Serialises once per protocol; receivers write the stored bytes as they are. Every write
    /// of it is measured against `origin.at`, and traced under `origin.traceparent`.
    pub async fn send_user(&self, user_id: &str, target: &str, arguments: Vec<Value>, origin: Origin) -> Result<(), BackplaneError> {
        let mut envelope = envelope(&HubMessage::push(target, arguments));
        envelope.origin_ms = origin.at.and_then(|o| o.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as u64);
        let span = origin.traceparent.as_deref().map(|parent| {
            let span = tracing::info_span!("backplane publish", otel.kind = "producer");
            otel::follow(&span, Some(parent));
            span
        });
        envelope.traceparent = span.as_ref().and_then(otel::traceparent);
        self.backplane.publish(&self.channels.user(user_id), envelope.encode()).await?;
        metrics::counter!(m::BACKPLANE_PUBLISHED).increment(1);
        Ok(())
    }

    /// Delivers one inbound backplane message to the local connections it addresses.
    fn deliver(&self, channel: &str, payload: &[u8]) {
        metrics::counter!(m::BACKPLANE_RECEIVED).increment(1);
        let Some(target) = self.channels.target(channel) else { return };
        let envelope = match Envelope::decode(payload) {
            Ok(e) => e,
            Err(err) => {
                tracing::warn!(channel, error = %err, "dropping an unreadable backplane message");
                return;
            }
        };
        // The receiving side of a traced publish; each socket write is its child.
        let trace: Option<Arc<str>> = envelope.traceparent.as_deref().and_then(|parent| {
            let span = tracing::info_span!("backplane receive", otel.kind = "consumer");
            otel::follow(&span, Some(parent));
            otel::traceparent(&span).map(Arc::from)
        });
        let write = |conn: &ConnectionHandle| {
            if envelope.excluded.iter().any(|id| id.as_str() == &**conn.id()) {
                return;
            }
            match envelope.payload(conn.protocol().name()) {
                Some(bytes) => {
                    if conn.try_send(Frame { bytes: bytes.clone(), origin_ms: envelope.origin_ms, trace: trace.clone() }) {
                        metrics::counter!(m::MESSAGES_OUT).increment(1);
                    }
                }
                None => tracing::warn!(protocol = conn.protocol().name(), "backplane message lacks this connection's protocol"),
            }
        };
        match target {
            Target::User(user) => {
                if let Some(list) = self.read().users.get(user) {
                    list.iter().for_each(write);
                }
            }
            Target::All => self.read().connections.values().for_each(write),
            Target::Connection(id) => {
                if let Some(conn) = self.read().connections.get(id) {
                    write(conn);
                }
            }
        }
    }

    /// After a backplane gap, tells every local connection that live delivery may have missed
    /// something: clients that understand `ResumeNeeded` replay from their last id (official
    /// clients without a handler ignore unknown targets).
    fn announce_gap(&self) {
        let msg = HubMessage::push(RESUME_NEEDED, Vec::new());
        let bytes: Vec<(Protocol, Bytes)> = Protocol::ALL.iter().map(|p| (*p, p.encode_to_bytes(&msg))).collect();
        let connections = self.snapshot();
        tracing::info!(connections = connections.len(), "asking local connections to resume after a backplane gap");
        for conn in connections {
            if let Some((_, b)) = bytes.iter().find(|(p, _)| *p == conn.protocol()) {
                conn.try_send(b.clone());
            }
        }
    }

    pub fn connection_count(&self) -> usize {
        self.read().connections.len()
    }

    /// Every local connection.
    pub fn snapshot(&self) -> Vec<ConnectionHandle> {
        self.read().connections.values().cloned().collect()
    }

    /// Closes every local connection with the Close ASP.NET sends when it shuts down
    /// (`allowReconnect: true`, no error), connection i of n at i/n of `spread`: the clients
    /// come back to the other servers as a trickle, not a wave. Returns once all have ended.
    /// The caller has already stopped new connections (the endpoint refuses them while draining).
    pub async fn drain(&self, spread: Duration) {
        let started = tokio::time::Instant::now();
        let connections = self.snapshot();
        let n = connections.len();
        tracing::info!(connections = n, spread_ms = spread.as_millis() as u64, "closing connections so clients reconnect elsewhere");
        for (i, conn) in connections.iter().enumerate() {
            tokio::time::sleep_until(started + spread.mul_f64(i as f64 / n as f64)).await;
            conn.close(draining());
        }
        // Also whatever finished its handshake after the snapshot. Closing twice is harmless
        // (the first request wins); this polls because it runs once per process lifetime.
        loop {
            let left = self.snapshot();
            if left.is_empty() {
                break;
            }
            left.iter().for_each(|conn| conn.close(draining()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "every connection closed");
    }
}

/// The envelope of one message in every protocol this server speaks.
pub fn envelope(msg: &HubMessage) -> Envelope {
    Envelope {
        payloads: Protocol::ALL.iter().map(|p| (p.name().to_owned(), p.encode_to_bytes(msg))).collect::<Vec<(String, Bytes)>>(),
        ..Default::default()
    }
}

/// Takes `conn` off its user's list, and the user off the registry after their last connection.
fn detach(registry: &mut Registry, conn: &ConnectionHandle) {
    if let Some(list) = registry.users.get_mut(conn.user_id()) {
        list.retain(|c| !c.same(conn));
        if list.is_empty() {
            registry.users.remove(conn.user_id());
        }
    }
}

fn draining() -> CloseRequest {
    // Stateful connections are handed over instead: they resume on another process.
    CloseRequest { error: None, allow_reconnect: true, reason: "server-draining", hand_over: true }
}
