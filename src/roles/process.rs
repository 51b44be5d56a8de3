//! Role `process`: consumes `order.accepted` and moves each order ACCEPTED -> PROCESSING ->
//! COMPLETED (with a new order number and `order.processed`) or FAILED (`order.failed`, when a
//! product cannot be sold). Acks only after the final state and its outbox row are committed.

use std::{sync::Arc, time::Duration};

use anyhow::Context;

use super::{
    Deps,
    consumer::{self, Failure},
};
use crate::{
    bus::Queue,
    cache::StatusCache,
    domain::{Event, EventKind, OrderStatus},
    health::Readiness,
    shutdown::Shutdown,
    store::Store,
};

struct Processor {
    store: Store,
    cache: Arc<dyn StatusCache>,
    ttl: Duration,
    delay: Duration,
}

pub fn start(deps: &Deps, shutdown: &Shutdown, readiness: &mut Readiness) -> anyhow::Result<()> {
    let store = deps.background_store.clone().context("role process needs a database")?;
    let cache = deps.cache.clone().context("role process needs redis")?;
    let bus = deps.bus.clone().context("role process needs a bus")?;
    super::add_dependency_probes(readiness, &cache, &bus);
    let processor = Arc::new(Processor { store, cache, ttl: deps.settings.status_ttl, delay: deps.settings.process_delay });
    consumer::spawn(deps, shutdown, Queue::OrderProcess, "contoso.order-process", move |body, _| {
        let processor = processor.clone();
        async move { processor.handle(&body).await }
    })
}

fn technical(err: impl std::fmt::Display) -> Failure {
    Failure::Technical(err.to_string())
}

impl Processor {
    async fn handle(&self, body: &[u8]) -> Result<(), Failure> {
        let event = Event::from_json(body).map_err(|e| Failure::poison("malformed", format!("not an event: {e}")))?;
        if event.kind != EventKind::Accepted {
            return Err(Failure::poison("unexpected-type", format!("{} does not belong on this queue", event.kind.routing_key())));
        }
        let id = event.correlation_id;
        // Status read, ACCEPTED -> PROCESSING, availability and the order number: one statement.
        let Some(begun) = self.store.begin_processing(id).await.map_err(technical)? else {
            return Err(Failure::poison("unknown-order", format!("no order {id}")));
        };
        if begun.status.is_final() {
            // A duplicate or a redelivery after the commit: nothing to do but make sure the
            // cache caught up (the previous attempt may have died before writing it).
            self.cache.set_status(id, begun.status, self.ttl).await.map_err(technical)?;
            tracing::debug!(correlation_id = %id, "order already final, duplicate event");
            return Ok(());
        }
        self.cache.set_status(id, OrderStatus::Processing, self.ttl).await.map_err(technical)?;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let status = match (begun.unavailable, begun.order_number) {
            (Some(product), _) => {
                let reason = format!("{product} is no longer available");
                if self.store.fail(id, &reason).await.map_err(technical)? {
                    tracing::info!(correlation_id = %id, %reason, "order failed");
                }
                OrderStatus::Failed
            }
            (None, Some(number)) if self.store.complete(id, number).await.map_err(technical)? => {
                tracing::info!(correlation_id = %id, order_id = %number, "order completed");
                // Tests crash here to prove a redelivery after the commit changes nothing.
                fail::fail_point!("process-after-commit", |_| std::process::abort());
                OrderStatus::Completed
            }
            // Someone else finished it first (a duplicate delivery): the database says how.
            _ => self.store.order_state(id).await.map_err(technical)?.map(|s| s.status).unwrap_or(OrderStatus::Completed),
        };
        self.cache.set_status(id, status, self.ttl).await.map_err(technical)?;
        Ok(())
    }
}
