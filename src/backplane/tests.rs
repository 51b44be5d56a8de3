//! Golden bytes from ASP.NET Core's RedisProtocolTests (signalr-protocol.md §8.4), so a .NET
//! pod on the same Redis reads what we write and we read what it writes.

use serde_json::json;

use super::*;
use crate::hub::protocol::{HubMessage, Protocol};

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

#[test]
fn envelope_without_exclusions_matches_the_aspnet_vector() {
    let env = Envelope {
        excluded: vec![],
        payloads: vec![("p1".into(), Bytes::from_static(&[0x2A])), ("p2".into(), Bytes::from_static(&[0x2A]))],
        ..Default::default()
    };
    assert_eq!(env.encode().to_vec(), hex("92 90 82 A2 70 31 C4 01 2A A2 70 32 C4 01 2A"));
    assert_eq!(Envelope::decode(&hex("92 90 82 A2 70 31 C4 01 2A A2 70 32 C4 01 2A")).unwrap(), env);
}

#[test]
fn envelope_with_one_exclusion_matches_the_aspnet_vector() {
    let env = Envelope {
        excluded: vec!["a".into()],
        payloads: vec![("p1".into(), Bytes::from_static(&[0x2A])), ("p2".into(), Bytes::from_static(&[0x2A]))],
        ..Default::default()
    };
    assert_eq!(env.encode().to_vec(), hex("92 91 A1 61 82 A2 70 31 C4 01 2A A2 70 32 C4 01 2A"));
}

#[test]
fn a_send_to_all_with_json_and_messagepack_is_byte_exact() {
    // The worked example of §8.4: Clients.All.SendAsync("ReceiveMessage", "hi").
    let msg = HubMessage::push("ReceiveMessage", vec![json!("hi")]);
    let env =
        Envelope { payloads: Protocol::ALL.iter().map(|p| (p.name().to_owned(), p.encode_to_bytes(&msg))).collect(), ..Default::default() };
    let mut expected = hex("92 90 82 A4");
    expected.extend_from_slice(b"json");
    expected.extend_from_slice(&hex("C4 38"));
    expected.extend_from_slice(b"{\"type\":1,\"target\":\"ReceiveMessage\",\"arguments\":[\"hi\"]}\x1e");
    expected.extend_from_slice(&hex("AB"));
    expected.extend_from_slice(b"messagepack");
    expected.extend_from_slice(&hex("C4 19 18 96 01 80 C0 AE"));
    expected.extend_from_slice(b"ReceiveMessage");
    expected.extend_from_slice(&hex("91 A2"));
    expected.extend_from_slice(b"hi");
    expected.extend_from_slice(&hex("90"));
    assert_eq!(env.encode().to_vec(), expected);
}

#[test]
fn an_origin_time_is_a_third_item_that_aspnet_reads_past() {
    let env = Envelope { payloads: vec![("p1".into(), Bytes::from_static(&[0x2A]))], origin_ms: 1_764_633_600_123, ..Default::default() };
    let bytes = env.encode().to_vec();
    // [ [], {p1: bin}, {originMs: uint64} ]: three items, so an ASP.NET node (which takes
    // items three and four only when there are four) reads the first two as its own.
    let mut expected = hex("93 90 81 A2 70 31 C4 01 2A 81 A8");
    expected.extend_from_slice(b"originMs");
    expected.push(0xCF);
    expected.extend_from_slice(&1_764_633_600_123u64.to_be_bytes());
    assert_eq!(bytes, expected);
    assert_eq!(Envelope::decode(&bytes).unwrap(), env);
    let traced = Envelope { traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()), ..env.clone() };
    assert_eq!(Envelope::decode(&traced.encode()).unwrap(), traced, "origin and trace context together");
    let too_long = Envelope { traceparent: Some("0".repeat(300)), ..env };
    assert_eq!(Envelope::decode(&too_long.encode()).unwrap().traceparent, None, "an oversized trace context is dropped");
    // ASP.NET's own two-item envelope has no origin.
    assert_eq!(Envelope::decode(&hex("92 90 81 A2 70 31 C4 01 2A")).unwrap().origin_ms, 0);
}

#[test]
fn client_result_fields_are_ignored_and_bad_envelopes_refused() {
    // A 4-item envelope (client results: invocation id and return channel) still reads.
    let four = hex("94 90 81 A2 70 31 C4 01 2A A1 69 A1 72");
    assert_eq!(Envelope::decode(&four).unwrap().payloads.len(), 1);
    assert_eq!(Envelope::decode(&four).unwrap().origin_ms, 0, "an invocation id is not an origin");
    assert!(Envelope::decode(&hex("91 90")).is_err());
    assert!(Envelope::decode(&hex("92 90 81 A2 70 31 A1 2A")).is_err(), "payloads must be bin, not str");
    assert!(Envelope::decode(b"garbage").is_err());
}

#[test]
fn channel_names_glue_the_prefix_without_separator() {
    let ch = Channels::new("contoso-signalr", "Contoso.OrderNotification.Hubs.OrderStatusHub");
    assert_eq!(ch.user("alice"), "contoso-signalrContoso.OrderNotification.Hubs.OrderStatusHub:user:alice");
    assert_eq!(ch.all(), "contoso-signalrContoso.OrderNotification.Hubs.OrderStatusHub:all");
    assert_eq!(ch.target(&ch.user("a:b")), Some(Target::User("a:b")));
    assert_eq!(ch.target(&ch.connection("c1")), Some(Target::Connection("c1")));
    assert_eq!(ch.target(&ch.all()), Some(Target::All));
    assert_eq!(ch.target("otherHub:all"), None);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        (
            prop::collection::vec("[A-Za-z0-9_-]{1,22}", 0..3),
            prop::collection::btree_map("[a-z]{1,12}", prop::collection::vec(any::<u8>(), 0..64), 0..3),
            prop_oneof![Just(0u64), any::<u64>()],
            prop::option::of("[0-9a-f-]{55}"),
        )
            .prop_map(|(excluded, payloads, origin_ms, traceparent)| Envelope {
                excluded,
                payloads: payloads.into_iter().map(|(name, bytes)| (name, Bytes::from(bytes))).collect(),
                origin_ms,
                traceparent,
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_envelope_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = Envelope::decode(&bytes);
        }

        #[test]
        fn an_envelope_decodes_to_what_was_encoded(env in arb_envelope()) {
            prop_assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
        }
    }

    #[test]
    fn an_envelope_claiming_more_than_it_holds_is_refused_without_reserving_it() {
        // [ [], { "json": bin32 of 4 GiB } ] with three bytes of content.
        let mut bytes = vec![0x92, 0x90, 0x81, 0xA4, b'j', b's', b'o', b'n', 0xC6, 0xFF, 0xFF, 0xFF, 0xFF];
        bytes.extend_from_slice(b"abc");
        assert!(Envelope::decode(&bytes).is_err());
    }
}
