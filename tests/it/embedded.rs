//! `--role all` with nothing but itself (CONTRACT §1): the SQLite file, the in-process bus,
//! status cache, notification log and backplane carry an order from POST to the tab's
//! notification, keep their promises (isolation, replay), and survive a restart.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{
    AppOptions, TestApp, eventually, spawn_app, unique_user,
    ws::{Ws, connect},
};

async fn embedded(share: Option<&TestApp>) -> TestApp {
    embedded_with_delay(share, 0).await
}

async fn embedded_with_delay(share: Option<&TestApp>, process_delay_ms: u64) -> TestApp {
    spawn_app(AppOptions {
        embedded: true,
        share,
        extra_args: vec!["--process-delay-ms".into(), process_delay_ms.to_string(), "--dev-auth".into()],
        ..Default::default()
    })
    .await
}

async fn tab(app: &TestApp, token: &str) -> Ws {
    connect(&format!("ws://127.0.0.1:{}/hubs/order-status", app.port), token).await
}

/// The hub messages of the next text frame (pings skipped).
async fn next_messages(ws: &mut Ws) -> Vec<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a frame within 10 s");
        let Some(Ok(Message::Text(text))) = frame else { panic!("unexpected frame {frame:?}") };
        let messages: Vec<Value> = text
            .split('\u{1e}')
            .filter(|s| !s.is_empty())
            .map(|s| serde_json::from_str(s).unwrap())
            .filter(|m: &Value| m["type"] != 6)
            .collect();
        if !messages.is_empty() {
            return messages;
        }
    }
}

/// Reads until an invocation of `target`, returning its argument.
async fn notification(ws: &mut Ws, target: &str) -> Value {
    loop {
        for m in next_messages(ws).await {
            if m["type"] == 1 && m["target"] == target {
                return m["arguments"][0].clone();
            }
        }
    }
}

async fn place(app: &TestApp, token: &str, product: &str) -> String {
    let res = app.post_order(token, json!({ "items": [{ "productId": product, "quantity": 1 }] }), None).await;
    assert_eq!(res.status(), 202);
    res.json::<Value>().await.unwrap()["correlationId"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_goes_from_post_to_every_tab_of_its_user_with_no_services() {
    let app = embedded(None).await;
    let (alice, bob) = (app.token(&unique_user("alice")), app.token(&unique_user("bob")));
    let (mut tab1, mut tab2, mut bobs_tab) = (tab(&app, &alice).await, tab(&app, &alice).await, tab(&app, &bob).await);

    let id = place(&app, &alice, "mug").await;
    for tab in [&mut tab1, &mut tab2] {
        let n = notification(tab, "OrderCompleted").await;
        assert_eq!((n["correlationId"].as_str(), n["status"].as_str()), (Some(id.as_str()), Some("COMPLETED")));
        assert!(n["orderId"].as_str().unwrap().starts_with("CS-"), "{n}");
    }
    let order: Value = app.get(&format!("/api/orders/{id}"), Some(&alice)).await.json().await.unwrap();
    assert_eq!(order["status"], "COMPLETED");
    assert_eq!(app.get(&format!("/api/orders/{id}"), Some(&bob)).await.status(), 404, "someone else's order does not exist");

    let failed = place(&app, &alice, "discontinued").await;
    let n = notification(&mut tab1, "OrderFailed").await;
    assert_eq!((n["correlationId"].as_str(), n["status"].as_str()), (Some(failed.as_str()), Some("FAILED")));

    // A tab that reconnects replays both, in order, with their ids.
    tab1.send(Message::text("{\"type\":1,\"invocationId\":\"1\",\"target\":\"ResumeNotifications\",\"arguments\":[null]}\u{1e}"))
        .await
        .unwrap();
    let mut replayed = Vec::new();
    let result = loop {
        let done = next_messages(&mut tab1).await.into_iter().find_map(|m| {
            if m["type"] == 1 {
                replayed.push(m["arguments"][0]["correlationId"].as_str().unwrap().to_owned());
            }
            (m["type"] == 3).then(|| m["result"].clone())
        });
        if let Some(result) = done {
            break result;
        }
    };
    assert_eq!(replayed, [id.clone(), failed.clone()]);
    assert_eq!(result, json!({ "replayed": 2, "complete": true }));

    // Bob's tab saw none of it: the next thing it gets is its own order.
    let bobs = place(&app, &bob, "filter").await;
    assert_eq!(notification(&mut bobs_tab, "OrderCompleted").await["correlationId"], json!(bobs));
    let ready: Value = app.get("/health/ready", None).await.json().await.unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_and_order_numbers_survive_a_restart() {
    let mut first = embedded(None).await;
    let user = unique_user("carol");
    let token = first.token(&user);
    let id = place(&first, &token, "kettle").await;
    let number = eventually(Duration::from_secs(10), "the order to complete", || async {
        let order: Value = first.get(&format!("/api/orders/{id}"), Some(&token)).await.json().await.unwrap();
        order["orderId"].as_str().map(str::to_owned)
    })
    .await;
    first.halt().await;

    let second = embedded(Some(&first)).await;
    let token = second.token(&user);
    let order: Value = second.get(&format!("/api/orders/{id}"), Some(&token)).await.json().await.unwrap();
    assert_eq!((order["status"].as_str(), order["orderId"].as_str()), (Some("COMPLETED"), Some(number.as_str())));
    let next = place(&second, &token, "mug").await;
    let next_number = eventually(Duration::from_secs(10), "the new order to complete", || async {
        let order: Value = second.get(&format!("/api/orders/{next}"), Some(&token)).await.json().await.unwrap();
        order["orderId"].as_str().map(str::to_owned)
    })
    .await;
    assert!(next_number > number, "{next_number} follows {number}: numbers are never reused");
    second.stop().await;
    first.stop().await; // removes the file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_still_in_the_in_process_bus_at_a_stop_is_finished_after_the_restart() {
    // Processing takes a minute here, so the order is still in the bus when the process stops.
    let mut first = embedded_with_delay(None, 60_000).await;
    let token = first.token(&unique_user("erin"));
    let id = place(&first, &token, "grinder").await;
    first.halt().await;

    let second = embedded(Some(&first)).await;
    let order = eventually(Duration::from_secs(10), "the order to complete after the restart", || async {
        let order: Value = second.get(&format!("/api/orders/{id}"), Some(&token)).await.json().await.unwrap();
        (order["status"] == "COMPLETED").then_some(order)
    })
    .await;
    assert!(order["orderId"].as_str().unwrap().starts_with("CS-"));
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_database_that_cannot_be_opened_is_reported_not_fatal() {
    // A bad path is not a crash: the store says why, and a process keeps retrying, not ready.
    let store = contoso::store::Store::new("sqlite:///no/such/directory/contoso.db", 1).unwrap();
    let err = store.migrate().await.unwrap_err();
    assert!(err.to_string().starts_with("database unavailable: cannot open /no/such/directory/contoso.db"), "{err}");
    assert!(store.ping().await.is_err());
    let empty = contoso::store::Store::new("sqlite://", 1).err().expect("an empty path is refused at start");
    assert!(empty.to_string().contains("sqlite:// needs a file path"), "{empty}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_catalogue_lists_the_failing_product_last_as_postgres_does() {
    let app = embedded(None).await;
    let products: Vec<Value> = app.get("/api/products", None).await.json().await.unwrap();
    let last = products.last().unwrap();
    assert_eq!((last["id"].as_str(), last["available"].as_bool()), (Some("discontinued"), Some(false)));
    assert!(products[..products.len() - 1].iter().all(|p| p["available"] == true));
    app.stop().await;
}
