//! Subscription matching: one topic against 10 000 subscriptions (literal, `*` and `>`
//! patterns over 1 000 rooms). `cargo bench -p rtc-benches --features micro --bench router`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use rtc_broker::outbound::{Outbox, Subscription};
use rtc_broker::router::Router;

fn router(c: &mut Criterion) {
    let router = Router::new();
    let outbox = Arc::new(Outbox::new(1 << 20, 1024, 1 << 20));
    for i in 0..10_000u64 {
        let room = i % 1000;
        let pattern = match i % 4 {
            0 => format!("game.room{room}.position"),
            1 => format!("game.room{room}.*"),
            2 => format!("game.*.chat{}", i % 10),
            _ => format!("game.room{room}.>"),
        };
        router.subscribe(
            &pattern,
            i,
            1,
            Arc::new(Subscription::new(1, outbox.clone())),
        );
    }
    c.bench_function("match one topic among 10k subscriptions", |b| {
        b.iter(|| {
            let mut n = 0;
            router.for_each_match("game.room42.position", |_, _, _| n += 1);
            n
        })
    });
}

criterion_group!(benches, router);
criterion_main!(benches);
