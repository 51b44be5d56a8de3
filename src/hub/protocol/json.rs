//! The JSON encoding: one object per record, 0x1E after each. Parsing goes through a map
//! because the JS client writes `type` last; unknown properties and `headers` are ignored.

use bytes::{BufMut, BytesMut};
use serde_json::{Map, Value};

use super::{Completion, HubMessage, ProtocolError, RECORD_SEPARATOR, invalid};

pub fn parse(buf: &mut BytesMut, max_size: usize) -> Result<Option<HubMessage>, ProtocolError> {
    let Some(end) = buf.iter().position(|b| *b == RECORD_SEPARATOR) else {
        return if buf.len() > max_size { Err(ProtocolError::TooLarge(max_size)) } else { Ok(None) };
    };
    if end > max_size {
        return Err(ProtocolError::TooLarge(max_size));
    }
    let record = buf.split_to(end + 1);
    let value: Value = serde_json::from_slice(&record[..end]).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else { return Err(invalid("a message must be a JSON object")) };
    from_object(obj).map(Some)
}

fn string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, ProtocolError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(format!("'{key}' must be a string"))),
    }
}

fn required(obj: &Map<String, Value>, key: &str) -> Result<String, ProtocolError> {
    string(obj, key)?.ok_or_else(|| invalid(format!("missing required property '{key}'")))
}

fn strings(obj: &Map<String, Value>, key: &str) -> Result<Vec<String>, ProtocolError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => {
            items.iter().map(|v| v.as_str().map(str::to_owned).ok_or_else(|| invalid(format!("'{key}' must hold strings")))).collect()
        }
        Some(_) => Err(invalid(format!("'{key}' must be an array"))),
    }
}

fn arguments(obj: &Map<String, Value>) -> Result<Vec<Value>, ProtocolError> {
    match obj.get("arguments") {
        Some(Value::Array(items)) => Ok(items.clone()),
        None => Err(invalid("missing required property 'arguments'")),
        Some(_) => Err(invalid("'arguments' must be an array")),
    }
}

fn check_headers(obj: &Map<String, Value>) -> Result<(), ProtocolError> {
    match obj.get("headers") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(h)) => match h.iter().find(|(_, v)| !v.is_string()) {
            Some((k, _)) => Err(invalid(format!("Expected header '{k}' to be of type String."))),
            None => Ok(()),
        },
        Some(_) => Err(invalid("'headers' must be an object")),
    }
}

fn sequence_id(obj: &Map<String, Value>) -> Result<u64, ProtocolError> {
    obj.get("sequenceId").and_then(Value::as_u64).ok_or_else(|| invalid("missing or non-numeric 'sequenceId'"))
}

fn from_object(obj: Map<String, Value>) -> Result<HubMessage, ProtocolError> {
    let kind = obj.get("type").and_then(Value::as_u64).ok_or_else(|| invalid("missing or non-numeric 'type'"))?;
    check_headers(&obj)?;
    Ok(match kind {
        1 => HubMessage::Invocation {
            invocation_id: string(&obj, "invocationId")?,
            target: required(&obj, "target")?,
            arguments: arguments(&obj)?,
            stream_ids: strings(&obj, "streamIds")?,
        },
        2 => HubMessage::StreamItem {
            invocation_id: required(&obj, "invocationId")?,
            item: obj.get("item").cloned().ok_or_else(|| invalid("missing required property 'item'"))?,
        },
        3 => {
            let invocation_id = required(&obj, "invocationId")?;
            let error = string(&obj, "error")?;
            let outcome = match (error, obj.get("result")) {
                (Some(_), Some(r)) if !r.is_null() => return Err(invalid("a completion has either a result or an error")),
                (Some(e), _) => Completion::Error(e),
                (None, Some(r)) => Completion::Result(r.clone()),
                (None, None) => Completion::Empty,
            };
            HubMessage::Completion { invocation_id, outcome }
        }
        4 => HubMessage::StreamInvocation {
            invocation_id: required(&obj, "invocationId")?,
            target: required(&obj, "target")?,
            arguments: arguments(&obj)?,
            stream_ids: strings(&obj, "streamIds")?,
        },
        5 => HubMessage::CancelInvocation { invocation_id: required(&obj, "invocationId")? },
        6 => HubMessage::Ping,
        7 => HubMessage::Close {
            error: string(&obj, "error")?,
            allow_reconnect: obj.get("allowReconnect").and_then(Value::as_bool).unwrap_or(false),
        },
        8 => HubMessage::Ack { sequence_id: sequence_id(&obj)? },
        9 => HubMessage::Sequence { sequence_id: sequence_id(&obj)? },
        other => HubMessage::Other(other),
    })
}

fn put_json(out: &mut BytesMut, value: &impl serde::Serialize) {
    serde_json::to_writer(out.writer(), value).expect("values serialize");
}

/// An Invocation (1) or StreamInvocation (4), `invocationId` only when present.
fn put_invocation(out: &mut BytesMut, kind: u8, invocation_id: Option<&str>, target: &str, arguments: &[Value], stream_ids: &[String]) {
    out.put_slice(b"{\"type\":");
    put_json(out, &kind);
    if let Some(id) = invocation_id {
        out.put_slice(b",\"invocationId\":");
        put_json(out, &id);
    }
    out.put_slice(b",\"target\":");
    put_json(out, &target);
    out.put_slice(b",\"arguments\":");
    put_json(out, &arguments);
    if !stream_ids.is_empty() {
        out.put_slice(b",\"streamIds\":");
        put_json(out, &stream_ids);
    }
    out.put_u8(b'}');
}

/// Writes ASP.NET's field order: `type`, `invocationId` (only when present), then the rest.
pub fn encode(msg: &HubMessage, out: &mut BytesMut) {
    match msg {
        HubMessage::Invocation { invocation_id, target, arguments, stream_ids } => {
            put_invocation(out, 1, invocation_id.as_deref(), target, arguments, stream_ids)
        }
        HubMessage::StreamItem { invocation_id, item } => {
            out.put_slice(b"{\"type\":2,\"invocationId\":");
            put_json(out, invocation_id);
            out.put_slice(b",\"item\":");
            put_json(out, item);
            out.put_u8(b'}');
        }
        HubMessage::Completion { invocation_id, outcome } => {
            out.put_slice(b"{\"type\":3,\"invocationId\":");
            put_json(out, invocation_id);
            match outcome {
                Completion::Result(v) => {
                    out.put_slice(b",\"result\":");
                    put_json(out, v);
                }
                Completion::Error(e) => {
                    out.put_slice(b",\"error\":");
                    put_json(out, e);
                }
                Completion::Empty => {}
            }
            out.put_u8(b'}');
        }
        HubMessage::StreamInvocation { invocation_id, target, arguments, stream_ids } => {
            put_invocation(out, 4, Some(invocation_id), target, arguments, stream_ids)
        }
        HubMessage::CancelInvocation { invocation_id } => {
            out.put_slice(b"{\"type\":5,\"invocationId\":");
            put_json(out, invocation_id);
            out.put_u8(b'}');
        }
        HubMessage::Ping => out.put_slice(b"{\"type\":6}"),
        HubMessage::Close { error, allow_reconnect } => {
            out.put_slice(b"{\"type\":7");
            if let Some(e) = error {
                out.put_slice(b",\"error\":");
                put_json(out, e);
            }
            if *allow_reconnect {
                out.put_slice(b",\"allowReconnect\":true");
            }
            out.put_u8(b'}');
        }
        HubMessage::Ack { sequence_id } => {
            out.put_slice(b"{\"type\":8,\"sequenceId\":");
            put_json(out, sequence_id);
            out.put_u8(b'}');
        }
        HubMessage::Sequence { sequence_id } => {
            out.put_slice(b"{\"type\":9,\"sequenceId\":");
            put_json(out, sequence_id);
            out.put_u8(b'}');
        }
        HubMessage::Other(kind) => {
            out.put_slice(b"{\"type\":");
            put_json(out, kind);
            out.put_u8(b'}');
        }
    }
    out.put_u8(RECORD_SEPARATOR);
}
