//! What bounds a hub connection: the process's and the user's connection limits (answered
//! before the upgrade, the place given back when a tab leaves), a client that never sends
//! anything after its handshake, a token that expires while connected, and the invocation rate.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue};

use crate::harness::{
    AppOptions, TestApp, spawn_app, unique_user,
    ws::{Ws, connect},
};

async fn notify_app(args: &[&str]) -> TestApp {
    spawn_app(AppOptions { roles: Some("notify"), extra_args: args.iter().map(|a| a.to_string()).collect(), ..Default::default() }).await
}

fn hub_url(app: &TestApp) -> String {
    format!("ws://127.0.0.1:{}/hubs/order-status", app.port)
}

/// The answer to an upgrade the server refuses: status, Retry-After and the problem body.
async fn refusal(url: &str, token: &str) -> (u16, Option<String>, Value) {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(res)) => {
            let retry = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(res.headers().get("content-type").unwrap(), "application/problem+json");
            // tungstenite keeps the body only when it arrived with the head.
            let body = res.body().as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
            (res.status().as_u16(), retry, body)
        }
        other => panic!("the upgrade was not refused: {:?}", other.map(|_| "connected")),
    }
}

/// The next `n` hub records of type `kind` (a frame may carry several), within 10 s.
async fn records(ws: &mut Ws, kind: u64, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found = Vec::new();
    while found.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => found.extend(
                t.as_str()
                    .split('\u{1e}')
                    .filter(|p| !p.is_empty())
                    .map(|p| serde_json::from_str::<Value>(p).unwrap())
                    .filter(|v| v["type"] == kind),
            ),
            Ok(Some(Ok(_))) => {}
            other => panic!("{} of {n} records of type {kind}: {other:?}", found.len()),
        }
    }
    found
}

/// Sends a Ping every 500 ms `pings` times (a live client), then whether an invocation is still answered.
async fn answers_after_pinging(ws: &mut Ws, pings: usize) -> bool {
    for _ in 0..pings {
        ws.send(Message::text("{\"type\":6}\u{1e}")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ws.send(Message::text("{\"type\":1,\"invocationId\":\"1\",\"target\":\"GetCurrentStatus\",\"arguments\":[\"x\"]}\u{1e}"))
        .await
        .unwrap();
    record(ws, 3).await["invocationId"] == "1"
}

async fn record(ws: &mut Ws, kind: u64) -> Value {
    records(ws, kind, 1).await.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_answer_before_the_upgrade_and_a_closed_tab_gives_its_place_back() {
    let app = notify_app(&["--max-connections", "3", "--max-connections-per-user", "2"]).await;
    let url = hub_url(&app);
    let (ann, ben, cat) = (app.token(&unique_user("ann")), app.token(&unique_user("ben")), app.token(&unique_user("cat")));
    let ann_tabs = vec![connect(&url, &ann).await, connect(&url, &ann).await];

    let (status, retry, body) = refusal(&url, &ann).await;
    assert_eq!(status, 429, "{body}");
    assert!(retry.is_some(), "a 429 says when to retry");
    let ben_tab = connect(&url, &ben).await;
    let (status, retry, body) = refusal(&url, &cat).await;
    assert_eq!(status, 503, "the process is full: {body}");
    assert!(retry.is_some());
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    for limit in ["user", "process"] {
        let counted = metric(&metrics, &format!("contoso_hub_connections_refused_total{{limit=\"{limit}\"}}"));
        assert!(counted >= 1.0, "refusals by the {limit} limit are counted: {metrics}");
    }

    // A tab that leaves gives its place back, to its user and to the process.
    drop(ann_tabs);
    crate::harness::eventually(Duration::from_secs(10), "a place after ann's tabs left", || {
        let (url, cat) = (url.clone(), cat.clone());
        async move {
            let mut request = url.as_str().into_client_request().unwrap();
            request.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {cat}")).unwrap());
            tokio_tungstenite::connect_async(request).await.ok().map(|(ws, _)| ws)
        }
    })
    .await;
    drop(ben_tab);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_sends_after_its_handshake_is_timed_out_with_a_reconnectable_close() {
    let app = notify_app(&["--client-timeout-ms", "1500", "--keep-alive-interval-ms", "500"]).await;
    let mut silent = connect(&hub_url(&app), &app.token(&unique_user("silent"))).await;
    let started = Instant::now();
    // Only the server's Pings arrive, then its Close.
    let close = record(&mut silent, 7).await;
    assert_eq!(close, json!({ "type": 7, "error": "Connection closed with an error.", "allowReconnect": true }));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1000), "closed after {waited:?}, before the client timeout");

    // A client that sends its Pings is kept.
    let mut talking = connect(&hub_url(&app), &app.token(&unique_user("talking"))).await;
    assert!(answers_after_pinging(&mut talking, 6).await, "still open after twice the client timeout");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ends_when_its_token_expires_unless_that_is_turned_off() {
    let app = notify_app(&["--jwt-leeway", "0"]).await;
    let user = unique_user("expiring");
    let exp = || json!({ "sub": user, "exp": jsonwebtoken::get_current_timestamp() + 2 });
    let mut ws = connect(&hub_url(&app), &app.token_with(exp())).await;
    let started = Instant::now();
    let close = record(&mut ws, 7).await;
    assert_eq!(close["allowReconnect"], true, "the client may come back with a fresh token: {close}");
    assert!(started.elapsed() < Duration::from_secs(5), "closed at its expiry, not by a timeout");
    app.stop().await;

    let app = notify_app(&["--jwt-leeway", "0", "--close-on-token-expiry", "false", "--keep-alive-interval-ms", "500"]).await;
    let mut ws = connect(&hub_url(&app), &app.token_with(exp())).await;
    assert!(answers_after_pinging(&mut ws, 8).await, "open past its token's expiry when told so");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_over_the_rate_limit_complete_with_an_error_and_the_connection_stays() {
    let app = notify_app(&["--hub-invocations-per-second", "2"]).await;
    let mut ws = connect(&hub_url(&app), &app.token(&unique_user("eager"))).await;
    // A burst of twice the rate passes; past it, only what the rate refills meanwhile does
    // (invocations run one at a time, so a slow machine refills a little between them).
    let burst: String = (1..=10)
        .map(|i| format!("{{\"type\":1,\"invocationId\":\"{i}\",\"target\":\"GetCurrentStatus\",\"arguments\":[\"x\"]}}\u{1e}"))
        .collect();
    let sent = Instant::now();
    ws.send(Message::text(burst)).await.unwrap();
    let completions = records(&mut ws, 3, 10).await;
    let took = sent.elapsed().as_secs_f64();
    let limited = |c: &Value| c["error"].as_str().is_some_and(|e| e.contains("too many invocations"));
    assert!(completions[..4].iter().all(|c| !limited(c)), "the burst of 4 passes: {completions:?}");
    let allowed = completions.iter().filter(|c| !limited(c)).count() as f64;
    assert!(allowed < 10.0, "some of an instant burst of 10 are refused");
    assert!(allowed <= 4.0 + 2.0 * took + 1.0, "{allowed} allowed in {took:.2} s at 2/s after a burst of 4");
    // The connection is still there, and the limit refills.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        ws.send(Message::text("{\"type\":1,\"invocationId\":\"again\",\"target\":\"GetCurrentStatus\",\"arguments\":[\"x\"]}\u{1e}"))
            .await
            .unwrap();
        if !record(&mut ws, 3).await["error"].as_str().is_some_and(|e| e.contains("too many invocations")) {
            break;
        }
        assert!(Instant::now() < deadline, "the rate limit never refilled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(metrics.contains("contoso_hub_invocations_rate_limited_total"), "the refusals are counted");
    app.stop().await;
}

/// The value of one metric line of a Prometheus page (0 when absent).
fn metric(page: &str, series: &str) -> f64 {
    page.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}
