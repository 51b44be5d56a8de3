//! Role notify's consumer (issue: lean connections, the consumer path) against real services:
//! the deliveries of a batch are settled each by its own result. Good notifications reach the
//! user's tab, poison is dead-lettered alone with its reason, and an order whose
//! `order:map:*` key is gone is found in the database.

use std::time::Duration;

use deadpool_redis::redis;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{AppOptions, BusObserver, env, eventually, spawn_app, unique_user, ws::connect};

/// Reads the tab until an `OrderCompleted` for `id` arrives.
async fn completed(tab: &mut crate::harness::ws::Ws, id: &str) {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), tab.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("OrderCompleted") && t.as_str().contains(id) => return,
            Ok(Some(Ok(_))) => {}
            other => panic!("no OrderCompleted for {id}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_poison_and_a_forgotten_user_settles_each_delivery_by_its_own_result() {
    let app = spawn_app(AppOptions { roles: Some("accept,process,notify"), ..Default::default() }).await;
    let bus = BusObserver::start(&app.bus_prefix).await;
    let token = app.token(&unique_user("batch"));
    let mut tab = connect(&format!("ws://127.0.0.1:{}/hubs/order-status", app.port), &token).await;
    let body = json!({ "items": [{ "productId": "mug", "quantity": 1 }] });
    let id = app.place_orders(&token, &body, 1).await.remove(0);
    completed(&mut tab, &id).await;

    // Redis forgets the order's user; a second outcome event for it (a new event id) must
    // still reach the tab, through the database. Two poison messages travel with it.
    let mut redis = redis::Client::open(env::redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL").arg(format!("order:map:{id}")).query_async(&mut redis).await.unwrap();
    let again = json!({ "eventId": uuid::Uuid::now_v7(), "type": "order.processed", "correlationId": id, "orderId": "CS-1", "occurredAt": "2026-01-01T00:00:00Z" });
    let unknown = json!({ "eventId": uuid::Uuid::now_v7(), "type": "order.processed", "correlationId": uuid::Uuid::now_v7(), "orderId": "CS-2", "occurredAt": "2026-01-01T00:00:00Z" });
    let poison: [(Vec<u8>, &str); 2] = [(b"not json".to_vec(), "not an event"), (unknown.to_string().into_bytes(), "no order")];
    bus.publish("order.processed", &poison[0].0, None).await;
    bus.publish("order.processed", again.to_string().as_bytes(), None).await;
    bus.publish("order.processed", &poison[1].0, None).await;
    completed(&mut tab, &id).await;

    let letters = std::sync::Mutex::new(Vec::new());
    eventually(Duration::from_secs(10), "two dead letters", || async {
        let mut got = bus.dead_letters("contoso.order-notification").await;
        let mut letters = letters.lock().unwrap();
        letters.append(&mut got);
        (letters.len() >= 2).then_some(())
    })
    .await;
    let letters = letters.into_inner().unwrap();
    assert_eq!(letters.len(), 2, "only the poison is dead-lettered");
    for (body, why) in &poison {
        let letter =
            letters.iter().find(|l| &l.body == body).unwrap_or_else(|| panic!("{} not dead-lettered", String::from_utf8_lossy(body)));
        let reason = letter.reason.as_deref().unwrap_or_default();
        assert!(reason.contains(why), "reason {reason:?} should mention {why:?}");
    }
    app.stop().await;
}

/// The sum and count of the end-to-end latency histogram on the app's metrics page.
async fn latency_sum_and_count(app: &crate::harness::TestApp) -> (f64, f64) {
    let page = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |name: &str| page.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0);
    (value("contoso_notification_latency_seconds_sum "), value("contoso_notification_latency_seconds_count "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_write_to_a_tab_is_measured_from_the_orders_acceptance() {
    let app = spawn_app(AppOptions { roles: Some("accept,process,notify"), ..Default::default() }).await;
    let bus = BusObserver::start(&app.bus_prefix).await;
    let user = unique_user("latency");
    let token = app.token(&user);
    let tabs = [
        connect(&format!("ws://127.0.0.1:{}/hubs/order-status", app.port), &token).await,
        connect(&format!("ws://127.0.0.1:{}/hubs/order-status", app.port), &token).await,
    ];
    // An order accepted 40 s ago (its UUIDv7 id says when), whose outcome arrives now.
    let accepted = uuid::Timestamp::from_unix(uuid::NoContext, crate::harness::app::now() - 40, 0);
    let id = uuid::Uuid::new_v7(accepted);
    let mut redis = redis::Client::open(env::redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET").arg(format!("order:map:{id}")).arg(&user).arg("EX").arg(600).query_async(&mut redis).await.unwrap();
    let (sum_before, count_before) = latency_sum_and_count(&app).await;
    let event = json!({ "eventId": uuid::Uuid::now_v7(), "type": "order.processed", "correlationId": id, "orderId": "CS-7", "occurredAt": "2026-01-01T00:00:00Z" });
    bus.publish("order.processed", event.to_string().as_bytes(), None).await;
    for mut tab in tabs {
        completed(&mut tab, &id.to_string()).await;
    }
    // Other tests in this process add small latencies of their own, never a 40 s one.
    let (sum, count) = eventually(Duration::from_secs(5), "both writes measured", || async {
        let (sum, count) = latency_sum_and_count(&app).await;
        (sum - sum_before >= 80.0).then_some((sum, count))
    })
    .await;
    assert!(count - count_before >= 2.0, "one observation per tab");
    assert!(sum - sum_before < 80.0 + 30.0, "about 40 s per tab: {}", sum - sum_before);
    app.stop().await;
}
