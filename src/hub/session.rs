//! One WebSocket connection, start to end: handshake (with its timeout; nothing is written
//! before the reply), registration with the lifetime manager, then the read loop (records may
//! be split across or packed into frames) and a writer task that owns the socket, batches
//! queued records into one frame, and sends a Ping after `keep_alive` of silence.

use std::{sync::Arc, time::Duration};

use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use bytes::{Bytes, BytesMut};
use tokio::{sync::mpsc, time::Instant};

use super::{
    Caller, CloseRequest, ConnectionHandle, HubContext, HubError, metrics_names as m,
    protocol::{Completion, HANDSHAKE_OK, HandshakeError, HubMessage, Protocol, ProtocolError, parse_handshake},
};

/// Largest batch the writer puts in one WebSocket message.
const MAX_BATCH: usize = 64 * 1024;
/// How long a write may still take once the connection is being closed. A client that stopped
/// reading blocks writes forever; after this the socket is dropped instead.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

fn disconnect(reason: &'static str) {
    metrics::counter!(m::DISCONNECTS, "reason" => reason).increment(1);
}

/// Runs the connection until it ends. Spawned on the actix worker that accepted the socket.
pub async fn run(ctx: Arc<HubContext>, id: Arc<str>, user_id: Arc<str>, mut session: Session, mut stream: AggregatedMessageStream) {
    let mut buf = BytesMut::new();
    let protocol = match handshake(&ctx, &mut session, &mut stream, &mut buf).await {
        Ok(p) => p,
        Err(err) => {
            metrics::counter!(m::HANDSHAKE_FAILURES).increment(1);
            if let Some(err) = err {
                let _ = session.text(String::from_utf8(err.record()).expect("utf-8")).await;
            }
            let _ = session.close(Some(CloseReason { code: CloseCode::Normal, description: None })).await;
            return;
        }
    };
    // The reply goes out before the connection is registered, so no push can precede it.
    let reply = if protocol.is_binary() { session.binary(Bytes::from_static(HANDSHAKE_OK)).await } else { session.text("{}\u{1e}").await };
    if reply.is_err() {
        return;
    }
    let (tx, rx) = mpsc::channel(ctx.settings.send_queue);
    let conn = ConnectionHandle::new(id, user_id, protocol, tx);
    if let Err(err) = ctx.lifetime.add(conn.clone()).await {
        // Registered locally; the backplane re-subscribes when it is back.
        tracing::warn!(error = %err, "subscription failed, delivery resumes when the backplane is back");
    }
    metrics::counter!(m::CONNECTS, "protocol" => protocol.name()).increment(1);
    let writer = tokio::task::spawn_local(write_loop(session, rx, conn.clone(), ctx.settings.keep_alive));
    let reason = read_loop(&ctx, &conn, &mut stream, buf).await;
    if let Some(request) = reason {
        conn.close(request);
    }
    ctx.lifetime.remove(&conn).await;
    conn.abort_token().cancel();
    let _ = writer.await;
    disconnect(conn.close_request().map(|r| r.reason).unwrap_or("client-closed"));
}

/// Reads the handshake request; `Err(Some(_))` carries the error record to send.
async fn handshake(
    ctx: &HubContext,
    session: &mut Session,
    stream: &mut AggregatedMessageStream,
    buf: &mut BytesMut,
) -> Result<Protocol, Option<HandshakeError>> {
    let deadline = Instant::now() + ctx.settings.handshake_timeout;
    loop {
        if let Some(req) = parse_handshake(buf, ctx.settings.max_message_size)? {
            return Ok(req.protocol);
        }
        let msg = match tokio::time::timeout_at(deadline, stream.recv()).await {
            Err(_) => return Err(Some(HandshakeError::Canceled)),
            Ok(None) | Ok(Some(Err(_))) => return Err(None),
            Ok(Some(Ok(msg))) => msg,
        };
        match msg {
            AggregatedMessage::Text(text) => buf.extend_from_slice(text.as_bytes()),
            AggregatedMessage::Binary(bytes) => buf.extend_from_slice(&bytes),
            AggregatedMessage::Ping(p) => {
                let _ = session.pong(&p).await;
            }
            AggregatedMessage::Pong(_) => {}
            AggregatedMessage::Close(_) => return Err(None),
        }
    }
}

fn protocol_error(err: &ProtocolError) -> CloseRequest {
    match err {
        // Too large: the client may reconnect and behave (ASP.NET allows it).
        ProtocolError::TooLarge(_) => {
            CloseRequest { error: Some("Connection closed with an error.".into()), allow_reconnect: true, reason: "message-too-large" }
        }
        // Malformed input would be malformed again after a reconnect.
        ProtocolError::Invalid(_) => {
            CloseRequest { error: Some("Connection closed with an error.".into()), allow_reconnect: false, reason: "protocol-error" }
        }
    }
}

/// Returns why the server ended the connection (`None`: the client left or the connection was aborted).
async fn read_loop(
    ctx: &HubContext,
    conn: &ConnectionHandle,
    stream: &mut AggregatedMessageStream,
    mut buf: BytesMut,
) -> Option<CloseRequest> {
    let protocol = conn.protocol();
    let max = ctx.settings.max_message_size;
    let mut client_timeout_armed = false;
    let mut last_received = Instant::now();
    loop {
        // Records that arrived with the handshake, or in the last frame.
        loop {
            match protocol.parse(&mut buf, max) {
                Ok(Some(msg)) => {
                    metrics::counter!(m::MESSAGES_IN).increment(1);
                    match msg {
                        HubMessage::Ping => client_timeout_armed = true,
                        HubMessage::Close { .. } => return None,
                        other => dispatch(ctx, conn, other).await,
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!(error = %err, "closing a connection after a protocol error");
                    return Some(protocol_error(&err));
                }
            }
        }
        if buf.is_empty() && buf.capacity() > 4096 {
            // Give back the memory of a large message once it is consumed.
            buf = BytesMut::new();
        }
        let deadline = last_received + ctx.settings.client_timeout;
        let next = tokio::select! {
            msg = stream.recv() => msg,
            () = tokio::time::sleep_until(deadline), if client_timeout_armed => {
                return Some(CloseRequest { error: Some("Connection closed with an error.".into()), allow_reconnect: true, reason: "client-timeout" });
            }
            () = conn.abort_token().cancelled() => return None,
        };
        last_received = Instant::now();
        match next {
            None | Some(Err(_)) => return None,
            Some(Ok(AggregatedMessage::Text(text))) => buf.extend_from_slice(text.as_bytes()),
            Some(Ok(AggregatedMessage::Binary(bytes))) => buf.extend_from_slice(&bytes),
            Some(Ok(AggregatedMessage::Ping(_) | AggregatedMessage::Pong(_))) => {}
            Some(Ok(AggregatedMessage::Close(_))) => return None,
        }
    }
}

/// Runs one message from the client. Invocations run one at a time, in arrival order.
async fn dispatch(ctx: &HubContext, conn: &ConnectionHandle, msg: HubMessage) {
    let protocol = conn.protocol();
    match msg {
        HubMessage::Invocation { invocation_id, target, arguments, .. } => {
            let started = std::time::Instant::now();
            let caller = Caller { connection: conn.clone() };
            let res = ctx.hub.invoke(&caller, &target, arguments).await;
            let label = if ctx.hub.has_method(&target) { target.to_ascii_lowercase() } else { "unknown".to_owned() };
            metrics::histogram!(m::INVOCATION_DURATION, "method" => label).record(started.elapsed().as_secs_f64());
            if let Err(HubError::Unexpected(why)) = &res {
                tracing::error!(method = %target, error = %why, "hub method failed");
            }
            // A non-blocking invocation (no id) never gets an answer, not even an error.
            let Some(invocation_id) = invocation_id else { return };
            let outcome = match res {
                Ok(value) => Completion::Result(value),
                Err(err) => Completion::Error(err.client_message(&target)),
            };
            conn.send(protocol.encode_to_bytes(&HubMessage::Completion { invocation_id, outcome })).await;
        }
        HubMessage::StreamInvocation { invocation_id, target, .. } => {
            let error = if ctx.hub.has_method(&target) {
                format!("The client attempted to invoke the non-streaming '{target}' method with a streaming invocation.")
            } else {
                HubError::MethodNotFound.client_message(&target)
            };
            conn.send(protocol.encode_to_bytes(&HubMessage::Completion { invocation_id, outcome: Completion::Error(error) })).await;
        }
        // No streams and no client results here: nothing to cancel or complete.
        HubMessage::CancelInvocation { .. } | HubMessage::Completion { .. } | HubMessage::StreamItem { .. } | HubMessage::Other(_) => {}
        HubMessage::Ping | HubMessage::Close { .. } => {}
    }
}

/// `flush`, but once the connection is aborted it gets only `CLOSE_GRACE` more to finish.
async fn flush_or_abort(session: &mut Session, protocol: Protocol, batch: &mut BytesMut, conn: &ConnectionHandle) -> bool {
    let abort = conn.abort_token().clone();
    let write = flush(session, protocol, batch);
    tokio::pin!(write);
    tokio::select! {
        ok = &mut write => ok,
        () = abort.cancelled() => tokio::time::timeout(CLOSE_GRACE, write).await.unwrap_or(false),
    }
}

async fn flush(session: &mut Session, protocol: Protocol, batch: &mut BytesMut) -> bool {
    let bytes = batch.split().freeze();
    if protocol.is_binary() {
        session.binary(bytes).await.is_ok()
    } else {
        match bytestring::ByteString::try_from(bytes) {
            Ok(text) => session.text(text).await.is_ok(),
            Err(_) => false,
        }
    }
}

/// Owns the socket: drains the queue (batching what is ready into one frame that ends on a
/// record boundary), keeps the connection alive, and sends the Close record at the end.
async fn write_loop(mut session: Session, mut rx: mpsc::Receiver<Bytes>, conn: ConnectionHandle, keep_alive: Duration) {
    let protocol = conn.protocol();
    let ping = protocol.encode_to_bytes(&HubMessage::Ping);
    let mut batch = BytesMut::new();
    let mut last_sent = Instant::now();
    loop {
        tokio::select! {
            biased;
            () = conn.abort_token().cancelled() => break,
            item = rx.recv() => {
                let Some(first) = item else { break };
                batch.extend_from_slice(&first);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(more) => batch.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                if !flush_or_abort(&mut session, protocol, &mut batch, &conn).await {
                    conn.abort_token().cancel();
                    return;
                }
                last_sent = Instant::now();
            }
            () = tokio::time::sleep_until(last_sent + keep_alive) => {
                batch.extend_from_slice(&ping);
                if !flush_or_abort(&mut session, protocol, &mut batch, &conn).await {
                    conn.abort_token().cancel();
                    return;
                }
                last_sent = Instant::now();
            }
        }
        if batch.capacity() > 4 * MAX_BATCH {
            batch = BytesMut::new();
        }
    }
    // Flush what was queued before the close, then the Close record itself.
    while let Ok(more) = rx.try_recv() {
        batch.extend_from_slice(&more);
    }
    if let Some(req) = conn.close_request() {
        protocol.encode(&HubMessage::Close { error: req.error.clone(), allow_reconnect: req.allow_reconnect }, &mut batch);
    }
    // A client that stopped reading cannot take these either: bounded, then the socket is dropped.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if !batch.is_empty() {
            let _ = flush(&mut session, protocol, &mut batch).await;
        }
        let _ = session.close(Some(CloseReason { code: CloseCode::Normal, description: None })).await;
    })
    .await;
}
