//! The SignalR hub protocol as data: `HubMessage`, the two encodings (`json`, `messagepack`)
//! and the handshake. Pure: bytes in, messages out, and back. No sockets, no orders.

mod handshake;
mod json;
mod msgpack;
#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};
use serde_json::Value;

pub use handshake::{HANDSHAKE_OK, HandshakeError, HandshakeRequest, parse_handshake};

/// The record separator that ends every JSON record (and the handshake).
pub const RECORD_SEPARATOR: u8 = 0x1e;

/// The hub protocols this server speaks: a closed set, fixed by the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Json,
    MessagePack,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Json, Protocol::MessagePack];

    /// The name in the handshake and in the Redis backplane's protocol map.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::MessagePack => "messagepack",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Protocol::Json),
            "messagepack" => Some(Protocol::MessagePack),
            _ => None,
        }
    }

    /// JSON goes in text frames, MessagePack in binary frames.
    pub fn is_binary(self) -> bool {
        self == Protocol::MessagePack
    }

    /// Takes one complete record off the front of `buf`; `Ok(None)` when more bytes are needed.
    /// A record larger than `max_size` is an error, detected before the whole record arrives.
    pub fn parse(self, buf: &mut BytesMut, max_size: usize) -> Result<Option<HubMessage>, ProtocolError> {
        match self {
            Protocol::Json => json::parse(buf, max_size),
            Protocol::MessagePack => msgpack::parse(buf, max_size),
        }
    }

    /// Appends `msg` with its framing (0x1E for JSON, a varint length for MessagePack).
    pub fn encode(self, msg: &HubMessage, out: &mut BytesMut) {
        match self {
            Protocol::Json => json::encode(msg, out),
            Protocol::MessagePack => msgpack::encode(msg, out),
        }
    }

    pub fn encode_to_bytes(self, msg: &HubMessage) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(msg, &mut out);
        out.freeze()
    }
}

/// The outcome carried by a Completion: a value (void methods complete with `null`) or an error.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    Result(Value),
    Error(String),
    /// A completion without result (stream completions; the JS client's void uploads).
    Empty,
}

/// One hub protocol message. Arguments and results are JSON values in both encodings.
#[derive(Debug, Clone, PartialEq)]
pub enum HubMessage {
    Invocation {
        invocation_id: Option<String>,
        target: String,
        arguments: Vec<Value>,
        stream_ids: Vec<String>,
    },
    StreamItem {
        invocation_id: String,
        item: Value,
    },
    Completion {
        invocation_id: String,
        outcome: Completion,
    },
    StreamInvocation {
        invocation_id: String,
        target: String,
        arguments: Vec<Value>,
        stream_ids: Vec<String>,
    },
    CancelInvocation {
        invocation_id: String,
    },
    Ping,
    Close {
        error: Option<String>,
        allow_reconnect: bool,
    },
    /// Stateful reconnect: every counted message up to `sequence_id` arrived.
    Ack {
        sequence_id: u64,
    },
    /// Stateful reconnect, after a reconnect: the counted messages that follow start at `sequence_id`.
    Sequence {
        sequence_id: u64,
    },
    /// A well-formed message of a type this server does not use (future types): ignored.
    Other(u64),
}

impl HubMessage {
    /// A server push: an invocation without id, so the client sends nothing back.
    pub fn push(target: impl Into<String>, arguments: Vec<Value>) -> Self {
        HubMessage::Invocation { invocation_id: None, target: target.into(), arguments, stream_ids: Vec::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("The maximum message size of {0}B was exceeded. The message size can be configured in AddHubOptions.")]
    TooLarge(usize),
    #[error("invalid message: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ProtocolError {
    ProtocolError::Invalid(msg.into())
}
