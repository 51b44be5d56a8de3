//! The notify consumer: for each `order.processed` / `order.failed`, find the user (Redis,
//! else the database), append the notification to the user's log (de-duplicated by event id),
//! publish it to the user's backplane channel, and only then ack.

use std::sync::Arc;

use serde_json::{Value, json};

use super::super::{
    Deps,
    consumer::{self, Failure},
};
use crate::{
    bus::Queue,
    cache::{NotificationLog, StatusCache},
    domain::{Event, EventKind, OrderStatus},
    hub::HubLifetime,
    shutdown::Shutdown,
    store::Store,
};

pub struct Notifier {
    pub store: Store,
    pub cache: Arc<dyn StatusCache>,
    pub log: Arc<dyn NotificationLog>,
    pub lifetime: Arc<HubLifetime>,
}

pub fn start(deps: &Deps, shutdown: &Shutdown, notifier: Notifier) -> anyhow::Result<()> {
    let notifier = Arc::new(notifier);
    let handler = consumer::one_at_a_time(move |body| {
        let notifier = notifier.clone();
        async move { notifier.handle(&body).await }
    });
    consumer::spawn(deps, shutdown, Queue::OrderNotification, "contoso.order-notification", handler)
}

fn technical(err: impl std::fmt::Display) -> Failure {
    Failure::Technical(err.to_string())
}

/// The hub method and payload (without `notificationId`) of CONTRACT §5 for an event.
pub fn notification_of(event: &Event) -> Option<(&'static str, Value)> {
    let occurred_at = event.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    match &event.kind {
        EventKind::Processed { order_id } => Some((
            "OrderCompleted",
            json!({ "correlationId": event.correlation_id, "orderId": order_id, "status": OrderStatus::Completed, "occurredAt": occurred_at }),
        )),
        EventKind::Failed { reason } => Some((
            "OrderFailed",
            json!({ "correlationId": event.correlation_id, "reason": reason, "status": OrderStatus::Failed, "occurredAt": occurred_at }),
        )),
        EventKind::Accepted => None,
    }
}

impl Notifier {
    async fn handle(&self, body: &[u8]) -> Result<(), Failure> {
        let event = Event::from_json(body).map_err(|e| Failure::poison("malformed", format!("not an event: {e}")))?;
        let Some((target, payload)) = notification_of(&event) else {
            return Err(Failure::poison("unexpected-type", format!("{} does not belong on this queue", event.kind.routing_key())));
        };
        let id = event.correlation_id;
        let user = match self.cache.user_of(id).await.map_err(technical)? {
            Some(user) => user,
            None => {
                let state = self.store.order_state(id).await.map_err(technical)?;
                state.and_then(|s| s.user_id).ok_or_else(|| Failure::poison("unknown-order", format!("no order {id}")))?
            }
        };
        // Logged first: a tab that is away now replays it; a redelivery keeps the same id.
        let logged = self.log.append(&user, &event.event_id.to_string(), target, &payload).await.map_err(technical)?;
        self.lifetime.send_user(user.as_str(), target, vec![logged.argument()]).await.map_err(technical)?;
        tracing::debug!(correlation_id = %id, notification_id = %logged.id, "notification sent");
        Ok(())
    }
}
