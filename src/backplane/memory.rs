//! The in-process backplane: one `MemoryHub` shared by every lifetime manager that should see
//! each other's messages (all of `--role all`, or several "pods" inside one test process).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{Backplane, BackplaneError};

type NodeId = u64;

/// The shared "Redis": who is subscribed to what.
#[derive(Default)]
pub struct MemoryHub {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_node: NodeId,
    nodes: HashMap<NodeId, mpsc::UnboundedSender<(String, Bytes)>>,
    subscriptions: HashMap<String, HashSet<NodeId>>,
}

/// One node's view of a `MemoryHub`.
pub struct MemoryBackplane {
    hub: Arc<MemoryHub>,
    node: NodeId,
    inbound: Mutex<Option<mpsc::UnboundedReceiver<(String, Bytes)>>>,
}

impl MemoryBackplane {
    pub fn new(hub: Arc<MemoryHub>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let node = {
            let mut inner = hub.inner.lock().expect("lock");
            inner.next_node += 1;
            let id = inner.next_node;
            inner.nodes.insert(id, tx);
            id
        };
        Self { hub, node, inbound: Mutex::new(Some(rx)) }
    }
}

impl Drop for MemoryBackplane {
    fn drop(&mut self) {
        let mut inner = self.hub.inner.lock().expect("lock");
        inner.nodes.remove(&self.node);
        for subs in inner.subscriptions.values_mut() {
            subs.remove(&self.node);
        }
    }
}

#[async_trait]
impl Backplane for MemoryBackplane {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), BackplaneError> {
        let inner = self.hub.inner.lock().expect("lock");
        if let Some(subs) = inner.subscriptions.get(channel) {
            for node in subs {
                if let Some(tx) = inner.nodes.get(node) {
                    let _ = tx.send((channel.to_owned(), payload.clone()));
                }
            }
        }
        Ok(())
    }

    fn subscribe(&self, channel: &str) -> oneshot::Receiver<()> {
        self.hub.inner.lock().expect("lock").subscriptions.entry(channel.to_owned()).or_default().insert(self.node);
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(());
        rx
    }

    fn unsubscribe(&self, channel: &str) {
        let mut inner = self.hub.inner.lock().expect("lock");
        if let Some(subs) = inner.subscriptions.get_mut(channel) {
            subs.remove(&self.node);
            if subs.is_empty() {
                inner.subscriptions.remove(channel);
            }
        }
    }

    fn take_inbound(&self) -> Option<mpsc::UnboundedReceiver<(String, Bytes)>> {
        self.inbound.lock().expect("lock").take()
    }

    async fn ping(&self) -> Result<(), BackplaneError> {
        Ok(())
    }
}
