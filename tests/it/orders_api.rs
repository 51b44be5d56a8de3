//! The order API of CONTRACT §2 against real PostgreSQL, Redis and RabbitMQ: the happy path
//! end to end, validation errors, idempotency and ownership.

use std::time::Duration;

use deadpool_redis::redis::{self, AsyncCommands};
use serde_json::{Value, json};

use crate::harness::{AppOptions, BusObserver, env, spawn_app, unique_user};

fn one_mug() -> Value {
    json!({ "items": [{ "productId": "mug", "quantity": 2 }] })
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(env::redis_url()).unwrap().get_multiplexed_async_connection().await.expect("redis reachable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_order_is_stored_cached_and_announced_without_the_user_id() {
    let app = spawn_app(AppOptions::default()).await;
    let mut bus = BusObserver::start(&app.bus_prefix).await;
    let user = unique_user("alice");
    let token = app.token(&user);

    let res = app
        .post_order(&token, json!({ "items": [{ "productId": "mug", "quantity": 2 }, { "productId": "espresso", "quantity": 1 }] }), None)
        .await;

    assert_eq!(res.status(), 202);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    let id = body["correlationId"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/orders/{id}"));
    assert_eq!(body["status"], "ACCEPTED");
    assert_eq!(body["totalCents"], 2 * 990 + 2490, "the server prices from the catalogue");
    assert_eq!(body["currency"], "EUR");

    let rows = app.count(&format!("SELECT count(*) AS n FROM orders WHERE correlation_id = '{id}' AND user_id = '{user}'")).await;
    assert_eq!(rows, 1);
    assert_eq!(app.count(&format!("SELECT count(*) AS n FROM order_lines WHERE correlation_id = '{id}'")).await, 2);

    let mut redis = redis_conn().await;
    let mapped: Option<String> = redis.get(format!("order:map:{id}")).await.unwrap();
    let status: Option<String> = redis.get(format!("order:status:{id}")).await.unwrap();
    assert_eq!(mapped.as_deref(), Some(user.as_str()));
    assert_eq!(status.as_deref(), Some("ACCEPTED"));
    for key in [format!("order:map:{id}"), format!("order:status:{id}")] {
        let ttl: i64 = redis.ttl(&key).await.unwrap();
        assert!(ttl > 86_000 && ttl <= 86_400, "{key} has ttl {ttl}");
    }

    bus.wait_until(Duration::from_secs(10), "order.accepted", |seen| seen.iter().any(|o| o.body["correlationId"] == id)).await;
    let events = bus.for_correlation(&id);
    assert_eq!(events.len(), 1);
    let event = events[0];
    assert_eq!(event.routing_key, "order.accepted");
    let mut keys: Vec<_> = event.body.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["correlationId", "eventId", "occurredAt", "type"]);
    assert_eq!(event.body["type"], "order.accepted");
    assert_eq!(event.message_id.as_deref(), event.body["eventId"].as_str(), "message_id is the eventId");
    assert_eq!(event.content_type.as_deref(), Some("application/json"));
    assert_eq!(event.delivery_mode, Some(2), "persistent");
    assert!(!event.body.to_string().contains(&user), "no PII on the bus");

    let view: Value = app.get(&location, Some(&token)).await.json().await.unwrap();
    assert_eq!(view["status"], "ACCEPTED");
    assert_eq!(view["orderId"], Value::Null);
    assert_eq!(view["totalCents"], 4470);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_orders_get_problem_details_naming_the_field() {
    let app = spawn_app(AppOptions::default()).await;
    let user = unique_user("val");
    let token = app.token(&user);
    let line = |q: i64| json!({ "productId": "mug", "quantity": q });
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({ "items": [{ "productId": "no-such", "quantity": 1 }] }), 422, "items[0].productId"),
        (json!({ "items": [line(1), line(0)] }), 422, "items[1].quantity"),
        (json!({ "items": [line(101)] }), 422, "items[0].quantity"),
        (json!({ "items": (0..51).map(|_| line(1)).collect::<Vec<_>>() }), 422, "items"),
        (json!({ "items": [] }), 422, "items"),
        (json!({}), 422, "items"),
        (json!({ "items": [{ "productId": "mug", "quantity": "two" }] }), 422, "items[0].quantity"),
    ];
    for (body, status, field) in cases {
        let res = app.post_order(&token, body.clone(), None).await;
        assert_eq!(res.status().as_u16(), status, "{body}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["status"], status);
        assert_eq!(problem["field"], field, "{body}: {problem}");
        assert!(problem["detail"].as_str().unwrap().contains(field), "{problem}");
        assert!(problem["title"].is_string() && problem["type"].is_string());
    }

    let not_json = app.http.post(app.url("/api/orders")).bearer_auth(&token).body("{\"items\": [").send().await.unwrap();
    assert_eq!(not_json.status(), 400);
    assert_eq!(not_json.headers()["content-type"], "application/problem+json");

    let huge = format!("{{\"items\":[{{\"productId\":\"{}\",\"quantity\":1}}]}}", "x".repeat(70 * 1024));
    let too_big = app.http.post(app.url("/api/orders")).bearer_auth(&token).body(huge).send().await.unwrap();
    assert_eq!(too_big.status(), 413);
    assert_eq!(too_big.headers()["content-type"], "application/problem+json");

    assert_eq!(app.count(&format!("SELECT count(*) AS n FROM orders WHERE user_id = '{user}'")).await, 0, "nothing was written");
    assert_eq!(app.count("SELECT count(*) AS n FROM outbox").await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_with_the_same_key_returns_the_first_answer_and_creates_nothing() {
    let app = spawn_app(AppOptions::default()).await;
    let user = unique_user("idem");
    let token = app.token(&user);

    let first = app.post_order(&token, one_mug(), Some("checkout-1")).await;
    assert_eq!(first.status(), 202);
    let first_location = first.headers()["location"].clone();
    let first_body: Value = first.json().await.unwrap();

    // Concurrent and sequential retries alike.
    let retries = futures_util::future::join_all((0..5).map(|_| app.post_order(&token, one_mug(), Some("checkout-1")))).await;
    for res in retries {
        assert_eq!(res.status(), 202);
        assert_eq!(res.headers()["location"], first_location);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body, first_body);
    }
    assert_eq!(app.count(&format!("SELECT count(*) AS n FROM orders WHERE user_id = '{user}'")).await, 1);

    let other_body = app.post_order(&token, json!({ "items": [{ "productId": "mug", "quantity": 3 }] }), Some("checkout-1")).await;
    assert_eq!(other_body.status(), 422);
    let problem: Value = other_body.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("Idempotency-Key"));

    // The same key from another user is another request.
    let bob = app.token(&unique_user("bob"));
    let bobs = app.post_order(&bob, one_mug(), Some("checkout-1")).await;
    assert_eq!(bobs.status(), 202);
    let bobs_body: Value = bobs.json().await.unwrap();
    assert_ne!(bobs_body["correlationId"], first_body["correlationId"]);

    assert_eq!(app.count("SELECT count(*) AS n FROM orders").await, 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_orders_share_transactions_and_each_gets_its_own_answer() {
    // The test apps' pool of 4 leaves one writer: orders that arrive together are written together.
    let app = spawn_app(AppOptions::default()).await;
    let mut bus = BusObserver::start(&app.bus_prefix).await;
    let (ann, ben) = (unique_user("group-ann"), unique_user("group-ben"));
    let (ann_token, ben_token) = (app.token(&ann), app.token(&ben));
    let unknown = json!({ "items": [{ "productId": "mug", "quantity": 1 }, { "productId": "no-such-thing", "quantity": 1 }] });
    let other = json!({ "items": [{ "productId": "kettle", "quantity": 1 }] });
    let mut requests = Vec::new();
    for i in 0..40 {
        let token = if i % 2 == 0 { &ann_token } else { &ben_token };
        requests.push(app.post_order(token, one_mug(), None));
    }
    for _ in 0..8 {
        requests.push(app.post_order(&ann_token, unknown.clone(), None));
    }
    // One key, one body, five times: one order. Another key with two bodies: the first wins.
    for _ in 0..5 {
        requests.push(app.post_order(&ben_token, one_mug(), Some("group-same")));
    }
    for i in 0..5 {
        requests.push(app.post_order(&ben_token, if i < 3 { one_mug() } else { other.clone() }, Some("group-mixed")));
    }
    let answers = futures_util::future::join_all(requests).await;
    let mut bodies = Vec::new();
    for res in answers {
        let status = res.status().as_u16();
        bodies.push((status, res.json::<Value>().await.unwrap()));
    }
    let created: std::collections::HashSet<String> =
        bodies[..40].iter().map(|(s, b)| (assert_eq!(*s, 202, "{b}"), b["correlationId"].as_str().unwrap().to_owned()).1).collect();
    assert_eq!(created.len(), 40, "forty orders, forty ids");
    for (status, problem) in &bodies[40..48] {
        assert_eq!(*status, 422);
        assert_eq!(problem["field"], "items[1].productId", "{problem}");
    }
    let same: Vec<_> = bodies[48..53].iter().map(|(s, b)| (assert_eq!(*s, 202), b["correlationId"].clone()).1).collect();
    assert!(same.iter().all(|id| *id == same[0]), "one key, one order: {same:?}");
    let mixed = &bodies[53..];
    let winners: std::collections::HashSet<_> = mixed.iter().filter(|(s, _)| *s == 202).map(|(_, b)| b["correlationId"].clone()).collect();
    let refused = mixed.iter().filter(|(s, _)| *s == 422).count();
    assert_eq!(winners.len(), 1, "the key's one order: {mixed:?}");
    assert!(refused == 2 || refused == 3, "the other body is refused: {mixed:?}");

    let users = format!("user_id IN ('{ann}', '{ben}')");
    assert_eq!(app.count(&format!("SELECT count(*) AS n FROM orders WHERE {users}")).await, 42);
    assert_eq!(app.count("SELECT count(*) AS n FROM order_lines").await, 42, "no line of a refused order");
    bus.wait_until(Duration::from_secs(10), "42 order.accepted", |seen| {
        seen.iter().filter(|o| o.routing_key == "order.accepted").count() >= 42
    })
    .await;
    bus.drain_for(Duration::from_millis(300)).await;
    assert_eq!(bus.counts("order.accepted").len(), 42);
    assert!(bus.counts("order.accepted").values().all(|n| *n == 1));
    let mut redis = redis_conn().await;
    for id in &created {
        let owner: Option<String> = redis.get(format!("order:map:{id}")).await.unwrap();
        assert!(owner == Some(ann.clone()) || owner == Some(ben.clone()), "{id}: {owner:?}");
    }
    // Orders of one transaction share its start time: fewer times than orders means shared commits.
    let times = app.count(&format!("SELECT count(DISTINCT created_at) AS n FROM orders WHERE {users}")).await;
    assert!(times < 42, "{times} transactions for 42 orders: nothing was grouped");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_order_is_not_found_and_lists_are_private() {
    let app = spawn_app(AppOptions::default()).await;
    let alice = app.token(&unique_user("alice"));
    let bob = app.token(&unique_user("bob"));
    let res = app.post_order(&alice, one_mug(), None).await;
    let id = res.json::<Value>().await.unwrap()["correlationId"].as_str().unwrap().to_owned();
    let second = app.post_order(&alice, one_mug(), None).await.json::<Value>().await.unwrap();

    let as_bob = app.get(&format!("/api/orders/{id}"), Some(&bob)).await;
    assert_eq!(as_bob.status(), 404);
    let unknown = app.get(&format!("/api/orders/{}", uuid::Uuid::now_v7()), Some(&alice)).await;
    assert_eq!(unknown.status(), 404);
    let as_bob_body: Value = as_bob.json().await.unwrap();
    let unknown_body: Value = unknown.json().await.unwrap();
    assert_eq!(as_bob_body, unknown_body, "someone else's order looks exactly like a missing one");
    assert_eq!(app.get("/api/orders/not-a-uuid", Some(&alice)).await.status(), 404);

    let bobs: Vec<Value> = app.get("/api/orders", Some(&bob)).await.json().await.unwrap();
    assert!(bobs.is_empty());
    let alices: Vec<Value> = app.get("/api/orders", Some(&alice)).await.json().await.unwrap();
    assert_eq!(alices.len(), 2);
    assert_eq!(alices[0]["correlationId"], second["correlationId"], "newest first");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_openapi_metrics_and_unknown_routes() {
    let app = spawn_app(AppOptions::default()).await;
    let products: Vec<Value> = app.get("/api/products", None).await.json().await.unwrap();
    assert!(products.len() >= 5);
    let mug = products.iter().find(|p| p["id"] == "mug").unwrap();
    assert_eq!(mug["priceCents"], 990);
    assert_eq!(mug["currency"], "EUR");
    assert_eq!(mug.as_object().unwrap().len(), 5, "exactly id, name, priceCents, currency, available");
    assert_eq!(mug["available"], true);
    // The product that always fails at processing comes last, so a first order is not a failure.
    let last = products.last().unwrap();
    assert_eq!((last["id"].as_str(), last["available"].as_bool()), (Some("discontinued"), Some(false)));
    assert!(products[..products.len() - 1].iter().all(|p| p["available"] == true));

    let spec: Value = app.get("/api/openapi.json", None).await.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with('3'));
    assert!(spec["paths"]["/api/orders"]["post"].is_object());
    assert!(spec["paths"]["/api/orders/{correlationId}"]["get"].is_object());

    // What the metrics count is checked on a process of its own (lifecycle.rs): here every
    // test's apps share one recorder.
    let missing = app.get("/nope", None).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");
    let wrong_method = app.http.delete(app.url("/api/orders")).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["content-type"], "application/problem+json");
    // Without --dev-auth the token route does not exist.
    let dev = app.http.post(app.url("/api/dev/token")).json(&json!({ "userId": "x" })).send().await.unwrap();
    assert_eq!(dev.status(), 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_the_order_rate_gets_429_with_retry_after_and_nothing_is_created() {
    let app = spawn_app(AppOptions { extra_args: vec!["--orders-per-second-per-user".into(), "1".into()], ..Default::default() }).await;
    let (eager, calm) = (unique_user("eager"), unique_user("calm"));
    let token = app.token(&eager);
    // A burst of four passes at 1/s; a burst of eight leaves at least three refused.
    let answers = futures_util::future::join_all((0..8).map(|_| app.post_order(&token, one_mug(), None))).await;
    let mut accepted = 0;
    let mut refused = 0;
    for res in answers {
        match res.status().as_u16() {
            202 => accepted += 1,
            429 => {
                refused += 1;
                assert!(res.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
                assert_eq!(res.headers()["content-type"], "application/problem+json");
                let problem: Value = res.json().await.unwrap();
                assert_eq!(problem["status"], 429);
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused >= 3 && accepted >= 4, "{accepted} accepted, {refused} refused");
    let stored = app.count(&format!("SELECT count(*) AS n FROM orders WHERE user_id = '{eager}'")).await;
    assert_eq!(stored, accepted, "a refused order leaves nothing behind");
    assert_eq!(app.post_order(&app.token(&calm), one_mug(), None).await.status(), 202, "another user is not limited");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_408_and_the_server_goes_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app(AppOptions { extra_args: vec!["--request-body-timeout-ms".into(), "500".into()], ..Default::default() }).await;
    let token = app.token(&unique_user("slowpoke"));
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let head = format!(
        "POST /api/orders HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"items\""
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // The server answers and closes: read to the end (bounded).
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await.expect("an answer, then the close").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert_eq!(app.post_order(&token, one_mug(), None).await.status(), 202, "a whole body is still served");
    app.stop().await;
}
