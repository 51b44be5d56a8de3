//! The broker floor of the consumer path: the same `order.processed` events, at the same rates,
//! through a queue of the same type that this tool consumes and acks itself. What RabbitMQ
//! alone costs in latency and CPU, measured beside the notify consumer in one run.

use futures_util::StreamExt;
use lapin::{
    Channel,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::Value;

use contoso::bus::QueueType;

/// The routing key of the floor's events: bound only to the floor's queue, so the notify
/// processes never see them.
pub const ROUTING_KEY: &str = "bench.broker";

/// Declares the floor's queue (durable, of `queue_type`, deleted with the bench's other queues)
/// on `exchange`, and consumes it with manual acks and `prefetch` in flight, as the notify
/// consumer does; `record` gets each delivery's correlation id.
pub async fn consume(
    channel: &Channel,
    exchange: &str,
    name: &str,
    queue_type: QueueType,
    prefetch: u16,
    record: impl Fn(&str) + Send + 'static,
) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString(queue_type.as_str().into()));
    channel.queue_declare(name.into(), QueueDeclareOptions { durable: true, ..Default::default() }, args).await?;
    channel.queue_bind(name.into(), exchange.into(), ROUTING_KEY.into(), QueueBindOptions::default(), FieldTable::default()).await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let deliveries =
        channel.basic_consume(name.into(), "bench-broker".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    // What is ready is acked at once with one `multiple` ack, as the notify consumer acks a batch.
    let mut batches = deliveries.ready_chunks(usize::from(prefetch));
    tokio::spawn(async move {
        while let Some(batch) = batches.next().await {
            let Some(Ok(last)) = batch.last() else { break };
            for delivery in batch.iter().flatten() {
                if let Ok(body) = serde_json::from_slice::<Value>(&delivery.data)
                    && let Some(id) = body["correlationId"].as_str()
                {
                    record(id);
                }
            }
            let _ = last.ack(BasicAckOptions { multiple: true }).await;
        }
    });
    Ok(())
}
