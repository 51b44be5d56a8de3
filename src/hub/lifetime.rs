//! The lifetime manager: the local registry of connections (by id and by user) and fan-out
//! through the `Backplane`. A user's channel is subscribed on their first local connection and
//! unsubscribed after the last, under one lock so interleaved connects and disconnects cannot
//! race. Every user send goes through the backplane, local targets included (no sticky
//! sessions, so no short-cut): a process receives its own publishes.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use bytes::Bytes;
use serde_json::Value;

use super::{
    connection::{CloseRequest, ConnectionHandle},
    metrics_names as m,
    protocol::{HubMessage, Protocol},
};
use crate::backplane::{Backplane, BackplaneError, Channels, Envelope, Target};

/// The server push that asks a client to call `ResumeNotifications` with its last id.
pub const RESUME_NEEDED: &str = "ResumeNeeded";

pub struct HubLifetime {
    channels: Channels,
    backplane: Arc<dyn Backplane>,
    /// Serialises registry changes with their SUBSCRIBE / UNSUBSCRIBE calls.
    changes: tokio::sync::Mutex<()>,
    users: RwLock<HashMap<Arc<str>, Vec<ConnectionHandle>>>,
    connections: RwLock<HashMap<Arc<str>, ConnectionHandle>>,
}

impl HubLifetime {
    /// Builds the manager and starts the task that delivers inbound backplane messages.
    pub fn start(channels: Channels, backplane: Arc<dyn Backplane>) -> Arc<Self> {
        let lifetime = Arc::new(Self {
            channels,
            backplane: backplane.clone(),
            changes: tokio::sync::Mutex::new(()),
            users: RwLock::new(HashMap::new()),
            connections: RwLock::new(HashMap::new()),
        });
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

    /// Registers a connection; subscribes the user's channel when it is their first here.
    pub async fn add(&self, conn: ConnectionHandle) -> Result<(), BackplaneError> {
        let _guard = self.changes.lock().await;
        let first = {
            let mut users = self.users.write().expect("lock");
            let list = users.entry(conn.user_id().clone()).or_default();
            list.push(conn.clone());
            list.len() == 1
        };
        self.connections.write().expect("lock").insert(conn.id().clone(), conn.clone());
        metrics::gauge!(m::CONNECTIONS, "protocol" => conn.protocol().name()).increment(1.0);
        if first {
            self.backplane.subscribe(&self.channels.user(conn.user_id())).await?;
        }
        Ok(())
    }

    /// Unregisters a connection; unsubscribes the user's channel after their last one here.
    pub async fn remove(&self, conn: &ConnectionHandle) {
        let _guard = self.changes.lock().await;
        if self.connections.write().expect("lock").remove(conn.id()).is_none() {
            return;
        }
        metrics::gauge!(m::CONNECTIONS, "protocol" => conn.protocol().name()).decrement(1.0);
        let last = {
            let mut users = self.users.write().expect("lock");
            match users.get_mut(conn.user_id()) {
                Some(list) => {
                    list.retain(|c| c.id() != conn.id());
                    if list.is_empty() {
                        users.remove(conn.user_id());
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if last && let Err(err) = self.backplane.unsubscribe(&self.channels.user(conn.user_id())).await {
            tracing::warn!(error = %err, "unsubscribe failed");
        }
    }

    /// Sends `target(arguments)` to every connection of `user_id`, on every process.
    /// Serialises once per protocol; receivers write the stored bytes as they are.
    pub async fn send_user(&self, user_id: &str, target: &str, arguments: Vec<Value>) -> Result<(), BackplaneError> {
        let envelope = envelope(&HubMessage::push(target, arguments));
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
        let write = |conn: &ConnectionHandle| {
            if envelope.excluded.iter().any(|id| id.as_str() == &**conn.id()) {
                return;
            }
            match envelope.payload(conn.protocol()) {
                Some(bytes) => {
                    if conn.try_send(bytes.clone()) {
                        metrics::counter!(m::MESSAGES_OUT).increment(1);
                    }
                }
                None => tracing::warn!(protocol = conn.protocol().name(), "backplane message lacks this connection's protocol"),
            }
        };
        match target {
            Target::User(user) => {
                let users = self.users.read().expect("lock");
                if let Some(list) = users.get(user) {
                    list.iter().for_each(write);
                }
            }
            Target::All => self.connections.read().expect("lock").values().for_each(write),
            Target::Connection(id) => {
                if let Some(conn) = self.connections.read().expect("lock").get(id) {
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
        self.connections.read().expect("lock").len()
    }

    /// Every local connection.
    pub fn snapshot(&self) -> Vec<ConnectionHandle> {
        self.connections.read().expect("lock").values().cloned().collect()
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
        excluded: Vec::new(),
        payloads: Protocol::ALL.iter().map(|p| (p.name().to_owned(), p.encode_to_bytes(msg))).collect::<Vec<(String, Bytes)>>(),
    }
}

fn draining() -> CloseRequest {
    CloseRequest { error: None, allow_reconnect: true, reason: "server-draining" }
}
