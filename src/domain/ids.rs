//! Identifier newtypes: who (UserId), which order (CorrelationId, OrderNumber),
//! which event (EventId) and which retry (IdempotencyKey). Each parses once, at the edge.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The token's `sub`: opaque to us otherwise, but what a person could mistake for another id or
/// what would move the user's Redis keys apart is refused. A user id is 1 to 256 bytes with no
/// control or invisible characters (bidirectional controls, zero-width characters, tags), no
/// whitespace at either end, and no `{` or `}` (in a key they would change which Redis Cluster
/// slot the key goes to, so one user's keys would no longer share a slot).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub const MAX_LEN: usize = 256;

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("user id is empty".into());
        }
        if raw.len() > Self::MAX_LEN {
            return Err(format!("user id is longer than {} bytes", Self::MAX_LEN));
        }
        if raw.chars().any(char::is_control) {
            return Err("user id contains control characters".into());
        }
        if raw.chars().any(is_invisible) {
            return Err("user id contains invisible characters".into());
        }
        if raw.starts_with(char::is_whitespace) || raw.ends_with(char::is_whitespace) {
            return Err("user id starts or ends with whitespace".into());
        }
        if raw.contains(['{', '}']) {
            return Err("user id contains { or }".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Format characters that render as nothing or reorder what follows (Unicode category Cf).
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0001}' | '\u{E0020}'..='\u{E007F}')
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The public handle of an order from the moment it is accepted (a UUIDv7, so ids sort by time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CorrelationId(pub Uuid);

impl CorrelationId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        Uuid::parse_str(raw).map(Self).map_err(|_| format!("'{raw}' is not a correlation id"))
    }

    /// When the order was accepted: a UUIDv7 carries its creation time in milliseconds, and
    /// the id is made when the order is written. `None` for an id of another version.
    pub fn accepted_at(&self) -> Option<std::time::SystemTime> {
        let (secs, nanos) = self.0.get_timestamp()?.to_unix();
        Some(std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos))
    }
}

impl Default for CorrelationId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `message_id` of a bus message; consumers de-duplicate on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The human order number assigned by `process`, shown as `CS-000123`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrderNumber(pub i64);

impl fmt::Display for OrderNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CS-{:06}", self.0)
    }
}

/// The client's `Idempotency-Key` header: 1..=255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > 255 {
            return Err("Idempotency-Key must be 1 to 255 characters".into());
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("Idempotency-Key must be visible ASCII".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_correlation_id_tells_when_its_order_was_accepted() {
        let before = std::time::SystemTime::now() - std::time::Duration::from_millis(1);
        let at = CorrelationId::new().accepted_at().unwrap();
        assert!(at >= before && at <= std::time::SystemTime::now(), "{at:?}");
        assert_eq!(CorrelationId(Uuid::new_v4()).accepted_at(), None, "a v4 id carries no time");
    }

    #[test]
    fn order_number_is_zero_padded_to_six_digits() {
        assert_eq!(OrderNumber(123).to_string(), "CS-000123");
        assert_eq!(OrderNumber(1_234_567).to_string(), "CS-1234567");
    }

    #[test]
    fn user_id_rejects_empty_long_and_control_characters() {
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse(&"a".repeat(257)).is_err());
        assert!(UserId::parse("a\nb").is_err());
        assert_eq!(UserId::parse("alice").unwrap().as_str(), "alice");
    }

    #[test]
    fn user_id_rejects_what_looks_like_another_id_or_moves_keys_apart() {
        for bad in ["ali\u{200B}ce", "\u{202E}ecila", "alice\u{2066}", "\u{FEFF}alice", " alice", "alice\t", "ali{ce", "}", "{x}"] {
            assert!(UserId::parse(bad).is_err(), "{bad:?}");
        }
        for good in ["alice@example.com", "Zoë", "用户-42", "auth0|5f7c8ec7c33c6c004bbafe82", "a b"] {
            assert_eq!(UserId::parse(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn idempotency_key_must_be_visible_ascii() {
        assert!(IdempotencyKey::parse("checkout-1").is_ok());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse("").is_err());
    }
}
