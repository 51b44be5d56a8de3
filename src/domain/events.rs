//! The bus schema of CONTRACT §4: `order.accepted`, `order.processed`, `order.failed`.
//! Bodies carry no PII (no user id): notify finds the user through `order:map:*`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{CorrelationId, EventId};

/// One event as it travels on the bus; `type` selects the variant and is also the routing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub event_id: EventId,
    #[serde(flatten)]
    pub kind: EventKind,
    pub correlation_id: CorrelationId,
    #[serde(serialize_with = "rfc3339_millis")]
    pub occurred_at: DateTime<Utc>,
    /// The W3C `traceparent` of the work that made the event, written beside it in the outbox
    /// and sent as a message header, never in the body.
    #[serde(skip)]
    pub trace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventKind {
    #[serde(rename = "order.accepted")]
    Accepted,
    #[serde(rename = "order.processed", rename_all = "camelCase")]
    Processed { order_id: String },
    #[serde(rename = "order.failed")]
    Failed { reason: String },
}

impl EventKind {
    /// The routing key on `contoso.orders`, equal to the body's `type`.
    pub fn routing_key(&self) -> &'static str {
        match self {
            Self::Accepted => "order.accepted",
            Self::Processed { .. } => "order.processed",
            Self::Failed { .. } => "order.failed",
        }
    }
}

impl Event {
    pub fn new(kind: EventKind, correlation_id: CorrelationId, occurred_at: DateTime<Utc>) -> Self {
        Self { event_id: EventId::new(), kind, correlation_id, occurred_at, trace: None }
    }

    /// The same event, continuing the trace `traceparent` names.
    pub fn traced(mut self, traceparent: Option<String>) -> Self {
        self.trace = traceparent;
        self
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("events always serialize")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

fn rfc3339_millis<S: serde::Serializer>(at: &DateTime<Utc>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_event_has_exactly_the_contract_fields() {
        let ev = Event::new(EventKind::Accepted, CorrelationId::new(), Utc::now());
        let json: serde_json::Value = serde_json::from_slice(&ev.to_json()).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["correlationId", "eventId", "occurredAt", "type"]);
        assert_eq!(json["type"], "order.accepted");
    }

    #[test]
    fn processed_and_failed_round_trip() {
        for kind in [EventKind::Processed { order_id: "CS-000001".into() }, EventKind::Failed { reason: "out of stock".into() }] {
            let ev = Event::new(kind, CorrelationId::new(), Utc::now());
            let back = Event::from_json(&ev.to_json()).unwrap();
            assert_eq!(back.kind, ev.kind);
            assert_eq!(back.event_id, ev.event_id);
        }
        let json: serde_json::Value = serde_json::from_slice(
            &Event::new(EventKind::Processed { order_id: "CS-000001".into() }, CorrelationId::new(), Utc::now()).to_json(),
        )
        .unwrap();
        assert_eq!(json["orderId"], "CS-000001");
    }

    #[test]
    fn unknown_type_is_rejected() {
        let raw = br#"{"eventId":"0190b6a0-0000-7000-8000-000000000000","type":"order.exploded","correlationId":"0190b6a0-0000-7000-8000-000000000000","occurredAt":"2026-01-01T00:00:00Z"}"#;
        assert!(Event::from_json(raw).is_err());
    }
}
