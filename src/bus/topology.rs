//! The names and shape of CONTRACT §4 in one place: exchange `contoso.orders` (topic), the
//! two work queues and their dead-letter queues. A prefix isolates deployments sharing a vhost.

/// The two work queues of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// `contoso.order-process`, bound to `order.accepted`.
    OrderProcess,
    /// `contoso.order-notification`, bound to `order.processed` and `order.failed`.
    OrderNotification,
}

impl Queue {
    pub const ALL: [Queue; 2] = [Queue::OrderProcess, Queue::OrderNotification];

    pub fn base_name(self) -> &'static str {
        match self {
            Queue::OrderProcess => "contoso.order-process",
            Queue::OrderNotification => "contoso.order-notification",
        }
    }

    pub fn bindings(self) -> &'static [&'static str] {
        match self {
            Queue::OrderProcess => &["order.accepted"],
            Queue::OrderNotification => &["order.processed", "order.failed"],
        }
    }
}

/// The kind of the work and dead-letter queues (`--queue-type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated (Raft) and counting deliveries: a broker cluster survives the loss of a
    /// node, and a message that keeps failing is dead-lettered at the delivery limit.
    #[default]
    Quorum,
    /// One node's queue, for a broker without quorum queues. The broker counts no
    /// deliveries: each process counts the redeliveries it sees, by message id.
    Classic,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
}

/// Concrete names for one deployment (`--bus-prefix`, empty in production).
#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
    /// Deliveries before the broker dead-letters a message (`x-delivery-limit`).
    pub delivery_limit: u32,
    pub queue_type: QueueType,
}

impl Topology {
    pub fn exchange(&self) -> String {
        format!("{}contoso.orders", self.prefix)
    }

    /// Where dead letters go: a direct exchange routing by the source queue's name.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}contoso.orders.dead-letter", self.prefix)
    }

    /// Deliveries after which the broker itself dead-letters a message: a backstop a little
    /// above `delivery_limit` (where the consumers dead-letter with a reason), for a consumer
    /// that crashes on every attempt.
    pub fn broker_delivery_limit(&self) -> u32 {
        self.delivery_limit + 5
    }

    pub fn queue(&self, queue: Queue) -> String {
        format!("{}{}", self.prefix, queue.base_name())
    }

    pub fn dead_letter_queue(&self, queue: Queue) -> String {
        format!("{}{}.dead-letter", self.prefix, queue.base_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_names_without_prefix() {
        let t = Topology { prefix: String::new(), delivery_limit: 10, queue_type: QueueType::Quorum };
        assert_eq!(t.exchange(), "contoso.orders");
        assert_eq!(t.queue(Queue::OrderProcess), "contoso.order-process");
        assert_eq!(t.queue(Queue::OrderNotification), "contoso.order-notification");
        assert_eq!(t.dead_letter_queue(Queue::OrderProcess), "contoso.order-process.dead-letter");
    }
}
