//! Hostile clients: each test checks that the broker survives one kind of abuse with
//! bounded memory and file descriptors, and that other clients keep being served.
//! Memory is the broker process's RSS from /proc, so these run the real binary.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::{assert_serving, start_with, RawConn};
use futures_util::StreamExt;
use rtc_proto::codec::encode_frame;
use rtc_proto::v1::{self, frame::Op, start_position::Position};
use rtc_proto::{ErrorCode, Frame};
use rtc_testkit::{temp_dir, BrokerProcess};
use tokio::io::AsyncWriteExt;

const BIN: &str = env!("CARGO_BIN_EXE_rtc-broker");

/// A broker binary whose `flood.>` and `eph.>` topics are ephemeral, so that memory
/// figures are about connections, not the store's cache.
fn broker(dir: &Path) -> BrokerProcess {
    let config = dir.join("rtc.toml");
    std::fs::write(
        &config,
        "outbound_queue_bytes = 4194304\n[[topic]]\npattern = \"eph.>\"\nstorage = \"ephemeral\"\n",
    )
    .unwrap();
    BrokerProcess::start(
        Path::new(BIN),
        &dir.join("data"),
        &["--config", config.to_str().unwrap()],
    )
}

fn publish_frame(topic: &str, payload: Bytes, req_id: u64) -> BytesMut {
    let mut buf = BytesMut::new();
    let frame = Frame::from_op(Op::Publish(v1::Publish {
        req_id,
        topic: topic.into(),
        payload,
        ..Default::default()
    }));
    encode_frame(&frame, usize::MAX, &mut buf).unwrap();
    buf
}

#[tokio::test]
async fn a_length_prefix_then_silence_is_closed_by_the_heartbeat() {
    let b = start_with(|c| c.heartbeat_interval = Duration::from_millis(100)).await;
    let mut stall = RawConn::hello(b.addr).await;
    // Announce a 100-byte frame, send three bytes of it, and stop.
    stall.send_raw(&[0, 0, 0, 100, 1, 2, 3]).await;
    stall.expect_error(ErrorCode::HeartbeatTimeout).await;
    stall.expect_closed().await;
    assert_serving(b.addr).await;
}

/// Frames in every order a confused or hostile client might send them — Ack before
/// Subscribe, Publish before Hello, broker-only operations, random fields — from a
/// seeded generator. The broker answers or closes, never dies, and keeps serving.
#[tokio::test]
async fn frames_in_random_order_never_hurt_the_broker() {
    let b = start_with(|_| {}).await;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for conn in 0..20 {
        let mut c = if conn % 4 == 0 {
            RawConn::connect(b.addr).await // no Hello at all
        } else {
            RawConn::hello(b.addr).await
        };
        for _ in 0..100 {
            let sub_id = rnd(4);
            let seqs = vec![rnd(10), rnd(10)];
            let topic = ["a", "b.c", "", "$x", "a.*", "t"][rnd(6) as usize].to_string();
            let op = match rnd(14) {
                0 => Op::Hello(v1::Hello::default()),
                1 => Op::Publish(v1::Publish {
                    req_id: rnd(3),
                    topic,
                    payload: Bytes::from(vec![7u8; rnd(300) as usize]),
                    ..Default::default()
                }),
                2 => Op::Subscribe(v1::Subscribe {
                    req_id: rnd(3),
                    sub_id,
                    pattern: topic,
                    start: (rnd(2) == 0).then(|| v1::StartPosition {
                        position: Some(Position::Seq(rnd(5))),
                    }),
                    consumer: ["", "w", "bad name"][rnd(3) as usize].into(),
                    ..Default::default()
                }),
                3 => Op::Unsubscribe(v1::Unsubscribe {
                    req_id: rnd(3),
                    sub_id,
                }),
                4 => Op::Ack(v1::Ack {
                    req_id: rnd(3),
                    sub_id,
                    seqs,
                }),
                5 => Op::Nack(v1::Nack {
                    req_id: rnd(3),
                    sub_id,
                    seqs,
                    delay_ms: rnd(50),
                }),
                6 => Op::InProgress(v1::InProgress {
                    req_id: rnd(3),
                    sub_id,
                    seqs,
                }),
                7 => Op::Ping(v1::Ping { nonce: rnd(100) }),
                8 => Op::Deliver(v1::Deliver::default()),
                9 => Op::TopicCreate(v1::TopicCreate {
                    req_id: 1,
                    name: topic,
                    settings: Some(v1::TopicSettings {
                        storage: rnd(4) as i32,
                        ..Default::default()
                    }),
                }),
                10 => Op::TopicInfoRequest(v1::TopicInfoRequest {
                    req_id: 1,
                    name: topic,
                }),
                11 => Op::ConsumerInfoRequest(v1::ConsumerInfoRequest {
                    req_id: 1,
                    topic,
                    name: "w".into(),
                }),
                12 => Op::Error(v1::Error::default()),
                _ => Op::Confirm(v1::Confirm { req_id: 9 }),
            };
            let mut buf = BytesMut::new();
            encode_frame(&Frame::from_op(op), usize::MAX, &mut buf).unwrap();
            if c.framed.get_mut().write_all(&buf).await.is_err() {
                break; // the broker closed this one: allowed
            }
        }
        // Read whatever came back until the broker answers a Ping or closes.
        let mut buf = BytesMut::new();
        encode_frame(
            &Frame::from_op(Op::Ping(v1::Ping { nonce: 424242 })),
            usize::MAX,
            &mut buf,
        )
        .unwrap();
        let _ = c.framed.get_mut().write_all(&buf).await;
        while let Some(f) = c.recv().await {
            if matches!(f.op, Some(Op::Pong(v1::Pong { nonce: 424242 }))) {
                break;
            }
        }
    }
    assert_serving(b.addr).await;
}

/// A client that writes requests as fast as it can and never reads the answers: once
/// the answers fill the socket buffers and the connection's queue, the broker stops
/// reading it (TCP backpressure), its memory stays bounded, and another client's round
/// trips stay fast. (Each request is a publish to an invalid topic, so each answer is an
/// `Error` of ~100 bytes: valid publishes get 12-byte acks that the kernel's buffers
/// alone absorb for a long time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_flood_that_never_reads_is_pushed_back_and_others_are_served() {
    let dir = temp_dir();
    let b = broker(dir.path());
    let baseline = b.rss_kib();
    let mut flooder = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let mut hello = BytesMut::new();
    encode_frame(
        &Frame::from_op(Op::Hello(v1::Hello {
            protocol_version: 1,
            ..Default::default()
        })),
        usize::MAX,
        &mut hello,
    )
    .unwrap();
    flooder.write_all(&hello).await.unwrap();
    let chunk: BytesMut = (1..=200u64).fold(BytesMut::new(), |mut acc, i| {
        acc.put(publish_frame(
            "bad..topic",
            Bytes::from_static(&[0u8; 64]),
            i,
        ));
        acc
    });
    // Write until a write stalls for a second (the broker stopped reading), at most 10 s.
    let started = Instant::now();
    let mut written = 0usize;
    let mut pushed_back = false;
    while started.elapsed() < Duration::from_secs(10) {
        match tokio::time::timeout(Duration::from_secs(1), flooder.write_all(&chunk)).await {
            Ok(Ok(())) => written += chunk.len(),
            Ok(Err(e)) => panic!("the broker dropped the flooder: {e}"),
            Err(_) => {
                pushed_back = true;
                break;
            }
        }
    }
    assert!(
        pushed_back,
        "the broker kept reading an unbounded flood ({written} bytes)"
    );
    // Others are served while the flooder is stuck.
    for _ in 0..20 {
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), assert_serving(b.addr))
            .await
            .expect("served");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "round trip took {:?}",
            t.elapsed()
        );
    }
    let during = b.rss_kib();
    println!(
        "flood: {} MiB written before push-back; broker RSS {} -> {} KiB",
        written >> 20,
        baseline,
        during
    );
    assert!(
        during < baseline + 96 * 1024,
        "broker memory grew by {} KiB",
        during - baseline
    );
}

/// A subscriber that never reads: its queue is capped, so the broker's memory stays
/// bounded however much is published, and the publisher is never held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_keeps_broker_memory_bounded() {
    let dir = temp_dir();
    let b = broker(dir.path());
    let mut stuck = RawConn::hello(b.addr).await;
    stuck.subscribe_ok(1, "eph.>").await;
    let baseline = b.rss_kib();
    let mut publisher = RawConn::hello(b.addr).await;
    let payload = Bytes::from(vec![1u8; 4096]);
    let started = Instant::now();
    const N: u64 = 25_000; // ~100 MiB
    for i in 1..=N {
        let mut f = publish_frame(
            "eph.data",
            payload.clone(),
            if i % 1000 == 0 { i } else { 0 },
        );
        publisher
            .framed
            .get_mut()
            .write_all(&f.split())
            .await
            .unwrap();
        if i % 1000 == 0 {
            // Every 1000th is acknowledged: the publisher is not being held up.
            match publisher.recv().await {
                Some(Frame {
                    op: Some(Op::PubAck(a)),
                }) => assert_eq!(a.req_id, i),
                other => panic!("expected PubAck, got {other:?}"),
            }
        }
    }
    let rss = b.rss_kib();
    println!(
        "stalled subscriber: {} MiB published in {:?}; broker RSS {} -> {} KiB",
        (N * 4096) >> 20,
        started.elapsed(),
        baseline,
        rss
    );
    assert!(
        rss < baseline + 64 * 1024,
        "broker memory grew by {} KiB",
        rss - baseline
    );
    assert_serving(b.addr).await;
}

/// 1000 connections opened and closed in a loop leak neither descriptors nor memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_opened_and_closed_leak_nothing() {
    let dir = temp_dir();
    let b = broker(dir.path());
    let cycle = |n: usize| async move {
        for i in 0..n {
            let mut c = RawConn::hello(b.addr).await;
            c.subscribe_ok(1, &format!("eph.c{}", i % 10)).await;
            drop(c);
        }
    };
    cycle(100).await; // warm up allocator and runtime
    let settle = || async {
        // Closed connections are reaped asynchronously: wait until the count stops falling.
        let mut last = usize::MAX;
        for _ in 0..100 {
            let now = b.open_fds();
            if now == last {
                return now;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        last
    };
    let (fds_before, rss_before) = (settle().await, b.rss_kib());
    cycle(1000).await;
    let (fds_after, rss_after) = (settle().await, b.rss_kib());
    println!(
        "1000 connections: fds {fds_before} -> {fds_after}, RSS {rss_before} -> {rss_after} KiB"
    );
    assert!(
        fds_after <= fds_before + 2,
        "descriptors leaked: {fds_before} -> {fds_after}"
    );
    assert!(
        rss_after < rss_before + 8 * 1024,
        "memory grew by {} KiB",
        rss_after - rss_before
    );
    assert_serving(b.addr).await;
}

/// Out of file descriptors: the broker keeps serving the connections it has, says once
/// (not per retry) that it cannot accept, and accepts the waiting connection as soon as
/// descriptors are free again.
#[tokio::test]
async fn running_out_of_descriptors_is_reported_once_and_survived() {
    const MAX_FDS: u64 = 64;
    let dir = temp_dir();
    let config = dir.path().join("rtc.toml");
    std::fs::write(
        &config,
        "[[topic]]\npattern = \"eph.>\"\nstorage = \"ephemeral\"\n",
    )
    .unwrap();
    let b = BrokerProcess::start_limited(
        Path::new(BIN),
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
        Some(MAX_FDS),
    );
    // Open connections until one gets no Welcome: its Hello waits in the listen backlog.
    let mut served = Vec::new();
    let mut waiting = None;
    for _ in 0..MAX_FDS {
        let mut c = RawConn::connect(b.addr).await;
        c.send(Frame::from_op(Op::Hello(v1::Hello {
            protocol_version: rtc_proto::PROTOCOL_VERSION,
            client_name: "fd-test".into(),
            auth_token: String::new(),
        })))
        .await;
        match tokio::time::timeout(Duration::from_secs(1), c.framed.next()).await {
            Ok(Some(Ok(Frame {
                op: Some(Op::Welcome(_)),
            }))) => served.push(c),
            Err(_) => {
                waiting = Some(c);
                break;
            }
            Ok(other) => panic!("expected Welcome or nothing, got {other:?}"),
        }
    }
    let mut waiting = waiting.expect("the descriptor limit was reached");
    assert!(
        served.len() > 10,
        "only {} connections before the limit",
        served.len()
    );

    // The connections it has are still served.
    served[0].subscribe_ok(1, "eph.fd").await;
    served[1].publish_acked("eph.fd", b"still here").await;
    let (_, topic, payload) = served[0].expect_deliver().await;
    assert_eq!(
        (topic.as_str(), &payload[..]),
        ("eph.fd", &b"still here"[..])
    );

    // Free some descriptors: the waiting connection is accepted and answered.
    served.truncate(served.len() - 10);
    match tokio::time::timeout(Duration::from_secs(10), waiting.framed.next()).await {
        Ok(Some(Ok(Frame {
            op: Some(Op::Welcome(_)),
        }))) => {}
        other => panic!("the waiting connection was not served: {other:?}"),
    }
    waiting.ping(7).await;

    let stderr = b.kill_collecting_stderr();
    assert_eq!(
        stderr.matches("cannot accept connections").count(),
        1,
        "reported once, not per retry:\n{stderr}"
    );
    assert!(
        stderr.contains("Too many open files") && stderr.contains("accepting connections again"),
        "{stderr}"
    );
}

/// Message IDs are kept in memory for their topic's dedup window: a client publishing
/// huge IDs would grow the broker by every one. Past `max_msg_id` they are refused
/// (each with its own error), so ~100 MB of them leave the broker's memory where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_message_ids_are_refused_and_cost_no_memory() {
    let dir = temp_dir();
    let b = broker(dir.path());
    let mut c = RawConn::hello(b.addr).await;
    // One ordinary stored message first, so the topic and its index exist.
    c.publish_acked("ids.durable", b"first").await;
    let baseline = b.rss_kib();
    const N: u64 = 200;
    let id = "x".repeat(500 * 1024);
    for req_id in 1..=N {
        let mut buf = BytesMut::new();
        let frame = Frame::from_op(Op::Publish(v1::Publish {
            req_id,
            topic: "ids.durable".into(),
            payload: Bytes::from_static(b"p"),
            msg_id: id.clone(),
            ..Default::default()
        }));
        encode_frame(&frame, usize::MAX, &mut buf).unwrap();
        c.framed.get_mut().write_all(&buf).await.unwrap();
        let e = c.expect_error(ErrorCode::InvalidRequest).await;
        assert_eq!(e.req_id, req_id);
        assert!(e.message.contains("msg_id of 512000 bytes"), "{e:?}");
    }
    let rss = b.rss_kib();
    println!("{N} publishes with 500 KiB message IDs: broker RSS {baseline} -> {rss} KiB");
    assert!(
        rss < baseline + 32 * 1024,
        "broker memory grew by {} KiB",
        rss.saturating_sub(baseline)
    );
    assert_serving(b.addr).await;
}
