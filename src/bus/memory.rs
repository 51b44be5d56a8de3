//! The in-process event bus of `--role all`: the contract's queues and bindings with
//! RabbitMQ's guarantees that the roles rely on. Delivered at least once (a delivery dropped
//! unsettled comes back, counted), at most `prefetch` unsettled per consumer, and dead-lettered
//! with a reason by the consumer or, past the delivery limit, by the bus itself.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::{BusError, DeadLetter, Delivery, EventBus, Outgoing, Queue, Settle};

/// The reason a message dead-lettered by the bus itself carries (RabbitMQ's quorum queues say `delivery_limit`).
pub const DELIVERY_LIMIT_REASON: &str = "delivery_limit";

struct Message {
    body: Bytes,
    message_id: Option<String>,
    delivery_count: u32,
    traceparent: Option<String>,
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<Message>,
    dead: VecDeque<DeadLetter>,
}

struct Shared {
    queues: Mutex<HashMap<&'static str, QueueState>>,
    /// Woken on every message made ready, per queue.
    ready: HashMap<&'static str, Notify>,
    delivery_limit: u32,
}

impl Shared {
    fn with<R>(&self, queue: Queue, f: impl FnOnce(&mut QueueState) -> R) -> R {
        let mut queues = self.queues.lock().unwrap_or_else(|poison| poison.into_inner());
        f(queues.entry(queue.base_name()).or_default())
    }

    fn push_ready(&self, queue: Queue, msg: Message) {
        self.with(queue, |q| q.ready.push_back(msg));
        self.ready[queue.base_name()].notify_one();
    }

    /// Back to the queue one delivery older, or to the dead letters past the limit.
    fn redeliver(&self, queue: Queue, mut msg: Message) {
        msg.delivery_count += 1;
        if msg.delivery_count >= self.delivery_limit {
            self.with(queue, |q| q.dead.push_back(DeadLetter { body: msg.body, reason: Some(DELIVERY_LIMIT_REASON.to_owned()) }));
        } else {
            self.push_ready(queue, msg);
        }
    }
}

/// Cheap to clone; clones are the same bus.
#[derive(Clone)]
pub struct MemoryBus {
    shared: Arc<Shared>,
}

impl MemoryBus {
    /// `delivery_limit` deliveries before the bus itself dead-letters a message (RabbitMQ's
    /// `x-delivery-limit`, `Topology::broker_delivery_limit`).
    pub fn new(delivery_limit: u32) -> Self {
        let ready = Queue::ALL.iter().map(|q| (q.base_name(), Notify::new())).collect();
        Self { shared: Arc::new(Shared { queues: Mutex::default(), ready, delivery_limit: delivery_limit.max(1) }) }
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    async fn publish(&self, batch: &[Outgoing]) -> Vec<Result<(), BusError>> {
        batch
            .iter()
            .map(|msg| {
                let queues: Vec<Queue> = Queue::ALL.into_iter().filter(|q| q.bindings().contains(&msg.routing_key.as_str())).collect();
                if queues.is_empty() {
                    // What a mandatory publish to RabbitMQ reports for a key no queue is bound to.
                    return Err(BusError::Refused("unroutable".into()));
                }
                for queue in queues {
                    let message_id = Some(msg.event_id.to_string());
                    let traceparent = msg.traceparent.clone();
                    self.shared.push_ready(queue, Message { body: msg.payload.clone(), message_id, delivery_count: 0, traceparent });
                }
                Ok(())
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn consume(&self, queue: Queue, prefetch: u16) -> Result<BoxStream<'static, Delivery>, BusError> {
        let credit = Arc::new(Semaphore::new(usize::from(prefetch.max(1))));
        let shared = self.shared.clone();
        Ok(Box::pin(stream::unfold((shared, credit), move |(shared, credit)| async move {
            let permit = credit.clone().acquire_owned().await.expect("the semaphore is never closed");
            let msg = loop {
                let ready = shared.ready[queue.base_name()].notified();
                if let Some(msg) = shared.with(queue, |q| q.ready.pop_front()) {
                    break msg;
                }
                ready.await;
            };
            let traceparent = msg.traceparent.clone();
            let delivery = Delivery::new(
                msg.body.clone(),
                msg.message_id.clone(),
                msg.delivery_count,
                Box::new(MemorySettle { shared: shared.clone(), queue, msg: Some(msg), _credit: permit }),
            )
            .with_traceparent(traceparent);
            Some((delivery, (shared, credit)))
        })))
    }

    async fn take_dead_letter(&self, queue: Queue) -> Result<Option<DeadLetter>, BusError> {
        Ok(self.shared.with(queue, |q| q.dead.pop_front()))
    }
}

/// An unsettled delivery: holds one unit of its consumer's prefetch until settled or dropped.
struct MemorySettle {
    shared: Arc<Shared>,
    queue: Queue,
    /// `None` once settled; still `Some` on drop means "the channel closed": redeliver.
    msg: Option<Message>,
    _credit: OwnedSemaphorePermit,
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(mut self: Box<Self>) -> Result<(), BusError> {
        self.msg = None;
        Ok(())
    }

    async fn requeue(mut self: Box<Self>) -> Result<(), BusError> {
        let msg = self.msg.take().expect("settled once");
        self.shared.redeliver(self.queue, msg);
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>, body: Bytes, reason: String) -> Result<(), BusError> {
        self.msg = None;
        self.shared.with(self.queue, |q| q.dead.push_back(DeadLetter { body, reason: Some(reason) }));
        Ok(())
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        if let Some(msg) = self.msg.take() {
            self.shared.redeliver(self.queue, msg);
        }
    }
}
