//! The handshake: the client's first record is always JSON text + 0x1E naming the protocol
//! and version; the server answers `{}` + 0x1E, or an error record, and closes.

use bytes::BytesMut;
use serde::Deserialize;

use super::{Protocol, RECORD_SEPARATOR};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeRequest {
    pub protocol: Protocol,
}

/// A failed handshake; `Display` is ASP.NET Core's error text, sent to the client verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("The protocol '{0}' is not supported.")]
    UnknownProtocol(String),
    #[error("The server does not support version {version} of the '{protocol}' protocol.")]
    UnsupportedVersion { protocol: String, version: i64 },
    #[error("Handshake was canceled.")]
    Canceled,
    #[error("An unexpected error occurred during connection handshake.")]
    Malformed,
    /// A stateful connection whose record cannot be kept: as an upgrade the store cannot decide.
    #[error("Connection state is unavailable, connect again.")]
    StateUnavailable,
}

impl HandshakeError {
    /// The error record: `{"error":"..."}` + 0x1E.
    pub fn record(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(&serde_json::json!({ "error": self.to_string() })).expect("json");
        out.push(RECORD_SEPARATOR);
        out
    }
}

/// The success record, written before anything else on the connection.
pub const HANDSHAKE_OK: &[u8] = b"{}\x1e";

#[derive(Deserialize)]
struct Raw {
    protocol: String,
    version: i64,
}

/// Takes the handshake request off `buf` (`Ok(None)`: incomplete). Bytes after the 0x1E stay in
/// `buf`: a client may send its first hub messages in the same frame.
pub fn parse_handshake(buf: &mut BytesMut, max_size: usize) -> Result<Option<HandshakeRequest>, HandshakeError> {
    let Some(end) = buf.iter().position(|b| *b == RECORD_SEPARATOR) else {
        return if buf.len() > max_size { Err(HandshakeError::Canceled) } else { Ok(None) };
    };
    // The same limit when the whole record arrived at once (ASP.NET cancels it either way).
    if end > max_size {
        return Err(HandshakeError::Canceled);
    }
    let record = buf.split_to(end + 1);
    let raw: Raw = serde_json::from_slice(&record[..end]).map_err(|_| HandshakeError::Malformed)?;
    let protocol = Protocol::from_name(&raw.protocol).ok_or_else(|| HandshakeError::UnknownProtocol(raw.protocol.clone()))?;
    // Version 2 (stateful reconnect) is served as 1: stateful reconnect is never negotiated here.
    if !(0..=2).contains(&raw.version) {
        return Err(HandshakeError::UnsupportedVersion { protocol: raw.protocol, version: raw.version });
    }
    Ok(Some(HandshakeRequest { protocol }))
}
