//! One hub connection as the rest of the server sees it: its id, user, protocol and the
//! bounded outbox its socket loop drains. Fan-out never waits on it: a full outbox closes that
//! (slow) connection and nobody else notices. The outbox allocates only while it holds
//! something, because almost every connection is idle almost all the time.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;

use super::{metrics_names as m, protocol::Protocol};

/// Why and how a connection is being closed: the Close record the socket loop sends last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    pub error: Option<String>,
    pub allow_reconnect: bool,
    /// Metric label.
    pub reason: &'static str,
    /// A stateful connection is handed over instead: its socket drops without a Close record,
    /// so the client resumes it on another process (the drain).
    pub hand_over: bool,
}

#[derive(Clone)]
pub struct ConnectionHandle {
    inner: Arc<Inner>,
}

struct Inner {
    id: Arc<str>,
    user_id: Arc<str>,
    protocol: Protocol,
    /// Stateful reconnect: the connection outlives its socket.
    stateful: bool,
    /// Pushes queued before the connection counts as too slow.
    capacity: u32,
    outbox: Mutex<Outbox>,
}

/// Framed bytes waiting to be written, and when their story began (unix ms, 0 when unknown):
/// the socket loop measures the latency of what it writes against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub bytes: Bytes,
    pub origin_ms: u64,
    /// The trace context the write continues, when the message is traced.
    pub trace: Option<std::sync::Arc<str>>,
}

impl From<Bytes> for Frame {
    fn from(bytes: Bytes) -> Self {
        Self { bytes, origin_ms: 0, trace: None }
    }
}

/// What waits to be written, and the socket loop's waker (one lock for both, so a push never
/// misses a loop that is just going to sleep).
#[derive(Default)]
struct Outbox {
    queue: VecDeque<Frame>,
    /// Replies to this connection's own invocations, not counted against `capacity`: the loop
    /// reads no more input while it has unwritten bytes, so they are bounded by what one
    /// invocation answers.
    replies: u32,
    close: Option<CloseRequest>,
    waker: Option<Waker>,
}

/// What the socket loop finds when it looks at the outbox.
pub enum Outgoing {
    /// Bytes to write, in order; more may follow.
    Bytes(Vec<Frame>),
    /// The connection must end: what was queued before the request, then the Close record.
    Close(Vec<Frame>, CloseRequest),
}

impl ConnectionHandle {
    pub fn new(id: Arc<str>, user_id: Arc<str>, protocol: Protocol, capacity: usize) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize) as u32;
        Self { inner: Arc::new(Inner { id, user_id, protocol, stateful: false, capacity, outbox: Mutex::new(Outbox::default()) }) }
    }

    /// A connection with stateful reconnect.
    pub fn stateful(id: Arc<str>, user_id: Arc<str>, protocol: Protocol, capacity: usize) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize) as u32;
        Self { inner: Arc::new(Inner { id, user_id, protocol, stateful: true, capacity, outbox: Mutex::new(Outbox::default()) }) }
    }

    pub fn is_stateful(&self) -> bool {
        self.inner.stateful
    }

    pub fn id(&self) -> &Arc<str> {
        &self.inner.id
    }

    pub fn user_id(&self) -> &Arc<str> {
        &self.inner.user_id
    }

    pub fn protocol(&self) -> Protocol {
        self.inner.protocol
    }

    /// Whether two handles are the same connection (ids can repeat: a token reused).
    pub fn same(&self, other: &ConnectionHandle) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        // A panic while holding this lock cannot leave the queue inconsistent: keep going.
        self.inner.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues framed bytes without waiting. A full queue means the client stopped reading:
    /// the connection is closed (the client may reconnect and replay what it missed).
    pub fn try_send(&self, frame: impl Into<Frame>) -> bool {
        let mut outbox = self.outbox();
        if outbox.close.is_some() {
            return false;
        }
        if outbox.queue.len() as u32 - outbox.replies.min(outbox.queue.len() as u32) >= self.inner.capacity {
            drop(outbox);
            metrics::counter!(m::QUEUE_FULL_CLOSES).increment(1);
            self.close(CloseRequest {
                error: Some("Connection closed with an error.".into()),
                allow_reconnect: true,
                reason: "queue-full",
                hand_over: false,
            });
            return false;
        }
        outbox.queue.push_back(frame.into());
        wake(&mut outbox);
        true
    }

    /// Queues a reply to this connection's own invocation (a completion, a replayed
    /// notification). Never waits and never counts as slowness; `false` once closing, except
    /// while a stateful connection is handed over (the reply is kept for its resume).
    pub fn send_reply(&self, bytes: Bytes) -> bool {
        let mut outbox = self.outbox();
        if outbox.close.as_ref().is_some_and(|c| !(c.hand_over && self.inner.stateful)) {
            return false;
        }
        outbox.queue.push_back(bytes.into());
        outbox.replies += 1;
        wake(&mut outbox);
        true
    }

    /// Asks the socket loop to send a Close record and end the connection. The first request wins.
    pub fn close(&self, request: CloseRequest) {
        let mut outbox = self.outbox();
        if outbox.close.is_none() {
            outbox.close = Some(request);
            wake(&mut outbox);
        }
    }

    pub fn close_request(&self) -> Option<CloseRequest> {
        self.outbox().close.clone()
    }

    /// For the socket loop while its socket is blocked: the close request, or a wake-up when one comes.
    pub fn poll_close_request(&self, cx: &mut Context<'_>) -> Poll<CloseRequest> {
        let mut outbox = self.outbox();
        if let Some(close) = &outbox.close {
            return Poll::Ready(close.clone());
        }
        register(&mut outbox, cx);
        Poll::Pending
    }

    /// For a stateful connection being handed over: whatever is still queued.
    pub fn take_queued(&self) -> Vec<Frame> {
        let mut outbox = self.outbox();
        outbox.replies = 0;
        Vec::from(std::mem::take(&mut outbox.queue))
    }

    /// For the socket loop: takes what is queued, or registers to be woken when something is.
    pub fn poll_outgoing(&self, cx: &mut Context<'_>) -> Poll<Outgoing> {
        let mut outbox = self.outbox();
        // The queue's allocation leaves with what it holds (no copy): an emptied outbox holds
        // no memory.
        let queued = Vec::from(std::mem::take(&mut outbox.queue));
        outbox.replies = 0;
        if let Some(close) = &outbox.close {
            return Poll::Ready(Outgoing::Close(queued, close.clone()));
        }
        if !queued.is_empty() {
            return Poll::Ready(Outgoing::Bytes(queued));
        }
        register(&mut outbox, cx);
        Poll::Pending
    }
}

/// The socket loop's waker, kept for the next push or close request.
fn register(outbox: &mut Outbox, cx: &Context<'_>) {
    if !outbox.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        outbox.waker = Some(cx.waker().clone());
    }
}

fn wake(outbox: &mut Outbox) {
    if let Some(waker) = outbox.waker.take() {
        waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn conn(capacity: usize) -> ConnectionHandle {
        ConnectionHandle::new("c".into(), "u".into(), Protocol::Json, capacity)
    }

    fn poll(c: &ConnectionHandle) -> Poll<Outgoing> {
        c.poll_outgoing(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn an_idle_outbox_holds_no_memory_and_a_push_wakes_the_loop() {
        let c = conn(4);
        assert!(matches!(poll(&c), Poll::Pending));
        assert_eq!(c.inner.outbox.lock().unwrap().queue.capacity(), 0);
        assert!(c.try_send(Bytes::from_static(b"a")));
        assert!(c.try_send(Bytes::from_static(b"b")));
        match poll(&c) {
            Poll::Ready(Outgoing::Bytes(b)) => assert_eq!(b, vec![Frame::from(Bytes::from_static(b"a")), Bytes::from_static(b"b").into()]),
            _ => panic!("expected bytes"),
        }
        assert!(matches!(poll(&c), Poll::Pending));
    }

    #[test]
    fn a_full_outbox_closes_the_connection_but_replies_do_not_count() {
        let c = conn(2);
        for _ in 0..10 {
            assert!(c.send_reply(Bytes::from_static(b"r")));
        }
        assert!(c.try_send(Bytes::from_static(b"1")));
        assert!(c.try_send(Bytes::from_static(b"2")));
        assert!(c.close_request().is_none());
        assert!(!c.try_send(Bytes::from_static(b"3")), "the third push exceeds the bound");
        assert_eq!(c.close_request().map(|r| r.reason), Some("queue-full"));
        match poll(&c) {
            Poll::Ready(Outgoing::Close(queued, req)) => {
                assert_eq!(queued.len(), 12, "what was queued before the close is still written");
                assert!(req.allow_reconnect);
            }
            _ => panic!("expected close"),
        }
        assert!(!c.send_reply(Bytes::from_static(b"late")));
    }

    #[test]
    fn the_first_close_request_wins() {
        let c = conn(2);
        c.close(CloseRequest { error: None, allow_reconnect: true, reason: "first", hand_over: false });
        c.close(CloseRequest { error: None, allow_reconnect: false, reason: "second", hand_over: false });
        assert_eq!(c.close_request().map(|r| r.reason), Some("first"));
    }
}
