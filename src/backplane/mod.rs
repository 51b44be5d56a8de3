//! The backplane seam: pub/sub between notify processes, wire-compatible with ASP.NET Core's
//! Redis backplane (signalr-protocol.md §8). Channel names and the MessagePack envelope live
//! here, in one place; `memory` and `redis` only move bytes.

pub mod canary;
pub mod cluster;
pub mod memory;
pub mod redis;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, thiserror::Error)]
pub enum BackplaneError {
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
}

/// Carries envelopes between notify processes: at most once, like Redis pub/sub. A process
/// receives its own publishes; that loopback is how notifications reach its own sockets.
#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), BackplaneError>;
    /// Called by the lifetime manager on a user's first local connection (ref-counted there).
    /// Never waits: the request is queued in call order (with `unsubscribe`), and the receiver
    /// resolves once the subscription is in place. While the backplane is away the channel
    /// stays wanted and is subscribed when it is back.
    fn subscribe(&self, channel: &str) -> oneshot::Receiver<()>;
    /// Called after a user's last local connection here. Never waits.
    fn unsubscribe(&self, channel: &str);
    /// The single inbound stream of (channel, payload); taken once, at start.
    fn take_inbound(&self) -> Option<mpsc::UnboundedReceiver<(String, Bytes)>>;
    /// Whether messages can flow now (readiness).
    async fn ping(&self) -> Result<(), BackplaneError>;
    /// Bumped after every reconnect: messages published while the backplane was away were
    /// not delivered live. `None` for a backplane that cannot lose its connection.
    fn reconnections(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// Channel names: `{prefix}{hub}:user:{id}` and friends, the prefix glued on with no separator
/// (as StackExchange.Redis writes `ChannelPrefix`).
#[derive(Debug, Clone)]
pub struct Channels {
    base: String,
}

impl Channels {
    pub fn new(prefix: &str, hub_name: &str) -> Self {
        Self { base: format!("{prefix}{hub_name}") }
    }

    pub fn all(&self) -> String {
        format!("{}:all", self.base)
    }

    pub fn user(&self, user_id: &str) -> String {
        format!("{}:user:{user_id}", self.base)
    }

    pub fn connection(&self, connection_id: &str) -> String {
        format!("{}:connection:{connection_id}", self.base)
    }

    /// A channel for the processes' own use (ASP.NET nodes neither read nor write it).
    pub fn internal(&self, name: &str) -> String {
        format!("{}:internal:{name}", self.base)
    }

    /// What a received channel addresses.
    pub fn target<'a>(&self, channel: &'a str) -> Option<Target<'a>> {
        let rest = channel.strip_prefix(self.base.as_str())?.strip_prefix(':')?;
        if rest == "all" {
            Some(Target::All)
        } else if let Some(user) = rest.strip_prefix("user:") {
            Some(Target::User(user))
        } else {
            rest.strip_prefix("connection:").map(Target::Connection)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    All,
    User(&'a str),
    Connection(&'a str),
}

/// The ASP.NET invocation envelope: `[excludedConnectionIds, {protocolName: bin(framed bytes)}]`,
/// with a third item of our own when there is something to add: `{"originMs": <unix ms>,
/// "traceparent": <W3C trace context>}` (each key only when known).
/// ASP.NET reads at least two items and takes the third and fourth only when there are four
/// (client results), so its nodes read ours as they read their own.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    pub excluded: Vec<String>,
    pub payloads: Vec<(String, Bytes)>,
    /// When the story of the message began (for contoso, the order's acceptance), in unix
    /// milliseconds; 0 when unknown. Each process measures its deliveries against it.
    pub origin_ms: u64,
    /// The W3C trace context of the publish, so each receiving process continues the trace.
    pub traceparent: Option<String>,
}

const ORIGIN_MS: &str = "originMs";
const TRACEPARENT: &str = "traceparent";
/// Longer is no trace context (the W3C form is 55 characters): nothing a publisher sends grows unbounded.
const MAX_TRACEPARENT: usize = 128;

impl Envelope {
    /// The framed bytes for the hub protocol called `protocol`, ready to write to a socket as they are.
    pub fn payload(&self, protocol: &str) -> Option<&Bytes> {
        self.payloads.iter().find(|(name, _)| name == protocol).map(|(_, b)| b)
    }

    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(16 + self.payloads.iter().map(|(n, b)| n.len() + b.len() + 8).sum::<usize>());
        let extra = u32::from(self.origin_ms > 0) + u32::from(self.traceparent.is_some());
        rmp::encode::write_array_len(&mut out, if extra > 0 { 3 } else { 2 }).expect("vec");
        rmp::encode::write_array_len(&mut out, self.excluded.len() as u32).expect("vec");
        for id in &self.excluded {
            rmp::encode::write_str(&mut out, id).expect("vec");
        }
        rmp::encode::write_map_len(&mut out, self.payloads.len() as u32).expect("vec");
        for (name, bytes) in &self.payloads {
            rmp::encode::write_str(&mut out, name).expect("vec");
            rmp::encode::write_bin(&mut out, bytes).expect("vec");
        }
        if extra > 0 {
            rmp::encode::write_map_len(&mut out, extra).expect("vec");
        }
        if self.origin_ms > 0 {
            rmp::encode::write_str(&mut out, ORIGIN_MS).expect("vec");
            rmp::encode::write_uint(&mut out, self.origin_ms).expect("vec");
        }
        if let Some(traceparent) = &self.traceparent {
            rmp::encode::write_str(&mut out, TRACEPARENT).expect("vec");
            rmp::encode::write_str(&mut out, traceparent).expect("vec");
        }
        Bytes::from(out)
    }

    /// Reads an envelope. A third item that is a map is ours; other items past the second
    /// (ASP.NET's client-result fields) are ignored, as ASP.NET does.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let value = rmpv::decode::read_value_with_max_depth(&mut &bytes[..], 8).map_err(|e| e.to_string())?;
        let rmpv::Value::Array(items) = value else { return Err("envelope is not an array".into()) };
        if items.len() < 2 {
            return Err("envelope has fewer than 2 items".into());
        }
        let rmpv::Value::Array(excluded) = &items[0] else { return Err("excluded ids are not an array".into()) };
        let excluded =
            excluded.iter().map(|v| v.as_str().map(str::to_owned).ok_or("excluded id is not a string")).collect::<Result<_, _>>()?;
        let rmpv::Value::Map(entries) = &items[1] else { return Err("payloads are not a map".into()) };
        let payloads = entries
            .iter()
            .map(|(k, v)| match (k.as_str(), v) {
                (Some(name), rmpv::Value::Binary(b)) => Ok((name.to_owned(), Bytes::copy_from_slice(b))),
                _ => Err("payload entry is not str -> bin".to_owned()),
            })
            .collect::<Result<_, _>>()?;
        let extra = match items.get(2) {
            Some(rmpv::Value::Map(extra)) => extra.as_slice(),
            _ => &[],
        };
        let field = |name: &str| extra.iter().find(|(k, _)| k.as_str() == Some(name)).map(|(_, v)| v);
        let origin_ms = field(ORIGIN_MS).and_then(rmpv::Value::as_u64).unwrap_or(0);
        let traceparent = field(TRACEPARENT).and_then(rmpv::Value::as_str).filter(|t| t.len() <= MAX_TRACEPARENT).map(str::to_owned);
        Ok(Self { excluded, payloads, origin_ms, traceparent })
    }
}

#[cfg(test)]
mod tests;
