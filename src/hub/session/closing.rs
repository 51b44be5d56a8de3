//! The end of a hub connection, after its loop: a Close record and the WebSocket Close for one
//! that ends, or, for a stateful connection whose socket dropped (or that a drain hands over),
//! what it never wrote kept for its resume on any process.

use std::future::poll_fn;

use super::{CLOSE_GRACE, End, HAND_OVER_WAIT, Live, disconnect};
use crate::hub::{CloseRequest, connection::Frame, protocol::HubMessage};

impl Live<'_> {
    /// After the loop: a stateful connection whose socket dropped (or that a drain hands over)
    /// waits for its resume; any other connection ends, with its Close record.
    pub(super) async fn end(mut self, end: End) {
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
