//! Golden bytes from signalr-protocol.md (what the official client writes and expects),
//! round trips, and property tests that arbitrary input never panics the parsers.

use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::json;

use super::*;

const MAX: usize = 32 * 1024;

fn parse_all(protocol: Protocol, bytes: &[u8]) -> Vec<HubMessage> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(msg) = protocol.parse(&mut buf, MAX).unwrap() {
        out.push(msg);
    }
    assert!(buf.is_empty(), "left over: {buf:?}");
    out
}

#[test]
fn json_client_messages_with_type_last_parse() {
    let frame = b"{\"target\":\"Echo\",\"arguments\":[42],\"invocationId\":\"0\",\"type\":1}\x1e{\"target\":\"Fire\",\"arguments\":[1],\"type\":1}\x1e{\"type\":6}\x1e";
    let msgs = parse_all(Protocol::Json, frame);
    assert_eq!(
        msgs,
        vec![
            HubMessage::Invocation {
                invocation_id: Some("0".into()),
                target: "Echo".into(),
                arguments: vec![json!(42)],
                stream_ids: vec![]
            },
            HubMessage::Invocation { invocation_id: None, target: "Fire".into(), arguments: vec![json!(1)], stream_ids: vec![] },
            HubMessage::Ping,
        ]
    );
}

#[test]
fn json_record_split_across_frames_waits_for_the_rest() {
    let mut buf = BytesMut::from(&b"{\"type\":6"[..]);
    assert_eq!(Protocol::Json.parse(&mut buf, MAX).unwrap(), None);
    buf.extend_from_slice(b"}\x1e{\"ty");
    assert_eq!(Protocol::Json.parse(&mut buf, MAX).unwrap(), Some(HubMessage::Ping));
    assert_eq!(Protocol::Json.parse(&mut buf, MAX).unwrap(), None);
    assert_eq!(&buf[..], b"{\"ty");
}

#[test]
fn json_server_messages_use_aspnet_field_order_and_omit_push_ids() {
    let push = HubMessage::push("OrderCompleted", vec![json!({"a":1})]);
    assert_eq!(&Protocol::Json.encode_to_bytes(&push)[..], b"{\"type\":1,\"target\":\"OrderCompleted\",\"arguments\":[{\"a\":1}]}\x1e");
    let done = HubMessage::Completion { invocation_id: "0".into(), outcome: Completion::Result(json!(42)) };
    assert_eq!(&Protocol::Json.encode_to_bytes(&done)[..], b"{\"type\":3,\"invocationId\":\"0\",\"result\":42}\x1e");
    let void = HubMessage::Completion { invocation_id: "1".into(), outcome: Completion::Result(json!(null)) };
    assert_eq!(&Protocol::Json.encode_to_bytes(&void)[..], b"{\"type\":3,\"invocationId\":\"1\",\"result\":null}\x1e");
    let err = HubMessage::Completion { invocation_id: "2".into(), outcome: Completion::Error("x".into()) };
    assert_eq!(&Protocol::Json.encode_to_bytes(&err)[..], b"{\"type\":3,\"invocationId\":\"2\",\"error\":\"x\"}\x1e");
    let close = HubMessage::Close { error: Some("Connection closed with an error.".into()), allow_reconnect: true };
    assert_eq!(
        &Protocol::Json.encode_to_bytes(&close)[..],
        b"{\"type\":7,\"error\":\"Connection closed with an error.\",\"allowReconnect\":true}\x1e"
    );
    assert_eq!(&Protocol::Json.encode_to_bytes(&HubMessage::Ping)[..], b"{\"type\":6}\x1e");
}

#[test]
fn json_protocol_errors() {
    for bad in [
        &b"[1]\x1e"[..],
        b"{\"type\":\"1\"}\x1e",
        b"{\"type\":1,\"arguments\":[]}\x1e",
        b"nope\x1e",
        b"{\"type\":1,\"target\":\"x\",\"arguments\":[],\"headers\":{\"a\":1}}\x1e",
    ] {
        assert!(
            matches!(Protocol::Json.parse(&mut BytesMut::from(bad), MAX), Err(ProtocolError::Invalid(_))),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let both = b"{\"type\":3,\"invocationId\":\"1\",\"result\":1,\"error\":\"e\"}\x1e";
    assert!(Protocol::Json.parse(&mut BytesMut::from(&both[..]), MAX).is_err());
}

#[test]
fn oversized_messages_are_refused_before_they_complete() {
    let mut buf = BytesMut::from(vec![b' '; MAX + 1].as_slice());
    assert_eq!(Protocol::Json.parse(&mut buf, MAX), Err(ProtocolError::TooLarge(MAX)));
    // A msgpack length prefix announcing 64 KiB is refused from the prefix alone.
    let mut buf = BytesMut::from(&[0x80, 0x80, 0x04][..]);
    assert_eq!(Protocol::MessagePack.parse(&mut buf, MAX), Err(ProtocolError::TooLarge(MAX)));
    assert_eq!(
        ProtocolError::TooLarge(32768).to_string(),
        "The maximum message size of 32768B was exceeded. The message size can be configured in AddHubOptions."
    );
}

#[test]
fn msgpack_golden_bytes_from_the_client_and_the_spec() {
    // send("Fire", 1) from the JS client: 5 items, no stream ids.
    let msgs = parse_all(Protocol::MessagePack, &[0x0B, 0x95, 0x01, 0x80, 0xC0, 0xA4, b'F', b'i', b'r', b'e', 0x91, 0x01]);
    assert_eq!(
        msgs,
        vec![HubMessage::Invocation { invocation_id: None, target: "Fire".into(), arguments: vec![json!(1)], stream_ids: vec![] }]
    );
    assert_eq!(parse_all(Protocol::MessagePack, &[0x02, 0x91, 0x06]), vec![HubMessage::Ping]);
    assert_eq!(&Protocol::MessagePack.encode_to_bytes(&HubMessage::Ping)[..], &[0x02, 0x91, 0x06]);
    // Spec: non-blocking invocation `96 01 80 C0 A6 'method' 91 2A 90`.
    let push = HubMessage::push("method", vec![json!(42)]);
    let mut expected = vec![0x0E, 0x96, 0x01, 0x80, 0xC0, 0xA6];
    expected.extend_from_slice(b"method");
    expected.extend_from_slice(&[0x91, 0x2A, 0x90]);
    assert_eq!(&Protocol::MessagePack.encode_to_bytes(&push)[..], &expected[..]);
    // Spec: result completion `95 03 80 A3 'xyz' 03 2A`; close with reconnect `93 07 A3 'xyz' C3`.
    let done = HubMessage::Completion { invocation_id: "xyz".into(), outcome: Completion::Result(json!(42)) };
    assert_eq!(&Protocol::MessagePack.encode_to_bytes(&done)[..], &[0x09, 0x95, 0x03, 0x80, 0xA3, b'x', b'y', b'z', 0x03, 0x2A]);
    let close = HubMessage::Close { error: Some("xyz".into()), allow_reconnect: true };
    assert_eq!(&Protocol::MessagePack.encode_to_bytes(&close)[..], &[0x07, 0x93, 0x07, 0xA3, b'x', b'y', b'z', 0xC3]);
}

#[test]
fn stateful_reconnect_ack_and_sequence_in_both_protocols() {
    // What the 10.0.11 client writes (MessageBuffer: `{type: Ack, sequenceId}`), and the
    // MessagePack form of the spec: [8, id] and [9, id], length-prefixed.
    let json = parse_all(Protocol::Json, b"{\"type\":8,\"sequenceId\":3}\x1e{\"sequenceId\":1394,\"type\":9}\x1e");
    assert_eq!(json, vec![HubMessage::Ack { sequence_id: 3 }, HubMessage::Sequence { sequence_id: 1394 }]);
    let msgpack = parse_all(Protocol::MessagePack, &[0x03, 0x92, 0x08, 0x03, 0x05, 0x92, 0x09, 0xCD, 0x05, 0x72]);
    assert_eq!(msgpack, vec![HubMessage::Ack { sequence_id: 3 }, HubMessage::Sequence { sequence_id: 1394 }]);
    assert_eq!(&Protocol::Json.encode_to_bytes(&HubMessage::Ack { sequence_id: 3 })[..], b"{\"type\":8,\"sequenceId\":3}\x1e");
    assert_eq!(
        &Protocol::MessagePack.encode_to_bytes(&HubMessage::Sequence { sequence_id: 1394 })[..],
        &[0x05, 0x92, 0x09, 0xCD, 0x05, 0x72]
    );
    for bad in [&b"{\"type\":8}\x1e"[..], b"{\"type\":9,\"sequenceId\":\"x\"}\x1e"] {
        assert!(Protocol::Json.parse(&mut BytesMut::from(bad), MAX).is_err(), "{bad:?}");
    }
}

#[test]
fn varint_lengths_match_the_spec() {
    let mut out = BytesMut::new();
    msgpack::write_length(&mut out, 53);
    assert_eq!(&out[..], &[0x35]);
    out.clear();
    msgpack::write_length(&mut out, 5248);
    assert_eq!(&out[..], &[0x80, 0x29]);
    out.clear();
    msgpack::write_length(&mut out, 0x7fff_ffff);
    assert_eq!(&out[..], &[0xFF, 0xFF, 0xFF, 0xFF, 0x07]);
}

#[test]
fn handshake_requests_and_answers() {
    let mut buf = BytesMut::from(&b"{\"protocol\":\"json\",\"version\":1}\x1e{\"type\":6}\x1e"[..]);
    assert_eq!(parse_handshake(&mut buf, MAX).unwrap(), Some(HandshakeRequest { protocol: Protocol::Json }));
    assert_eq!(&buf[..], b"{\"type\":6}\x1e", "bytes after the handshake stay for the hub parser");
    let mut v2 = BytesMut::from(&b"{\"protocol\":\"messagepack\",\"version\":2}\x1e"[..]);
    assert_eq!(parse_handshake(&mut v2, MAX).unwrap(), Some(HandshakeRequest { protocol: Protocol::MessagePack }));
    let mut v3 = BytesMut::from(&b"{\"protocol\":\"json\",\"version\":3}\x1e"[..]);
    assert_eq!(
        String::from_utf8(parse_handshake(&mut v3, MAX).unwrap_err().record()).unwrap(),
        "{\"error\":\"The server does not support version 3 of the 'json' protocol.\"}\x1e"
    );
    let mut xml = BytesMut::from(&b"{\"protocol\":\"xml\",\"version\":1}\x1e"[..]);
    assert_eq!(parse_handshake(&mut xml, MAX).unwrap_err().to_string(), "The protocol 'xml' is not supported.");
    let mut partial = BytesMut::from(&b"{\"protocol\":"[..]);
    assert_eq!(parse_handshake(&mut partial, MAX).unwrap(), None);
}

#[test]
fn a_handshake_larger_than_the_message_limit_is_refused_even_when_complete() {
    // Padded with whitespace, so it would parse if its size were not checked.
    let padded = format!("{{\"protocol\":\"json\",{}\"version\":1}}\x1e", " ".repeat(64));
    let mut whole = BytesMut::from(padded.as_bytes());
    assert_eq!(parse_handshake(&mut whole, 64), Err(HandshakeError::Canceled), "ASP.NET cancels an oversized handshake");
    let mut fits = BytesMut::from(padded.as_bytes());
    assert!(parse_handshake(&mut fits, padded.len()).unwrap().is_some());
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-zA-Z0-9 \\u{e9}\\u{1e}\"\\\\]{0,12}".prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4).prop_map(|m| json!(m)),
        ]
    })
}

fn arb_message() -> impl Strategy<Value = HubMessage> {
    let id = proptest::option::of("[0-9]{1,4}");
    prop_oneof![
        (id, "[A-Za-z]{1,10}", prop::collection::vec(arb_json(), 0..3))
            .prop_map(|(invocation_id, target, arguments)| HubMessage::Invocation { invocation_id, target, arguments, stream_ids: vec![] }),
        ("[0-9]{1,4}", arb_json()).prop_map(|(invocation_id, v)| HubMessage::Completion { invocation_id, outcome: Completion::Result(v) }),
        ("[0-9]{1,4}", "[a-z ]{1,20}")
            .prop_map(|(invocation_id, e)| HubMessage::Completion { invocation_id, outcome: Completion::Error(e) }),
        Just(HubMessage::Ping),
        any::<u32>().prop_map(|n| HubMessage::Ack { sequence_id: u64::from(n) }),
        any::<u32>().prop_map(|n| HubMessage::Sequence { sequence_id: u64::from(n) }),
        (proptest::option::of("[a-z ]{0,20}"), any::<bool>())
            .prop_map(|(error, allow_reconnect)| HubMessage::Close { error, allow_reconnect }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_parsers(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for protocol in Protocol::ALL {
            let mut buf = BytesMut::from(bytes.as_slice());
            for _ in 0..64 {
                match protocol.parse(&mut buf, 256) {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
        let mut buf = BytesMut::from(bytes.as_slice());
        let _ = parse_handshake(&mut buf, 256);
    }

    #[test]
    fn encode_then_parse_round_trips(msgs in prop::collection::vec(arb_message(), 1..5), split in 0usize..64) {
        for protocol in Protocol::ALL {
            let mut bytes = BytesMut::new();
            for m in &msgs {
                protocol.encode(m, &mut bytes);
            }
            // Fed in two pieces, as a record split across WebSocket frames would be.
            let split = split.min(bytes.len());
            let mut buf = BytesMut::from(&bytes[..split]);
            let mut parsed = Vec::new();
            while let Some(m) = protocol.parse(&mut buf, 1 << 20).unwrap() { parsed.push(m); }
            buf.extend_from_slice(&bytes[split..]);
            while let Some(m) = protocol.parse(&mut buf, 1 << 20).unwrap() { parsed.push(m); }
            prop_assert_eq!(&parsed, &msgs);
        }
    }
}
