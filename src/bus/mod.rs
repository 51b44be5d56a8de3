//! The event bus seam (CONTRACT §4): publish with broker confirms, consume with manual
//! settlement. RabbitMQ in production; an in-process version serves `--role all`.

mod ack_window;
pub mod memory;
pub mod rabbitmq;
pub mod topology;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use uuid::Uuid;

pub use memory::MemoryBus;
pub use rabbitmq::RabbitBus;
pub use topology::{Queue, QueueType, Topology};

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker refused the message: {0}")]
    Refused(String),
}

/// One event ready to go out: the body is the JSON of `domain::Event`, published verbatim.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub event_id: Uuid,
    pub routing_key: String,
    pub payload: Bytes,
    /// W3C trace context, sent as the `traceparent` header (never in the body).
    pub traceparent: Option<String>,
}

/// A message in a dead-letter queue, with the reason it was given up on.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub body: Bytes,
    /// `x-contoso-reason`, or the broker's own death reason when it dead-lettered the message.
    pub reason: Option<String>,
}

/// One message taken from a work queue. It must be settled exactly once; the methods take
/// `self`, so settling twice does not compile. Dropping it unsettled leaves it with the
/// broker, which redelivers it when the channel closes.
pub struct Delivery {
    pub body: Bytes,
    pub message_id: Option<String>,
    /// How many times the broker delivered this message before (quorum `x-delivery-count`).
    pub delivery_count: u32,
    /// The `traceparent` header, when the publisher traced its work.
    pub traceparent: Option<String>,
    settle: Box<dyn Settle>,
}

/// How a delivery is settled with the system it came from.
#[async_trait]
pub trait Settle: Send + Sync + 'static {
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    /// Back to the queue for another attempt (counts towards the delivery limit).
    async fn requeue(self: Box<Self>) -> Result<(), BusError>;
    /// To the queue's dead-letter queue with `reason` in the `x-contoso-reason` header.
    async fn dead_letter(self: Box<Self>, body: Bytes, reason: String) -> Result<(), BusError>;
    /// For a bus that acks a batch in fewer messages than deliveries (`EventBus::ack_all`).
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
}

impl Delivery {
    pub fn new(body: Bytes, message_id: Option<String>, delivery_count: u32, settle: Box<dyn Settle>) -> Self {
        Self { body, message_id, delivery_count, traceparent: None, settle }
    }

    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    pub async fn ack(self) -> Result<(), BusError> {
        self.settle.ack().await
    }

    pub async fn requeue(self) -> Result<(), BusError> {
        self.settle.requeue().await
    }

    pub async fn dead_letter(self, reason: impl Into<String>) -> Result<(), BusError> {
        self.settle.dead_letter(self.body, reason.into()).await
    }

    /// How the delivery is settled, for a bus that settles several together.
    pub fn into_settle(self) -> Box<dyn Settle> {
        self.settle
    }
}

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes the batch to `contoso.orders` and waits for the broker's confirms; one result
    /// per message, in order. `Ok` means the broker has taken responsibility for the message.
    async fn publish(&self, batch: &[Outgoing]) -> Vec<Result<(), BusError>>;
    /// Whether the broker is reachable now (readiness).
    async fn ping(&self) -> Result<(), BusError>;
    /// Consumes `queue` with at most `prefetch` unsettled deliveries. Waits for the broker
    /// when it is away. The stream ends when the connection is lost: consume again.
    async fn consume(&self, queue: Queue, prefetch: u16) -> Result<BoxStream<'static, Delivery>, BusError>;
    /// Removes and returns the oldest message of `queue`'s dead-letter queue (operators
    /// inspecting poison messages, and the tests).
    async fn take_dead_letter(&self, queue: Queue) -> Result<Option<DeadLetter>, BusError>;
    /// Acks every delivery of a batch; a bus may do it in fewer messages than deliveries.
    /// `Err` when any of them could not be acked (the broker redelivers those).
    async fn ack_all(&self, deliveries: Vec<Delivery>) -> Result<(), BusError> {
        let results = futures_util::future::join_all(deliveries.into_iter().map(Delivery::ack)).await;
        results.into_iter().collect()
    }
}
