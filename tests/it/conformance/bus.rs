//! The event bus: RabbitMQ against the in-process `MemoryBus`. Routing by key, settlement
//! (ack, requeue with a delivery count, dead letter with a reason), redelivery of what was
//! never settled, and the prefetch bound the consumers rely on for back-pressure.

use std::{ops::Deref, sync::Arc, time::Duration};

use bytes::Bytes;
use contoso::{
    bus::{BusError, Delivery, EventBus, MemoryBus, Outgoing, Queue, QueueType, RabbitBus, Topology, memory::DELIVERY_LIMIT_REASON},
    config::Secret,
    shutdown::Shutdown,
};
use futures_util::{StreamExt, stream::BoxStream};

use super::conformance;
use crate::harness::{app::delete_bus_objects, env};

pub struct Fixture {
    bus: Arc<dyn EventBus>,
    rabbit: Option<(Shutdown, String)>,
}

impl Deref for Fixture {
    type Target = dyn EventBus;
    fn deref(&self) -> &Self::Target {
        &*self.bus
    }
}

impl Fixture {
    async fn cleanup(self) {
        if let Some((shutdown, prefix)) = self.rabbit {
            shutdown.connections.cancel();
            shutdown.connection_tasks.close();
            shutdown.connection_tasks.wait().await;
            delete_bus_objects(&prefix).await;
        }
    }
}

const DELIVERY_LIMIT: u32 = 5;

async fn rabbitmq() -> Fixture {
    rabbitmq_with(QueueType::Quorum).await
}

async fn rabbitmq_with(queue_type: QueueType) -> Fixture {
    let prefix = format!("t-conf-{}-", uuid::Uuid::new_v4().simple());
    let shutdown = Shutdown::new(std::env::temp_dir().join("contoso-conformance-no-drain"));
    let topology = Topology { prefix: prefix.clone(), delivery_limit: DELIVERY_LIMIT, queue_type };
    let bus = RabbitBus::start(Secret::new(env::amqp_url()), topology, "contoso-conformance", &shutdown);
    tokio::time::timeout(Duration::from_secs(10), bus.connected()).await.expect("RabbitMQ reachable at TEST_AMQP_URL").unwrap();
    Fixture { bus, rabbit: Some((shutdown, prefix)) }
}

async fn memory() -> Fixture {
    let topology = Topology { prefix: String::new(), delivery_limit: DELIVERY_LIMIT, queue_type: QueueType::Quorum };
    Fixture { bus: Arc::new(MemoryBus::new(topology.broker_delivery_limit())), rabbit: None }
}

conformance!(rabbitmq, memory;
    events_reach_the_queues_bound_to_their_key,
    an_unroutable_key_is_refused,
    an_acked_delivery_is_gone,
    a_requeued_delivery_comes_back_counted,
    an_unsettled_delivery_comes_back_when_its_consumer_goes,
    a_dead_letter_keeps_its_body_and_reason,
    prefetch_bounds_unsettled_deliveries,
    a_message_that_keeps_crashing_its_consumer_is_dead_lettered_by_the_bus,
    a_batch_acked_together_stays_acked_and_never_takes_an_earlier_delivery_with_it,
    the_trace_context_travels_beside_the_body,
);

/// `--queue-type classic`: the queues are declared classic, behave as quorum queues do, and
/// count redeliveries in the process (the broker counts none there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queues_carry_events_requeues_and_dead_letters() {
    // Each case on queues of its own, as the conformance macro runs them.
    let fixture = rabbitmq_with(QueueType::Classic).await;
    events_reach_the_queues_bound_to_their_key(&*fixture).await;
    fixture.cleanup().await;
    let fixture = rabbitmq_with(QueueType::Classic).await;
    a_requeued_delivery_comes_back_counted(&*fixture).await;
    fixture.cleanup().await;
    let fixture = rabbitmq_with(QueueType::Classic).await;
    a_dead_letter_keeps_its_body_and_reason(&*fixture).await;
    fixture.cleanup().await;
    // The broker counts nothing on a classic queue: the process counts what it sees again.
    let fixture = rabbitmq_with(QueueType::Classic).await;
    publish(&*fixture, &[event("order.accepted", "again and again")]).await;
    let mut stream = fixture.consume(Queue::OrderProcess, 4).await.unwrap();
    for expected in 0..3 {
        let delivery = next(&mut stream).await;
        assert_eq!(delivery.delivery_count, expected);
        delivery.requeue().await.unwrap();
    }
    drop(stream);
    fixture.cleanup().await;
    let fixture = rabbitmq_with(QueueType::Classic).await;
    // Declared as classic: the broker accepts the same queue declared again as classic, and
    // refuses it as a quorum queue.
    let prefix = &fixture.rabbit.as_ref().unwrap().1;
    let conn = lapin::Connection::connect(&env::amqp_url(), lapin::ConnectionProperties::default()).await.unwrap();
    let declare = |kind: &str, channel: lapin::Channel| {
        let mut args = lapin::types::FieldTable::default();
        let text = |s: &str| lapin::types::AMQPValue::LongString(s.into());
        args.insert("x-queue-type".into(), text(kind));
        if kind == "quorum" {
            args.insert("x-delivery-limit".into(), lapin::types::AMQPValue::LongInt(DELIVERY_LIMIT as i32 + 5));
        }
        args.insert("x-dead-letter-exchange".into(), text(&format!("{prefix}contoso.orders.dead-letter")));
        args.insert("x-dead-letter-routing-key".into(), text(&format!("{prefix}contoso.order-process")));
        let opts = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
        async move { channel.queue_declare(format!("{prefix}contoso.order-process").into(), opts, args).await }
    };
    declare("classic", conn.create_channel().await.unwrap()).await.expect("the same classic queue");
    let err = declare("quorum", conn.create_channel().await.unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}");
    let _ = conn.close(200, "done".into()).await;
    fixture.cleanup().await;
}

fn event(routing_key: &str, body: &str) -> Outgoing {
    Outgoing {
        event_id: uuid::Uuid::new_v4(),
        routing_key: routing_key.to_owned(),
        payload: Bytes::from(body.to_owned()),
        traceparent: None,
    }
}

async fn publish(bus: &dyn EventBus, events: &[Outgoing]) {
    for res in bus.publish(events).await {
        res.expect("confirmed");
    }
}

async fn next(stream: &mut BoxStream<'static, Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("a delivery within 10 s").expect("the stream goes on")
}

/// Whether anything arrives within `window`: absence cannot be awaited, only bounded.
async fn nothing_within(stream: &mut BoxStream<'static, Delivery>, window: Duration) -> bool {
    tokio::time::timeout(window, stream.next()).await.is_err()
}

async fn events_reach_the_queues_bound_to_their_key(bus: &dyn EventBus) {
    let accepted = event("order.accepted", "a");
    let failed = event("order.failed", "f");
    publish(bus, &[accepted.clone(), event("order.processed", "p"), failed.clone()]).await;
    let mut process = bus.consume(Queue::OrderProcess, 10).await.unwrap();
    let d = next(&mut process).await;
    assert_eq!((d.body.as_ref(), d.message_id.as_deref(), d.delivery_count), (&b"a"[..], Some(&*accepted.event_id.to_string()), 0));
    d.ack().await.unwrap();
    let mut notify = bus.consume(Queue::OrderNotification, 10).await.unwrap();
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let d = next(&mut notify).await;
        bodies.push(String::from_utf8(d.body.to_vec()).unwrap());
        d.ack().await.unwrap();
    }
    bodies.sort();
    assert_eq!(bodies, ["f", "p"], "order.processed and order.failed go to the notification queue");
    assert!(nothing_within(&mut process, Duration::from_millis(300)).await, "nothing else went to the process queue");
}

async fn the_trace_context_travels_beside_the_body(bus: &dyn EventBus) {
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let traced = Outgoing { traceparent: Some(traceparent.into()), ..event("order.accepted", "traced") };
    publish(bus, &[traced, event("order.accepted", "untraced")]).await;
    let mut process = bus.consume(Queue::OrderProcess, 10).await.unwrap();
    for (body, expected) in [(&b"traced"[..], Some(traceparent)), (&b"untraced"[..], None)] {
        let d = next(&mut process).await;
        assert_eq!((d.body.as_ref(), d.traceparent.as_deref()), (body, expected));
        d.ack().await.unwrap();
    }
}

async fn an_unroutable_key_is_refused(bus: &dyn EventBus) {
    let results = bus.publish(&[event("order.unknown", "x"), event("order.accepted", "y")]).await;
    assert!(matches!(results[0], Err(BusError::Refused(_))), "{:?}", results[0]);
    assert!(results[1].is_ok(), "one refusal does not fail the batch");
}

async fn an_acked_delivery_is_gone(bus: &dyn EventBus) {
    publish(bus, &[event("order.accepted", "once")]).await;
    let mut stream = bus.consume(Queue::OrderProcess, 4).await.unwrap();
    next(&mut stream).await.ack().await.unwrap();
    drop(stream);
    let mut again = bus.consume(Queue::OrderProcess, 4).await.unwrap();
    assert!(nothing_within(&mut again, Duration::from_millis(500)).await, "an acked message is never redelivered");
}

async fn a_requeued_delivery_comes_back_counted(bus: &dyn EventBus) {
    publish(bus, &[event("order.accepted", "retry")]).await;
    let mut stream = bus.consume(Queue::OrderProcess, 4).await.unwrap();
    let first = next(&mut stream).await;
    assert_eq!(first.delivery_count, 0);
    first.requeue().await.unwrap();
    let second = next(&mut stream).await;
    assert_eq!((second.body.as_ref(), second.delivery_count), (&b"retry"[..], 1));
    second.ack().await.unwrap();
}

async fn an_unsettled_delivery_comes_back_when_its_consumer_goes(bus: &dyn EventBus) {
    publish(bus, &[event("order.accepted", "crash")]).await;
    let mut stream = bus.consume(Queue::OrderProcess, 4).await.unwrap();
    let d = next(&mut stream).await;
    // The consumer "crashes": neither acks nor requeues.
    drop(d);
    drop(stream);
    let mut again = bus.consume(Queue::OrderProcess, 4).await.unwrap();
    let d = next(&mut again).await;
    assert_eq!(d.body.as_ref(), b"crash");
    assert!(d.delivery_count >= 1, "a redelivery is counted towards the limit");
    d.ack().await.unwrap();
}

async fn a_dead_letter_keeps_its_body_and_reason(bus: &dyn EventBus) {
    assert!(bus.take_dead_letter(Queue::OrderProcess).await.unwrap().is_none());
    publish(bus, &[event("order.accepted", "poison"), event("order.accepted", "fine")]).await;
    let mut stream = bus.consume(Queue::OrderProcess, 4).await.unwrap();
    next(&mut stream).await.dead_letter("not json").await.unwrap();
    let fine = next(&mut stream).await;
    assert_eq!(fine.body.as_ref(), b"fine", "a dead letter never blocks the queue");
    fine.ack().await.unwrap();
    let dead = crate::harness::eventually(Duration::from_secs(5), "the dead letter", || async {
        bus.take_dead_letter(Queue::OrderProcess).await.unwrap()
    })
    .await;
    assert_eq!((dead.body.as_ref(), dead.reason.as_deref()), (&b"poison"[..], Some("not json")));
    assert!(bus.take_dead_letter(Queue::OrderNotification).await.unwrap().is_none(), "dead letters stay with their queue");
}

async fn prefetch_bounds_unsettled_deliveries(bus: &dyn EventBus) {
    publish(bus, &[event("order.accepted", "1"), event("order.accepted", "2"), event("order.accepted", "3")]).await;
    let mut stream = bus.consume(Queue::OrderProcess, 2).await.unwrap();
    let a = next(&mut stream).await;
    let b = next(&mut stream).await;
    assert!(nothing_within(&mut stream, Duration::from_millis(500)).await, "a third delivery waits for a settlement");
    a.ack().await.unwrap();
    let c = next(&mut stream).await;
    assert_eq!(c.body.as_ref(), b"3");
    b.ack().await.unwrap();
    c.ack().await.unwrap();
}

async fn a_message_that_keeps_crashing_its_consumer_is_dead_lettered_by_the_bus(bus: &dyn EventBus) {
    publish(bus, &[event("order.accepted", "crasher")]).await;
    let limit = Topology { prefix: String::new(), delivery_limit: DELIVERY_LIMIT, queue_type: QueueType::Quorum }.broker_delivery_limit();
    let mut deliveries = 0;
    let dead = loop {
        if let Some(dead) = bus.take_dead_letter(Queue::OrderProcess).await.unwrap() {
            break dead;
        }
        assert!(deliveries <= limit + 1, "still delivered after {deliveries} crashes");
        let mut stream = bus.consume(Queue::OrderProcess, 1).await.unwrap();
        // A consumer that dies on this message: neither acked nor requeued, its channel gone.
        if let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
            deliveries += 1;
            drop(d);
        }
        drop(stream);
    };
    assert_eq!((dead.body.as_ref(), dead.reason.as_deref()), (&b"crasher"[..], Some(DELIVERY_LIMIT_REASON)));
    assert!(deliveries >= limit, "dead-lettered after {deliveries} deliveries, the limit is {limit}");
}

/// `ack_all` may settle a batch with one `multiple` ack: it must ack exactly the batch, never
/// a delivery before it that is still being handled, and those acks must hold when the
/// consumer goes.
async fn a_batch_acked_together_stays_acked_and_never_takes_an_earlier_delivery_with_it(bus: &dyn EventBus) {
    let bodies: Vec<String> = (1..=6).map(|i| format!("b{i}")).collect();
    let events: Vec<Outgoing> = bodies.iter().map(|b| event("order.accepted", b)).collect();
    publish(bus, &events).await;
    let mut stream = bus.consume(Queue::OrderProcess, 10).await.unwrap();
    let mut deliveries = Vec::new();
    for _ in 0..6 {
        deliveries.push(next(&mut stream).await);
    }
    let held = deliveries.remove(0);
    assert_eq!(held.body.as_ref(), b"b1");
    let requeued = deliveries.remove(2);
    // b2, b3 behind a delivery still in hand (b1); b4 requeued on its own; then b5, b6.
    let late = deliveries.split_off(2);
    bus.ack_all(deliveries).await.unwrap();
    requeued.requeue().await.unwrap();
    let again = next(&mut stream).await;
    assert_eq!(again.body.as_ref(), b"b4", "the requeued delivery comes back");
    bus.ack_all(late).await.unwrap();
    // The consumer "crashes" with b1 and the redelivered b4 in hand: only those come back.
    drop((held, again));
    drop(stream);
    let mut after = bus.consume(Queue::OrderProcess, 10).await.unwrap();
    let mut back = vec![next(&mut after).await, next(&mut after).await];
    back.sort_by(|a, b| a.body.cmp(&b.body));
    assert_eq!(back.iter().map(|d| d.body.as_ref()).collect::<Vec<_>>(), [&b"b1"[..], &b"b4"[..]]);
    assert!(nothing_within(&mut after, Duration::from_millis(500)).await, "acked deliveries never come back");
    // Nothing unsettled before them on this consumer: one `multiple` ack may take both.
    bus.ack_all(back).await.unwrap();
    drop(after);
    let mut last = bus.consume(Queue::OrderProcess, 10).await.unwrap();
    assert!(nothing_within(&mut last, Duration::from_millis(500)).await, "a batch acked together stays acked");
}
