//! The outbox relay: publishes outbox rows with publisher confirms and deletes them only
//! after the broker's ack. Wakes at once after a commit (in-process) and also polls, so rows
//! written by other pods, or left while the broker was away, go out too.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::Notify;

use super::Deps;
use crate::{
    bus::{EventBus, Outgoing},
    shutdown::Shutdown,
    store::{OutboxRow, Store},
    telemetry::{names, otel},
};

/// Rows per transaction: large enough to amortise confirms, small enough to keep locks short.
const BATCH: i64 = 256;
/// How long shutdown waits for the last drain.
const FINAL_DRAIN: Duration = Duration::from_secs(3);

/// Starts the relay; the returned `Notify` wakes it after a commit.
pub fn start(deps: &Deps, shutdown: &Shutdown) -> anyhow::Result<Arc<Notify>> {
    let store = deps.background_store.clone().context("the relay needs a database")?;
    let bus = deps.bus.clone().context("the relay needs a bus")?;
    let wake = Arc::new(Notify::new());
    let poll = deps.settings.outbox_poll;
    let token = shutdown.token.clone();
    let wake2 = wake.clone();
    let mut db_ready = deps.db_ready.clone();
    shutdown.spawn(async move {
        tokio::select! {
            _ = db_ready.wait_for(|ready| *ready) => {}
            () = token.cancelled() => return,
        }
        loop {
            drain(&store, &bus).await;
            tokio::select! {
                () = wake2.notified() => {}
                () = tokio::time::sleep(poll) => {}
                () = token.cancelled() => break,
            }
        }
        // Requests that committed just before shutdown: send their events now rather than
        // leaving them for another pod's poll. Anything left stays safely in the outbox.
        let _ = tokio::time::timeout(FINAL_DRAIN, drain(&store, &bus)).await;
    });
    Ok(wake)
}

/// Relays batches until the outbox is empty or the broker stops confirming.
async fn drain(store: &Store, bus: &Arc<dyn EventBus>) {
    loop {
        let bus = bus.clone();
        let publish = Box::new(move |rows: Vec<OutboxRow>| publish_rows(bus, rows).boxed());
        match store.relay_outbox(BATCH, publish).await {
            Ok((locked, confirmed)) => {
                metrics::counter!(names::OUTBOX_PUBLISHED).increment(confirmed as u64);
                if (locked as i64) < BATCH || confirmed < locked {
                    break;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "outbox relay failed, will retry");
                break;
            }
        }
    }
    if let Ok(backlog) = store.outbox_backlog().await {
        metrics::gauge!(names::OUTBOX_BACKLOG).set(backlog as f64);
    }
}

async fn publish_rows(bus: Arc<dyn EventBus>, rows: Vec<OutboxRow>) -> Vec<i64> {
    // A traced row gets a producer span, open until the broker confirms; the message carries
    // that span's context, so the consumer's span is its child.
    let spans: Vec<Option<tracing::Span>> = rows.iter().map(publish_span).collect();
    let batch: Vec<Outgoing> = rows
        .iter()
        .zip(&spans)
        .map(|(r, span)| Outgoing {
            event_id: r.event_id,
            routing_key: r.routing_key.clone(),
            payload: Bytes::from(r.payload.clone()),
            traceparent: span.as_ref().and_then(otel::traceparent),
        })
        .collect();
    let results = bus.publish(&batch).await;
    drop(spans);
    let mut confirmed = Vec::with_capacity(rows.len());
    for (row, res) in rows.iter().zip(results) {
        match res {
            Ok(()) => confirmed.push(row.id),
            Err(err) => tracing::debug!(event_id = %row.event_id, error = %err, "event not confirmed, kept in the outbox"),
        }
    }
    confirmed
}

fn publish_span(row: &OutboxRow) -> Option<tracing::Span> {
    let parent = row.traceparent.as_deref()?;
    let span = tracing::info_span!("outbox publish", otel.name = %format!("{} publish", row.routing_key), otel.kind = "producer");
    otel::follow(&span, Some(parent));
    Some(span)
}
