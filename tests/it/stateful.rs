//! Stateful reconnect on the wire, from Rust where the official client cannot be steered: two
//! notify processes of one deployment, a connection dropped on one and resumed on the other. What
//! the client had not acknowledged comes again after the server's Sequence, a client message
//! that ran before the drop is not run again, and the refusals (another user, a forged token, a
//! connection still open, past the window) answer the upgrade; a process that cannot keep a
//! connection's messages closes it (the client reconnects) and refuses resumes with 503, and
//! refuses the handshake of one whose record it cannot create; a process cut off from Redis
//! loses its connection to the one that took it over.

use std::time::Duration;

use contoso::{
    backplane::Channels,
    hub::{lifetime::envelope, protocol::HubMessage},
};
use deadpool_redis::redis;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue};

use crate::harness::{AppOptions, ChaosProxy, TestApp, env, eventually, spawn_app, subscribed, unique_user, ws::Ws};

const HUB: &str = "Contoso.OrderNotification.Hubs.OrderStatusHub";

/// The negotiate answer at `app` for the bearer of `token`, with `query`.
async fn negotiate(app: &TestApp, token: &str, query: &str) -> Value {
    let res =
        reqwest::Client::new().post(app.url(&format!("/hubs/order-status/negotiate?{query}"))).bearer_auth(token).send().await.unwrap();
    res.json().await.unwrap()
}

/// A WebSocket to `app`'s hub with connection token `id`, or the HTTP status that refused it.
async fn open(app: &TestApp, id: &str, token: &str) -> Result<Ws, u16> {
    let mut request = format!("ws://127.0.0.1:{}/hubs/order-status?id={id}", app.port).into_client_request().unwrap();
    request.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(other) => panic!("upgrade failed: {other}"),
    }
}

/// The next JSON records from the server (a frame may hold several), Pings left out.
async fn records(ws: &mut Ws) -> Vec<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let records: Vec<Value> =
                    t.as_str().split('\u{1e}').filter(|r| !r.is_empty()).map(|r| serde_json::from_str(r).unwrap()).collect();
                let records: Vec<Value> = records.into_iter().filter(|r| r["type"] != 6).collect();
                if !records.is_empty() {
                    return records;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no record: {other:?}"),
        }
    }
}

/// Records until one matches `done`; all of them, in order.
async fn records_until(ws: &mut Ws, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    while !seen.iter().any(&done) {
        seen.extend(records(ws).await);
    }
    seen
}

async fn send(ws: &mut Ws, record: Value) {
    ws.send(Message::text(format!("{record}\u{1e}"))).await.unwrap();
}

/// Two notify processes of one deployment; `args` for both.
async fn pair(args: &[&str]) -> (TestApp, TestApp, String) {
    let prefix = format!("t-sr-{}-", uuid::Uuid::new_v4().simple());
    let mut extra: Vec<String> = vec!["--channel-prefix".into(), prefix.clone()];
    extra.extend(args.iter().map(|a| a.to_string()));
    let first = spawn_app(AppOptions { roles: Some("notify"), extra_args: extra.clone(), ..Default::default() }).await;
    let second = spawn_app(AppOptions { roles: Some("notify"), extra_args: extra, share: Some(&first), ..Default::default() }).await;
    (first, second, prefix)
}

async fn publish(prefix: &str, user: &str, i: u32) {
    let channel = Channels::new(prefix, HUB).user(user);
    let mut redis = redis::Client::open(env::redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let env = envelope(&HubMessage::push("Test", vec![json!({ "i": i })]));
    let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(env.encode().as_ref()).query_async(&mut redis).await.unwrap();
}

/// A stateful connection at `app`: (connection token, socket after the version-2 handshake).
async fn stateful(app: &TestApp, token: &str) -> (String, Ws) {
    let (id, ws, reply) = stateful_handshake(app, token).await;
    assert_eq!(reply, vec![json!({})], "the handshake reply");
    (id, ws)
}

/// A stateful connection's negotiate, upgrade and version-2 handshake at `app`: (connection
/// token, socket, the handshake reply).
async fn stateful_handshake(app: &TestApp, token: &str) -> (String, Ws, Vec<Value>) {
    let negotiated = negotiate(app, token, "negotiateVersion=1&useStatefulReconnect=true").await;
    assert_eq!(negotiated["useStatefulReconnect"], true, "{negotiated}");
    let id = negotiated["connectionToken"].as_str().unwrap().to_owned();
    let mut ws = open(app, &id, token).await.unwrap();
    ws.send(Message::text("{\"protocol\":\"json\",\"version\":2}\u{1e}")).await.unwrap();
    let reply = records(&mut ws).await;
    (id, ws, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiate_offers_stateful_reconnect_only_when_asked_in_version_1_and_when_on() {
    let on = spawn_app(AppOptions { roles: Some("notify"), ..Default::default() }).await;
    let off = spawn_app(AppOptions {
        roles: Some("notify"),
        extra_args: vec!["--stateful-reconnect-window".into(), "0".into()],
        share: Some(&on),
        ..Default::default()
    })
    .await;
    let token = on.token(&unique_user("negotiator"));
    assert_eq!(negotiate(&on, &token, "negotiateVersion=1&useStatefulReconnect=true").await["useStatefulReconnect"], true);
    assert_eq!(negotiate(&on, &token, "negotiateVersion=1").await.get("useStatefulReconnect"), None, "not asked");
    assert_eq!(negotiate(&on, &token, "useStatefulReconnect=true").await.get("useStatefulReconnect"), None, "version 0");
    assert_eq!(negotiate(&off, &token, "negotiateVersion=1&useStatefulReconnect=true").await.get("useStatefulReconnect"), None, "off");
    off.stop().await;
    on.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_resumed_on_another_process_gets_what_it_did_not_acknowledge_and_runs_nothing_twice() {
    let (first, second, prefix) = pair(&[]).await;
    let user = unique_user("resumer");
    let token = first.token(&user);
    let (id, mut ws) = stateful(&first, &token).await;
    // Client message 1: an invocation. Its completion is the server's message 1, then an Ack.
    let invocation = json!({ "type": 1, "invocationId": "7", "target": "GetCurrentStatus", "arguments": ["no-such-order"] });
    send(&mut ws, invocation.clone()).await;
    let got = records_until(&mut ws, |r| r["type"] == 8).await;
    assert!(got.iter().any(|r| r["type"] == 3 && r["invocationId"] == "7"), "{got:?}");
    assert!(got.contains(&json!({ "type": 8, "sequenceId": 1 })), "the server acknowledges the invocation: {got:?}");
    // Server messages 2 and 3; the client acknowledges up to 2 only.
    for i in [2, 3] {
        publish(&prefix, &user, i).await;
        records_until(&mut ws, |r| r["arguments"][0]["i"] == i).await;
    }
    send(&mut ws, json!({ "type": 8, "sequenceId": 2 })).await;
    // The Ack has to reach the server's journal before the drop: the next sync carries it.
    publish(&prefix, &user, 4).await;
    records_until(&mut ws, |r| r["arguments"][0]["i"] == 4).await;
    drop(ws);

    // On the other process: no handshake, the client's Sequence first, then (as a client whose
    // Ack got lost would) the invocation again.
    let mut resumed = loop {
        match open(&second, &id, &token).await {
            Ok(ws) => break ws,
            Err(409) => continue,
            Err(status) => panic!("resume refused with {status}"),
        }
    };
    send(&mut resumed, json!({ "type": 9, "sequenceId": 1 })).await;
    send(&mut resumed, invocation).await;
    // The connection is registered before its Sequence is written: what is published once it
    // arrived reaches it live.
    let mut got = records_until(&mut resumed, |r| r["arguments"][0]["i"] == 4).await;
    publish(&prefix, &user, 5).await;
    got.extend(records_until(&mut resumed, |r| r["arguments"][0]["i"] == 5).await);
    assert_eq!(got[0], json!({ "type": 9, "sequenceId": 3 }), "the server's Sequence: the first unacknowledged id");
    let pushes: Vec<&Value> = got.iter().filter(|r| r["type"] == 1).map(|r| &r["arguments"][0]["i"]).collect();
    assert_eq!(pushes, vec![&json!(3), &json!(4), &json!(5)], "3 and 4 again, then what is new: {got:?}");
    assert!(!got.iter().any(|r| r["type"] == 3), "the invocation that ran before the drop is not run again: {got:?}");
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_is_refused_for_another_user_a_forged_token_an_open_connection_and_past_the_window() {
    let (first, second, _) = pair(&["--stateful-reconnect-window", "1"]).await;
    let user = unique_user("owner");
    let token = first.token(&user);
    let (id, mut ws) = stateful(&first, &token).await;
    let intruder = first.token(&unique_user("intruder"));
    assert_eq!(open(&second, &id, &intruder).await.err(), Some(404), "another user's token");
    let mut forged = id.clone().into_bytes();
    forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
    assert_eq!(open(&second, std::str::from_utf8(&forged).unwrap(), &token).await.err(), Some(404), "a forged token");
    assert_eq!(open(&second, &id, &token).await.err(), Some(409), "the connection is still open");
    // The open connection was not disturbed.
    send(&mut ws, json!({ "type": 1, "invocationId": "1", "target": "GetCurrentStatus", "arguments": ["x"] })).await;
    records_until(&mut ws, |r| r["type"] == 3).await;
    drop(ws);
    // The window (1 s) runs from the drop.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(open(&second, &id, &token).await.err(), Some(404), "past the window");
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_messages_cannot_be_kept_is_closed_for_a_reconnect_and_resumes_meanwhile_get_503() {
    let proxy = ChaosProxy::start(env::host_port(&env::redis_url())).await;
    let app = spawn_app(AppOptions { roles: Some("notify"), redis_proxy: Some(&proxy), ..Default::default() }).await;
    let user = unique_user("unkept");
    let token = app.token(&user);
    let (_, mut ws) = stateful(&app, &token).await;
    let (dropped_id, dropped) = stateful(&app, &token).await;

    // Redis goes away: the journal can no longer be written.
    proxy.cut();
    drop(dropped);
    // The completion of an invocation is a counted message: it has to be journaled before it is
    // written, cannot be, and the connection is closed instead, with leave to reconnect.
    send(&mut ws, json!({ "type": 1, "invocationId": "1", "target": "GetCurrentStatus", "arguments": ["no-such-order"] })).await;
    let got = records_until(&mut ws, |r| r["type"] == 7).await;
    assert_eq!(got.last().unwrap()["allowReconnect"], true, "{got:?}");
    assert!(!got.iter().any(|r| r["type"] == 3), "nothing is written that was not kept: {got:?}");
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("the socket closes after the Close");
    assert!(matches!(end, None | Some(Ok(Message::Close(_))) | Some(Err(_))), "{end:?}");
    // A resume while the store is unreachable cannot be decided: 503, the client tries again.
    assert_eq!(open(&app, &dropped_id, &token).await.err(), Some(503));
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("contoso_hub_disconnects_total") && l.contains("reason=\"resume-store-unavailable\"")),
        "the close is counted with its reason"
    );

    // Redis back: the process serves stateful connections again.
    proxy.restore();
    eventually(Duration::from_secs(30), "readiness back with Redis", || async { (app.ready_status().await.0 == 200).then_some(()) }).await;
    let (_, mut again) = stateful(&app, &token).await;
    send(&mut again, json!({ "type": 1, "invocationId": "2", "target": "GetCurrentStatus", "arguments": ["no-such-order"] })).await;
    let got = records_until(&mut again, |r| r["type"] == 3).await;
    assert_eq!(got.iter().find(|r| r["type"] == 3).unwrap()["invocationId"], "2", "{got:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_connection_whose_record_cannot_be_created_is_refused_at_its_handshake() {
    // With the store down at the upgrade, a new stateful connection is refused (503) before it
    // starts; the store failing between those checks and the record's creation is a race no
    // outage times, so a fail point makes creating this user's records fail.
    let (first, second, _) = pair(&[]).await;
    let user = unique_user("unrecorded");
    let token = first.token(&user);
    let failures = |metrics: String| {
        let line = metrics.lines().find(|l| l.starts_with("contoso_hub_handshake_failures_total "))?.to_owned();
        line.rsplit(' ').next()?.parse::<f64>().ok()
    };
    let before = failures(first.get("/metrics", None).await.text().await.unwrap()).unwrap_or(0.0);
    fail::cfg("resume-create", &format!("return({user})")).unwrap();
    let (_, mut ws, reply) = stateful_handshake(&first, &token).await;
    fail::remove("resume-create");
    // A handshake error, as ASP.NET answers a handshake it cannot accept: the client connects
    // again instead of holding a connection it could not resume.
    assert_eq!(reply, vec![json!({ "error": "Connection state is unavailable, connect again." })]);
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("the socket closes after the error");
    assert!(matches!(end, None | Some(Ok(Message::Close(_))) | Some(Err(_))), "{end:?}");
    let after = failures(first.get("/metrics", None).await.text().await.unwrap());
    assert!(after.is_some_and(|n| n > before), "counted as a failed handshake: {before} then {after:?}");

    // The client's next connection is recorded and resumable on any process as usual.
    let (id, again) = stateful(&first, &token).await;
    drop(again);
    let mut resumed = open(&second, &id, &token).await.expect("a recorded connection resumes");
    send(&mut resumed, json!({ "type": 9, "sequenceId": 1 })).await;
    assert_eq!(records(&mut resumed).await[0], json!({ "type": 9, "sequenceId": 1 }));
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_cut_off_from_redis_loses_its_connection_to_the_process_that_took_it_over_and_lets_go_of_its_socket() {
    let proxy = ChaosProxy::start(env::host_port(&env::redis_url())).await;
    let prefix = format!("t-sr-{}-", uuid::Uuid::new_v4().simple());
    let args = vec!["--channel-prefix".to_owned(), prefix.clone()];
    let first =
        spawn_app(AppOptions { roles: Some("notify"), redis_proxy: Some(&proxy), extra_args: args.clone(), ..Default::default() }).await;
    let second = spawn_app(AppOptions { roles: Some("notify"), extra_args: args, share: Some(&first), ..Default::default() }).await;
    let user = unique_user("stale");
    let token = first.token(&user);
    let (id, mut stale) = stateful(&first, &token).await;
    subscribed(&Channels::new(&prefix, HUB).user(&user)).await;
    publish(&prefix, &user, 1).await;
    records_until(&mut stale, |r| r["arguments"][0]["i"] == 1).await;

    // The first process hears nothing from Redis and cannot say it is alive; its socket to the
    // client stays open (a partition between the two would look the same to the client).
    proxy.stall();
    // Once its beat has expired, the connection can be taken over elsewhere.
    let mut resumed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match open(&second, &id, &token).await {
                Ok(ws) => break ws,
                Err(409) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(status) => panic!("resume refused with {status}"),
            }
        }
    })
    .await
    .expect("the connection is taken over once the first process stops beating");
    send(&mut resumed, json!({ "type": 9, "sequenceId": 1 })).await;
    // Registered once its Sequence is written: what is published after that reaches it live.
    let mut got = records_until(&mut resumed, |r| r["type"] == 9).await;
    publish(&prefix, &user, 2).await;
    got.extend(records_until(&mut resumed, |r| r["arguments"][0]["i"] == 2).await);
    // The server's Sequence, then what the client never acknowledged (1) and what is new (2).
    assert_eq!(got[0], json!({ "type": 9, "sequenceId": 1 }), "{got:?}");
    let pushes: Vec<&Value> = got.iter().filter(|r| r["type"] == 1).map(|r| &r["arguments"][0]["i"]).collect();
    assert_eq!(pushes, vec![&json!(1), &json!(2)], "{got:?}");

    // Redis back for the first process: its next write finds the connection taken, and it lets
    // go of the socket without writing anything more to it.
    proxy.cut();
    proxy.restore();
    publish(&prefix, &user, 3).await;
    let left = tokio::time::timeout(Duration::from_secs(30), async {
        let mut after = Vec::new();
        while let Some(Ok(msg)) = stale.next().await {
            if let Message::Text(t) = msg {
                after.push(t.to_string());
            }
        }
        after
    })
    .await
    .expect("the stale socket is let go");
    assert!(!left.iter().any(|t| t.contains("\"i\":3") || t.contains("\"type\":7")), "nothing more on the stale socket: {left:?}");
    records_until(&mut resumed, |r| r["arguments"][0]["i"] == 3).await;
    let metrics = first.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("contoso_hub_disconnects_total") && l.contains("reason=\"resumed-elsewhere\"")),
        "counted as resumed elsewhere"
    );
    second.stop().await;
    first.stop().await;
}
