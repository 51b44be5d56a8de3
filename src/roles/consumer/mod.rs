//! The consume loop every consuming role shares: bounded concurrency, and one settlement
//! policy. Success acks; a poison message is dead-lettered at once with its reason; a
//! technical failure is retried with backoff (the delivery is held, so nothing spins hot
//! while a dependency is down) and dead-lettered with its last error at the delivery limit.

use std::{future::Future, sync::Arc, time::Duration};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::{
    bus::{Delivery, EventBus, Queue},
    telemetry::{names, otel},
};

mod batches;

pub use batches::Batching;

/// One delivery as a handler sees it: the body, and the span of its handling (a child of the
/// publisher's, when the message carried a trace; disabled when tracing is off).
pub struct Message {
    pub body: Arc<[u8]>,
    pub span: tracing::Span,
}

impl Message {
    fn of(delivery: &Delivery, queue: &'static str) -> Self {
        let span = match &delivery.traceparent {
            Some(parent) => {
                let span = tracing::info_span!("consume", otel.name = %format!("{queue} process"), otel.kind = "consumer");
                otel::follow(&span, Some(parent));
                span
            }
            None => tracing::Span::none(),
        };
        Self { body: Arc::from(&delivery.body[..]), span }
    }
}

/// Why a delivery could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The message itself is wrong; retrying cannot help. `kind` labels the metric.
    #[error("{reason}")]
    Poison { kind: &'static str, reason: String },
    /// A dependency failed; the same message may succeed later.
    #[error("{0}")]
    Technical(String),
}

impl Failure {
    pub fn poison(kind: &'static str, reason: impl Into<String>) -> Self {
        Failure::Poison { kind, reason: reason.into() }
    }
}

pub struct ConsumerConfig {
    pub queue: Queue,
    /// Metric label (the contract's queue name).
    pub label: &'static str,
    pub prefetch: u16,
    /// Deliveries before a technical failure is dead-lettered.
    pub delivery_limit: u32,
    pub batching: Batching,
}

/// Backoff before a failed delivery goes back: 200 ms doubling to 10 s.
pub fn backoff(delivery_count: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << delivery_count.min(6))).min(Duration::from_secs(10))
}

/// Starts consuming `queue` once the database is migrated; stops at the shutdown's `intake`
/// phase. `handler` gets every delivery the broker has ready (up to the prefetch) in one call
/// and answers one result per body, in order: a handler that writes a batch in one statement
/// pays one round trip and one commit for all of them.
pub fn spawn<H, Fut>(
    deps: &super::Deps,
    shutdown: &crate::shutdown::Shutdown,
    queue: Queue,
    label: &'static str,
    batching: Batching,
    handler: H,
) -> anyhow::Result<()>
where
    H: Fn(Vec<Message>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Result<(), Failure>>> + Send,
{
    let bus = deps.bus.clone().ok_or_else(|| anyhow::anyhow!("consuming {label} needs a bus"))?;
    let cfg = ConsumerConfig { queue, label, prefetch: deps.settings.prefetch, delivery_limit: deps.settings.delivery_limit, batching };
    let token = shutdown.intake.clone();
    let mut db_ready = deps.db_ready.clone();
    shutdown.intake_tasks.spawn(async move {
        tokio::select! {
            _ = db_ready.wait_for(|ready| *ready) => {}
            () = token.cancelled() => return,
        }
        run(bus, cfg, token, handler).await;
    });
    Ok(())
}

/// Consumes until `token` is cancelled; then stops taking deliveries and lets the ones in
/// flight finish (each ends settled, or unsettled and so redelivered by the broker).
pub async fn run<H, Fut>(bus: Arc<dyn EventBus>, cfg: ConsumerConfig, token: CancellationToken, handler: H)
where
    H: Fn(Vec<Message>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Result<(), Failure>>> + Send,
{
    let handler = Arc::new(handler);
    let cfg = Arc::new(cfg);
    let mut failures = 0u32;
    while !token.is_cancelled() {
        let stream = tokio::select! {
            res = bus.consume(cfg.queue, cfg.prefetch) => res,
            () = token.cancelled() => break,
        };
        let stream = match stream {
            Ok(stream) => {
                failures = 0;
                stream
            }
            Err(err) => {
                failures += 1;
                tracing::warn!(queue = cfg.label, error = %err, "cannot consume, retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff(failures)) => {}
                    () = token.cancelled() => break,
                }
                continue;
            }
        };
        tracing::info!(queue = cfg.label, "consuming");
        // A batch is whatever arrived while the batches before it were handled (and within the
        // linger): with few in flight, batches grow with the load, and so does what one round
        // trip carries. The broker bounds the deliveries in flight (the prefetch).
        let stream = stream.take_until(token.clone().cancelled_owned());
        batches::batches(stream, usize::from(cfg.prefetch), cfg.batching.linger)
            .for_each_concurrent(cfg.batching.in_flight.max(1), |batch| {
                let (bus, handler, cfg, token) = (bus.clone(), handler.clone(), cfg.clone(), token.clone());
                async move { handle(batch, &bus, &cfg, &token, handler.as_ref()).await }
            })
            .await;
    }
}

async fn handle<H, Fut>(batch: Vec<Delivery>, bus: &Arc<dyn EventBus>, cfg: &Arc<ConsumerConfig>, token: &CancellationToken, handler: &H)
where
    H: Fn(Vec<Message>) -> Fut,
    Fut: Future<Output = Vec<Result<(), Failure>>>,
{
    let queue = cfg.label;
    let size = batch.len();
    metrics::counter!(names::EVENTS_CONSUMED, "queue" => queue).increment(size as u64);
    metrics::gauge!(names::EVENTS_IN_FLIGHT, "queue" => queue).increment(size as f64);
    metrics::histogram!(names::CONSUMER_BATCH_SIZE, "queue" => queue).record(size as f64);
    let started = std::time::Instant::now();
    let messages = batch.iter().map(|d| Message::of(d, queue)).collect();
    let results = handler(messages).await;
    debug_assert_eq!(results.len(), size, "one result per delivery");
    let elapsed = started.elapsed().as_secs_f64();
    metrics::histogram!(names::PROCESSING_DURATION, "queue" => queue).record_many(elapsed, size);
    let mut acks = Vec::with_capacity(size);
    let mut others = Vec::new();
    for (delivery, res) in batch.into_iter().zip(results) {
        match res {
            Ok(()) => acks.push(delivery),
            Err(failure) => others.push((delivery, failure)),
        }
    }
    let acked = acks.len();
    match bus.ack_all(acks).await {
        Ok(()) => metrics::counter!(names::EVENTS_ACKED, "queue" => queue).increment(acked as u64),
        // The broker redelivers an unsettled message; handlers are idempotent.
        Err(err) => tracing::warn!(queue, error = %err, "could not ack a batch"),
    }
    metrics::gauge!(names::EVENTS_IN_FLIGHT, "queue" => queue).decrement(acked as f64);
    for (delivery, failure) in others {
        // A failed delivery may be held for its backoff; that must not hold the batches
        // behind it, only its own prefetch slot.
        let (cfg, token) = (cfg.clone(), token.clone());
        tokio::spawn(async move {
            settle(delivery, failure, &cfg, &token).await;
            metrics::gauge!(names::EVENTS_IN_FLIGHT, "queue" => cfg.label).decrement(1.0);
        });
    }
}

/// Settles one delivery its handler failed.
async fn settle(delivery: Delivery, failure: Failure, cfg: &ConsumerConfig, token: &CancellationToken) {
    let queue = cfg.label;
    let settled = match failure {
        Failure::Poison { kind, reason } => {
            tracing::warn!(queue, reason = %reason, "dead-lettering a message that cannot be handled");
            delivery
                .dead_letter(reason)
                .await
                .map(|()| metrics::counter!(names::EVENTS_DEAD_LETTERED, "queue" => queue, "reason" => kind).increment(1))
        }
        Failure::Technical(err) => {
            let count = delivery.delivery_count;
            if count + 1 >= cfg.delivery_limit {
                tracing::error!(queue, error = %err, deliveries = count + 1, "giving up on a message after its delivery limit");
                delivery
                    .dead_letter(format!("failed {} times, last error: {err}", count + 1))
                    .await
                    .map(|()| metrics::counter!(names::EVENTS_DEAD_LETTERED, "queue" => queue, "reason" => "delivery-limit").increment(1))
            } else {
                tracing::warn!(queue, error = %err, deliveries = count + 1, "handling failed, will retry");
                // Hold the delivery for the backoff: it keeps its prefetch slot, so a dead
                // dependency slows consumption down instead of spinning on redeliveries.
                tokio::select! {
                    () = tokio::time::sleep(backoff(count)) => {}
                    () = token.cancelled() => {}
                }
                delivery.requeue().await.map(|()| metrics::counter!(names::EVENTS_REQUEUED, "queue" => queue).increment(1))
            }
        }
    };
    if let Err(err) = settled {
        // The broker redelivers an unsettled message; handlers are idempotent.
        tracing::warn!(queue, error = %err, "could not settle a delivery");
    }
}
