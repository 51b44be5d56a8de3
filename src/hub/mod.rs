//! A generic ASP.NET Core SignalR-compatible hub server. Layers, each knowing only the one
//! below: `protocol` (bytes <-> messages), `socket` (WebSocket frames on the upgraded TCP
//! stream), `session` (one connection's loop: handshake, keep-alive, dispatch), `lifetime` (the local registry and fan-out through the `Backplane` seam), and the
//! application's `Hub` (its methods). Nothing here knows about orders.

pub mod connection;
pub mod endpoint;
pub mod lifetime;
pub mod limits;
pub mod negotiate;
pub mod protocol;
pub mod resume;
pub mod session;
pub mod socket;
pub mod stateful;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use protocol::HubMessage;
use serde_json::Value;

pub use connection::{CloseRequest, ConnectionHandle};
pub use lifetime::{HubLifetime, Origin};

/// Metric names of the hub (one list, for dashboards).
pub mod metrics_names {
    pub const CONNECTIONS: &str = "contoso_hub_connections";
    pub const CONNECTS: &str = "contoso_hub_connects_total";
    pub const DISCONNECTS: &str = "contoso_hub_disconnects_total";
    pub const HANDSHAKE_FAILURES: &str = "contoso_hub_handshake_failures_total";
    pub const MESSAGES_IN: &str = "contoso_hub_messages_received_total";
    pub const MESSAGES_OUT: &str = "contoso_hub_messages_sent_total";
    pub const QUEUE_FULL_CLOSES: &str = "contoso_hub_queue_full_closes_total";
    pub const REFUSED: &str = "contoso_hub_connections_refused_total";
    pub const INVOCATIONS_LIMITED: &str = "contoso_hub_invocations_rate_limited_total";
    pub const INVOCATION_DURATION: &str = "contoso_hub_invocation_duration_seconds";
    /// Stateful reconnect: resumes by outcome (resumed, unknown, in-use, overflowed, unavailable).
    pub const STATEFUL_RESUMES: &str = "contoso_hub_stateful_resumes_total";
    /// Stateful connections whose unacknowledged messages went past the buffer (no longer resumable).
    pub const STATEFUL_OVERFLOWS: &str = "contoso_hub_stateful_overflows_total";
    pub const BACKPLANE_PUBLISHED: &str = "contoso_backplane_messages_published_total";
    pub const BACKPLANE_RECEIVED: &str = "contoso_backplane_messages_received_total";
    /// From a message's origin (for contoso, the order's acceptance) to its write to a socket.
    pub const NOTIFICATION_LATENCY: &str = "contoso_notification_latency_seconds";
}

/// Timeouts and limits of the hub (ASP.NET Core's defaults unless configured).
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Send a Ping after this long without sending anything.
    pub keep_alive: Duration,
    /// Close a connection that sent nothing for this long, counted from the handshake.
    pub client_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Largest incoming hub message.
    pub max_message_size: usize,
    /// Outgoing messages queued per connection before it counts as too slow and is closed.
    pub send_queue: usize,
    /// Lifetime of a negotiate connection token.
    pub negotiate_token_ttl: Duration,
    /// Connections this process takes; 0: no limit.
    pub max_connections: usize,
    /// Connections one user may hold on this process; 0: no limit.
    pub max_connections_per_user: usize,
    /// Close a connection when its token expires (it reconnects with a fresh one).
    pub close_on_token_expiry: bool,
    /// Invocations per second one connection may make, in bursts of twice as many; 0: no limit.
    pub invocations_per_second: u32,
    /// Stateful reconnect's window and buffer; `None`: not offered.
    pub stateful_reconnect: Option<resume::Limits>,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(15),
            client_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
            max_message_size: 32 * 1024,
            send_queue: 64,
            negotiate_token_ttl: Duration::from_secs(60),
            max_connections: 50_000,
            max_connections_per_user: 32,
            close_on_token_expiry: true,
            invocations_per_second: 10,
            stateful_reconnect: Some(resume::Limits::default()),
        }
    }
}

/// Who invokes a hub method: the connection (to push to it alone) and its user.
pub struct Caller {
    pub connection: ConnectionHandle,
}

impl Caller {
    pub fn user_id(&self) -> &str {
        self.connection.user_id()
    }
}

/// Why an invocation failed; `client_message` is ASP.NET Core's text for each case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("method does not exist")]
    MethodNotFound,
    #[error("invocation provides {given} argument(s) but target expects {expected}")]
    ArgumentCount { expected: usize, given: usize },
    #[error("error binding arguments")]
    Binding,
    /// A `HubException`: its message reaches the client.
    #[error("{0}")]
    Exception(String),
    /// Anything else: logged, and the client gets the generic text.
    #[error("{0}")]
    Unexpected(String),
}

impl HubError {
    pub fn client_message(&self, method: &str) -> String {
        match self {
            HubError::MethodNotFound => {
                format!("Failed to invoke '{method}' due to an error on the server. HubException: Method does not exist.")
            }
            HubError::ArgumentCount { .. } | HubError::Binding => format!("Failed to invoke '{method}' due to an error on the server."),
            HubError::Exception(msg) => format!("An unexpected error occurred invoking '{method}' on the server. HubException: {msg}"),
            HubError::Unexpected(_) => format!("An unexpected error occurred invoking '{method}' on the server."),
        }
    }
}

/// The application's hub: its methods, looked up case-insensitively by the implementation.
#[async_trait]
pub trait Hub: Send + Sync + 'static {
    fn has_method(&self, name: &str) -> bool;
    async fn invoke(&self, caller: &Caller, method: &str, arguments: Vec<Value>) -> Result<Value, HubError>;

    /// Stateful reconnect: the cursor of a message this hub pushed (an id in the hub's own
    /// order), from which `missed` can tell what came after it. `None`: not replayable.
    fn cursor(&self, _msg: &HubMessage) -> Option<String> {
        None
    }

    /// Stateful reconnect: what was pushed to `caller`'s user after `cursor` (or since
    /// `since_ms`, unix ms, when nothing with a cursor was sent), oldest first, each message
    /// with its cursor: what a resumed connection missed while it had no socket.
    async fn missed(&self, _caller: &Caller, _cursor: Option<&str>, _since_ms: u64) -> Result<Vec<(HubMessage, String)>, HubError> {
        Ok(Vec::new())
    }
}

/// Everything a session needs, shared by all connections of one hub endpoint.
pub struct HubContext {
    pub lifetime: Arc<HubLifetime>,
    pub hub: Arc<dyn Hub>,
    pub settings: HubSettings,
    pub limits: Arc<limits::ConnectionLimits>,
    /// Stateful reconnect, when offered.
    pub resume: Option<Arc<resume::Resume>>,
}

impl HubContext {
    pub fn new(lifetime: Arc<HubLifetime>, hub: Arc<dyn Hub>, settings: HubSettings) -> Self {
        let limits = limits::ConnectionLimits::new(settings.max_connections, settings.max_connections_per_user);
        Self { lifetime, hub, settings, limits, resume: None }
    }

    /// Offers stateful reconnect with `resume`, and keeps its records alive while connections are open.
    pub fn with_resume(mut self, resume: Arc<resume::Resume>) -> Self {
        let lifetime = Arc::downgrade(&self.lifetime);
        resume.upkeep(move || Some(lifetime.upgrade()?.snapshot().iter().filter(|c| c.is_stateful()).map(|c| c.id().clone()).collect()));
        self.resume = Some(resume);
        self
    }
}
