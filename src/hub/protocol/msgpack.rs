//! The MessagePack encoding: `[varint length][msgpack array]` records. Layouts follow
//! ASP.NET Core (6-item invocations; completions of kind 1 error, 2 void, 3 result) and accept
//! the JS client's 5-item invocations.

use bytes::{BufMut, BytesMut};
use rmpv::Value as Mp;
use serde_json::Value;

use super::{Completion, HubMessage, ProtocolError, invalid};

/// Deepest nesting accepted in a message (the decoder recurses).
const MAX_DEPTH: usize = 64;

/// Reads the varint length prefix: (length, bytes used), `None` while incomplete.
fn read_length(buf: &[u8]) -> Result<Option<(usize, usize)>, ProtocolError> {
    let mut len: u64 = 0;
    for (i, byte) in buf.iter().enumerate().take(5) {
        len |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if len > 0x7fff_ffff {
                return Err(invalid("message length exceeds 2GB"));
            }
            return Ok(Some((len as usize, i + 1)));
        }
    }
    if buf.len() >= 5 { Err(invalid("message length prefix longer than 5 bytes")) } else { Ok(None) }
}

pub fn write_length(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len & 0x7f) as u8;
        len >>= 7;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

pub fn parse(buf: &mut BytesMut, max_size: usize) -> Result<Option<HubMessage>, ProtocolError> {
    let Some((len, header)) = read_length(buf)? else { return Ok(None) };
    if len > max_size {
        return Err(ProtocolError::TooLarge(max_size));
    }
    if buf.len() < header + len {
        return Ok(None);
    }
    let record = buf.split_to(header + len);
    let mut body = &record[header..];
    let value = rmpv::decode::read_value_with_max_depth(&mut body, MAX_DEPTH).map_err(|e| invalid(format!("not MessagePack: {e}")))?;
    let Mp::Array(items) = value else { return Err(invalid("a message must be a MessagePack array")) };
    from_array(items).map(Some)
}

fn item(items: &[Mp], i: usize) -> Result<&Mp, ProtocolError> {
    items.get(i).ok_or_else(|| invalid(format!("message has {} items, needs at least {}", items.len(), i + 1)))
}

fn opt_string(v: &Mp) -> Result<Option<String>, ProtocolError> {
    match v {
        Mp::Nil => Ok(None),
        Mp::String(s) => s.as_str().map(|s| Some(s.to_owned())).ok_or_else(|| invalid("string is not UTF-8")),
        _ => Err(invalid("expected a string")),
    }
}

fn string(v: &Mp) -> Result<String, ProtocolError> {
    opt_string(v)?.ok_or_else(|| invalid("expected a string, got nil"))
}

fn check_headers(v: &Mp) -> Result<(), ProtocolError> {
    match v {
        Mp::Map(entries) => {
            if entries.iter().all(|(k, v)| k.is_str() && v.is_str()) {
                Ok(())
            } else {
                Err(invalid("headers must map strings to strings"))
            }
        }
        _ => Err(invalid("headers must be a map")),
    }
}

fn values(v: &Mp) -> Result<Vec<Value>, ProtocolError> {
    match v {
        Mp::Array(items) => items.iter().map(to_json).collect(),
        _ => Err(invalid("expected an array")),
    }
}

fn string_list(v: Option<&Mp>) -> Result<Vec<String>, ProtocolError> {
    match v {
        None | Some(Mp::Nil) => Ok(Vec::new()),
        Some(Mp::Array(items)) => items.iter().map(string).collect(),
        Some(_) => Err(invalid("stream ids must be an array")),
    }
}

fn sequence_id(items: &[Mp]) -> Result<u64, ProtocolError> {
    item(items, 1)?.as_u64().ok_or_else(|| invalid("sequence id must be an integer"))
}

fn from_array(items: Vec<Mp>) -> Result<HubMessage, ProtocolError> {
    let kind = item(&items, 0)?.as_u64().ok_or_else(|| invalid("message type must be an integer"))?;
    Ok(match kind {
        1 | 4 => {
            check_headers(item(&items, 1)?)?;
            let invocation_id = opt_string(item(&items, 2)?)?;
            let target = string(item(&items, 3)?)?;
            let arguments = values(item(&items, 4)?)?;
            let stream_ids = string_list(items.get(5))?;
            if kind == 1 {
                HubMessage::Invocation { invocation_id, target, arguments, stream_ids }
            } else {
                let invocation_id = invocation_id.ok_or_else(|| invalid("a stream invocation needs an id"))?;
                HubMessage::StreamInvocation { invocation_id, target, arguments, stream_ids }
            }
        }
        2 => {
            check_headers(item(&items, 1)?)?;
            HubMessage::StreamItem { invocation_id: string(item(&items, 2)?)?, item: to_json(item(&items, 3)?)? }
        }
        3 => {
            check_headers(item(&items, 1)?)?;
            let invocation_id = string(item(&items, 2)?)?;
            let outcome = match item(&items, 3)?.as_u64() {
                Some(1) => Completion::Error(string(item(&items, 4)?)?),
                Some(2) => Completion::Empty,
                Some(3) => Completion::Result(to_json(item(&items, 4)?)?),
                _ => return Err(invalid("unknown completion result kind")),
            };
            HubMessage::Completion { invocation_id, outcome }
        }
        5 => {
            check_headers(item(&items, 1)?)?;
            HubMessage::CancelInvocation { invocation_id: string(item(&items, 2)?)? }
        }
        6 => HubMessage::Ping,
        7 => HubMessage::Close {
            error: match items.get(1) {
                Some(v) => opt_string(v)?,
                None => None,
            },
            allow_reconnect: items.get(2).and_then(Mp::as_bool).unwrap_or(false),
        },
        8 => HubMessage::Ack { sequence_id: sequence_id(&items)? },
        9 => HubMessage::Sequence { sequence_id: sequence_id(&items)? },
        other => HubMessage::Other(other),
    })
}

/// MessagePack values as JSON: the hub's methods and pushes work on JSON values.
fn to_json(v: &Mp) -> Result<Value, ProtocolError> {
    Ok(match v {
        Mp::Nil => Value::Null,
        Mp::Boolean(b) => Value::Bool(*b),
        Mp::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(n), _) => Value::from(n),
            (None, Some(n)) => Value::from(n),
            _ => Value::Null,
        },
        Mp::F32(f) => serde_json::Number::from_f64(f64::from(*f)).map(Value::Number).unwrap_or(Value::Null),
        Mp::F64(f) => serde_json::Number::from_f64(*f).map(Value::Number).unwrap_or(Value::Null),
        Mp::String(s) => Value::String(s.as_str().ok_or_else(|| invalid("string is not UTF-8"))?.to_owned()),
        Mp::Binary(b) => Value::Array(b.iter().map(|x| Value::from(*x)).collect()),
        Mp::Array(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Mp::Map(entries) => {
            let mut map = serde_json::Map::new();
            for (k, v) in entries {
                let key = match k {
                    Mp::String(s) => s.as_str().unwrap_or_default().to_owned(),
                    other => other.to_string(),
                };
                map.insert(key, to_json(v)?);
            }
            Value::Object(map)
        }
        Mp::Ext(_, _) => Value::Null,
    })
}

fn to_mp(v: &Value) -> Mp {
    match v {
        Value::Null => Mp::Nil,
        Value::Bool(b) => Mp::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Mp::from(i)
            } else if let Some(u) = n.as_u64() {
                Mp::from(u)
            } else {
                Mp::F64(n.as_f64().unwrap_or_default())
            }
        }
        Value::String(s) => Mp::from(s.as_str()),
        Value::Array(items) => Mp::Array(items.iter().map(to_mp).collect()),
        Value::Object(map) => Mp::Map(map.iter().map(|(k, v)| (Mp::from(k.as_str()), to_mp(v))).collect()),
    }
}

fn opt(s: &Option<String>) -> Mp {
    s.as_deref().map(Mp::from).unwrap_or(Mp::Nil)
}

fn strs(items: &[String]) -> Mp {
    Mp::Array(items.iter().map(|s| Mp::from(s.as_str())).collect())
}

fn headers() -> Mp {
    Mp::Map(Vec::new())
}

pub fn encode(msg: &HubMessage, out: &mut BytesMut) {
    let body = match msg {
        HubMessage::Invocation { invocation_id, target, arguments, stream_ids } => Mp::Array(vec![
            Mp::from(1),
            headers(),
            opt(invocation_id),
            Mp::from(target.as_str()),
            Mp::Array(arguments.iter().map(to_mp).collect()),
            strs(stream_ids),
        ]),
        HubMessage::StreamItem { invocation_id, item } => {
            Mp::Array(vec![Mp::from(2), headers(), Mp::from(invocation_id.as_str()), to_mp(item)])
        }
        HubMessage::Completion { invocation_id, outcome } => {
            let mut items = vec![Mp::from(3), headers(), Mp::from(invocation_id.as_str())];
            match outcome {
                Completion::Error(e) => items.extend([Mp::from(1), Mp::from(e.as_str())]),
                Completion::Empty => items.push(Mp::from(2)),
                Completion::Result(v) => items.extend([Mp::from(3), to_mp(v)]),
            }
            Mp::Array(items)
        }
        HubMessage::StreamInvocation { invocation_id, target, arguments, stream_ids } => Mp::Array(vec![
            Mp::from(4),
            headers(),
            Mp::from(invocation_id.as_str()),
            Mp::from(target.as_str()),
            Mp::Array(arguments.iter().map(to_mp).collect()),
            strs(stream_ids),
        ]),
        HubMessage::CancelInvocation { invocation_id } => Mp::Array(vec![Mp::from(5), headers(), Mp::from(invocation_id.as_str())]),
        HubMessage::Ping => Mp::Array(vec![Mp::from(6)]),
        HubMessage::Close { error, allow_reconnect } => Mp::Array(vec![Mp::from(7), opt(error), Mp::Boolean(*allow_reconnect)]),
        HubMessage::Ack { sequence_id } => Mp::Array(vec![Mp::from(8), Mp::from(*sequence_id)]),
        HubMessage::Sequence { sequence_id } => Mp::Array(vec![Mp::from(9), Mp::from(*sequence_id)]),
        HubMessage::Other(kind) => Mp::Array(vec![Mp::from(*kind)]),
    };
    let mut encoded = Vec::with_capacity(64);
    rmpv::encode::write_value(&mut encoded, &body).expect("writing to a Vec cannot fail");
    write_length(out, encoded.len());
    out.put_slice(&encoded);
}
