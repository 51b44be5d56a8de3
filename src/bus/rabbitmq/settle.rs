//! Settling RabbitMQ deliveries: acks, requeues and dead letters, each bounded in time, and the
//! ack window of a consumer channel through which a batch is acked with one `multiple` ack
//! where that is safe.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use lapin::{
    Acker, BasicProperties, Confirmation,
    options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions},
    types::{AMQPValue, FieldTable},
};

use super::{super::ack_window::AckWindow, CONFIRM_TIMEOUT, Live};
use crate::bus::{BusError, Delivery, Settle};

/// An ack or nack is a frame on its way out, never a wait for the broker. lapin can drop the
/// promise of a settlement whose channel died under it without resolving it, so every
/// settlement is bounded: past this, the delivery counts as unsettled and the broker
/// redelivers it (handlers are idempotent). Without the bound, one lost ack would hold the
/// consume loop, which waits for its in-flight deliveries, forever.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The settlements of one consumer channel. The lock is held while a frame is sent, so the
/// frames leave in the order they were planned: a `multiple` ack can never overtake a single
/// ack or nack of a tag it covers (the broker closes the channel on an unknown tag).
pub(super) type Window = Arc<tokio::sync::Mutex<AckWindow>>;

/// Settles one RabbitMQ delivery; dead letters go out through the confirm-mode channel.
pub(super) struct RabbitSettle {
    pub(super) acker: Acker,
    pub(super) tag: u64,
    pub(super) window: Window,
    pub(super) live: Arc<Live>,
    pub(super) dead_letter_exchange: String,
    pub(super) source_queue: String,
    pub(super) message_id: Option<String>,
}

pub(super) fn bus_err(err: lapin::Error) -> BusError {
    BusError::Unavailable(err.to_string())
}

/// `Ok(false)` from lapin means the acker was poisoned (its channel is gone), and a timeout
/// means the settlement was lost with its channel: either way the broker will redeliver, so
/// for the caller the settlement did not happen.
async fn settled(settlement: impl std::future::Future<Output = Result<bool, lapin::Error>>) -> Result<(), BusError> {
    settled_within(SETTLE_TIMEOUT, settlement).await
}

async fn settled_within(
    limit: Duration,
    settlement: impl std::future::Future<Output = Result<bool, lapin::Error>>,
) -> Result<(), BusError> {
    match tokio::time::timeout(limit, settlement).await {
        Err(_) => Err(BusError::Unavailable("settlement not sent in time".into())),
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(BusError::Unavailable("channel closed before settling".into())),
        Ok(Err(err)) => Err(bus_err(err)),
    }
}

impl RabbitSettle {
    /// Sends this delivery's own settlement frame, in turn with the channel's other ones.
    async fn alone(&self, frame: impl std::future::Future<Output = Result<bool, lapin::Error>>) -> Result<(), BusError> {
        let mut window = self.window.lock().await;
        let res = settled(frame).await;
        // A frame that was not sent leaves the delivery with the broker, so no `multiple` ack
        // may cover it (a lost nack would turn into an ack): later acks go one by one.
        if res.is_ok() {
            window.settled(self.tag);
        }
        res
    }
}

/// Acks the deliveries of one channel: one `multiple` ack where every earlier delivery is
/// settled, single acks for the others.
async fn ack_on_window(window: &Window, mut batch: Vec<RabbitSettle>) -> Result<(), BusError> {
    batch.sort_unstable_by_key(|s| s.tag);
    let tags: Vec<u64> = batch.iter().map(|s| s.tag).collect();
    let mut window = window.lock().await;
    let plan = window.plan(&tags);
    let mut res = Ok(());
    for s in &batch {
        let frame = if Some(s.tag) == plan.multiple {
            settled(s.acker.ack(BasicAckOptions { multiple: true })).await
        } else if plan.singles.contains(&s.tag) {
            settled(s.acker.ack(BasicAckOptions::default())).await
        } else {
            continue;
        };
        res = res.and(frame);
    }
    res
}

#[async_trait]
impl Settle for RabbitSettle {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.alone(self.acker.ack(BasicAckOptions::default())).await
    }

    async fn requeue(self: Box<Self>) -> Result<(), BusError> {
        self.alone(self.acker.nack(BasicNackOptions { requeue: true, ..Default::default() })).await
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }

    async fn dead_letter(self: Box<Self>, body: Bytes, reason: String) -> Result<(), BusError> {
        let mut headers = FieldTable::default();
        headers.insert("x-contoso-reason".into(), AMQPValue::LongString(reason.clone().into()));
        headers.insert("x-contoso-source-queue".into(), AMQPValue::LongString(self.source_queue.clone().into()));
        let mut props = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
        if let Some(id) = &self.message_id {
            props = props.with_message_id(id.clone().into());
        }
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        let send = self.live.publish.basic_publish(
            self.dead_letter_exchange.clone().into(),
            self.source_queue.clone().into(),
            BasicPublishOptions::default(),
            &body,
            props,
        );
        let confirm = tokio::time::timeout_at(deadline, send)
            .await
            .map_err(|_| BusError::Unavailable("dead letter not sent in time".into()))?
            .map_err(bus_err)?;
        match tokio::time::timeout_at(deadline, confirm).await {
            Ok(Ok(Confirmation::Ack(_))) => {}
            Ok(Ok(other)) => return Err(BusError::Refused(format!("dead letter not confirmed: {other:?}"))),
            Ok(Err(err)) => return Err(bus_err(err)),
            Err(_) => return Err(BusError::Unavailable("no confirm for the dead letter".into())),
        }
        // Only once the dead letter is safe is the original removed.
        self.alone(self.acker.ack(BasicAckOptions::default())).await
    }
}

pub(super) fn delivery_count(props: &BasicProperties) -> u32 {
    let Some(headers) = props.headers() else { return 0 };
    match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => *n as u32,
        Some(AMQPValue::LongInt(n)) => *n as u32,
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::ShortInt(n)) => *n as u32,
        Some(AMQPValue::ShortShortInt(n)) => *n as u32,
        _ => 0,
    }
}

/// Acks deliveries of this bus, grouped by consumer channel (delivery tags only mean something
/// within one).
pub(super) async fn ack_all(deliveries: Vec<Delivery>) -> Result<(), BusError> {
    let mut windows: Vec<(Window, Vec<RabbitSettle>)> = Vec::new();
    let mut res = Ok(());
    for delivery in deliveries {
        match delivery.into_settle().into_any().downcast::<RabbitSettle>() {
            Ok(settle) => match windows.iter_mut().find(|(w, _)| Arc::ptr_eq(w, &settle.window)) {
                Some((_, batch)) => batch.push(*settle),
                None => windows.push((settle.window.clone(), vec![*settle])),
            },
            // Left unsettled, so the broker it came from redelivers it.
            Err(_) => res = Err(BusError::Refused("a delivery of another bus".into())),
        }
    }
    for (window, batch) in windows {
        res = res.and(ack_on_window(&window, batch).await);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_settlement_lapin_never_resolves_counts_as_unsettled_instead_of_hanging() {
        let res = settled_within(Duration::from_millis(20), std::future::pending()).await;
        assert!(matches!(res, Err(BusError::Unavailable(ref m)) if m.contains("not sent in time")), "{res:?}");
    }

    #[tokio::test]
    async fn a_poisoned_acker_counts_as_unsettled_and_a_sent_one_as_settled() {
        assert!(matches!(settled_within(Duration::from_secs(1), async { Ok(false) }).await, Err(BusError::Unavailable(_))));
        assert!(settled_within(Duration::from_secs(1), async { Ok(true) }).await.is_ok());
    }
}
