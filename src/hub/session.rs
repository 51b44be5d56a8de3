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

use super::{
    Caller, CloseRequest, ConnectionHandle, HubContext, HubError,
    connection::{Frame, Outgoing},
    limits::Slot,
    metrics_names as m,
    protocol::{Completion, HANDSHAKE_OK, HandshakeError, HubMessage, Protocol, ProtocolError, parse_handshake},
    resume::{Claimed, NewRecord, Resume},
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

type Invocation = Pin<Box<dyn Future<Output = ()> + Send>>;

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

/// The start of a connection: who it is for.
struct Opening<'a> {
    ctx: &'a Arc<HubContext>,
    id: Arc<str>,
    user: Arc<str>,
}

impl Opening<'_> {
    /// The handshake, the record of a stateful connection, the reply, the registration.
    async fn start(
        self,
        ws: &mut WsSocket,
        records: &mut BytesMut,
        timer: Pin<&mut Sleep>,
        stateful: bool,
    ) -> Option<(ConnectionHandle, Option<Box<Stateful>>)> {
        let ctx = self.ctx;
        let protocol = match handshake(ws, records, timer, ctx.settings.max_message_size).await {
            Ok(p) => p,
            Err(err) => {
                metrics::counter!(m::HANDSHAKE_FAILURES).increment(1);
                if let Some(err) = err {
                    let _ = ws.write_data(&err.record(), false);
                }
                let _ = ws.write_close();
                let _ = tokio::time::timeout(CLOSE_GRACE, poll_fn(|cx| ws.poll_flush(cx))).await;
                return None;
            }
        };
        let stateful = match (&ctx.resume, stateful) {
            (Some(resume), true) => Some(Box::new(Stateful::new(
                resume.clone(),
                self.id.clone(),
                protocol,
                create_record(resume, &self.id, &self.user, protocol).await,
            ))),
            _ => None,
        };
        // The reply goes out before the connection is registered, so no push can precede it.
        ws.write_data(HANDSHAKE_OK, protocol.is_binary()).ok()?;
        let conn = match stateful {
            Some(_) => ConnectionHandle::stateful(self.id, self.user, protocol, ctx.settings.send_queue),
            None => ConnectionHandle::new(self.id, self.user, protocol, ctx.settings.send_queue),
        };
        ctx.lifetime.add(&conn).await;
        Some((conn, stateful))
    }

    /// A resume: the client's Sequence (its first message, no handshake), the registration,
    /// what the connection missed while it had no socket, then the server's Sequence and the
    /// messages the client had not acknowledged, sent again.
    async fn resume(
        self,
        ws: &mut WsSocket,
        records: &mut BytesMut,
        timer: Pin<&mut Sleep>,
        claimed: Claimed,
    ) -> Option<(ConnectionHandle, Option<Box<Stateful>>)> {
        let ctx = self.ctx;
        let resume = ctx.resume.clone().expect("a resume is admitted only with stateful reconnect on");
        let protocol = claimed.protocol;
        let Some(client_first) = first_sequence(ws, records, timer, protocol, ctx.settings.max_message_size).await else {
            // Nothing was sent: the record stays resumable for another attempt.
            let mut st = Stateful::resumed(resume, self.id, &claimed, 1, Vec::new(), &*ctx.hub);
            st.hand_over(Vec::new(), &*ctx.hub).await;
            return None;
        };
        let conn = ConnectionHandle::stateful(self.id.clone(), self.user, protocol, ctx.settings.send_queue);
        ctx.lifetime.add(&conn).await;
        let caller = Caller { connection: conn.clone() };
        let catch_up = match ctx.hub.missed(&caller, claimed.cursor.as_deref(), claimed.created_ms).await {
            Ok(missed) => missed.into_iter().map(|(msg, cursor)| (Frame::from(protocol.encode_to_bytes(&msg)), cursor)).collect(),
            Err(err) => {
                // The client module replays on its own when asked; the official client cannot.
                tracing::warn!(error = %err, "cannot read what a resumed connection missed");
                vec![(Frame::from(protocol.encode_to_bytes(&HubMessage::push(super::lifetime::RESUME_NEEDED, Vec::new()))), String::new())]
            }
        };
        let mut resent = vec![Frame::from(protocol.encode_to_bytes(&HubMessage::Sequence { sequence_id: claimed.acked + 1 }))];
        resent.extend(claimed.journal.iter().cloned().map(Frame::from));
        let st = Stateful::resumed(resume, self.id, &claimed, client_first, catch_up, &*ctx.hub);
        metrics::counter!(m::STATEFUL_RESUMES, "outcome" => "resumed").increment(1);
        tracing::debug!(resent = claimed.journal.len(), "stateful connection resumed");
        if write_all(ws, &resent, protocol).is_err() {
            // The socket is gone already: the connection waits for the next resume.
            let mut st = st;
            st.hand_over(Vec::new(), &*ctx.hub).await;
            ctx.lifetime.remove(&conn);
            return None;
        }
        Some((conn, Some(Box::new(st))))
    }
}

/// Starts the record of a new stateful connection; `false` (the connection then cannot be
/// resumed, but keeps the protocol's Acks) when the store fails or the id is taken.
async fn create_record(resume: &Resume, id: &str, user: &str, protocol: Protocol) -> bool {
    let created_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let record = NewRecord { id, user, protocol, owner: &resume.instance, created_ms };
    match resume.store.create(record, resume.limits).await {
        Ok(created) => created,
        Err(err) => {
            tracing::warn!(error = %err, "cannot keep a stateful connection's record: it cannot be resumed");
            false
        }
    }
}

/// The client's first message on a resumed socket: its Sequence (the id of the first message
/// it sends again). `None`: anything else, an error, or the handshake timeout.
async fn first_sequence(
    ws: &mut WsSocket,
    records: &mut BytesMut,
    mut timer: Pin<&mut Sleep>,
    protocol: Protocol,
    max: usize,
) -> Option<u64> {
    loop {
        match protocol.parse(records, max) {
            Ok(Some(HubMessage::Sequence { sequence_id })) => return Some(sequence_id),
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => return None,
        }
        let read = poll_fn(|cx| match ws.poll_read(cx, records) {
            Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
            Poll::Ready(Ok(Read::Frames)) => Poll::Ready(Some(())),
            Poll::Ready(Ok(Read::Closed) | Err(_)) => Poll::Ready(None),
        });
        read.await?;
    }
}

/// Writes records as they are, batched like the loop's writes.
fn write_all(ws: &mut WsSocket, frames: &[Frame], protocol: Protocol) -> std::io::Result<()> {
    let mut batch = BytesMut::new();
    for f in frames {
        if !batch.is_empty() && batch.len() + f.bytes.len() > MAX_BATCH {
            ws.write_data(&batch, protocol.is_binary())?;
            batch.clear();
        }
        batch.extend_from_slice(&f.bytes);
    }
    if batch.is_empty() { Ok(()) } else { ws.write_data(&batch, protocol.is_binary()) }
}

/// Reads the handshake request; `Err(Some(_))` carries the error record to send. Records the
/// client sent right behind it stay in `records`.
async fn handshake(
    ws: &mut WsSocket,
    records: &mut BytesMut,
    mut timer: Pin<&mut Sleep>,
    max: usize,
) -> Result<Protocol, Option<HandshakeError>> {
    loop {
        if let Some(req) = parse_handshake(records, max)? {
            return Ok(req.protocol);
        }
        let read = poll_fn(|cx| match ws.poll_read(cx, records) {
            Poll::Pending => timer.as_mut().poll(cx).map(|()| Err(Some(HandshakeError::Canceled))),
            Poll::Ready(Ok(Read::Frames)) => Poll::Ready(Ok(())),
            Poll::Ready(Ok(Read::Closed) | Err(_)) => Poll::Ready(Err(None)),
        });
        read.await?;
    }
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

    /// After the loop: a stateful connection whose socket dropped (or that a drain hands over)
    /// waits for its resume; any other connection ends, with its Close record.
    async fn end(mut self, end: End) {
        let conn = self.conn.clone();
        let (gone, lost) = (matches!(end, End::Gone), matches!(end, End::Lost));
        let (queued, request) = match end {
            End::Gone | End::Left | End::Lost => (Vec::new(), None),
            End::Close(queued, request) => (queued, Some(request)),
        };
        let reason = request.as_ref().map_or(if lost { "resumed-elsewhere" } else { "client-closed" }, |r| r.reason);
        let hand_over = self.stateful.is_some() && (gone || request.as_ref().is_some_and(|r| r.hand_over));
        if hand_over {
            // Pushes stop here (the catch-up of the resume covers them); replies are still kept.
            conn.close(CloseRequest { error: None, allow_reconnect: true, reason, hand_over: true });
            self.hand_over(queued, request.is_some()).await;
            // Registered until the record is released: a drain waits for it before the process exits.
            self.ctx.lifetime.remove(&conn);
        } else {
            if let Some(request) = &request {
                // Everyone else learns of it through the handle (the drain waits for it).
                conn.close(request.clone());
            }
            self.ctx.lifetime.remove(&conn);
            if !lost {
                self.finish(queued, request.as_ref()).await;
                if let Some(st) = &mut self.stateful {
                    st.forget().await;
                }
            }
        }
        disconnect(reason);
    }

    /// Keeps what a stateful connection has not written for its resume: the invocation in
    /// flight finishes first (bounded), so a resent invocation is not run twice. `close_socket`:
    /// the socket is still up (a drain) and gets a WebSocket Close, not a hub Close record.
    async fn hand_over(&mut self, mut queued: Vec<Frame>, close_socket: bool) {
        if let Some(invocation) = self.invocation.take()
            && tokio::time::timeout(HAND_OVER_WAIT, invocation).await.is_ok()
            && let Some(st) = &mut self.stateful
        {
            st.executed(self.invocation_seq);
        }
        queued.extend(self.conn.take_queued());
        if let Some(st) = &mut self.stateful {
            st.hand_over(queued, &*self.ctx.hub).await;
        }
        if close_socket {
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                poll_fn(|cx| self.ws.poll_flush(cx)).await?;
                self.ws.write_close()?;
                poll_fn(|cx| self.ws.poll_flush(cx)).await
            })
            .await;
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

    /// Writes what was queued before the close and the Close record, then the WebSocket Close
    /// frame; bounded, because a client that stopped reading cannot take these either.
    async fn finish(&mut self, queued: Vec<Frame>, request: Option<&CloseRequest>) {
        let protocol = self.conn.protocol();
        let mut tail = queued;
        if let Some(req) = request {
            let close = HubMessage::Close { error: req.error.clone(), allow_reconnect: req.allow_reconnect };
            tail.push(protocol.encode_to_bytes(&close).into());
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            poll_fn(|cx| self.ws.poll_flush(cx)).await?;
            self.write_batches(&tail)?;
            self.ws.write_close()?;
            poll_fn(|cx| self.ws.poll_flush(cx)).await
        })
        .await;
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

/// Answers an invocation over the rate limit with an error completion; the connection stays.
/// A non-blocking invocation (no id) is dropped, as it would get no answer anyway.
fn refuse(conn: &ConnectionHandle, msg: HubMessage) {
    metrics::counter!(m::INVOCATIONS_LIMITED).increment(1);
    let (Some(invocation_id), target) = (match msg {
        HubMessage::Invocation { invocation_id, target, .. } => (invocation_id, target),
        HubMessage::StreamInvocation { invocation_id, target, .. } => (Some(invocation_id), target),
        _ => return,
    }) else {
        return;
    };
    let error = format!("Failed to invoke '{target}': too many invocations, retry later.");
    let protocol = conn.protocol();
    conn.send_reply(protocol.encode_to_bytes(&HubMessage::Completion { invocation_id, outcome: Completion::Error(error) }));
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

/// Starts one message from the client: an invocation becomes the future the loop polls until
/// it has queued its completion. Invocations run one at a time, in arrival order.
fn dispatch(ctx: &Arc<HubContext>, conn: &ConnectionHandle, msg: HubMessage) -> Option<Invocation> {
    let protocol = conn.protocol();
    match msg {
        HubMessage::Invocation { invocation_id, target, arguments, .. } => {
            let (ctx, conn) = (ctx.clone(), conn.clone());
            Some(Box::pin(async move {
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
                conn.send_reply(protocol.encode_to_bytes(&HubMessage::Completion { invocation_id, outcome }));
            }))
        }
        HubMessage::StreamInvocation { invocation_id, target, .. } => {
            let error = if ctx.hub.has_method(&target) {
                format!("The client attempted to invoke the non-streaming '{target}' method with a streaming invocation.")
            } else {
                HubError::MethodNotFound.client_message(&target)
            };
            conn.send_reply(protocol.encode_to_bytes(&HubMessage::Completion { invocation_id, outcome: Completion::Error(error) }));
            None
        }
        // No streams and no client results here: nothing to cancel or complete.
        HubMessage::CancelInvocation { .. } | HubMessage::Completion { .. } | HubMessage::StreamItem { .. } | HubMessage::Other(_) => None,
        // Handled by the loop before dispatch.
        HubMessage::Ping | HubMessage::Close { .. } | HubMessage::Ack { .. } | HubMessage::Sequence { .. } => None,
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
