//! OpenTelemetry (`--otlp-endpoint`): one order is one trace from the POST to the write on the
//! tab's socket, through the outbox, RabbitMQ and the backplane, exported over OTLP/HTTP to a
//! collector this test runs. The caller's own `traceparent` is where the trace starts.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    harness::{app, eventually, unique_user, ws::connect},
    lifecycle::{output_within, sigterm, start_binary_as, token},
};

#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
}

/// An OTLP/HTTP (JSON) trace receiver: keeps every span it is sent.
async fn collector() -> (u16, Arc<Mutex<Vec<Span>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = spans.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket, kept.clone()));
        }
    });
    (port, spans)
}

/// Requests on one connection (the exporter keeps it alive), each answered 200.
async fn serve(mut socket: tokio::net::TcpStream, kept: Arc<Mutex<Vec<Span>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            let mut chunk = [0u8; 8192];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < end + 4 + length {
            let mut chunk = [0u8; 8192];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..end + 4 + length).skip(end + 4).collect();
        if head.starts_with("post /v1/traces") {
            kept.lock().unwrap().extend(spans_of(&serde_json::from_slice(&body).expect("an OTLP JSON body")));
        }
        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        if socket.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn spans_of(request: &Value) -> Vec<Span> {
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let mut out = Vec::new();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for s in scope["spans"].as_array().into_iter().flatten() {
                let (trace_id, span_id, parent, name) = (text(s, "traceId"), text(s, "spanId"), text(s, "parentSpanId"), text(s, "name"));
                out.push(Span { trace_id, span_id, parent, name });
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_from_the_post_to_the_tab() {
    let (collector_port, spans) = collector().await;
    let prefix = format!("t-{}.", uuid::Uuid::new_v4().simple());
    let endpoint = format!("http://127.0.0.1:{collector_port}");
    let (child, port, db) =
        start_binary_as("accept,process,notify", &["--otlp-endpoint", &endpoint, "--process-delay-ms", "0"], &prefix).await;
    let user = unique_user("traced");
    let tok = token("lifecycle-secret", &user);
    let mut tab = connect(&format!("ws://127.0.0.1:{port}/hubs/order-status"), &tok).await;

    // The shop's front end started the trace; the order continues it.
    let (trace_id, root) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let order = json!({ "items": [{ "productId": "mug", "quantity": 1 }] });
    let placed = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/orders"))
        .bearer_auth(&tok)
        .header("traceparent", format!("00-{trace_id}-{root}-01"))
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 202);
    let id = placed.json::<Value>().await.unwrap()["correlationId"].as_str().unwrap().to_owned();
    loop {
        match tokio::time::timeout(Duration::from_secs(15), tab.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("OrderCompleted") && t.as_str().contains(&id) => break,
            Ok(Some(Ok(_))) => {}
            other => panic!("no toast: {other:?}"),
        }
    }

    let expected = [
        "POST /api/orders",
        "order.accepted publish",
        "contoso.order-process process",
        "order.processed publish",
        "contoso.order-notification process",
        "backplane publish",
        "backplane receive",
        "socket write",
    ];
    let trace = eventually(Duration::from_secs(20), "every span of the order exported", || async {
        let trace: Vec<Span> = spans.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect();
        expected.iter().all(|name| trace.iter().any(|s| s.name == *name)).then_some(trace)
    })
    .await;
    // Connected: every span's parent is the caller's span or another span of the trace.
    let ids: HashMap<&str, &str> = trace.iter().map(|s| (s.span_id.as_str(), s.name.as_str())).collect();
    for span in &trace {
        assert!(span.parent == root || ids.contains_key(span.parent.as_str()), "{span:?} hangs off nothing in {trace:#?}");
    }
    let parent_of = |name: &str| trace.iter().find(|s| s.name == name).map(|s| ids.get(s.parent.as_str()).copied().unwrap_or("the caller"));
    assert_eq!(parent_of("POST /api/orders"), Some("the caller"));
    assert_eq!(parent_of("order.accepted publish"), Some("POST /api/orders"));
    assert_eq!(parent_of("contoso.order-process process"), Some("order.accepted publish"));
    assert_eq!(parent_of("order.processed publish"), Some("contoso.order-process process"));
    assert_eq!(parent_of("contoso.order-notification process"), Some("order.processed publish"));
    assert_eq!(parent_of("backplane publish"), Some("contoso.order-notification process"));
    assert_eq!(parent_of("backplane receive"), Some("backplane publish"));
    assert_eq!(parent_of("socket write"), Some("backplane receive"));

    sigterm(&child);
    assert!(output_within(child, Duration::from_secs(15)).status.success());
    app::drop_database(&db).await;
    app::delete_bus_objects(&prefix).await;
}
