//! One hub connection as the rest of the server sees it: its id, user, protocol and the
//! bounded queue its writer drains. Fan-out never waits on it: a full queue closes that
//! (slow) connection and nobody else notices.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{metrics_names as m, protocol::Protocol};

/// Why and how a connection is being closed: the Close record the writer sends last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    pub error: Option<String>,
    pub allow_reconnect: bool,
    /// Metric label.
    pub reason: &'static str,
}

#[derive(Clone)]
pub struct ConnectionHandle {
    inner: Arc<Inner>,
}

struct Inner {
    id: Arc<str>,
    user_id: Arc<str>,
    protocol: Protocol,
    tx: mpsc::Sender<Bytes>,
    /// Cancelled when the connection must end; the writer then sends `close` and closes the socket.
    abort: CancellationToken,
    close: OnceLock<CloseRequest>,
}

impl ConnectionHandle {
    pub fn new(id: Arc<str>, user_id: Arc<str>, protocol: Protocol, tx: mpsc::Sender<Bytes>) -> Self {
        Self { inner: Arc::new(Inner { id, user_id, protocol, tx, abort: CancellationToken::new(), close: OnceLock::new() }) }
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

    pub fn abort_token(&self) -> &CancellationToken {
        &self.inner.abort
    }

    pub fn close_request(&self) -> Option<&CloseRequest> {
        self.inner.close.get()
    }

    /// Queues framed bytes without waiting. A full queue means the client stopped reading:
    /// the connection is closed (the client may reconnect and replay what it missed).
    pub fn try_send(&self, bytes: Bytes) -> bool {
        match self.inner.tx.try_send(bytes) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!(m::QUEUE_FULL_CLOSES).increment(1);
                self.close(CloseRequest {
                    error: Some("Connection closed with an error.".into()),
                    allow_reconnect: true,
                    reason: "queue-full",
                });
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues bytes for this connection's own replies, waiting for room (the caller is this
    /// connection's reader, so waiting slows only this connection down).
    pub async fn send(&self, bytes: Bytes) -> bool {
        tokio::select! {
            res = self.inner.tx.send(bytes) => res.is_ok(),
            () = self.inner.abort.cancelled() => false,
        }
    }

    /// Asks the writer to send a Close record and end the connection. The first request wins.
    pub fn close(&self, request: CloseRequest) {
        let _ = self.inner.close.set(request);
        self.inner.abort.cancel();
    }

    pub fn is_closed(&self) -> bool {
        self.inner.abort.is_cancelled()
    }
}
