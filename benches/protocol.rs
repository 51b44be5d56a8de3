//! Criterion micro-benchmarks of the hub protocol, per message: parsing what clients send
//! (an invocation, a ping) and encoding what the server sends most (the `OrderCompleted` push,
//! and its backplane envelope carrying both encodings). `cargo bench --bench protocol`.

use bytes::BytesMut;
use contoso::hub::{
    lifetime::envelope,
    protocol::{HubMessage, Protocol},
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use std::hint::black_box;

const MAX: usize = 32 * 1024;

fn order_completed() -> HubMessage {
    HubMessage::push(
        "OrderCompleted",
        vec![json!({
            "notificationId": "1764201600000-0",
            "correlationId": "0190b6a0-5e1c-7c3e-9a57-3c2b7a6f1d20",
            "orderId": "CS-000123",
            "status": "COMPLETED",
            "occurredAt": "2026-11-27T00:00:00.000Z"
        })],
    )
}

fn invocation() -> HubMessage {
    HubMessage::Invocation {
        invocation_id: Some("7".into()),
        target: "GetCurrentStatus".into(),
        arguments: vec![json!("0190b6a0-5e1c-7c3e-9a57-3c2b7a6f1d20")],
        stream_ids: Vec::new(),
    }
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));
    for protocol in Protocol::ALL {
        for (name, msg) in [("invocation", invocation()), ("ping", HubMessage::Ping)] {
            let bytes = protocol.encode_to_bytes(&msg);
            group.bench_function(format!("{}/{name}", protocol.name()), |b| {
                b.iter(|| {
                    let mut buf = BytesMut::from(&bytes[..]);
                    black_box(protocol.parse(&mut buf, MAX).unwrap().unwrap())
                })
            });
        }
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    let msg = order_completed();
    for protocol in Protocol::ALL {
        group.bench_function(format!("{}/order-completed", protocol.name()), |b| {
            let mut out = BytesMut::with_capacity(512);
            b.iter(|| {
                out.clear();
                protocol.encode(black_box(&msg), &mut out);
                black_box(out.len())
            })
        });
    }
    group.bench_function("backplane-envelope/order-completed", |b| b.iter(|| black_box(envelope(black_box(&msg)).encode())));
    group.finish();
}

criterion_group!(benches, parse, encode);
criterion_main!(benches);
