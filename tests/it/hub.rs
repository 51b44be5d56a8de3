//! The hub from Rust, where the official client cannot go: a client that stops reading must not
//! delay anyone else and is closed once its queue is full. Messages enter through the real Redis
//! backplane, exactly as another notify process (or a .NET pod) would publish them.

use std::time::{Duration, Instant};

use contoso::{
    backplane::Channels,
    hub::{lifetime::envelope, protocol::HubMessage},
};
use deadpool_redis::redis;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{
    AppOptions, env, eventually, spawn_app, subscribed, unique_user,
    ws::{Ws, connect},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_delays_no_one_else() {
    let prefix = format!("t-{}-", uuid::Uuid::new_v4().simple());
    let app = spawn_app(AppOptions {
        roles: Some("notify"),
        extra_args: vec!["--send-queue".into(), "8".into(), "--channel-prefix".into(), prefix.clone()],
        ..Default::default()
    })
    .await;
    let user = unique_user("slow");
    let token = app.token(&user);
    let url = format!("ws://127.0.0.1:{}/hubs/order-status", app.port);
    let mut fast = connect(&url, &token).await;
    let mut slow = connect(&url, &token).await;
    // Both connections are registered once the user's channel is subscribed.
    let channels = Channels::new(&prefix, "Contoso.OrderNotification.Hubs.OrderStatusHub");
    let channel = channels.user(&user);
    subscribed(&channel).await;
    let mut redis = redis::Client::open(env::redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();

    // 400 messages of ~60 KiB (24 MB): far more than the slow client's socket buffers and queue
    // hold. The reading client gets each one before the next is sent: it never lags.
    let filler = "x".repeat(60 * 1024);
    let started = Instant::now();
    for i in 0..400 {
        let env = envelope(&HubMessage::push("Test", vec![json!({ "i": i, "filler": filler })]));
        let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(env.encode().as_ref()).query_async(&mut redis).await.unwrap();
        let marker = format!("\"i\":{i}}}");
        loop {
            match tokio::time::timeout(Duration::from_secs(5), fast.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains(&marker) => break,
                Ok(Some(Ok(_))) => {}
                other => panic!("the reading client stalled at message {i}: {other:?}"),
            }
        }
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(20), "400 deliveries to the reading client took {elapsed:?}");

    // The close is counted when the queue overflows, the disconnect (with its reason) once the
    // session has ended: both must show up.
    eventually(Duration::from_secs(10), "the slow client to be closed and its disconnect counted", || async {
        let m = app.get("/metrics", None).await.text().await.unwrap();
        let closed = m.lines().any(|l| l.starts_with("contoso_hub_queue_full_closes_total") && !l.ends_with(" 0"));
        let counted = m.lines().any(|l| l.starts_with("contoso_hub_disconnects_total") && l.contains("reason=\"queue-full\""));
        (closed && counted).then_some(())
    })
    .await;
    // The slow socket ends: reading it now drains what was buffered and then the close.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(msg)) = slow.next().await {
            if let Message::Close(_) = msg {
                break;
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the slow connection was closed by the server");
    drop(fast);
    app.stop().await;
}

/// Reads until the server's Close record; returns it and when it came.
async fn close_record(ws: &mut Ws) -> (String, Instant) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"type\":7") => return (t.as_str().to_owned(), Instant::now()),
            Ok(Some(Ok(_))) => {}
            other => panic!("no Close record from the draining server: {other:?}"),
        }
    }
}

/// `n` connections the server has registered: each has had an invocation answered (which
/// happens after registration, since registration precedes the read loop).
async fn registered_tabs(url: &str, token: &str, n: usize) -> Vec<Ws> {
    let mut tabs = Vec::new();
    for _ in 0..n {
        let mut ws = connect(url, token).await;
        ws.send(Message::text("{\"type\":1,\"invocationId\":\"1\",\"target\":\"GetCurrentStatus\",\"arguments\":[\"x\"]}\u{1e}"))
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => assert!(t.as_str().contains("\"type\":3"), "{t}"),
            other => panic!("no completion: {other:?}"),
        }
        tabs.push(ws);
    }
    tabs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_connection_with_a_reconnectable_close_within_the_shutdown_timeout() {
    // A spread longer than the shutdown timeout (5 s in the harness) is shortened to fit in it.
    let app =
        spawn_app(AppOptions { roles: Some("notify"), extra_args: vec!["--drain-spread".into(), "30".into()], ..Default::default() }).await;
    let token = app.token(&unique_user("leaving"));
    let url = format!("ws://127.0.0.1:{}/hubs/order-status", app.port);
    let mut tabs = registered_tabs(&url, &token, 4).await;
    let started = Instant::now();
    let stopping = tokio::spawn(app.stop());
    let mut closes = Vec::new();
    for tab in &mut tabs {
        closes.push(close_record(tab).await);
    }
    stopping.await.unwrap();
    for (record, _) in &closes {
        assert_eq!(record, "{\"type\":7,\"allowReconnect\":true}\u{1e}", "what ASP.NET sends when it shuts down");
    }
    let last = closes.iter().map(|(_, at)| *at).max().unwrap();
    assert!(
        last.duration_since(started) < Duration::from_secs(5),
        "spread within the shutdown timeout: {:?}",
        last.duration_since(started)
    );
    // The process exits after the last Close; on a loaded machine that takes a moment, so the
    // bound is the timeout plus a margin, still far below the 30 s spread asked for.
    assert!(started.elapsed() < Duration::from_secs(10), "stopped within the shutdown timeout: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_older_than_its_shutdown_timeout_still_drains_gracefully() {
    // The shutdown budget starts at SIGTERM: a pod that has been up for days drains like a new one.
    let app = spawn_app(AppOptions {
        roles: Some("notify"),
        shutdown_timeout: Some(2),
        extra_args: vec!["--drain-spread".into(), "1".into()],
        ..Default::default()
    })
    .await;
    let spawned = Instant::now();
    let token = app.token(&unique_user("veteran"));
    let url = format!("ws://127.0.0.1:{}/hubs/order-status", app.port);
    let mut tabs = registered_tabs(&url, &token, 2).await;
    // Outlive the 2 s shutdown timeout: only the clock matters here, there is nothing to await.
    tokio::time::sleep_until((spawned + Duration::from_millis(2500)).into()).await;
    let stopping = tokio::spawn(app.stop());
    for tab in &mut tabs {
        let (record, _) = close_record(tab).await;
        assert_eq!(record, "{\"type\":7,\"allowReconnect\":true}\u{1e}");
    }
    stopping.await.unwrap();
}

/// Waits for the next text frame that contains `needle`.
async fn text_with(ws: &mut Ws, needle: &str) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains(needle) => return t.as_str().to_owned(),
            Ok(Some(Ok(_))) => {}
            other => panic!("no frame with {needle}: {other:?}"),
        }
    }
}

/// The connection token a negotiate (version 1) at `app` hands the bearer of `token`.
async fn connection_token(app: &crate::harness::TestApp, token: &str) -> String {
    let negotiated: serde_json::Value = reqwest::Client::new()
        .post(app.url("/hubs/order-status/negotiate?negotiateVersion=1"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    negotiated["connectionToken"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_token_used_by_a_second_socket_replaces_the_first_and_removal_is_exact() {
    let prefix = format!("t-{}-", uuid::Uuid::new_v4().simple());
    let app =
        spawn_app(AppOptions { roles: Some("notify"), extra_args: vec!["--channel-prefix".into(), prefix.clone()], ..Default::default() })
            .await;
    let user = unique_user("twice");
    let token = app.token(&user);
    let url = format!("ws://127.0.0.1:{}/hubs/order-status?id={}", app.port, connection_token(&app, &token).await);
    let mut first = registered_tabs(&url, &token, 1).await.remove(0);
    let mut second = registered_tabs(&url, &token, 1).await.remove(0);
    // The server removes a connection before it writes the Close record: once the record is
    // here, the older socket's removal has run.
    let close = text_with(&mut first, "\"type\":7").await;
    assert!(close.contains("replaced") && !close.contains("allowReconnect"), "{close}");
    drop(first);

    // The older socket's end must not take the newer one off the registry: it still gets pushes.
    let channel = Channels::new(&prefix, "Contoso.OrderNotification.Hubs.OrderStatusHub").user(&user);
    let mut redis = redis::Client::open(env::redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    for i in 0..2 {
        let env = envelope(&HubMessage::push("Test", vec![json!({ "i": i })]));
        let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(env.encode().as_ref()).query_async(&mut redis).await.unwrap();
        text_with(&mut second, &format!("\"i\":{i}")).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_negotiate_secret_is_what_lets_another_process_accept_a_connection_token() {
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, http::HeaderValue};
    let notify = |args: Vec<String>| AppOptions { roles: Some("notify"), extra_args: args, ..Default::default() };
    let shared = || vec!["--negotiate-secret".to_owned(), "negotiate-secret-of-this-deployment".to_owned()];
    let first = spawn_app(notify(shared())).await;
    let second = spawn_app(AppOptions { share: Some(&first), ..notify(shared()) }).await;
    // Same JWT secret, no negotiate secret: it derives another key.
    let other = spawn_app(AppOptions { share: Some(&first), ..notify(Vec::new()) }).await;
    let token = first.token(&unique_user("negotiator"));
    let id = connection_token(&first, &token).await;
    let mut ws = connect(&format!("ws://127.0.0.1:{}/hubs/order-status?id={id}", second.port), &token).await;
    ws.send(Message::text("{\"type\":1,\"invocationId\":\"1\",\"target\":\"GetCurrentStatus\",\"arguments\":[\"x\"]}\u{1e}"))
        .await
        .unwrap();
    text_with(&mut ws, "\"type\":3").await;
    let mut request = format!("ws://127.0.0.1:{}/hubs/order-status?id={id}", other.port).into_client_request().unwrap();
    request.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(res)) => assert_eq!(res.status().as_u16(), 404, "a process with another key does not know the token"),
        other => panic!("another key accepted the token: {:?}", other.map(|_| "connected")),
    }
    drop(ws);
    other.stop().await;
    second.stop().await;
    first.stop().await;
}
