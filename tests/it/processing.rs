//! Role process (issue: process role) against real services: the happy path, the business
//! failure, idempotency under duplicates and a crash after commit, poison messages, and
//! broker and database outages with several competing processors.

use std::{
    collections::HashSet,
    process::{Command, Stdio},
    time::Duration,
};

use deadpool_redis::redis::{self, AsyncCommands};
use serde_json::{Value, json};

use crate::harness::{AppOptions, BusObserver, ChaosProxy, TestApp, env, eventually, spawn_app, unique_user};

fn mugs() -> Value {
    json!({ "items": [{ "productId": "mug", "quantity": 1 }] })
}

fn fast() -> Vec<String> {
    let mut args = vec!["--process-delay-ms".into(), "0".into()];
    args.extend(crate::harness::unlimited_orders());
    args
}

async fn wait_all_final(app: &TestApp, ids: &[String], timeout: Duration) {
    eventually(timeout, "every order to reach a final status", || async {
        for id in ids {
            let s = app.status_of(id).await;
            if s != "COMPLETED" && s != "FAILED" {
                return None;
            }
        }
        Some(())
    })
    .await;
}

async fn redis_status(id: &str) -> Option<String> {
    let mut conn = redis::Client::open(env::redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    conn.get(format!("order:status:{id}")).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_order_is_completed_with_one_order_number_and_one_event() {
    let app = spawn_app(AppOptions {
        roles: Some("accept,process"),
        extra_args: vec!["--process-delay-ms".into(), "50".into()],
        ..Default::default()
    })
    .await;
    let mut bus = BusObserver::start(&app.bus_prefix).await;
    let token = app.token(&unique_user("buyer"));
    let id = app.place_orders(&token, &mugs(), 1).await.remove(0);

    bus.wait_until(Duration::from_secs(15), "order.processed", |seen| {
        seen.iter().any(|o| o.routing_key == "order.processed" && o.body["correlationId"] == id.as_str())
    })
    .await;
    let processed: Vec<_> = bus.for_correlation(&id).into_iter().filter(|o| o.routing_key == "order.processed").cloned().collect();
    let order_id = processed[0].body["orderId"].as_str().unwrap().to_owned();
    assert!(order_id.len() == 9 && order_id.starts_with("CS-") && order_id[3..].chars().all(|c| c.is_ascii_digit()), "{order_id}");
    let mut keys: Vec<_> = processed[0].body.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["correlationId", "eventId", "occurredAt", "orderId", "type"]);

    assert_eq!(app.status_of(&id).await, "COMPLETED");
    eventually(Duration::from_secs(5), "redis status COMPLETED", || async {
        (redis_status(&id).await.as_deref() == Some("COMPLETED")).then_some(())
    })
    .await;
    let view: Value = app.get(&format!("/api/orders/{id}"), Some(&token)).await.json().await.unwrap();
    assert_eq!(view["status"], "COMPLETED");
    assert_eq!(view["orderId"], order_id.as_str());
    bus.drain_for(Duration::from_millis(300)).await;
    assert_eq!(bus.counts("order.processed").get(&id), Some(&1), "exactly one order.processed");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_product_fails_the_order_with_exactly_one_order_failed() {
    let app = spawn_app(AppOptions { roles: Some("accept,process"), extra_args: fast(), ..Default::default() }).await;
    let mut bus = BusObserver::start(&app.bus_prefix).await;
    let token = app.token(&unique_user("unlucky"));
    let body = json!({ "items": [{ "productId": "mug", "quantity": 1 }, { "productId": "discontinued", "quantity": 1 }] });
    let id = app.place_orders(&token, &body, 1).await.remove(0);

    bus.wait_until(Duration::from_secs(15), "order.failed", |seen| seen.iter().any(|o| o.routing_key == "order.failed")).await;
    bus.drain_for(Duration::from_millis(300)).await;
    assert_eq!(bus.counts("order.failed").get(&id), Some(&1));
    assert!(bus.counts("order.processed").is_empty());
    let failed = bus.for_correlation(&id).into_iter().find(|o| o.routing_key == "order.failed").unwrap().clone();
    assert!(failed.body["reason"].as_str().unwrap().contains("no longer available"), "{}", failed.body);
    assert_eq!(app.status_of(&id).await, "FAILED");
    eventually(Duration::from_secs(5), "redis status FAILED", || async {
        (redis_status(&id).await.as_deref() == Some("FAILED")).then_some(())
    })
    .await;
    let view: Value = app.get(&format!("/api/orders/{id}"), Some(&token)).await.json().await.unwrap();
    assert_eq!(view["orderId"], Value::Null);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_event_changes_nothing_twice() {
    let app = spawn_app(AppOptions { roles: Some("accept,process"), extra_args: fast(), ..Default::default() }).await;
    let mut bus = BusObserver::start(&app.bus_prefix).await;
    let token = app.token(&unique_user("dup"));
    let id = app.place_orders(&token, &mugs(), 1).await.remove(0);
    bus.wait_until(Duration::from_secs(15), "the first order.processed", |seen| seen.iter().any(|o| o.routing_key == "order.processed"))
        .await;
    let accepted = bus.for_correlation(&id).into_iter().find(|o| o.routing_key == "order.accepted").unwrap().clone();

    // The same event again, several times, as a redelivering broker or a buggy producer would.
    for _ in 0..5 {
        bus.publish("order.accepted", accepted.body.to_string().as_bytes(), accepted.message_id.as_deref()).await;
    }
    // A marker order placed after the duplicates: once it is done, the duplicates were consumed.
    let marker = app.place_orders(&token, &mugs(), 1).await.remove(0);
    bus.wait_until(Duration::from_secs(15), "the marker's order.processed", |seen| {
        seen.iter().any(|o| o.routing_key == "order.processed" && o.body["correlationId"] == marker.as_str())
    })
    .await;
    eventually(Duration::from_secs(10), "the process queue to drain", || async {
        (app.count("SELECT count(*) AS n FROM outbox").await == 0).then_some(())
    })
    .await;
    bus.drain_for(Duration::from_millis(500)).await;
    assert_eq!(bus.counts("order.processed").get(&id), Some(&1), "no second order.processed");
    assert_eq!(app.count(&format!("SELECT count(*) AS n FROM orders WHERE correlation_id = '{id}' AND order_number IS NOT NULL")).await, 1);
    assert_eq!(app.count("SELECT count(DISTINCT order_number) AS n FROM orders").await, 2, "two orders, two numbers");
    assert_eq!(app.status_of(&id).await, "COMPLETED");
    assert!(bus.dead_letters("contoso.order-process").await.is_empty(), "duplicates are not poison");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_with_a_reason_and_do_not_block_the_queue() {
    let app = spawn_app(AppOptions { roles: Some("accept,process"), extra_args: fast(), ..Default::default() }).await;
    let mut bus = BusObserver::start(&app.bus_prefix).await;
    let unknown = json!({ "eventId": uuid::Uuid::now_v7(), "type": "order.accepted", "correlationId": uuid::Uuid::now_v7(), "occurredAt": "2026-01-01T00:00:00Z" });
    let wrong_type = json!({ "eventId": uuid::Uuid::now_v7(), "type": "order.processed", "correlationId": uuid::Uuid::now_v7(), "orderId": "CS-1", "occurredAt": "2026-01-01T00:00:00Z" });
    let poison: Vec<(Vec<u8>, &str)> = vec![
        (b"this is not json".to_vec(), "not an event"),
        (br#"{"type":"order.accepted"}"#.to_vec(), "not an event"),
        (br#"{"eventId":"x","type":"order.exploded","correlationId":"y","occurredAt":"z"}"#.to_vec(), "not an event"),
        (wrong_type.to_string().into_bytes(), "does not belong"),
        (unknown.to_string().into_bytes(), "no order"),
    ];
    for (body, _) in &poison {
        bus.publish("order.accepted", body, None).await;
    }
    let token = app.token(&unique_user("after-poison"));
    let id = app.place_orders(&token, &mugs(), 1).await.remove(0);
    bus.wait_until(Duration::from_secs(15), "the good order to complete", |seen| {
        seen.iter().any(|o| o.routing_key == "order.processed" && o.body["correlationId"] == id.as_str())
    })
    .await;
    let letters = std::sync::Mutex::new(Vec::new());
    eventually(Duration::from_secs(10), "five dead letters", || async {
        let mut got = bus.dead_letters("contoso.order-process").await;
        let mut letters = letters.lock().unwrap();
        letters.append(&mut got);
        (letters.len() >= 5).then_some(())
    })
    .await;
    let letters = letters.into_inner().unwrap();
    assert_eq!(letters.len(), 5);
    for (body, why) in &poison {
        let letter =
            letters.iter().find(|l| &l.body == body).unwrap_or_else(|| panic!("{} not dead-lettered", String::from_utf8_lossy(body)));
        let reason = letter.reason.as_deref().unwrap_or_default();
        assert!(reason.contains(why), "reason {reason:?} should mention {why:?}");
    }
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(metrics.contains("contoso_events_dead_lettered_total{queue=\"contoso.order-process\",reason=\"malformed\"}"), "{metrics}");
    assert!(metrics.contains("reason=\"unknown-order\""));
    app.stop().await;
}

/// Places `completing` orders that can complete, then `failing` that cannot, for one user, and
/// waits until every `order.accepted` is on the bus; returns their ids in that order.
async fn queue_orders(accept: &TestApp, bus: &mut BusObserver, user: &str, completing: usize, failing: usize) -> Vec<String> {
    let token = accept.token(&unique_user(user));
    let mut ids = accept.place_orders(&token, &mugs(), completing).await;
    ids.extend(accept.place_orders(&token, &json!({ "items": [{ "productId": "discontinued", "quantity": 1 }] }), failing).await);
    bus.wait_until(Duration::from_secs(15), "every order.accepted", |seen| {
        seen.iter().filter(|o| o.routing_key == "order.accepted").count() == ids.len()
    })
    .await;
    ids
}

/// A value of a metric line `name{labels} value` in a Prometheus text page (0 when absent).
fn metric(page: &str, name_and_labels: &str) -> f64 {
    page.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_processed_in_batches_and_each_order_once() {
    // Orders (30 to complete, 3 to fail), two more copies of three of their events (two that
    // complete, one that fails) and a poison message queue up while no processor runs, so the
    // processor that starts finds a backlog and takes it in batches.
    let accept = spawn_app(AppOptions { roles: Some("accept"), ..Default::default() }).await;
    let mut bus = BusObserver::start(&accept.bus_prefix).await;
    let ids = queue_orders(&accept, &mut bus, "batch", 30, 3).await;
    for id in &ids[28..31] {
        let accepted = bus.for_correlation(id).into_iter().find(|o| o.routing_key == "order.accepted").unwrap().clone();
        for _ in 0..2 {
            bus.publish("order.accepted", accepted.body.to_string().as_bytes(), None).await;
        }
    }
    bus.publish("order.accepted", b"not an event either", None).await;

    // In a child process: the test binary's metrics are shared by the tests running beside it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut process = process_binary_with(&accept, None, "0", &format!("127.0.0.1:{port}"), &[]);
    wait_all_final(&accept, &ids, Duration::from_secs(30)).await;
    bus.wait_until(Duration::from_secs(15), "an outcome event per order", |seen| {
        ids.iter().all(|id| seen.iter().any(|o| o.routing_key != "order.accepted" && o.body["correlationId"] == id.as_str()))
    })
    .await;
    bus.drain_for(Duration::from_millis(500)).await;
    let processed = bus.counts("order.processed");
    let failed = bus.counts("order.failed");
    for id in &ids[..30] {
        assert_eq!((processed.get(id), failed.get(id)), (Some(&1), None), "{id}: one order.processed");
        assert_eq!(redis_status(id).await.as_deref(), Some("COMPLETED"));
    }
    for id in &ids[30..] {
        assert_eq!((processed.get(id), failed.get(id)), (None, Some(&1)), "{id}: one order.failed");
        assert_eq!(redis_status(id).await.as_deref(), Some("FAILED"));
    }
    assert_eq!(accept.count("SELECT count(DISTINCT order_number) AS n FROM orders WHERE order_number IS NOT NULL").await, 30);
    let letters = bus.dead_letters("contoso.order-process").await;
    assert_eq!(letters.len(), 1, "only the poison message is dead-lettered: {letters:?}");
    assert_eq!(letters[0].body, b"not an event either");

    // The duplicates carry ids whose outcomes are already out: wait until they are settled too.
    let page = eventually(Duration::from_secs(20), "every delivery consumed and settled", || async {
        let page = accept.http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.ok()?.text().await.ok()?;
        let settled = metric(&page, "contoso_events_acked_total{queue=\"contoso.order-process\"}")
            + metric(&page, "contoso_events_dead_lettered_total{queue=\"contoso.order-process\",reason=\"malformed\"}");
        (settled >= 40.0).then_some(page)
    })
    .await;
    let consumed = metric(&page, "contoso_events_consumed_total{queue=\"contoso.order-process\"}");
    let batches = metric(&page, "contoso_consumer_batch_size_count{queue=\"contoso.order-process\"}");
    let acked = metric(&page, "contoso_events_acked_total{queue=\"contoso.order-process\"}");
    // A retry after a slow dependency would consume a message again, and is no failure here.
    assert!(consumed >= 40.0, "33 orders, 6 duplicates and one poison message: {consumed}");
    assert_eq!(acked, 39.0, "each order and duplicate acked once");
    assert!(batches >= 1.0 && batches < consumed, "{batches} batches for {consumed} deliveries: the backlog was not batched");
    let _ = Command::new("kill").args(["-TERM", &process.id().to_string()]).status();
    let _ = tokio::task::spawn_blocking(move || wait_child(&mut process, Duration::from_secs(30))).await;
    accept.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processors_competing_on_the_queue_process_each_order_once() {
    let accept =
        spawn_app(AppOptions { roles: Some("accept"), extra_args: crate::harness::unlimited_orders(), ..Default::default() }).await;
    let first = spawn_app(AppOptions { roles: Some("process"), share: Some(&accept), extra_args: fast(), ..Default::default() }).await;
    let second = spawn_app(AppOptions { roles: Some("process"), share: Some(&accept), extra_args: fast(), ..Default::default() }).await;
    let mut bus = BusObserver::start(&accept.bus_prefix).await;
    let token = accept.token(&unique_user("many"));
    let ids = accept.place_orders(&token, &mugs(), 60).await;
    wait_all_final(&accept, &ids, Duration::from_secs(30)).await;
    bus.wait_until(Duration::from_secs(15), "60 order.processed", |seen| {
        seen.iter().filter(|o| o.routing_key == "order.processed").count() >= 60
    })
    .await;
    bus.drain_for(Duration::from_millis(300)).await;
    let counts = bus.counts("order.processed");
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "{id}");
    }
    assert_eq!(accept.count("SELECT count(DISTINCT order_number) AS n FROM orders WHERE status = 'COMPLETED'").await, 60);
    first.stop().await;
    second.stop().await;
    accept.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_survive_a_broker_outage_in_the_middle_of_200_orders() {
    let proxy = ChaosProxy::start(env::host_port(&env::amqp_url())).await;
    let app =
        spawn_app(AppOptions { roles: Some("accept,process"), amqp_proxy: Some(&proxy), extra_args: fast(), ..Default::default() }).await;
    let mut bus = BusObserver::start(&app.bus_prefix).await;
    let token = app.token(&unique_user("storm"));
    let mut ids = app.place_orders(&token, &mugs(), 100).await;
    proxy.cut();
    ids.extend(app.place_orders(&token, &mugs(), 50).await);
    proxy.restore();
    ids.extend(app.place_orders(&token, &mugs(), 50).await);
    wait_all_final(&app, &ids, Duration::from_secs(60)).await;
    eventually(Duration::from_secs(30), "an empty outbox", || async {
        (app.count("SELECT count(*) AS n FROM outbox").await == 0).then_some(())
    })
    .await;
    bus.wait_until(Duration::from_secs(30), "order.processed for every order", |seen| {
        let done: HashSet<&str> =
            seen.iter().filter(|o| o.routing_key == "order.processed").filter_map(|o| o.body["correlationId"].as_str()).collect();
        ids.iter().all(|id| done.contains(id.as_str()))
    })
    .await;
    bus.drain_for(Duration::from_millis(500)).await;
    let events = bus.distinct_events("order.processed");
    for id in &ids {
        assert_eq!(app.status_of(id).await, "COMPLETED");
        assert_eq!(events.get(id).map(HashSet::len), Some(1), "{id}: one outbox row, one event id");
    }
    assert_eq!(app.count("SELECT count(DISTINCT order_number) AS n FROM orders").await, 200);
    assert!(bus.dead_letters("contoso.order-process").await.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_shorter_than_the_retry_budget_loses_and_dead_letters_nothing() {
    let accept = spawn_app(AppOptions { roles: Some("accept"), ..Default::default() }).await;
    let proxy = ChaosProxy::start(env::host_port(&env::database_admin_url())).await;
    // In a child process, so that its requeue counter is its own.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let db_url = env::with_host_port(&env::database_url(&accept.db_name), &proxy.addr);
    let mut process = process_binary_on(&accept, &db_url, None, "0", &format!("127.0.0.1:{port}"), &[]);
    let page = |path: &'static str| {
        let client = accept.http.clone();
        async move { client.get(format!("http://127.0.0.1:{port}{path}")).send().await.ok() }
    };
    eventually(Duration::from_secs(30), "the processor to be ready", || async {
        page("/health/ready").await.filter(|r| r.status() == 200)
    })
    .await;
    let bus = BusObserver::start(&accept.bus_prefix).await;
    let token = accept.token(&unique_user("pg-blip"));
    proxy.cut();
    let ids = accept.place_orders(&token, &mugs(), 20).await;
    // Let the processor meet the outage: readiness reports the database.
    eventually(Duration::from_secs(10), "the processor to notice", || async {
        let res = page("/health/ready").await?;
        let status = res.status();
        let body = res.text().await.ok()?;
        (status == 503 && body.contains("database")).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "a requeue, counted", || async {
        let text = page("/metrics").await?.text().await.ok()?;
        (metric(&text, "contoso_events_requeued_total{queue=\"contoso.order-process\"}") >= 1.0).then_some(())
    })
    .await;
    proxy.restore();
    wait_all_final(&accept, &ids, Duration::from_secs(60)).await;
    for id in &ids {
        assert_eq!(accept.status_of(id).await, "COMPLETED");
    }
    assert!(bus.dead_letters("contoso.order-process").await.is_empty(), "nothing dead-lettered");
    let _ = Command::new("kill").args(["-TERM", &process.id().to_string()]).status();
    let exited = tokio::task::spawn_blocking(move || wait_child(&mut process, Duration::from_secs(30))).await.unwrap();
    assert!(exited.success(), "{exited:?}");
    accept.stop().await;
}

/// A child's exit, bounded: one that never exits fails the test instead of hanging it.
fn wait_child(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `contoso --role process` as a process; FAILPOINTS are honoured (tests build with them).
fn process_binary(app: &TestApp, failpoints: Option<&str>) -> std::process::Child {
    process_binary_with(app, failpoints, "0", "127.0.0.1:0", &[])
}

/// A process role in a child process of its own (its metrics are its own, not the test
/// binary's), listening on `listen`, with `envs` added to its environment.
fn process_binary_with(
    app: &TestApp,
    failpoints: Option<&str>,
    delay_ms: &str,
    listen: &str,
    envs: &[(&str, &str)],
) -> std::process::Child {
    process_binary_on(app, &env::database_url(&app.db_name), failpoints, delay_ms, listen, envs)
}

/// `process_binary_with` on the database at `database_url` (a chaos proxy in front of it).
fn process_binary_on(
    app: &TestApp,
    database_url: &str,
    failpoints: Option<&str>,
    delay_ms: &str,
    listen: &str,
    envs: &[(&str, &str)],
) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_contoso"));
    cmd.args(["--role", "process", "--listen", listen, "--process-delay-ms", delay_ms, "--log-level", "warn"])
        .arg("--database-url")
        .arg(database_url)
        .arg("--redis-url")
        .arg(env::redis_url())
        .arg("--amqp-url")
        .arg(env::amqp_url())
        .args(["--bus-prefix", &app.bus_prefix])
        .arg("--drain-file")
        .arg(std::env::temp_dir().join(format!("drain-{}", uuid::Uuid::new_v4())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(fp) = failpoints {
        cmd.env("FAILPOINTS", fp);
    }
    cmd.envs(envs.iter().copied());
    cmd.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_pod_publishes_its_outcomes_without_waiting_for_its_outbox_poll() {
    // Accepted orders wait in the queue; then accept stops, so no other relay shares the outbox,
    // and a process pod that polls its outbox once a minute takes them.
    let mut accept = spawn_app(AppOptions { roles: Some("accept"), ..Default::default() }).await;
    let mut bus = BusObserver::start(&accept.bus_prefix).await;
    let ids = queue_orders(&accept, &mut bus, "wake", 2, 1).await;
    accept.halt().await;
    let mut process = process_binary_with(&accept, None, "0", "127.0.0.1:0", &[("CONTOSO_OUTBOX_POLL_MS", "60000")]);
    // Well within the minute: the commit woke the relay.
    bus.wait_until(Duration::from_secs(15), "two order.processed and one order.failed", |seen| {
        let outcome = |id: &String, key: &str| seen.iter().any(|o| o.routing_key == key && o.body["correlationId"] == id.as_str());
        outcome(&ids[0], "order.processed") && outcome(&ids[1], "order.processed") && outcome(&ids[2], "order.failed")
    })
    .await;
    let _ = Command::new("kill").args(["-TERM", &process.id().to_string()]).status();
    let _ = tokio::task::spawn_blocking(move || wait_child(&mut process, Duration::from_secs(30))).await;
    accept.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_ack_does_not_complete_an_order_twice() {
    let accept = spawn_app(AppOptions { roles: Some("accept"), ..Default::default() }).await;
    let mut bus = BusObserver::start(&accept.bus_prefix).await;
    let token = accept.token(&unique_user("crash"));
    let mut crashing = process_binary(&accept, Some("process-after-commit=return"));
    let id = accept.place_orders(&token, &mugs(), 1).await.remove(0);

    // The processor commits COMPLETED and the outbox row, then dies before acking.
    let status = tokio::task::spawn_blocking(move || wait_child(&mut crashing, Duration::from_secs(30))).await.unwrap();
    assert!(!status.success(), "the fail point aborted the process");
    assert_eq!(accept.status_of(&id).await, "COMPLETED");
    let number_before = accept.count(&format!("SELECT order_number AS n FROM orders WHERE correlation_id = '{id}'")).await;

    // A healthy processor gets the redelivery.
    let mut healthy = process_binary(&accept, None);
    let marker = accept.place_orders(&token, &mugs(), 1).await.remove(0);
    wait_all_final(&accept, std::slice::from_ref(&marker), Duration::from_secs(30)).await;
    bus.wait_until(Duration::from_secs(15), "both order.processed", |seen| {
        [&id, &marker].iter().all(|i| seen.iter().any(|o| o.routing_key == "order.processed" && o.body["correlationId"] == i.as_str()))
    })
    .await;
    bus.drain_for(Duration::from_millis(500)).await;
    assert_eq!(bus.counts("order.processed").get(&id), Some(&1), "no second order.processed after the redelivery");
    let number_after = accept.count(&format!("SELECT order_number AS n FROM orders WHERE correlation_id = '{id}'")).await;
    assert_eq!(number_before, number_after, "the order number did not change");
    let _ = Command::new("kill").args(["-TERM", &healthy.id().to_string()]).status();
    let _ = tokio::task::spawn_blocking(move || wait_child(&mut healthy, Duration::from_secs(30))).await;
    accept.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_processing_exits_zero_and_loses_no_order() {
    let accept = spawn_app(AppOptions { roles: Some("accept"), ..Default::default() }).await;
    let token = accept.token(&unique_user("term"));
    let mut slow = process_binary_with(&accept, None, "1000", "127.0.0.1:0", &[]);
    let ids = accept.place_orders(&token, &mugs(), 10).await;
    // Wait until the slow processor is working on them (PROCESSING in the database).
    eventually(Duration::from_secs(15), "orders in processing", || async {
        (accept.count("SELECT count(*) AS n FROM orders WHERE status <> 'ACCEPTED'").await > 0).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    assert!(Command::new("kill").args(["-TERM", &slow.id().to_string()]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || wait_child(&mut slow, Duration::from_secs(30))).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(25), "within the shutdown timeout");
    let mut healthy = process_binary(&accept, None);
    wait_all_final(&accept, &ids, Duration::from_secs(30)).await;
    for id in &ids {
        assert_eq!(accept.status_of(id).await, "COMPLETED");
    }
    let _ = Command::new("kill").args(["-TERM", &healthy.id().to_string()]).status();
    let _ = tokio::task::spawn_blocking(move || wait_child(&mut healthy, Duration::from_secs(30))).await;
    accept.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_longer_than_the_retry_budget_dead_letters_with_the_last_error() {
    // Queue arguments are fixed at declaration: every role of the deployment gets the same limit.
    let limit = || vec!["--delivery-limit".to_owned(), "2".to_owned()];
    let accept = spawn_app(AppOptions { roles: Some("accept"), extra_args: limit(), ..Default::default() }).await;
    let proxy = ChaosProxy::start(env::host_port(&env::database_admin_url())).await;
    // Two deliveries (backoff 200 ms, then 400 ms) and the message gives up.
    let process = spawn_app(AppOptions {
        roles: Some("process"),
        share: Some(&accept),
        db_proxy: Some(&proxy),
        extra_args: [vec!["--process-delay-ms".to_owned(), "0".to_owned()], limit()].concat(),
        ..Default::default()
    })
    .await;
    let bus = BusObserver::start(&accept.bus_prefix).await;
    proxy.cut();
    let id = accept.place_orders(&accept.token(&unique_user("gives-up")), &mugs(), 1).await.remove(0);
    let letters = eventually(Duration::from_secs(20), "the dead letter", || async {
        let letters = bus.dead_letters("contoso.order-process").await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    let body: Value = serde_json::from_slice(&letters[0].body).unwrap();
    assert_eq!(body["correlationId"], id.as_str());
    assert!(letters[0].reason.as_deref().unwrap_or_default().starts_with("failed 2 times, last error:"), "{:?}", letters[0].reason);
    let metrics = process.get("/metrics", None).await.text().await.unwrap();
    assert!(metrics.contains("reason=\"delivery-limit\""), "counted");
    proxy.restore();
    assert_eq!(accept.status_of(&id).await, "ACCEPTED", "nothing processed it behind our back");
    process.stop().await;
    accept.stop().await;
}
