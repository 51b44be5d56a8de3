//! The event bus seam (CONTRACT §4): publish with broker confirms, consume with manual
//! settlement. RabbitMQ in production; an in-process version serves `--role all`.

pub mod rabbitmq;
pub mod topology;

use async_trait::async_trait;
use bytes::Bytes;
use uuid::Uuid;

pub use rabbitmq::RabbitBus;
pub use topology::{Queue, Topology};

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
}

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes the batch to `contoso.orders` and waits for the broker's confirms; one result
    /// per message, in order. `Ok` means the broker has taken responsibility for the message.
    async fn publish(&self, batch: &[Outgoing]) -> Vec<Result<(), BusError>>;
    /// Whether the broker is reachable now (readiness).
    async fn ping(&self) -> Result<(), BusError>;
}
