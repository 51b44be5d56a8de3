//! Role `process`: consumes `order.accepted` and moves each order ACCEPTED -> PROCESSING ->
//! COMPLETED (with a new order number and `order.processed`) or FAILED (`order.failed`, when a
//! product cannot be sold). Acks only after the final state and its outbox row are committed.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use tokio::sync::Notify;

use super::{
    Deps,
    consumer::{self, Failure, Message},
};
use crate::{
    bus::Queue,
    cache::StatusCache,
    domain::{CorrelationId, Event, EventKind, OrderNumber, OrderStatus},
    health::Readiness,
    shutdown::Shutdown,
    store::Store,
    telemetry::otel,
};

struct Processor {
    store: Store,
    cache: Arc<dyn StatusCache>,
    ttl: Duration,
    delay: Duration,
    /// Wakes this process's outbox relay once outcome events are committed; otherwise they
    /// would wait for its next poll.
    relay_wake: Arc<Notify>,
}

pub fn start(deps: &Deps, shutdown: &Shutdown, readiness: &mut Readiness, relay_wake: Arc<Notify>) -> anyhow::Result<()> {
    let store = deps.background_store.clone().context("role process needs a database")?;
    let cache = deps.cache.clone().context("role process needs redis")?;
    let bus = deps.bus.clone().context("role process needs a bus")?;
    super::add_dependency_probes(readiness, &cache, &bus);
    let processor = Arc::new(Processor { store, cache, ttl: deps.settings.status_ttl, delay: deps.settings.process_delay, relay_wake });
    consumer::spawn(deps, shutdown, Queue::OrderProcess, "contoso.order-process", consumer::Batching::READY, move |messages| {
        let processor = processor.clone();
        async move { processor.handle_batch(&messages).await }
    })
}

/// The order an `order.accepted` body names, or why the message can never be handled.
fn parse(body: &[u8]) -> Result<CorrelationId, Failure> {
    let event = Event::from_json(body).map_err(|e| Failure::poison("malformed", format!("not an event: {e}")))?;
    if event.kind != EventKind::Accepted {
        return Err(Failure::poison("unexpected-type", format!("{} does not belong on this queue", event.kind.routing_key())));
    }
    Ok(event.correlation_id)
}

impl Processor {
    /// Handles what the broker had ready in one go. Per order the states and writes are those
    /// of one order at a time; the batch shares the round trips and the commits. Several
    /// deliveries of one order (duplicates) share its outcome. A technical failure fails every
    /// valid delivery of the batch: none is acked, each is retried.
    async fn handle_batch(&self, messages: &[Message]) -> Vec<Result<(), Failure>> {
        let parsed: Vec<Result<CorrelationId, Failure>> = messages.iter().map(|m| parse(&m.body)).collect();
        let mut ids: Vec<CorrelationId> = parsed.iter().filter_map(|p| p.as_ref().ok().copied()).collect();
        ids.sort_unstable();
        ids.dedup();
        // Each order's outcome event continues the trace of (the first) delivery that named it.
        let mut traces = HashMap::new();
        for (id, message) in parsed.iter().zip(messages) {
            if let Ok(id) = id {
                traces.entry(*id).or_insert_with(|| otel::traceparent(&message.span));
            }
        }
        let outcome = if ids.is_empty() { Ok(HashSet::new()) } else { self.process(&ids, &traces).await };
        parsed
            .into_iter()
            .map(|id| {
                let id = id?;
                match &outcome {
                    Err(err) => Err(Failure::Technical(err.clone())),
                    Ok(unknown) if unknown.contains(&id) => Err(Failure::poison("unknown-order", format!("no order {id}"))),
                    Ok(_) => Ok(()),
                }
            })
            .collect()
    }

    /// Processes distinct orders and returns those the database does not know.
    async fn process(
        &self,
        ids: &[CorrelationId],
        traces: &HashMap<CorrelationId, Option<String>>,
    ) -> Result<HashSet<CorrelationId>, String> {
        let trace = |id: &CorrelationId| traces.get(id).cloned().flatten();
        // Status read, ACCEPTED -> PROCESSING, availability and the order number: one statement.
        let begun = self.store.begin_processing_many(ids).await.map_err(|e| e.to_string())?;
        let unknown = ids.iter().filter(|id| !begun.contains_key(id)).copied().collect();
        // An order already final is a duplicate or a redelivery after the commit: its status is
        // written again only so the cache catches up if the previous attempt died before it.
        let first: Vec<(CorrelationId, OrderStatus)> =
            begun.iter().map(|(id, b)| (*id, if b.status.is_final() { b.status } else { OrderStatus::Processing })).collect();
        self.cache.set_statuses(&first, self.ttl).await.map_err(|e| e.to_string())?;
        let work: Vec<_> = begun.into_iter().filter(|(_, b)| !b.status.is_final()).collect();
        if work.is_empty() {
            return Ok(unknown);
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let mut finals = Vec::with_capacity(work.len());
        let mut committed = false;
        let mut completing: Vec<(CorrelationId, OrderNumber, Option<String>)> = Vec::with_capacity(work.len());
        let mut settled_elsewhere = Vec::new();
        for (id, begun) in work {
            match (begun.unavailable, begun.order_number) {
                (Some(product), _) => {
                    let reason = format!("{product} is no longer available");
                    if self.store.fail(id, &reason, trace(&id)).await.map_err(|e| e.to_string())? {
                        tracing::info!(correlation_id = %id, %reason, "order failed");
                        committed = true;
                    }
                    finals.push((id, OrderStatus::Failed));
                }
                (None, Some(number)) => completing.push((id, number, trace(&id))),
                (None, None) => settled_elsewhere.push(id),
            }
        }
        let moved = self.store.complete_many(&completing).await.map_err(|e| e.to_string())?;
        for &(id, number, _) in &completing {
            if moved.contains(&id) {
                tracing::info!(correlation_id = %id, order_id = %number, "order completed");
                finals.push((id, OrderStatus::Completed));
            } else {
                settled_elsewhere.push(id);
            }
        }
        if !moved.is_empty() {
            // Tests crash here to prove a redelivery after the commit changes nothing.
            fail::fail_point!("process-after-commit", |_| std::process::abort());
            committed = true;
        }
        if committed {
            self.relay_wake.notify_one();
        }
        // Someone else finished these first (a duplicate delivery): the database says how.
        for id in settled_elsewhere {
            let state = self.store.order_state(id).await.map_err(|e| e.to_string())?;
            finals.push((id, state.map(|s| s.status).unwrap_or(OrderStatus::Completed)));
        }
        self.cache.set_statuses(&finals, self.ttl).await.map_err(|e| e.to_string())?;
        Ok(unknown)
    }
}
