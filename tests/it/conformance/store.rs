//! The store: PostgreSQL against the embedded SQLite file. Placing, replaying and reading
//! orders, the forward-only transitions of processing with their outbox rows, order numbers
//! that are never reused, and a relay that deletes only what the broker confirmed.

use std::ops::Deref;

use contoso::{
    domain::{CorrelationId, IdempotencyKey, NewOrder, NewOrderLine, OrderStatus, Quantity, UserId},
    store::{Idempotency, OutboxRow, PlaceOutcome, PlacedOrder, Store, StoreError},
};
use futures_util::FutureExt;

use super::conformance;
use crate::harness::{
    app::{create_database, drop_database, remove_sqlite_file},
    env, eventually, unique_user,
};

pub struct Fixture {
    store: Store,
    cleanup: Cleanup,
}

enum Cleanup {
    Database(String),
    File(std::path::PathBuf),
}

impl Deref for Fixture {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl Fixture {
    async fn cleanup(self) {
        drop(self.store);
        match self.cleanup {
            Cleanup::Database(name) => drop_database(&name).await,
            Cleanup::File(path) => remove_sqlite_file(&path.display().to_string()),
        }
    }
}

async fn postgres() -> Fixture {
    let name = create_database(&uuid::Uuid::new_v4().simple().to_string()).await;
    let store = Store::new(&env::database_url(&name), 4).unwrap();
    store.migrate().await.unwrap();
    Fixture { store, cleanup: Cleanup::Database(name) }
}

async fn sqlite() -> Fixture {
    let path = std::env::temp_dir().join(format!("contoso-conformance-{}.db", uuid::Uuid::new_v4().simple()));
    let store = Store::new(&format!("sqlite://{}", path.display()), 4).unwrap();
    assert!(store.is_embedded());
    store.migrate().await.unwrap();
    // Migrating twice is a no-op, as every process start does it.
    store.migrate().await.unwrap();
    Fixture { store, cleanup: Cleanup::File(path) }
}

conformance!(postgres, sqlite;
    the_catalogue_is_seeded,
    an_order_is_priced_and_belongs_to_its_user,
    an_idempotency_key_replays_the_first_answer,
    unknown_products_are_refused_and_nothing_is_written,
    a_failed_before_commit_rolls_the_order_back,
    orders_are_listed_newest_first,
    processing_completes_once_with_a_number_never_reused,
    a_batch_is_processed_like_its_orders_one_by_one,
    an_unavailable_product_fails_the_order_once,
    an_unknown_order_cannot_be_processed,
    the_relay_deletes_only_confirmed_rows,
    unfinished_orders_can_be_sent_to_processing_again,
    outcome_rows_carry_the_trace_they_were_given,
);

fn user() -> UserId {
    UserId::parse(&unique_user("store")).unwrap()
}

fn order(items: &[(&str, i64)]) -> NewOrder {
    NewOrder {
        lines: items.iter().map(|(p, q)| NewOrderLine { product_id: (*p).to_owned(), quantity: Quantity::parse(*q).unwrap() }).collect(),
    }
}

fn key(raw: &str, hash: &str) -> Option<Idempotency> {
    Some(Idempotency { key: IdempotencyKey::parse(raw).unwrap(), request_hash: hash.to_owned() })
}

fn no_hook() -> contoso::store::BeforeCommit {
    Box::new(|_| async { Ok(()) }.boxed())
}

/// One order through the batch calls of processing.
async fn begin(s: &Store, id: CorrelationId) -> Result<Option<contoso::store::Begun>, StoreError> {
    Ok(s.begin_processing_many(&[id]).await?.remove(&id))
}

async fn complete(s: &Store, id: CorrelationId, number: contoso::domain::OrderNumber) -> Result<bool, StoreError> {
    Ok(s.complete_many(&[(id, number, None)]).await?.contains(&id))
}

async fn place(s: &Store, user: &UserId, items: &[(&str, i64)]) -> PlacedOrder {
    match s.place_order(user, &order(items), None, no_hook()).await.unwrap() {
        PlaceOutcome::Created(placed) => placed,
        PlaceOutcome::Replayed { .. } => panic!("a new order without a key is never a replay"),
    }
}

/// Relays every outbox row as if the broker confirmed it, and returns them: what was
/// written since the last call.
async fn outbox(s: &Store) -> Vec<OutboxRow> {
    let (tx, rx) = std::sync::mpsc::channel();
    s.relay_outbox(
        1000,
        Box::new(move |rows: Vec<OutboxRow>| {
            let ids = rows.iter().map(|r| r.id).collect();
            tx.send(rows).unwrap();
            async { ids }.boxed()
        }),
    )
    .await
    .unwrap();
    rx.try_recv().unwrap_or_default()
}

async fn the_catalogue_is_seeded(s: &Store) {
    s.ping().await.unwrap();
    let products = s.products().await.unwrap();
    let ids: Vec<_> = products.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["espresso", "filter", "grinder", "kettle", "mug", "discontinued"], "by id, the one that always fails last");
    let mug = products.iter().find(|p| p.id == "mug").unwrap();
    assert_eq!((mug.price_cents, mug.currency.as_str(), mug.available), (990, "EUR", true));
    assert!(!products.iter().find(|p| p.id == "discontinued").unwrap().available);
}

async fn an_order_is_priced_and_belongs_to_its_user(s: &Store) {
    let (alice, bob) = (user(), user());
    let placed = place(s, &alice, &[("mug", 2), ("filter", 1)]).await;
    assert_eq!((placed.total_cents, placed.currency.as_str(), placed.status), (2 * 990 + 450, "EUR", OrderStatus::Accepted));
    let view = s.order_for_user(&alice, placed.correlation_id).await.unwrap().expect("the owner sees it");
    assert_eq!((view.status, view.total_cents, view.order_id), (OrderStatus::Accepted, 2430, None));
    assert!(view.created_at.ends_with('Z') && view.created_at.len() == "2026-11-28T01:24:07.910Z".len(), "{}", view.created_at);
    assert!(s.order_for_user(&bob, placed.correlation_id).await.unwrap().is_none(), "someone else's order does not exist");
    let state = s.order_state(placed.correlation_id).await.unwrap().unwrap();
    assert_eq!((state.status, state.user_id), (OrderStatus::Accepted, Some(alice.clone())));
    let events = outbox(s).await;
    let mine: Vec<_> = events.iter().filter(|r| r.payload.contains(&placed.correlation_id.to_string())).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].routing_key, "order.accepted");
    assert!(!mine[0].payload.contains(alice.as_str()), "no user id (PII) in events");
}

async fn an_idempotency_key_replays_the_first_answer(s: &Store) {
    let carol = user();
    let first = s.place_order(&carol, &order(&[("mug", 1)]), key("checkout-1", "h1"), no_hook()).await.unwrap();
    let PlaceOutcome::Created(placed) = first else { panic!("first use creates") };
    let again = s.place_order(&carol, &order(&[("mug", 1)]), key("checkout-1", "h1"), no_hook()).await.unwrap();
    let PlaceOutcome::Replayed { correlation_id, body } = again else { panic!("second use replays") };
    assert_eq!(correlation_id, placed.correlation_id);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap(), serde_json::to_value(&placed).unwrap());
    let other = s.place_order(&carol, &order(&[("mug", 2)]), key("checkout-1", "h2"), no_hook()).await;
    assert!(matches!(other, Err(StoreError::IdempotencyMismatch)), "same key, different request");
    // Keys are per user: another user's identical key is a new order.
    let dave = s.place_order(&user(), &order(&[("mug", 1)]), key("checkout-1", "h1"), no_hook()).await.unwrap();
    assert!(matches!(dave, PlaceOutcome::Created(_)));
    assert_eq!(s.orders_for_user(&carol, 10).await.unwrap().len(), 1, "one order for two requests");
}

async fn unknown_products_are_refused_and_nothing_is_written(s: &Store) {
    let erin = user();
    let err = s.place_order(&erin, &order(&[("mug", 1), ("unicorn", 1)]), None, no_hook()).await.unwrap_err();
    assert!(matches!(err, StoreError::UnknownProduct { index: 1, ref product_id } if product_id == "unicorn"), "{err:?}");
    assert!(s.orders_for_user(&erin, 10).await.unwrap().is_empty());
    assert_eq!(s.outbox_backlog().await.unwrap(), 0);
}

async fn a_failed_before_commit_rolls_the_order_back(s: &Store) {
    let frank = user();
    let hook: contoso::store::BeforeCommit = Box::new(|_| async { Err("status cache unavailable".to_owned()) }.boxed());
    let err = s.place_order(&frank, &order(&[("mug", 1)]), key("k", "h"), hook).await.unwrap_err();
    assert!(matches!(err, StoreError::Aborted(ref m) if m == "status cache unavailable"), "{err:?}");
    assert!(s.orders_for_user(&frank, 10).await.unwrap().is_empty(), "no order");
    assert_eq!(s.outbox_backlog().await.unwrap(), 0, "no event");
    // Nor an idempotency record: the retry with the same key creates the order.
    let retry = s.place_order(&frank, &order(&[("mug", 1)]), key("k", "h"), no_hook()).await.unwrap();
    assert!(matches!(retry, PlaceOutcome::Created(_)));
}

async fn orders_are_listed_newest_first(s: &Store) {
    let grace = user();
    let mut placed = Vec::new();
    for _ in 0..3 {
        placed.push(place(s, &grace, &[("espresso", 1)]).await.correlation_id);
    }
    place(s, &user(), &[("espresso", 1)]).await;
    let listed: Vec<CorrelationId> = s.orders_for_user(&grace, 10).await.unwrap().into_iter().map(|o| o.correlation_id).collect();
    placed.reverse();
    assert_eq!(listed, placed);
    assert_eq!(s.orders_for_user(&grace, 2).await.unwrap().len(), 2, "the limit applies");
}

async fn processing_completes_once_with_a_number_never_reused(s: &Store) {
    let heidi = user();
    let a = place(s, &heidi, &[("mug", 1)]).await.correlation_id;
    let b = place(s, &heidi, &[("kettle", 1)]).await.correlation_id;
    outbox(s).await; // what accept wrote is not this test's concern
    let begun = begin(s, a).await.unwrap().unwrap();
    assert_eq!((begun.status, begun.unavailable.as_deref()), (OrderStatus::Accepted, None));
    assert_eq!(s.order_state(a).await.unwrap().unwrap().status, OrderStatus::Processing);
    let number = begun.order_number.expect("an order that can complete gets a number");
    // A redelivery before completion takes a new number; the first one is skipped, never reused.
    let again = begin(s, a).await.unwrap().unwrap();
    assert_eq!(again.status, OrderStatus::Processing);
    let second = again.order_number.unwrap();
    assert!(second.0 > number.0);
    assert!(complete(s, a, number).await.unwrap());
    assert!(!complete(s, a, second).await.unwrap(), "completing twice writes nothing");
    assert!(!s.fail(a, "late failure", None).await.unwrap(), "a final order never changes");
    let state = s.order_state(a).await.unwrap().unwrap();
    assert_eq!((state.status, state.order_number), (OrderStatus::Completed, Some(number)));
    let after = begin(s, a).await.unwrap().unwrap();
    assert_eq!((after.status, after.order_number), (OrderStatus::Completed, None), "no number for a completed order");
    let view = s.order_for_user(&heidi, a).await.unwrap().unwrap();
    assert_eq!(view.order_id, Some(number.to_string()));

    let b_number = begin(s, b).await.unwrap().unwrap().order_number.unwrap();
    assert!(b_number.0 > second.0, "numbers only grow");
    assert!(complete(s, b, b_number).await.unwrap());
    let events = outbox(s).await;
    assert_eq!(events.len(), 2, "one order.processed per order: {events:?}");
    assert!(events.iter().all(|e| e.routing_key == "order.processed"));
    assert!(events[0].payload.contains(&number.to_string()) && events[1].payload.contains(&b_number.to_string()));
}

async fn a_batch_is_processed_like_its_orders_one_by_one(s: &Store) {
    let judy = user();
    let a = place(s, &judy, &[("mug", 1)]).await.correlation_id;
    let b = place(s, &judy, &[("kettle", 2)]).await.correlation_id;
    let blocked = place(s, &judy, &[("mug", 1), ("discontinued", 1)]).await.correlation_id;
    let unknown = CorrelationId::new();
    outbox(s).await;
    // An unknown order is absent; a duplicate id changes nothing.
    let begun = s.begin_processing_many(&[a, unknown, b, a, blocked]).await.unwrap();
    assert_eq!(begun.len(), 3, "{begun:?}");
    assert!(!begun.contains_key(&unknown));
    for id in [a, b, blocked] {
        assert_eq!(s.order_state(id).await.unwrap().unwrap().status, OrderStatus::Processing);
    }
    assert_eq!(begun[&blocked].unavailable.as_deref(), Some("Limited edition tamper"));
    assert_eq!(begun[&blocked].order_number, None, "no number for an order that cannot complete");
    let (na, nb) = (begun[&a].order_number.unwrap(), begun[&b].order_number.unwrap());
    assert_ne!(na, nb);
    // The same order twice in one batch completes once, with one outbox row.
    let moved = s.complete_many(&[(a, na, None), (b, nb, None), (a, na, None)]).await.unwrap();
    assert_eq!(moved, [a, b].into_iter().collect());
    assert!(s.complete_many(&[(a, na, None), (b, nb, None)]).await.unwrap().is_empty(), "completing twice writes nothing");
    assert!(s.complete_many(&[]).await.unwrap().is_empty());
    let events = outbox(s).await;
    assert_eq!(events.len(), 2, "one order.processed per order: {events:?}");
    for (id, number) in [(a, na), (b, nb)] {
        let state = s.order_state(id).await.unwrap().unwrap();
        assert_eq!((state.status, state.order_number), (OrderStatus::Completed, Some(number)));
        assert!(events.iter().any(|e| e.payload.contains(&id.to_string()) && e.payload.contains(&number.to_string())));
    }
    let again = s.begin_processing_many(&[a, b]).await.unwrap();
    assert!(again.values().all(|b| b.status == OrderStatus::Completed && b.order_number.is_none()));
}

async fn an_unavailable_product_fails_the_order_once(s: &Store) {
    let ivan = user();
    let id = place(s, &ivan, &[("mug", 1), ("discontinued", 1)]).await.correlation_id;
    outbox(s).await;
    let begun = begin(s, id).await.unwrap().unwrap();
    assert_eq!(begun.unavailable.as_deref(), Some("Limited edition tamper"));
    assert_eq!(begun.order_number, None, "a failing order takes no number");
    assert!(s.fail(id, "Limited edition tamper is unavailable", None).await.unwrap());
    assert!(!s.fail(id, "again", None).await.unwrap());
    assert_eq!(s.order_state(id).await.unwrap().unwrap().status, OrderStatus::Failed);
    let events = outbox(s).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].routing_key, "order.failed");
    assert!(events[0].payload.contains("Limited edition tamper is unavailable"));
}

async fn outcome_rows_carry_the_trace_they_were_given(s: &Store) {
    let kim = user();
    let (a, b, c) = (place(s, &kim, &[("mug", 1)]).await, place(s, &kim, &[("mug", 1)]).await, place(s, &kim, &[("mug", 1)]).await);
    let (a, b, c) = (a.correlation_id, b.correlation_id, c.correlation_id);
    let placed = outbox(s).await;
    assert!(placed.iter().all(|r| r.traceparent.is_none()), "no trace where the request had none");
    let begun = s.begin_processing_many(&[a, b, c]).await.unwrap();
    let (ta, tc) = ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    let done = [(a, begun[&a].order_number.unwrap(), Some(ta.to_owned())), (b, begun[&b].order_number.unwrap(), None)];
    s.complete_many(&done).await.unwrap();
    assert!(s.fail(c, "x", Some(tc.to_owned())).await.unwrap());
    let rows = outbox(s).await;
    let trace_of = |id: CorrelationId| rows.iter().find(|r| r.payload.contains(&id.to_string())).map(|r| r.traceparent.clone());
    assert_eq!(trace_of(a), Some(Some(ta.to_owned())));
    assert_eq!(trace_of(b), Some(None));
    assert_eq!(trace_of(c), Some(Some(tc.to_owned())));
}

async fn an_unknown_order_cannot_be_processed(s: &Store) {
    let id = CorrelationId::new();
    assert!(s.order_state(id).await.unwrap().is_none());
    assert!(begin(s, id).await.unwrap().is_none());
    assert!(!s.fail(id, "x", None).await.unwrap());
}

async fn the_relay_deletes_only_confirmed_rows(s: &Store) {
    let judy = user();
    for _ in 0..3 {
        place(s, &judy, &[("filter", 1)]).await;
    }
    assert_eq!(s.outbox_backlog().await.unwrap(), 3);
    // The broker confirms the first and third only.
    let (taken, confirmed) = s
        .relay_outbox(
            10,
            Box::new(|rows: Vec<OutboxRow>| {
                let ids = vec![rows[0].id, rows[2].id];
                async move { ids }.boxed()
            }),
        )
        .await
        .unwrap();
    assert_eq!((taken, confirmed), (3, 2));
    assert_eq!(s.outbox_backlog().await.unwrap(), 1, "the unconfirmed row stays for the next attempt");
    assert_eq!(outbox(s).await.len(), 1);
    assert_eq!(s.outbox_backlog().await.unwrap(), 0);
}

async fn unfinished_orders_can_be_sent_to_processing_again(s: &Store) {
    let kim = user();
    let done = place(s, &kim, &[("mug", 1)]).await.correlation_id;
    let waiting = place(s, &kim, &[("mug", 1)]).await.correlation_id;
    let number = begin(s, done).await.unwrap().unwrap().order_number.unwrap();
    assert!(complete(s, done, number).await.unwrap());
    outbox(s).await;
    assert_eq!(s.requeue_unfinished().await.unwrap(), 1, "only the order that is not final");
    let events = outbox(s).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].routing_key, "order.accepted");
    assert!(events[0].payload.contains(&waiting.to_string()));
}

/// PostgreSQL's group commit: orders placed together share transactions, and a failed
/// `before_commit` takes its whole batch back, never an order whose hook failed, never a
/// committed order without its hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_placed_together_commit_only_with_their_hooks() {
    let s = postgres().await;
    let kim = user();
    let hooked = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let calls = (0..50).map(|i| {
        let (s, kim, hooked) = (s.store.clone(), kim.clone(), hooked.clone());
        async move {
            let hook: contoso::store::BeforeCommit = Box::new(move |placed: PlacedOrder| {
                async move {
                    if i % 5 == 0 {
                        return Err(format!("hook {i} failed"));
                    }
                    hooked.lock().unwrap().insert(placed.correlation_id);
                    Ok(())
                }
                .boxed()
            });
            s.place_order(&kim, &order(&[("mug", 1)]), None, hook).await
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let hooked = hooked.lock().unwrap().clone();
    let mut created = std::collections::HashSet::new();
    for (i, res) in results.into_iter().enumerate() {
        match res {
            Ok(PlaceOutcome::Created(placed)) => {
                assert_ne!(i % 5, 0, "order {i} committed although its hook failed");
                assert!(hooked.contains(&placed.correlation_id), "order {i} committed without its hook");
                created.insert(placed.correlation_id);
            }
            Ok(other) => panic!("order {i}: {other:?}"),
            Err(StoreError::Aborted(why)) => assert!(why.starts_with("hook "), "{why}"),
            Err(err) => panic!("order {i}: {err}"),
        }
    }
    let stored: std::collections::HashSet<_> = s.orders_for_user(&kim, 100).await.unwrap().into_iter().map(|o| o.correlation_id).collect();
    assert_eq!(stored, created, "exactly the answered orders are stored");
    assert_eq!(outbox(&s).await.len(), created.len(), "one order.accepted per stored order");
    s.cleanup().await;
}

/// With every writer stuck (here: the orders table locked), orders queue up to a bound; past
/// it a placement waits two seconds and is refused, and the queued ones go through later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_beyond_the_writers_queue_are_refused_and_the_rest_go_through() {
    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    let s = postgres().await;
    let Cleanup::Database(name) = &s.cleanup else { unreachable!() };
    let mut locker = diesel_async::AsyncPgConnection::establish(&env::database_url(name)).await.unwrap();
    locker.batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let lee = user();
    let calls: Vec<_> = (0..1200)
        .map(|_| {
            let (s, lee) = (s.store.clone(), lee.clone());
            tokio::spawn(async move { s.place_order(&lee, &order(&[("mug", 1)]), None, no_hook()).await })
        })
        .collect();
    // Refusals come while the table is still locked: they do not wait for the writers.
    eventually(std::time::Duration::from_secs(10), "a refusal", || async { calls.iter().any(|c| c.is_finished()).then_some(()) }).await;
    locker.batch_execute("ROLLBACK").await.unwrap();
    let (mut created, mut refused) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(PlaceOutcome::Created(_)) => created += 1,
            Err(StoreError::Unavailable(why)) if why.contains("too many orders") => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    // At least what fit: a batch, one order waiting for the writer and 1,024 queued. (A placement
    // that started a little later may find room once the lock is gone, so no upper bound.)
    assert!(created > 1024, "{created} created");
    assert!(refused > 0);
    assert_eq!(created + refused, 1200);
    assert_eq!(s.orders_for_user(&lee, 2000).await.unwrap().len(), created);
    s.cleanup().await;
}
