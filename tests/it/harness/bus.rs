//! Watches the events an app publishes: a private queue bound to the app's `contoso.orders`
//! exchange with `#`, so the test sees every routing key without stealing work-queue messages.

use std::{collections::HashMap, time::Duration};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::Value;
use tokio::sync::mpsc;

use super::env;

#[derive(Debug, Clone)]
pub struct Observed {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    pub delivery_mode: Option<u8>,
    pub body: Value,
}

pub struct BusObserver {
    rx: mpsc::UnboundedReceiver<Observed>,
    pub seen: Vec<Observed>,
    prefix: String,
    _conn: Connection,
    channel: Channel,
}

/// A message found in a dead-letter queue.
#[derive(Debug)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub reason: Option<String>,
}

impl BusObserver {
    pub async fn start(bus_prefix: &str) -> Self {
        let conn = Connection::connect(&env::amqp_url(), ConnectionProperties::default()).await.expect("rabbitmq reachable");
        let channel = conn.create_channel().await.unwrap();
        let exchange = format!("{bus_prefix}contoso.orders");
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel.exchange_declare(exchange.clone().into(), ExchangeKind::Topic, durable, FieldTable::default()).await.unwrap();
        let queue_opts = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let queue = channel.queue_declare("".into(), queue_opts, FieldTable::default()).await.unwrap();
        let qname = queue.name().clone();
        channel.queue_bind(qname.clone(), exchange.into(), "#".into(), QueueBindOptions::default(), FieldTable::default()).await.unwrap();
        let mut consumer =
            channel.basic_consume(qname, "observer".into(), BasicConsumeOptions::default(), FieldTable::default()).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let props = &delivery.properties;
                let observed = Observed {
                    routing_key: delivery.routing_key.to_string(),
                    message_id: props.message_id().as_ref().map(|s| s.to_string()),
                    content_type: props.content_type().as_ref().map(|s| s.to_string()),
                    delivery_mode: *props.delivery_mode(),
                    body: serde_json::from_slice(&delivery.data).unwrap_or(Value::Null),
                };
                let _ = delivery.ack(BasicAckOptions::default()).await;
                if tx.send(observed).is_err() {
                    return;
                }
            }
        });
        Self { rx, seen: Vec::new(), prefix: bus_prefix.to_owned(), _conn: conn, channel }
    }

    /// Publishes a raw message to the app's exchange, as another service (or an attacker) could.
    pub async fn publish(&self, routing_key: &str, body: &[u8], message_id: Option<&str>) {
        let mut props = BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into());
        if let Some(id) = message_id {
            props = props.with_message_id(id.into());
        }
        let exchange = format!("{}contoso.orders", self.prefix);
        self.channel.basic_publish(exchange.into(), routing_key.into(), BasicPublishOptions::default(), body, props).await.unwrap();
    }

    /// Takes every message currently in the dead-letter queue of `queue` (e.g. `contoso.order-process`).
    pub async fn dead_letters(&self, queue: &str) -> Vec<DeadLetter> {
        let name = format!("{}{queue}.dead-letter", self.prefix);
        let mut out = Vec::new();
        while let Some(msg) = self.channel.basic_get(name.clone().into(), BasicGetOptions { no_ack: true }).await.unwrap() {
            let reason = msg.delivery.properties.headers().as_ref().and_then(|h| match h.inner().get("x-contoso-reason") {
                Some(AMQPValue::LongString(s)) => Some(s.to_string()),
                _ => None,
            });
            out.push(DeadLetter { body: msg.delivery.data.clone(), reason });
        }
        out
    }

    /// Waits until `pred` holds over everything seen so far.
    pub async fn wait_until(&mut self, timeout: Duration, what: &str, pred: impl Fn(&[Observed]) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !pred(&self.seen) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(o)) => self.seen.push(o),
                Ok(None) => panic!("observer stopped while waiting for {what}"),
                Err(_) => panic!("timed out after {timeout:?} waiting for {what}; seen {} events", self.seen.len()),
            }
        }
    }

    /// Collects whatever arrives within `window` (to show that something did NOT happen).
    pub async fn drain_for(&mut self, window: Duration) {
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(o)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            self.seen.push(o);
        }
    }

    /// Distinct event ids seen per correlation id for `routing_key` (redeliveries of one
    /// outbox row share an event id).
    pub fn distinct_events(&self, routing_key: &str) -> HashMap<String, std::collections::HashSet<String>> {
        let mut out: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        for o in self.seen.iter().filter(|o| o.routing_key == routing_key) {
            out.entry(o.body["correlationId"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .insert(o.body["eventId"].as_str().unwrap_or_default().to_owned());
        }
        out
    }

    pub fn for_correlation(&self, id: &str) -> Vec<&Observed> {
        self.seen.iter().filter(|o| o.body["correlationId"] == id).collect()
    }

    /// How many times each correlation id was seen with `routing_key`.
    pub fn counts(&self, routing_key: &str) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for o in self.seen.iter().filter(|o| o.routing_key == routing_key) {
            *counts.entry(o.body["correlationId"].as_str().unwrap_or_default().to_owned()).or_insert(0) += 1;
        }
        counts
    }
}
