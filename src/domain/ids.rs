//! Identifier newtypes: who (UserId), which order (CorrelationId, OrderNumber),
//! which event (EventId) and which retry (IdempotencyKey). Each parses once, at the edge.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The token's `sub`: opaque to us, never empty, bounded so it fits keys and channel names.
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
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
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
    fn idempotency_key_must_be_visible_ascii() {
        assert!(IdempotencyKey::parse("checkout-1").is_ok());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse("").is_err());
    }
}
