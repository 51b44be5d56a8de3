//! Dependencies going away (CONTRACT §2): with RabbitMQ down orders are still accepted and
//! their events go out on its return, exactly once per outbox row; with PostgreSQL or Redis
//! down the API answers 503 with Retry-After and nothing is half-written anywhere.

use std::time::Duration;

use deadpool_redis::redis;
use serde_json::{Value, json};

use crate::harness::{AppOptions, BusObserver, ChaosProxy, env, eventually, spawn_app, unique_user};

fn body() -> Value {
    json!({ "items": [{ "productId": "filter", "quantity": 3 }] })
}

async fn not_ready_because(app: &crate::harness::TestApp, dependency: &str) {
    eventually(Duration::from_secs(10), "readiness to report the outage", || async {
        let (status, body) = app.ready_status().await;
        let reasons = body["reasons"].to_string();
        (status == 503 && reasons.contains(dependency)).then_some(())
    })
    .await;
}

/// `order:map:*` keys whose value names `user`: a SCAN of the shared Redis, values read with
/// one MGET per batch so a large keyspace stays quick.
async fn mapped_to(user: &str) -> Vec<String> {
    let mut conn = redis::Client::open(env::redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let mut cursor: u64 = 0;
    let mut found = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg("order:map:*").arg("COUNT").arg(5000).query_async(&mut conn).await.unwrap();
        if !keys.is_empty() {
            let owners: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await.unwrap();
            found.extend(keys.into_iter().zip(owners).filter(|(_, o)| o.as_deref() == Some(user)).map(|(k, _)| k));
        }
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_accepted_while_rabbitmq_is_down_are_announced_exactly_once_when_it_returns() {
    let proxy = ChaosProxy::start(env::host_port(&env::amqp_url())).await;
    let app =
        spawn_app(AppOptions { amqp_proxy: Some(&proxy), extra_args: crate::harness::unlimited_orders(), ..Default::default() }).await;
    let mut bus = BusObserver::start(&app.bus_prefix).await;
    let token = app.token(&unique_user("burst"));

    let before = app.post_order(&token, body(), None).await.json::<Value>().await.unwrap();
    let first = before["correlationId"].as_str().unwrap().to_owned();
    bus.wait_until(Duration::from_secs(10), "the event of the order placed before the outage", |seen| !seen.is_empty()).await;
    assert_eq!(bus.for_correlation(&first).len(), 1);
    eventually(Duration::from_secs(10), "its outbox row confirmed and removed", || async {
        (app.count("SELECT count(*) AS n FROM outbox").await == 0).then_some(())
    })
    .await;
    proxy.cut();
    not_ready_because(&app, "rabbitmq").await;

    let mut ids = vec![before["correlationId"].as_str().unwrap().to_owned()];
    for chunk in 0..5 {
        let answers = futures_util::future::join_all((0..10).map(|_| app.post_order(&token, body(), None))).await;
        for res in answers {
            assert_eq!(res.status(), 202, "accepted while the broker is down (chunk {chunk})");
            ids.push(res.json::<Value>().await.unwrap()["correlationId"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM outbox").await, 50, "events wait in the outbox");

    proxy.restore();
    bus.wait_until(Duration::from_secs(30), "all 51 events", |seen| {
        ids.iter().all(|id| seen.iter().any(|o| o.body["correlationId"] == id.as_str()))
    })
    .await;
    eventually(Duration::from_secs(10), "an empty outbox", || async {
        (app.count("SELECT count(*) AS n FROM outbox").await == 0).then_some(())
    })
    .await;
    bus.drain_for(Duration::from_millis(500)).await;
    let counts = bus.counts("order.accepted");
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "order {id} announced exactly once");
    }
    assert_eq!(counts.len(), ids.len());
    app.wait_ready().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_unreachable_the_api_answers_503_and_writes_nothing() {
    let proxy = ChaosProxy::start(env::host_port(&env::database_admin_url())).await;
    let app = spawn_app(AppOptions { db_proxy: Some(&proxy), ..Default::default() }).await;
    let mut bus = BusObserver::start(&app.bus_prefix).await;
    let user = unique_user("pgdown");
    let token = app.token(&user);

    proxy.cut();
    let res = app.post_order(&token, body(), None).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let problem: Value = res.json().await.unwrap();
    assert!(!problem["detail"].as_str().unwrap().contains("127.0.0.1"), "no internals leak: {problem}");
    not_ready_because(&app, "database").await;

    proxy.restore();
    app.wait_ready().await;
    assert!(mapped_to(&user).await.is_empty(), "nothing written to Redis");
    assert_eq!(app.count(&format!("SELECT count(*) AS n FROM orders WHERE user_id = '{user}'")).await, 0);
    bus.drain_for(Duration::from_millis(500)).await;
    assert!(bus.seen.is_empty(), "nothing published: {:?}", bus.seen);

    let ok = app.post_order(&token, body(), None).await;
    assert_eq!(ok.status(), 202, "serves again once the database is back");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_unreachable_the_order_is_rolled_back() {
    let proxy = ChaosProxy::start(env::host_port(&env::redis_url())).await;
    let app = spawn_app(AppOptions { redis_proxy: Some(&proxy), ..Default::default() }).await;
    let mut bus = BusObserver::start(&app.bus_prefix).await;
    let user = unique_user("redisdown");
    let token = app.token(&user);

    proxy.cut();
    let res = app.post_order(&token, body(), None).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    not_ready_because(&app, "redis").await;
    assert_eq!(app.count(&format!("SELECT count(*) AS n FROM orders WHERE user_id = '{user}'")).await, 0, "rolled back");
    assert_eq!(app.count("SELECT count(*) AS n FROM outbox").await, 0, "no event can exist without its map entry");
    bus.drain_for(Duration::from_millis(500)).await;
    assert!(bus.seen.is_empty());

    proxy.restore();
    app.wait_ready().await;
    assert_eq!(app.post_order(&token, body(), None).await.status(), 202);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backplane_subscription_that_goes_silent_is_noticed_renewed_and_clients_are_told_to_resume() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let proxy = ChaosProxy::start(env::host_port(&env::redis_url())).await;
    let prefix = format!("t-{}-", uuid::Uuid::new_v4().simple());
    let args = ["--channel-prefix", &prefix, "--backplane-check-interval-ms", "300"].map(String::from).to_vec();
    let app = spawn_app(AppOptions { roles: Some("notify"), redis_proxy: Some(&proxy), extra_args: args, ..Default::default() }).await;
    let user = unique_user("canary");
    let mut ws = crate::harness::ws::connect(&format!("ws://127.0.0.1:{}/hubs/order-status", app.port), &app.token(&user)).await;

    // The pub/sub connection stays open and carries nothing: only the canaries can tell.
    proxy.freeze();
    not_ready_because(&app, "canaries stopped coming back").await;
    let resume = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg
                && t.as_str().contains("\"target\":\"ResumeNeeded\"")
            {
                return;
            }
        }
        panic!("the connection ended without ResumeNeeded");
    })
    .await;
    assert!(resume.is_ok(), "the tab is told to resume after the subscription was renewed");
    eventually(Duration::from_secs(30), "readiness back once canaries return", || async {
        (app.ready_status().await.0 == 200).then_some(())
    })
    .await;
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(metrics.contains("contoso_backplane_canary_failures_total"), "the failure is counted");

    // Live delivery works again on the new subscription.
    let channel = contoso::backplane::Channels::new(&prefix, "Contoso.OrderNotification.Hubs.OrderStatusHub").user(&user);
    let mut redis = redis::Client::open(env::redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let env = contoso::hub::lifetime::envelope(&contoso::hub::protocol::HubMessage::push("Test", vec![json!({ "after": "renewal" })]));
    let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(env.encode().as_ref()).query_async(&mut redis).await.unwrap();
    let live = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg
                && t.as_str().contains("renewal")
            {
                return;
            }
        }
    })
    .await;
    assert!(live.is_ok(), "a notification published after the renewal arrives");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_with_every_dependency_down_gets_ready_when_they_return_and_migrates_once() {
    let pg = ChaosProxy::start(env::host_port(&env::database_admin_url())).await;
    let cache = ChaosProxy::start(env::host_port(&env::redis_url())).await;
    let amqp = ChaosProxy::start(env::host_port(&env::amqp_url())).await;
    for proxy in [&pg, &cache, &amqp] {
        proxy.cut();
    }
    let options = || AppOptions {
        roles: Some("accept,process,notify"),
        db_proxy: Some(&pg),
        redis_proxy: Some(&cache),
        amqp_proxy: Some(&amqp),
        no_wait_ready: true,
        extra_args: vec!["--process-delay-ms".into(), "0".into()],
        ..Default::default()
    };
    let first = spawn_app(options()).await;
    // A second pod of the same deployment, starting at the same time: both migrate when the
    // database comes back, and the migrations must run once.
    let second = spawn_app(AppOptions { share: Some(&first), ..options() }).await;
    for app in [&first, &second] {
        assert_eq!(app.get("/health/live", None).await.status(), 200, "live without any dependency");
        eventually(Duration::from_secs(15), "readiness naming every dependency", || async {
            let (status, body) = app.ready_status().await;
            let reasons = body["reasons"].to_string();
            (status == 503 && ["database", "redis", "rabbitmq", "backplane"].iter().all(|d| reasons.contains(d))).then_some(())
        })
        .await;
    }
    for proxy in [&pg, &cache, &amqp] {
        proxy.restore();
    }
    for app in [&first, &second] {
        eventually(Duration::from_secs(60), "ready once the dependencies are back", || async {
            (app.ready_status().await.0 == 200).then_some(())
        })
        .await;
    }
    let applied = first.count("SELECT count(*) AS n FROM __diesel_schema_migrations").await;
    let distinct = first.count("SELECT count(DISTINCT version) AS n FROM __diesel_schema_migrations").await;
    assert!(applied > 0 && applied == distinct, "each migration once: {applied} rows, {distinct} versions");
    // And the shop works.
    let token = first.token(&unique_user("cold"));
    let id = first.place_orders(&token, &json!({ "items": [{ "productId": "mug", "quantity": 1 }] }), 1).await.remove(0);
    eventually(Duration::from_secs(30), "the order processed", || async { (first.status_of(&id).await == "COMPLETED").then_some(()) })
        .await;
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_past_the_write_queue_get_503_with_retry_after_and_none_is_lost() {
    let proxy = ChaosProxy::start(env::host_port(&env::database_admin_url())).await;
    let app = spawn_app(AppOptions { db_proxy: Some(&proxy), extra_args: crate::harness::unlimited_orders(), ..Default::default() }).await;
    let user = unique_user("flood");
    let token = app.token(&user);
    // The database hangs: writers wait on it, and orders queue behind them (1,024 at most).
    proxy.stall();
    let started = std::time::Instant::now();
    let posts = (0..1300).map(|_| {
        let (app, token) = (&app, token.clone());
        async move {
            let res = app.post_order(&token, body(), None).await;
            let retry = res.headers().get("retry-after").is_some();
            (res.status().as_u16(), retry, started.elapsed())
        }
    });
    let answers = futures_util::future::join_all(posts);
    let release = async {
        // Those past the queue are answered while the database still hangs (2 s after they
        // queue up; the margin is for a loaded machine).
        tokio::time::sleep(Duration::from_secs(10)).await;
        proxy.cut();
        proxy.restore();
    };
    let (answers, ()) = tokio::time::timeout(Duration::from_secs(90), futures_util::future::join(answers, release))
        .await
        .expect("every POST answered once the database is back");
    let early: Vec<_> = answers.iter().filter(|(_, _, at)| *at < Duration::from_secs(10)).collect();
    assert!(early.len() >= 100, "{} answered while the database hung", early.len());
    assert!(early.iter().all(|(status, retry, _)| *status == 503 && *retry), "each an immediate 503 with Retry-After");
    let accepted = answers.iter().filter(|(status, _, _)| *status == 202).count() as i64;
    let stored = app.count(&format!("SELECT count(*) AS n FROM orders WHERE user_id = '{user}'")).await;
    assert_eq!(stored, accepted, "an order is stored exactly when it was answered 202");
    app.stop().await;
}
