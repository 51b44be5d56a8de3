//! One stateful-reconnect connection's accounts, for its socket loop: ids of counted messages
//! both ways, the client's Acks, which client messages were executed, and the journal: every
//! counted message is kept in the `ResumeStore` before it is written, so whichever process the
//! client resumes on can send again what it did not acknowledge.

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::{
    Hub,
    connection::Frame,
    protocol::{HubMessage, Protocol},
    resume::{Claimed, Resume, ResumeError, Synced, Update},
};

type SyncFuture = Pin<Box<dyn Future<Output = Result<Synced, ResumeError>> + Send>>;

/// How long live messages are compared with the catch-up sent after a resume: a message
/// published while the catch-up was read arrives both ways.
const DEDUPE_FOR: Duration = Duration::from_secs(10);
/// A client Ack alone is recorded at most this often; otherwise it rides with the next
/// messages kept. Until then a resume sends a few acknowledged messages again (the client drops
/// what it has), which costs less than one store call per Ack.
const ACK_ALONE_EVERY: Duration = Duration::from_secs(10);

/// Why the journal cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// Another process took the connection over (or its record expired): this socket is stale.
    Lost,
    /// The store failed: what was sent can no longer be vouched for.
    Failed,
}

pub struct Stateful {
    resume: Arc<Resume>,
    id: Arc<str>,
    protocol: Protocol,
    /// Whether messages are kept for a resume (not past the buffer, a record exists).
    journaled: bool,
    /// The last id given to a counted message sent, and the client's last Ack.
    out_seq: u64,
    acked: u64,
    acked_saved: u64,
    acked_saved_at: Instant,
    /// Counted client messages: the last received, the last executed, the last whose execution
    /// is recorded (what the server acknowledges), the last acknowledged.
    in_seq: u64,
    in_done: u64,
    in_saved: u64,
    in_acked: u64,
    /// Client messages up to this id ran before the resume: their resends are skipped.
    skip_until: u64,
    cursor: Option<String>,
    /// The sync in flight: the frames it keeps, written once it is done, and the `in_done` it records.
    pending: Option<(SyncFuture, Vec<Frame>, u64)>,
    /// Messages the connection missed while it had no socket, sent before anything newer.
    catch_up: Vec<Frame>,
    /// Cursors of what a resume sent again and of the catch-up, to drop the same messages
    /// arriving live, until the deadline.
    replayed: Option<(HashSet<String>, Instant)>,
}

impl Stateful {
    /// A new connection, once its record is created.
    pub fn new(resume: Arc<Resume>, id: Arc<str>, protocol: Protocol) -> Self {
        Self {
            resume,
            id,
            protocol,
            journaled: true,
            out_seq: 0,
            acked: 0,
            acked_saved: 0,
            acked_saved_at: Instant::now(),
            in_seq: 0,
            in_done: 0,
            in_saved: 0,
            in_acked: 0,
            skip_until: 0,
            cursor: None,
            pending: None,
            catch_up: Vec::new(),
            replayed: None,
        }
    }

    /// A resumed connection: the client's next message is `client_first`; `catch_up` (with
    /// each message's cursor) follows the journal sent again. Live messages that arrive as
    /// copies of either (published just before the last holder let go, delivered here just
    /// after the connection registered) are dropped.
    pub fn resumed(
        resume: Arc<Resume>,
        id: Arc<str>,
        claimed: &Claimed,
        client_first: u64,
        catch_up: Vec<(Frame, String)>,
        hub: &dyn Hub,
    ) -> Self {
        let mut st = Self::new(resume, id, claimed.protocol);
        st.out_seq = claimed.acked + claimed.journal.len() as u64;
        (st.acked, st.acked_saved) = (claimed.acked, claimed.acked);
        st.in_seq = client_first.saturating_sub(1);
        (st.in_done, st.in_saved, st.skip_until) = (claimed.in_done, claimed.in_done, claimed.in_done);
        st.cursor = claimed.cursor.clone();
        let resent = claimed.journal.iter().filter_map(|b| cursor_of(claimed.protocol, b, hub));
        let replayed: HashSet<String> = catch_up.iter().map(|(_, c)| c.clone()).chain(resent).collect();
        st.replayed = (!replayed.is_empty()).then(|| (replayed, Instant::now() + DEDUPE_FOR));
        st.catch_up = catch_up.into_iter().map(|(f, _)| f).collect();
        st
    }

    /// A counted client message arrived: its id, and whether to run it (not when it is the
    /// resend of one that ran before the drop).
    pub fn received(&mut self) -> (u64, bool) {
        self.in_seq += 1;
        let run = self.in_seq > self.skip_until;
        if !run {
            self.in_done = self.in_done.max(self.in_seq);
        }
        (self.in_seq, run)
    }

    /// Client message `seq` has run (and queued its completion, if any).
    pub fn executed(&mut self, seq: u64) {
        self.in_done = self.in_done.max(seq);
        if !self.journaled {
            self.in_saved = self.in_done;
        }
    }

    /// The client's Ack: what it holds, up to what was sent.
    pub fn client_ack(&mut self, seq: u64) {
        self.acked = self.acked.max(seq.min(self.out_seq));
    }

    pub fn syncing(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether a sync is due with nothing new to send: the catch-up, an execution to record, or
    /// an Ack not recorded for a while.
    pub fn wants_sync(&self) -> bool {
        let ack_due = self.acked > self.acked_saved && self.acked_saved_at.elapsed() >= ACK_ALONE_EVERY;
        self.journaled && (!self.catch_up.is_empty() || self.in_done > self.in_saved || ack_due)
    }

    /// Messages to send: kept first when journaled (returns nothing yet; `poll_sync` returns
    /// them once kept), otherwise returned to be written now.
    pub fn send(&mut self, frames: Vec<Frame>, hub: &dyn Hub) -> Option<Vec<Frame>> {
        let frames = self.with_catch_up(frames, hub);
        self.out_seq += frames.len() as u64;
        if !self.journaled {
            return Some(frames);
        }
        if let Some(cursor) = frames.iter().rev().find_map(|f| cursor_of(self.protocol, &f.bytes, hub)) {
            self.cursor = Some(cursor);
        }
        let fut = self.sync_future(&frames, false);
        self.pending = Some((fut, frames, self.in_done));
        None
    }

    /// The catch-up ahead of `frames`, and `frames` without the messages the catch-up already holds.
    fn with_catch_up(&mut self, mut frames: Vec<Frame>, hub: &dyn Hub) -> Vec<Frame> {
        if let Some((replayed, until)) = &mut self.replayed {
            if Instant::now() < *until {
                frames.retain(|f| cursor_of(self.protocol, &f.bytes, hub).is_none_or(|c| !replayed.remove(&c)));
            }
            if replayed.is_empty() || Instant::now() >= *until {
                self.replayed = None;
            }
        }
        if self.catch_up.is_empty() {
            return frames;
        }
        let mut all = std::mem::take(&mut self.catch_up);
        all.extend(frames);
        all
    }

    fn sync_future(&mut self, frames: &[Frame], detach: bool) -> SyncFuture {
        let entries: Vec<Bytes> = frames.iter().map(|f| f.bytes.clone()).collect();
        let (resume, id) = (self.resume.clone(), self.id.clone());
        let (in_done, acked, cursor) = (self.in_done, self.acked, self.cursor.clone());
        if acked > self.acked_saved {
            (self.acked_saved, self.acked_saved_at) = (acked, Instant::now());
        }
        Box::pin(async move {
            let update = Update { entries: &entries, in_done, acked, cursor: cursor.as_deref(), detach };
            resume.store.sync(&id, &resume.instance, update, resume.limits).await
        })
    }

    /// The sync in flight: once done, the frames it kept, to be written now.
    pub fn poll_sync(&mut self, cx: &mut Context<'_>) -> Poll<Result<Vec<Frame>, Broken>> {
        let Some((fut, _, _)) = &mut self.pending else { return Poll::Ready(Ok(Vec::new())) };
        let res = std::task::ready!(fut.as_mut().poll(cx));
        let (_, frames, in_done) = self.pending.take().expect("pending");
        Poll::Ready(self.synced(res, in_done).map(|()| frames))
    }

    fn synced(&mut self, res: Result<Synced, ResumeError>, in_done: u64) -> Result<(), Broken> {
        match res {
            Ok(Synced::Kept) => {}
            Ok(Synced::Overflowed) => {
                metrics::counter!(super::metrics_names::STATEFUL_OVERFLOWS).increment(1);
                self.journaled = false;
            }
            Ok(Synced::Lost) => return Err(Broken::Lost),
            Err(err) => {
                tracing::warn!(error = %err, "cannot keep a stateful connection's messages: closing it");
                return Err(Broken::Failed);
            }
        }
        self.in_saved = self.in_saved.max(in_done);
        Ok(())
    }

    /// Starts a sync without new messages (the catch-up, an Ack or an execution to record).
    pub fn start_sync(&mut self, hub: &dyn Hub) {
        let _written_now = self.send(Vec::new(), hub);
    }

    /// The Ack the server owes the client, if any: up to the last execution recorded.
    pub fn ack_due(&mut self) -> Option<Bytes> {
        (self.in_saved > self.in_acked).then(|| {
            self.in_acked = self.in_saved;
            self.protocol.encode_to_bytes(&HubMessage::Ack { sequence_id: self.in_saved })
        })
    }

    /// The socket is gone but the connection is not: keeps what was never written and starts
    /// the window in which any process may resume it.
    pub async fn hand_over(&mut self, unsent: Vec<Frame>, hub: &dyn Hub) {
        if let Some((fut, _, in_done)) = self.pending.take()
            && self.synced(fut.await, in_done).is_err()
        {
            return;
        }
        if !self.journaled {
            return;
        }
        let frames = self.with_catch_up(unsent, hub);
        self.out_seq += frames.len() as u64;
        if let Some(cursor) = frames.iter().rev().find_map(|f| cursor_of(self.protocol, &f.bytes, hub)) {
            self.cursor = Some(cursor);
        }
        let fut = self.sync_future(&frames, true);
        if let Err(err) = fut.await {
            tracing::warn!(error = %err, "cannot release a stateful connection for a resume");
        }
    }

    /// The connection ended for good (a Close was sent): its record goes.
    pub async fn forget(&mut self) {
        if let Some((fut, _, _)) = self.pending.take() {
            let _ = fut.await;
        }
        if let Err(err) = self.resume.store.forget(&self.id, &self.resume.instance).await {
            tracing::debug!(error = %err, "cannot forget a stateful connection; it expires with its window");
        }
    }
}

/// The cursor the hub gives a message (a frame holds one record).
fn cursor_of(protocol: Protocol, bytes: &Bytes, hub: &dyn Hub) -> Option<String> {
    let mut buf = BytesMut::from(&bytes[..]);
    match protocol.parse(&mut buf, usize::MAX) {
        Ok(Some(msg)) => hub.cursor(&msg),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use async_trait::async_trait;
    use serde_json::{Value, json};

    use super::*;
    use crate::hub::{
        Caller, HubError,
        resume::{Limits, MemoryResumeStore, NewRecord},
    };

    /// A hub whose pushes carry their cursor in `{"id": ...}`.
    struct Ids;

    #[async_trait]
    impl Hub for Ids {
        fn has_method(&self, _: &str) -> bool {
            false
        }
        async fn invoke(&self, _: &Caller, _: &str, _: Vec<Value>) -> Result<Value, HubError> {
            Err(HubError::MethodNotFound)
        }
        fn cursor(&self, msg: &HubMessage) -> Option<String> {
            match msg {
                HubMessage::Invocation { arguments, .. } => arguments.first()?.get("id")?.as_str().map(str::to_owned),
                _ => None,
            }
        }
    }

    fn push(protocol: Protocol, id: &str) -> Frame {
        Frame::from(protocol.encode_to_bytes(&HubMessage::push("N", vec![json!({ "id": id })])))
    }

    async fn connection(protocol: Protocol) -> (Arc<Resume>, Stateful) {
        let resume = Arc::new(Resume::new(Arc::new(MemoryResumeStore::default()), Limits::default()));
        let record = NewRecord { id: "c", user: "u", protocol, owner: &resume.instance, created_ms: 1 };
        assert!(resume.store.create(record, resume.limits).await.unwrap());
        (resume.clone(), Stateful::new(resume, "c".into(), protocol))
    }

    /// Sends `frames` and waits until they are kept; returns what may now be written.
    async fn send(st: &mut Stateful, frames: Vec<Frame>) -> Vec<Frame> {
        assert!(st.send(frames, &Ids).is_none(), "a journaled connection keeps before it writes");
        std::future::poll_fn(|cx| st.poll_sync(cx)).await.unwrap()
    }

    #[tokio::test]
    async fn messages_are_kept_before_they_are_written_with_the_cursor_of_the_last_one() {
        for protocol in Protocol::ALL {
            let (resume, mut st) = connection(protocol).await;
            let written = send(&mut st, vec![push(protocol, "1"), push(protocol, "2")]).await;
            assert_eq!(written.len(), 2);
            st.client_ack(1);
            st.start_sync(&Ids);
            std::future::poll_fn(|cx| st.poll_sync(cx)).await.unwrap();
            st.hand_over(vec![push(protocol, "3")], &Ids).await;
            let claimed = resume.claim("c", "u").await.unwrap();
            assert_eq!(claimed.acked, 1, "{protocol:?}");
            assert_eq!(claimed.journal, vec![push(protocol, "2").bytes, push(protocol, "3").bytes], "{protocol:?}");
            assert_eq!(claimed.cursor.as_deref(), Some("3"), "{protocol:?}: the cursor of the last message kept");
        }
    }

    #[tokio::test]
    async fn a_resumed_connection_skips_what_ran_and_drops_live_copies_of_its_catch_up() {
        let protocol = Protocol::Json;
        let (resume, mut st) = connection(protocol).await;
        let (first, run) = st.received();
        assert!(run);
        st.executed(first);
        send(&mut st, Vec::new()).await;
        assert_eq!(st.ack_due(), Some(protocol.encode_to_bytes(&HubMessage::Ack { sequence_id: 1 })), "acknowledged once recorded");
        assert_eq!(st.ack_due(), None);
        st.hand_over(vec![push(protocol, "6")], &Ids).await;

        let claimed = resume.claim("c", "u").await.unwrap();
        let catch_up = vec![(push(protocol, "7"), "7".to_owned())];
        let mut st = Stateful::resumed(resume.clone(), "c".into(), &claimed, 1, catch_up, &Ids);
        assert_eq!(st.received(), (1, false), "the client's resend of a message that ran");
        assert_eq!(st.received(), (2, true));
        let written = send(&mut st, vec![push(protocol, "6"), push(protocol, "7"), push(protocol, "8")]).await;
        let ids: Vec<Option<String>> = written.iter().map(|f| cursor_of(protocol, &f.bytes, &Ids)).collect();
        assert_eq!(ids, vec![Some("7".into()), Some("8".into())], "the catch-up first; live copies of it and of the resent 6 dropped");
        assert_eq!(st.out_seq, 3, "6 (sent again), 7, 8");
    }

    #[tokio::test]
    async fn past_the_buffer_messages_are_written_without_being_kept() {
        let protocol = Protocol::Json;
        let resume = Arc::new(Resume::new(Arc::new(MemoryResumeStore::default()), Limits { max_bytes: 1024, ..Limits::default() }));
        let record = NewRecord { id: "c", user: "u", protocol, owner: &resume.instance, created_ms: 1 };
        resume.store.create(record, resume.limits).await.unwrap();
        let mut st = Stateful::new(resume.clone(), "c".into(), protocol);
        let big = Frame::from(Bytes::from(vec![b'x'; 2000]));
        assert_eq!(send(&mut st, vec![big.clone()]).await.len(), 1, "written anyway");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(st.send(vec![big], &Ids).is_some(), "no longer kept");
        assert!(st.poll_sync(&mut cx).is_ready());
        st.hand_over(Vec::new(), &Ids).await;
        assert_eq!(resume.claim("c", "u").await.unwrap_err(), crate::hub::resume::Refusal::Overflowed);
    }
}
