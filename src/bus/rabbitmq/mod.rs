//! `EventBus` on RabbitMQ with lapin. A supervisor task owns the connection: it connects with
//! backoff (also at start, so a missing broker never crash-loops the process), declares the
//! topology, publishes the live connection to users through a watch channel, and starts over
//! when the connection dies.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::sync::{Notify, watch};

use bytes::Bytes;
use futures_util::{StreamExt, stream::BoxStream};

mod redeliveries;
mod settle;

use self::{
    redeliveries::Redeliveries,
    settle::{RabbitSettle, Window, bus_err, delivery_count},
};
use super::{BusError, DeadLetter, Delivery, EventBus, Outgoing, Queue, QueueType, Topology};
use crate::{secret::Secret, shutdown::Shutdown, telemetry::names};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// A live connection and the confirm-mode channel publishes go through.
pub struct Live {
    pub connection: Connection,
    publish: Channel,
}

pub struct RabbitBus {
    topology: Topology,
    /// Counts for queues that keep none (`--queue-type classic`).
    redeliveries: Arc<std::sync::Mutex<Redeliveries>>,
    live: watch::Receiver<Option<Arc<Live>>>,
    /// Publishers kick the supervisor when they see the connection fail.
    kick: Arc<Notify>,
}

impl RabbitBus {
    /// Starts the supervisor on `shutdown.tasks`; returns at once.
    pub fn start(url: Secret, topology: Topology, name: &str, shutdown: &Shutdown) -> Arc<Self> {
        let (tx, rx) = watch::channel(None);
        let kick = Arc::new(Notify::new());
        let redeliveries = Arc::default();
        let bus = Arc::new(Self { topology: topology.clone(), redeliveries, live: rx, kick: kick.clone() });
        // Closed only after the background loops finished: the relay's last drain needs it.
        let token = shutdown.connections.clone();
        let name = name.to_owned();
        shutdown.connection_tasks.spawn(async move { supervise(url, topology, name, tx, kick, token).await });
        bus
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The live connection, if any, without waiting.
    pub fn current(&self) -> Option<Arc<Live>> {
        self.live.borrow().clone()
    }

    /// Waits until a connection is live (or `None` when the bus shut down).
    pub async fn connected(&self) -> Option<Arc<Live>> {
        let mut rx = self.live.clone();
        rx.wait_for(|live| live.is_some()).await.ok().and_then(|live| live.clone())
    }

    fn properties(msg: &Outgoing) -> BasicProperties {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(msg.event_id.to_string().into())
            .with_type(msg.routing_key.clone().into())
            .with_delivery_mode(2)
            .with_timestamp(chrono::Utc::now().timestamp() as u64);
        match &msg.traceparent {
            Some(traceparent) => {
                let mut headers = FieldTable::default();
                headers.insert(TRACEPARENT.into(), AMQPValue::LongString(traceparent.clone().into()));
                properties.with_headers(headers)
            }
            None => properties,
        }
    }
}

async fn supervise(
    url: Secret,
    topology: Topology,
    name: String,
    tx: watch::Sender<Option<Arc<Live>>>,
    kick: Arc<Notify>,
    token: tokio_util::sync::CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let attempt = tokio::select! {
            res = tokio::time::timeout(CONNECT_TIMEOUT, connect(&url, &topology, &name)) => res.unwrap_or_else(|_| Err("connect timed out".to_owned())),
            () = token.cancelled() => break,
        };
        match attempt {
            Ok(live) => {
                let live = Arc::new(live);
                if !first {
                    metrics::counter!(names::BUS_RECONNECTS).increment(1);
                }
                first = false;
                tracing::info!("connected to rabbitmq");
                backoff = Duration::from_millis(100);
                tx.send_replace(Some(live.clone()));
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(250)) => {}
                        () = kick.notified() => {}
                        () = token.cancelled() => {
                            tx.send_replace(None);
                            let _ = live.connection.close(200, "shutting down".into()).await;
                            return;
                        }
                    }
                    if !live.connection.status().connected() || !live.publish.status().connected() {
                        break;
                    }
                }
                tx.send_replace(None);
                tracing::warn!("rabbitmq connection lost, reconnecting");
                let _ = live.connection.close(200, "reconnecting".into()).await;
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "rabbitmq unreachable");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = token.cancelled() => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    tx.send_replace(None);
}

async fn connect(url: &Secret, topology: &Topology, name: &str) -> Result<Live, String> {
    let props = ConnectionProperties::default().with_connection_name(name.to_owned().into());
    let connection = Connection::connect(url.expose(), props).await.map_err(|e| e.to_string())?;
    let setup = async {
        let channel = connection.create_channel().await?;
        declare(&channel, topology).await?;
        let _ = channel.close(200, "declared".into()).await;
        let publish = connection.create_channel().await?;
        publish.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok::<_, lapin::Error>(publish)
    };
    match setup.await {
        Ok(publish) => Ok(Live { connection, publish }),
        Err(err) => {
            let _ = connection.close(200, "setup failed".into()).await;
            Err(err.to_string())
        }
    }
}

/// Declares everything of CONTRACT §4, idempotently: whichever role starts first creates it.
pub async fn declare(channel: &Channel, t: &Topology) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(t.exchange().into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    channel.exchange_declare(t.dead_letter_exchange().into(), ExchangeKind::Direct, durable, FieldTable::default()).await?;
    for queue in Queue::ALL {
        let name = t.queue(queue);
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString(t.queue_type.as_str().into()));
        if t.queue_type == QueueType::Quorum {
            // Quorum queues count deliveries and dead-letter past the limit: poison cannot loop forever.
            args.insert("x-delivery-limit".into(), AMQPValue::LongInt(t.broker_delivery_limit() as i32));
        }
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(t.dead_letter_exchange().into()));
        args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(name.clone().into()));
        let opts = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(name.clone().into(), opts, args).await?;
        for key in queue.bindings() {
            channel
                .queue_bind(name.clone().into(), t.exchange().into(), (*key).into(), QueueBindOptions::default(), FieldTable::default())
                .await?;
        }
        let dlq = t.dead_letter_queue(queue);
        let mut dl_args = FieldTable::default();
        dl_args.insert("x-queue-type".into(), AMQPValue::LongString(t.queue_type.as_str().into()));
        channel.queue_declare(dlq.clone().into(), opts, dl_args).await?;
        channel
            .queue_bind(dlq.into(), t.dead_letter_exchange().into(), name.into(), QueueBindOptions::default(), FieldTable::default())
            .await?;
    }
    Ok(())
}

#[async_trait]
impl EventBus for RabbitBus {
    async fn publish(&self, batch: &[Outgoing]) -> Vec<Result<(), BusError>> {
        let Some(live) = self.current() else {
            return batch.iter().map(|_| Err(BusError::Unavailable("not connected".into()))).collect();
        };
        let exchange: ShortString = self.topology.exchange().into();
        // Send everything first, then await the confirms: one round trip for the whole batch.
        // One deadline bounds the whole batch, however the connection fails under it.
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        let mut pending = Vec::with_capacity(batch.len());
        for msg in batch {
            let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
            let send =
                live.publish.basic_publish(exchange.clone(), msg.routing_key.clone().into(), opts, &msg.payload, Self::properties(msg));
            let res = match tokio::time::timeout_at(deadline, send).await {
                Ok(res) => res.map_err(|err| BusError::Unavailable(err.to_string())),
                Err(_) => Err(BusError::Unavailable("publish not sent in time".into())),
            };
            pending.push(res);
        }
        let mut results = Vec::with_capacity(batch.len());
        for res in pending {
            let outcome = match res {
                Err(err) => Err(err),
                Ok(confirm) => match tokio::time::timeout_at(deadline, confirm).await {
                    Err(_) => Err(BusError::Unavailable("no confirm from the broker".into())),
                    Ok(Err(err)) => Err(BusError::Unavailable(err.to_string())),
                    Ok(Ok(Confirmation::Ack(None))) => Ok(()),
                    Ok(Ok(Confirmation::Ack(Some(_)))) => Err(BusError::Refused("unroutable".into())),
                    Ok(Ok(Confirmation::Nack(_))) => Err(BusError::Refused("nacked".into())),
                    Ok(Ok(Confirmation::NotRequested)) => Err(BusError::Refused("confirms not enabled".into())),
                },
            };
            match &outcome {
                Ok(()) => metrics::counter!(names::PUBLISH_CONFIRMS).increment(1),
                Err(_) => metrics::counter!(names::PUBLISH_FAILURES).increment(1),
            }
            results.push(outcome);
        }
        if results.iter().any(|r| matches!(r, Err(BusError::Unavailable(_)))) {
            self.kick.notify_one();
        }
        results
    }

    async fn ping(&self) -> Result<(), BusError> {
        match self.current() {
            Some(live) if live.connection.status().connected() => Ok(()),
            _ => Err(BusError::Unavailable("not connected".into())),
        }
    }

    async fn consume(&self, queue: Queue, prefetch: u16) -> Result<BoxStream<'static, Delivery>, BusError> {
        self.consume_once(queue, prefetch).await
    }

    async fn take_dead_letter(&self, queue: Queue) -> Result<Option<DeadLetter>, BusError> {
        let live = self.current().ok_or_else(|| BusError::Unavailable("not connected".into()))?;
        let fetch = async {
            let channel = live.connection.create_channel().await?;
            let got = channel.basic_get(self.topology.dead_letter_queue(queue).into(), BasicGetOptions::default()).await?;
            let Some(got) = got else {
                let _ = channel.close(200, "done".into()).await;
                return Ok(None);
            };
            // Our own reason, else the broker's (a message past `x-delivery-limit`).
            let properties = &got.delivery.properties;
            let reason = header_text(properties, "x-contoso-reason").or_else(|| header_text(properties, "x-first-death-reason"));
            got.delivery.acker.ack(BasicAckOptions::default()).await?;
            let _ = channel.close(200, "done".into()).await;
            Ok::<_, lapin::Error>(Some(DeadLetter { body: Bytes::from(got.delivery.data.clone()), reason }))
        };
        match tokio::time::timeout(CONFIRM_TIMEOUT, fetch).await {
            Ok(res) => res.map_err(bus_err),
            Err(_) => Err(BusError::Unavailable("dead-letter queue did not answer in time".into())),
        }
    }

    async fn ack_all(&self, deliveries: Vec<Delivery>) -> Result<(), BusError> {
        settle::ack_all(deliveries).await
    }
}

impl RabbitBus {
    async fn consume_once(&self, queue: Queue, prefetch: u16) -> Result<BoxStream<'static, Delivery>, BusError> {
        let live = self.connected().await.ok_or_else(|| BusError::Unavailable("shutting down".into()))?;
        let name = self.topology.queue(queue);
        // The connection may have died since it was handed out: bound the setup so the
        // caller retries on the next one instead of waiting on a reply that never comes.
        let setup = async {
            let channel = live.connection.create_channel().await?;
            channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
            let consumer = channel
                .basic_consume(
                    name.clone().into(),
                    format!("contoso-{}", uuid::Uuid::new_v4().simple()).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((channel, consumer))
        };
        let (channel, consumer) = tokio::time::timeout(CONNECT_TIMEOUT, setup)
            .await
            .map_err(|_| BusError::Unavailable("consumer setup timed out".into()))?
            .map_err(bus_err)?;
        let dlx = self.topology.dead_letter_exchange();
        let kick = self.kick.clone();
        let window = Window::default();
        let classic = (self.topology.queue_type == QueueType::Classic).then(|| self.redeliveries.clone());
        let stream = consumer
            .take_while(move |res| {
                if let Err(err) = res {
                    tracing::warn!(error = %err, "consumer stopped");
                    kick.notify_one();
                }
                std::future::ready(res.is_ok())
            })
            .filter_map(move |res| {
                let live = live.clone();
                let dlx = dlx.clone();
                let name = name.clone();
                // The channel lives as long as the stream: dropping it would requeue everything.
                let _channel = &channel;
                std::future::ready(res.ok().map(|d| {
                    let message_id = d.properties.message_id().as_ref().map(|s| s.to_string());
                    let count = match classic.as_ref() {
                        // A classic queue counts nothing, but says whether it delivered before.
                        Some(seen) => seen.lock().unwrap_or_else(|e| e.into_inner()).count(message_id.as_deref(), d.redelivered),
                        None => delivery_count(&d.properties),
                    };
                    let settle = RabbitSettle {
                        acker: d.acker,
                        tag: d.delivery_tag,
                        window: window.clone(),
                        live,
                        dead_letter_exchange: dlx,
                        source_queue: name,
                        message_id: message_id.clone(),
                    };
                    let traceparent = header_text(&d.properties, TRACEPARENT);
                    Delivery::new(Bytes::from(d.data), message_id, count, Box::new(settle)).with_traceparent(traceparent)
                }))
            });
        Ok(stream.boxed())
    }
}

/// The W3C trace context header (the OpenTelemetry messaging convention for AMQP).
const TRACEPARENT: &str = "traceparent";

/// A string header of a delivery.
fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}
