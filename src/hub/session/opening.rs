//! The start of a hub connection, before its loop: the handshake (a new connection, with the
//! record of a stateful one), or a resume (no handshake: the client's Sequence, then what the
//! connection had not acknowledged and what it missed while it had no socket).

use std::{
    future::{Future, poll_fn},
    pin::Pin,
    sync::Arc,
    task::Poll,
};

use bytes::BytesMut;
use tokio::time::Sleep;

use super::{CLOSE_GRACE, MAX_BATCH};
use crate::hub::{
    Caller, ConnectionHandle, HubContext,
    connection::Frame,
    metrics_names as m,
    protocol::{HANDSHAKE_OK, HandshakeError, HubMessage, Protocol, parse_handshake},
    resume::{Claimed, NewRecord, Resume, ResumeError},
    socket::{Read, WsSocket},
    stateful::Stateful,
};

/// The start of a connection: who it is for.
pub(super) struct Opening<'a> {
    pub(super) ctx: &'a Arc<HubContext>,
    pub(super) id: Arc<str>,
    pub(super) user: Arc<str>,
}

impl Opening<'_> {
    /// The handshake, the record of a stateful connection, the reply, the registration.
    pub(super) async fn start(
        self,
        ws: &mut WsSocket,
        records: &mut BytesMut,
        timer: Pin<&mut Sleep>,
        stateful: bool,
    ) -> Option<(ConnectionHandle, Option<Box<Stateful>>)> {
        let ctx = self.ctx;
        let protocol = match handshake(ws, records, timer, ctx.settings.max_message_size).await {
            Ok(p) => p,
            Err(err) => return refuse(ws, err).await,
        };
        let stateful = match (&ctx.resume, stateful) {
            // Without its record the connection could not be resumed, and its id, never seen by
            // the store, would pass for a new one at the next upgrade: refused instead, as an
            // upgrade the store cannot decide is (the client connects again).
            (Some(resume), true) if !create_record(resume, &self.id, &self.user, protocol).await => {
                return refuse(ws, Some(HandshakeError::StateUnavailable)).await;
            }
            (Some(resume), true) => Some(Box::new(Stateful::new(resume.clone(), self.id.clone(), protocol))),
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
    pub(super) async fn resume(
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
                vec![(
                    Frame::from(protocol.encode_to_bytes(&HubMessage::push(crate::hub::lifetime::RESUME_NEEDED, Vec::new()))),
                    String::new(),
                )]
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

/// A failed handshake: the error record (none after a timeout or a closed socket), then Close.
async fn refuse<T>(ws: &mut WsSocket, err: Option<HandshakeError>) -> Option<T> {
    metrics::counter!(m::HANDSHAKE_FAILURES).increment(1);
    if let Some(err) = err {
        let _ = ws.write_data(&err.record(), false);
    }
    let _ = ws.write_close();
    let _ = tokio::time::timeout(CLOSE_GRACE, poll_fn(|cx| ws.poll_flush(cx))).await;
    None
}

/// Starts the record of a new stateful connection; `false` when the store fails or the id is
/// taken (two sockets raced with one fresh token).
async fn create_record(resume: &Resume, id: &str, user: &str, protocol: Protocol) -> bool {
    let created_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let record = NewRecord { id, user, protocol, owner: &resume.instance, created_ms };
    let created = match store_fails_for(user) {
        true => Err(ResumeError::Unavailable("fail point resume-create".into())),
        false => resume.store.create(record, resume.limits).await,
    };
    match created {
        Ok(created) => created,
        Err(err) => {
            tracing::warn!(error = %err, "cannot keep a stateful connection's record: its handshake is refused");
            false
        }
    }
}

/// Whether the store is to fail creating `user`'s records: only in tests, built with the
/// `failpoints` feature and `resume-create` set to `return(<user>)` (the store fails between
/// the upgrade's checks and the record's creation, which no outage times reliably).
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
fn store_fails_for(user: &str) -> bool {
    fail::fail_point!("resume-create", |failing: Option<String>| failing.as_deref() == Some(user));
    false
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
