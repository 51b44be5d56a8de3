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
        let state = self.store.order_state(id).await.map_err(technical)?;
        let Some(state) = state else {
            return Err(Failure::poison("unknown-order", format!("no order {id}")));
        };
        if state.status.is_final() {
            // A duplicate or a redelivery after the commit: nothing to do but make sure the
            // cache caught up (the previous attempt may have died before writing it).
            self.cache.set_status(id, state.status, self.ttl).await.map_err(technical)?;
            tracing::debug!(correlation_id = %id, "order already final, duplicate event");
            return Ok(());
        }
        if state.status == OrderStatus::Accepted {
            self.store.mark_processing(id).await.map_err(technical)?;
        }
        self.cache.set_status(id, OrderStatus::Processing, self.ttl).await.map_err(technical)?;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        match self.store.unavailable_product(id).await.map_err(technical)? {
            Some(product) => {
                let reason = format!("{product} is no longer available");
                if self.store.fail(id, &reason).await.map_err(technical)? {
                    tracing::info!(correlation_id = %id, %reason, "order failed");
                }
                self.cache.set_status(id, OrderStatus::Failed, self.ttl).await.map_err(technical)?;
            }
            None => {
                let status = match self.store.complete(id).await.map_err(technical)? {
                    Some(number) => {
                        tracing::info!(correlation_id = %id, order_id = %number, "order completed");
                        // Tests crash here to prove a redelivery after the commit changes nothing.
                        fail::fail_point!("process-after-commit", |_| std::process::abort());
                        OrderStatus::Completed
                    }
                    // Someone else finished it first (a duplicate delivery): the database says how.
                    None => self.store.order_state(id).await.map_err(technical)?.map(|s| s.status).unwrap_or(OrderStatus::Completed),
                };
                self.cache.set_status(id, status, self.ttl).await.map_err(technical)?;
            }
        }
        Ok(())
    }
}
