//! One hub connection, start to end, as one loop on the worker that accepted its socket:
//! handshake (with its timeout; nothing is written before the reply), registration, then
//! reading records (split across or packed into frames), running invocations one at a time,
//! writing what the outbox holds, Pings after `keep_alive` of silence and the Close at the end.

use std::{
    future::{Future, poll_fn},
    pin::Pin,
    sync::{Arc, LazyLock},
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use tokio::{
    net::TcpStream,
    time::{Instant, Sleep},
};

mod closing;
mod invoke;
mod opening;

use invoke::{Invocation, dispatch, refuse};
use opening::Opening;

use super::{
    CloseRequest, ConnectionHandle, HubContext,
    connection::{Frame, Outgoing},
    limits::Slot,
    metrics_names as m,
    protocol::{HubMessage, Protocol, ProtocolError},
    resume::Claimed,
    socket::{Read, WsSocket},
    stateful::{Broken, Stateful},
};

/// Largest batch of queued records put in one WebSocket message.
const MAX_BATCH: usize = 64 * 1024;
/// How long the last writes may take once the connection is being closed. A client that
/// stopped reading blocks writes forever; after this the socket is dropped instead.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a stateful connection whose socket dropped lets its invocation in flight finish
/// (its completion is kept for the resume); the resuming process waits for it.
const HAND_OVER_WAIT: Duration = Duration::from_secs(2);

/// The Ping record of each protocol (`Protocol as usize`), encoded once.
static PINGS: LazyLock<[Bytes; 2]> = LazyLock::new(|| {
    let ping = |p: Protocol| p.encode_to_bytes(&HubMessage::Ping);
    debug_assert_eq!((Protocol::Json as usize, Protocol::MessagePack as usize), (0, 1));
    [ping(Protocol::Json), ping(Protocol::MessagePack)]
});

fn disconnect(reason: &'static str) {
    metrics::counter!(m::DISCONNECTS, "reason" => reason).increment(1);
}

/// What the upgrade established for a connection.
pub struct Admitted {
    pub id: Arc<str>,
    /// Its place in the process's limits, held until the connection ends; its user.
    pub slot: Slot,
    /// When its token expires, if the connection is to end then.
    pub expires: Option<Instant>,
    pub mode: Mode,
}

/// How a connection starts.
pub enum Mode {
    /// A handshake, then a connection without stateful reconnect.
    Plain,
    /// A handshake, then a connection with stateful reconnect.
    Stateful,
    /// No handshake: the client resumes a stateful connection taken over from its last holder.
    Resume(Box<Claimed>),
}

/// Longest a token's expiry is taken into account: an `exp` centuries away must not overflow
/// the clock (it then simply never ends the connection).
const LONGEST_EXPIRY: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The instant of a Unix time in seconds (now, for one already past).
pub fn instant_of(unix_seconds: u64) -> Instant {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Instant::now() + Duration::from_secs(unix_seconds).saturating_sub(now).min(LONGEST_EXPIRY)
}

/// Runs the connection until it ends. `leftover`: bytes read past the upgrade request.
pub async fn run(ctx: Arc<HubContext>, admitted: Admitted, io: TcpStream, leftover: BytesMut) {
    let Admitted { id, slot, expires, mode } = admitted;
    let max = ctx.settings.max_message_size;
    // Frames may exceed the message limit (several records per frame); the record parser
    // enforces the per-message limit and answers with a Close instead of a dropped socket.
    let mut ws = WsSocket::new(io, leftover, max * 4 + 64 * 1024);
    let timer = tokio::time::sleep(ctx.settings.handshake_timeout);
    tokio::pin!(timer);
    let mut records = BytesMut::new();
    let opening = Opening { ctx: &ctx, id, user: slot.user().clone() };
    let started = match mode {
        Mode::Resume(claimed) => opening.resume(&mut ws, &mut records, timer.as_mut(), *claimed).await,
        mode => opening.start(&mut ws, &mut records, timer.as_mut(), matches!(mode, Mode::Stateful)).await,
    };
    let Some((conn, stateful)) = started else { return };
    metrics::counter!(m::CONNECTS, "protocol" => conn.protocol().name()).increment(1);
    let now = Instant::now();
    let mut live = Live {
        ctx: &ctx,
        conn: conn.clone(),
        ws,
        records,
        invocation: None,
        invocation_seq: 0,
        limiter: None,
        expires,
        last_read: now,
        last_write: now,
        stateful,
        _slot: slot,
    };
    timer.as_mut().reset(live.next_deadline());
    let end = poll_fn(|cx| live.poll(cx, timer.as_mut())).await;
    live.end(end).await;
}

/// How the loop ended: the client left, or the server closes (what was still queued, and why).
enum End {
    /// The socket dropped (a stateful connection waits for its resume).
    Gone,
    /// The client said goodbye (a Close message): the connection is over.
    Left,
    /// Another process resumed this stateful connection: this socket is stale.
    Lost,
    Close(Vec<Frame>, CloseRequest),
}

struct Live<'a> {
    ctx: &'a Arc<HubContext>,
    conn: ConnectionHandle,
    ws: WsSocket,
    /// Hub records received and not parsed yet (a partial record, or those behind an
    /// invocation in flight); empty and unallocated when idle.
    records: BytesMut,
    invocation: Option<Invocation>,
    /// The stateful-reconnect id of the invocation in flight.
    invocation_seq: u64,
    /// The invocation rate limit, made at the first invocation (most tabs make few or none).
    limiter: Option<Box<InvocationLimiter>>,
    /// When the token expires, if the connection ends then.
    expires: Option<Instant>,
    last_read: Instant,
    last_write: Instant,
    /// Stateful reconnect's accounts, for a connection that has it.
    stateful: Option<Box<Stateful>>,
    _slot: Slot,
}

type InvocationLimiter = governor::DefaultDirectRateLimiter;

impl Live<'_> {
    /// One turn of the loop: writes first, then the invocation in flight, then input (only
    /// when nothing waits to be written, so a client that does not read cannot make the
    /// server buffer its answers), then the timer.
    fn poll(&mut self, cx: &mut Context<'_>, mut timer: Pin<&mut Sleep>) -> Poll<End> {
        loop {
            if self.ws.has_pending() {
                match self.ws.poll_flush(cx) {
                    Poll::Ready(Err(_)) => return Poll::Ready(End::Gone),
                    Poll::Ready(Ok(())) => self.last_write = Instant::now(),
                    Poll::Pending => {
                        // Still learn of a close request (a drain, a full outbox) while blocked.
                        if let Poll::Ready(request) = self.conn.poll_close_request(cx) {
                            return Poll::Ready(End::Close(Vec::new(), request));
                        }
                    }
                }
            }
            if !self.ws.has_pending() {
                match self.poll_writes(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(end)) => return Poll::Ready(end),
                    Poll::Pending => {}
                }
            }
            if let Some(invocation) = &mut self.invocation {
                if invocation.as_mut().poll(cx).is_pending() {
                    return self.poll_timer(cx, timer.as_mut());
                }
                self.invocation = None;
                if let Some(st) = &mut self.stateful {
                    st.executed(self.invocation_seq);
                }
                continue;
            }
            if self.ws.has_pending() {
                return self.poll_timer(cx, timer.as_mut());
            }
            if let Some(end) = self.parse_records() {
                return Poll::Ready(end);
            }
            if self.invocation.is_some() {
                continue;
            }
            match self.ws.poll_read(cx, &mut self.records) {
                Poll::Ready(Ok(Read::Frames)) => {
                    self.last_read = Instant::now();
                    continue;
                }
                Poll::Ready(Ok(Read::Closed) | Err(_)) => return Poll::Ready(End::Gone),
                Poll::Pending => return self.poll_timer(cx, timer.as_mut()),
            }
        }
    }

    /// What waits to be written: the outbox (kept first by a stateful connection), and the Ack
    /// a stateful connection owes. `Ready(Ok)`: something was written, look again.
    fn poll_writes(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>> {
        let gone = |_| End::Gone;
        if let Some(st) = &mut self.stateful {
            if let Some(ack) = st.ack_due() {
                self.ws.write_data(&ack, self.conn.protocol().is_binary()).map_err(gone)?;
                return Poll::Ready(Ok(()));
            }
            if st.syncing() {
                let frames = match std::task::ready!(st.poll_sync(cx)) {
                    Ok(frames) => frames,
                    Err(Broken::Lost) => return Poll::Ready(Err(End::Lost)),
                    Err(Broken::Failed) => return Poll::Ready(Err(End::Close(Vec::new(), reconnect("resume-store-unavailable")))),
                };
                self.write_batches(&frames).map_err(gone)?;
                return Poll::Ready(Ok(()));
            }
        }
        match self.conn.poll_outgoing(cx) {
            Poll::Ready(Outgoing::Close(queued, request)) => Poll::Ready(Err(End::Close(queued, request))),
            Poll::Ready(Outgoing::Bytes(queued)) => {
                let now = match &mut self.stateful {
                    Some(st) => st.send(queued, &*self.ctx.hub),
                    None => Some(queued),
                };
                if let Some(frames) = now {
                    self.write_batches(&frames).map_err(gone)?;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match &mut self.stateful {
                Some(st) if st.wants_sync() => {
                    st.start_sync(&*self.ctx.hub);
                    Poll::Ready(Ok(()))
                }
                _ => Poll::Pending,
            },
        }
    }

    /// The one timer of the connection. It is not moved on every read and write: when it
    /// fires, it checks what is really due and sleeps again until the next deadline.
    fn poll_timer(&mut self, cx: &mut Context<'_>, mut timer: Pin<&mut Sleep>) -> Poll<End> {
        while timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let settings = &self.ctx.settings;
            if now >= self.last_read + settings.client_timeout {
                return Poll::Ready(End::Close(Vec::new(), reconnect("client-timeout")));
            }
            if self.expires.is_some_and(|at| now >= at) {
                // As ASP.NET's CloseOnAuthenticationExpiration: the client may come back with a fresh token.
                return Poll::Ready(End::Close(Vec::new(), reconnect("token-expired")));
            }
            if now >= self.last_write + settings.keep_alive && !self.ws.has_pending() {
                let protocol = self.conn.protocol();
                if self.ws.write_data(&PINGS[protocol as usize], protocol.is_binary()).is_err() {
                    return Poll::Ready(End::Gone);
                }
                self.last_write = now;
            }
            timer.as_mut().reset(self.next_deadline());
        }
        Poll::Pending
    }

    fn next_deadline(&self) -> Instant {
        let settings = &self.ctx.settings;
        let next = (self.last_write + settings.keep_alive).min(self.last_read + settings.client_timeout);
        self.expires.map_or(next, |at| next.min(at))
    }

    /// Writes queued records, batched into messages of up to `MAX_BATCH` that end on a record boundary.
    fn write_batches(&mut self, queued: &[Frame]) -> std::io::Result<()> {
        let binary = self.conn.protocol().is_binary();
        let mut rest = queued;
        while let Some(first) = rest.first() {
            let mut take = 1;
            let mut len = first.bytes.len();
            while take < rest.len() && len + rest[take].bytes.len() <= MAX_BATCH {
                len += rest[take].bytes.len();
                take += 1;
            }
            if take == 1 {
                self.ws.write_data(&first.bytes, binary)?;
            } else {
                let mut batch = BytesMut::with_capacity(len);
                rest[..take].iter().for_each(|f| batch.extend_from_slice(&f.bytes));
                self.ws.write_data(&batch, binary)?;
            }
            rest = &rest[take..];
        }
        self.last_write = Instant::now();
        record_latency(queued);
        for trace in queued.iter().filter_map(|f| f.trace.as_deref()) {
            let span = tracing::info_span!("socket write", otel.kind = "internal", signalr.protocol = self.conn.protocol().name());
            crate::telemetry::otel::follow(&span, Some(trace));
        }
        Ok(())
    }

    /// Handles the complete records received, stopping at an invocation (it runs before the
    /// records behind it). `Some`: the connection ends.
    fn parse_records(&mut self) -> Option<End> {
        let protocol = self.conn.protocol();
        let max = self.ctx.settings.max_message_size;
        while self.invocation.is_none() {
            match protocol.parse(&mut self.records, max) {
                Ok(Some(msg)) => {
                    metrics::counter!(m::MESSAGES_IN).increment(1);
                    match msg {
                        HubMessage::Ping | HubMessage::Sequence { .. } => {}
                        HubMessage::Close { .. } => return Some(End::Left),
                        HubMessage::Ack { sequence_id } => {
                            if let Some(st) = &mut self.stateful {
                                st.client_ack(sequence_id);
                            }
                        }
                        other => self.handle(other),
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!(error = %err, "closing a connection after a protocol error");
                    return Some(End::Close(Vec::new(), protocol_error(&err)));
                }
            }
        }
        if self.records.is_empty() && self.records.capacity() > 0 {
            // Idle connections keep no buffer.
            self.records = BytesMut::new();
        }
        None
    }

    /// A counted message from the client: run (unless it is the resend of one that ran before
    /// a resume), refused over the rate limit, or started as the invocation in flight.
    fn handle(&mut self, msg: HubMessage) {
        let seq = match &mut self.stateful {
            Some(st) => match st.received() {
                (_, false) => return,
                (seq, true) => Some(seq),
            },
            None => None,
        };
        if self.over_limit(&msg) {
            refuse(&self.conn, msg);
        } else {
            self.invocation = dispatch(self.ctx, &self.conn, msg);
        }
        match (seq, &mut self.stateful) {
            (Some(seq), Some(_)) if self.invocation.is_some() => self.invocation_seq = seq,
            (Some(seq), Some(st)) => st.executed(seq),
            _ => {}
        }
    }

    /// Whether an invocation goes over the connection's rate limit.
    fn over_limit(&mut self, msg: &HubMessage) -> bool {
        let per_second = self.ctx.settings.invocations_per_second;
        let is_invocation = matches!(msg, HubMessage::Invocation { .. } | HubMessage::StreamInvocation { .. });
        let Some(rate) = std::num::NonZeroU32::new(per_second).filter(|_| is_invocation) else { return false };
        let limiter = self.limiter.get_or_insert_with(|| {
            let burst = rate.saturating_mul(std::num::NonZeroU32::new(2).expect("non-zero"));
            Box::new(governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(burst)))
        });
        limiter.check().is_err()
    }
}

/// The end-to-end latency of what was just written (handed to the kernel, or to the write
/// buffer while the kernel refuses bytes), measured from each frame's origin. Another
/// process's clock set the origin: a frame that seems to come from the future counts as 0.
fn record_latency(written: &[Frame]) {
    let mut origins = written.iter().map(|f| f.origin_ms).filter(|o| *o > 0).peekable();
    if origins.peek().is_none() {
        return;
    }
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let histogram = metrics::histogram!(super::metrics_names::NOTIFICATION_LATENCY);
    origins.for_each(|origin| histogram.record(now_ms.saturating_sub(origin) as f64 / 1e3));
}

/// A Close the client may answer by reconnecting.
fn reconnect(reason: &'static str) -> CloseRequest {
    CloseRequest { error: Some("Connection closed with an error.".into()), allow_reconnect: true, reason, hand_over: false }
}

fn protocol_error(err: &ProtocolError) -> CloseRequest {
    match err {
        // Too large: the client may reconnect and behave (ASP.NET allows it).
        ProtocolError::TooLarge(_) => CloseRequest {
            error: Some("Connection closed with an error.".into()),
            allow_reconnect: true,
            reason: "message-too-large",
            hand_over: false,
        },
        // Malformed input would be malformed again after a reconnect.
        ProtocolError::Invalid(_) => CloseRequest {
            error: Some("Connection closed with an error.".into()),
            allow_reconnect: false,
            reason: "protocol-error",
            hand_over: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn any_expiry_becomes_an_instant_without_overflow() {
        let start = Instant::now();
        assert!(instant_of(0) <= Instant::now(), "an expiry in the past is now");
        assert!(instant_of(u64::MAX) >= start + Duration::from_secs(99 * 365 * 86_400), "one beyond the clock is far away");
        let in_a_minute = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 60;
        let at = instant_of(in_a_minute);
        assert!(at > start + Duration::from_secs(58) && at < start + Duration::from_secs(62));
    }
}
