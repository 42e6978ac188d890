//! Frame codec micro-benchmarks: a `Deliver` frame written around a message encoded once
//! (the broker's fan-out path), and decoded back, at 16 B, 128 B and 1 KiB payloads.
//! `cargo bench -p rtc-benches --features micro --bench codec`

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rtc_proto::codec::{encode_deliver, encode_message};
use rtc_proto::{v1, FrameCodec};
use tokio_util::codec::Decoder;

fn message(payload: usize) -> Bytes {
    encode_message(&v1::Message {
        topic: "game.room42.position".into(),
        payload: Bytes::from(vec![7u8; payload]),
        headers: BTreeMap::new(),
        seq: 123_456,
        timestamp_ms: 1_795_000_000_000,
        msg_id: "3f2a9c0d1e5b7a68-17".into(),
        delivery_count: 1,
    })
}

fn deliver(c: &mut Criterion) {
    let mut group = c.benchmark_group("deliver");
    for size in [16usize, 128, 1024] {
        let shared = message(size);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("encode", size), &shared, |b, m| {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            b.iter(|| {
                encode_deliver(42, m, &mut buf);
                if buf.len() > 60 * 1024 {
                    buf.clear();
                }
            })
        });
        let mut wire = BytesMut::new();
        encode_deliver(42, &shared, &mut wire);
        let wire = wire.freeze();
        group.bench_with_input(BenchmarkId::new("decode", size), &wire, |b, w| {
            let mut codec = FrameCodec::default();
            b.iter(|| {
                let mut buf = BytesMut::from(&w[..]);
                codec.decode(&mut buf).expect("valid").expect("whole frame")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, deliver);
criterion_main!(benches);
