//! Where a `targeted` run sends its notifications: ASP.NET envelopes PUBLISHed onto the users'
//! backplane channels, or `order.processed` events into RabbitMQ, for the notify consumer or for
//! the broker floor's own queue, which this tool consumes itself.

use std::ops::Range;

use contoso::{
    backplane::Channels,
    cache::map_key,
    domain::{CorrelationId, Event, EventKind},
    hub::{lifetime::envelope, protocol::HubMessage},
    redis_client::RedisClient,
};
use deadpool_redis::redis;
use serde_json::json;

use super::{Args, Driver, book::Book};
use crate::redis_nodes;

pub struct Source {
    publisher: RedisClient,
    publish_command: &'static str,
    channels: Channels,
    amqp: Option<Amqp>,
}

struct Amqp {
    channel: lapin::Channel,
    exchange: String,
    routing_key: &'static str,
    /// The broker floor's channel and queue, deleted at the end.
    floor: Option<(lapin::Channel, String)>,
    _conn: lapin::Connection,
}

impl Source {
    /// Connects to what `args.driver` sends through; the broker floor starts consuming into `book`.
    pub async fn connect(args: &Args, book: &std::sync::Arc<Book>) -> anyhow::Result<Self> {
        let (publisher, publish_command) = redis_nodes::publisher(args.backplane.redis_mode, &args.backplane.redis_url)?;
        let amqp = match args.driver {
            Driver::Backplane => None,
            Driver::Consumer | Driver::Broker => Some(Amqp::connect(args, book).await?),
        };
        Ok(Self { publisher, publish_command, channels: args.backplane.channels(), amqp })
    }

    /// The notify consumer finds each order's user through `order:map:*`, as accept writes it.
    pub async fn map_users(&self, book: &Book, users: &[String]) -> anyhow::Result<()> {
        for (chunk_start, chunk) in book.ids.chunks(1000).enumerate() {
            let mut sets = Vec::with_capacity(chunk.len());
            for (i, id) in chunk.iter().enumerate() {
                let user = &users[(chunk_start * 1000 + i) % users.len()];
                let mut set = redis::cmd("SET");
                set.arg(map_key(CorrelationId::parse(id).map_err(anyhow::Error::msg)?)).arg(user).arg("EX").arg(3600);
                sets.push(set);
            }
            self.publisher.query_all::<()>(sets).await?;
        }
        Ok(())
    }

    /// Sends the notifications of `slots`: one pipeline onto Redis, sent in the background so
    /// the schedule never waits for it, or one AMQP publish each.
    pub async fn send(&self, book: &Book, users: &[String], slots: Range<usize>) -> anyhow::Result<()> {
        let Some(amqp) = &self.amqp else {
            let publishes: Vec<redis::Cmd> = slots.map(|slot| self.envelope(&book.ids[slot], &users[slot % users.len()])).collect();
            if !publishes.is_empty() {
                let publisher = self.publisher.clone();
                tokio::spawn(async move {
                    let _ = publisher.query_all::<()>(publishes).await;
                });
            }
            return Ok(());
        };
        for slot in slots {
            amqp.publish(&book.ids[slot]).await?;
        }
        Ok(())
    }

    fn envelope(&self, correlation_id: &str, user: &str) -> redis::Cmd {
        let payload = json!({ "notificationId": "0-1", "correlationId": correlation_id, "orderId": "CS-000001", "status": "COMPLETED", "occurredAt": "2026-01-01T00:00:00.000Z" });
        let env = envelope(&HubMessage::push("OrderCompleted", vec![payload]));
        let mut publish = redis::cmd(self.publish_command);
        publish.arg(self.channels.user(user)).arg(env.encode().as_ref());
        publish
    }

    /// Deletes the broker floor's queue.
    pub async fn close(self) -> anyhow::Result<()> {
        if let Some(Amqp { floor: Some((channel, queue)), .. }) = self.amqp {
            channel.queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default()).await?;
        }
        Ok(())
    }
}

impl Amqp {
    async fn connect(args: &Args, book: &std::sync::Arc<Book>) -> anyhow::Result<Self> {
        let conn = lapin::Connection::connect(&args.amqp_url, lapin::ConnectionProperties::default()).await?;
        let exchange = format!("{}contoso.orders", args.bus_prefix);
        let broker = matches!(args.driver, Driver::Broker);
        let floor = match broker {
            true => {
                let (channel, book) = (conn.create_channel().await?, book.clone());
                let queue = format!("{}contoso.bench-broker", args.bus_prefix);
                crate::broker::consume(&channel, &exchange, &queue, args.queue_type, args.prefetch, move |id| book.record(id)).await?;
                Some((channel, queue))
            }
            false => None,
        };
        let routing_key = if broker { crate::broker::ROUTING_KEY } else { "order.processed" };
        Ok(Self { channel: conn.create_channel().await?, exchange, routing_key, floor, _conn: conn })
    }

    async fn publish(&self, correlation_id: &str) -> anyhow::Result<()> {
        let id = CorrelationId::parse(correlation_id).map_err(anyhow::Error::msg)?;
        let event = Event::new(EventKind::Processed { order_id: "CS-000001".into() }, id, chrono::Utc::now());
        self.channel
            .basic_publish(
                self.exchange.clone().into(),
                self.routing_key.into(),
                lapin::options::BasicPublishOptions::default(),
                &event.to_json(),
                lapin::BasicProperties::default().with_message_id(event.event_id.to_string().into()),
            )
            .await?;
        Ok(())
    }
}
