//! The wire protocol as a foreign client sees it: handshake, every error code the broker
//! sends for bad input, heartbeats, limits and shutdown. Each test that makes the broker
//! close a connection also checks that other clients keep being served.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{assert_serving, start, start_with, RawConn};
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::{ErrorCode, Frame};

#[tokio::test]
async fn handshake_announces_limits() {
    let b = start().await;
    let mut c = RawConn::connect(b.addr).await;
    c.send(Frame::from_op(Op::Hello(v1::Hello {
        protocol_version: 1,
        client_name: "t".into(),
        auth_token: String::new(),
    })))
    .await;
    match c.recv().await {
        Some(Frame {
            op: Some(Op::Welcome(w)),
        }) => {
            assert_eq!(w.protocol_version, 1);
            assert_eq!(w.max_frame_size, 1024 * 1024);
            assert_eq!(w.heartbeat_interval_ms, 15_000);
            assert_eq!(w.server_version, env!("CARGO_PKG_VERSION"));
            assert!(w.connection_id > 0);
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    c.ping(9).await;
}

#[tokio::test]
async fn first_frame_must_be_hello() {
    let b = start().await;
    let mut c = RawConn::connect(b.addr).await;
    c.publish("a", b"x").await;
    c.expect_error(ErrorCode::HandshakeRequired).await;
    c.expect_closed().await;
    assert_serving(b.addr).await;
}

#[tokio::test]
async fn second_hello_is_a_violation() {
    let b = start().await;
    let mut c = RawConn::hello(b.addr).await;
    c.send(Frame::from_op(Op::Hello(v1::Hello {
        protocol_version: 1,
        ..Default::default()
    })))
    .await;
    c.expect_error(ErrorCode::HandshakeRequired).await;
    c.expect_closed().await;
}

#[tokio::test]
async fn unsupported_protocol_version_is_refused() {
    let b = start().await;
    let mut c = RawConn::connect(b.addr).await;
    c.send(Frame::from_op(Op::Hello(v1::Hello {
        protocol_version: 99,
        ..Default::default()
    })))
    .await;
    let e = c.expect_error(ErrorCode::UnsupportedVersion).await;
    assert!(e.message.contains("99"), "{e:?}");
    c.expect_closed().await;
}

#[tokio::test]
async fn malformed_frame_gets_an_error_and_a_close_while_others_keep_working() {
    let b = start().await;
    let mut bystander = RawConn::hello(b.addr).await;
    bystander.subscribe_ok(1, "still.here").await;

    let mut bad = RawConn::hello(b.addr).await;
    let junk = [0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02];
    let mut buf = BytesMut::new();
    buf.put_u32(junk.len() as u32);
    buf.extend_from_slice(&junk);
    bad.send_raw(&buf).await;
    bad.expect_error(ErrorCode::BadFrame).await;
    bad.expect_closed().await;

    let mut publisher = RawConn::hello(b.addr).await;
    publisher.publish_acked("still.here", b"yes").await;
    assert_eq!(
        bystander.expect_deliver().await.2,
        Bytes::from_static(b"yes")
    );
    assert_serving(b.addr).await;
}

#[tokio::test]
async fn oversized_length_gets_an_error_and_a_close_while_others_keep_working() {
    let b = start().await;
    let mut bad = RawConn::hello(b.addr).await;
    // Announce a 2 GiB frame and send only a few bytes of it.
    bad.send_raw(&[0x80, 0, 0, 0, 1, 2, 3]).await;
    let e = bad.expect_error(ErrorCode::FrameTooLarge).await;
    assert!(e.message.contains("2147483648"), "{e:?}");
    bad.expect_closed().await;
    assert_serving(b.addr).await;
}

#[tokio::test]
async fn unknown_operation_is_unsupported_and_the_connection_stays() {
    let b = start().await;
    let mut c = RawConn::hello(b.addr).await;
    // Frame field 99 (an operation from the future), varint 1.
    c.send_raw(&[0, 0, 0, 3, 0x98, 0x06, 0x01]).await;
    c.expect_error(ErrorCode::Unsupported).await;
    // A broker-only operation sent by a client is refused the same way.
    c.send(Frame::from_op(Op::SubAck(v1::SubAck::default())))
        .await;
    c.expect_error(ErrorCode::Unsupported).await;
    c.ping(1).await;
}

#[tokio::test]
async fn invalid_topic_and_pattern_get_errors_not_a_disconnect() {
    let b = start().await;
    let mut c = RawConn::hello(b.addr).await;
    for topic in ["", "a..b", "a.*", "a.>", "has space", "$reserved.x"] {
        let req_id = c.publish(topic, b"x").await;
        let e = c.expect_error(ErrorCode::InvalidTopic).await;
        assert_eq!(e.req_id, req_id, "error answers the request ({topic:?})");
    }
    for (i, pattern) in ["", "a.>.b", "a*", "a..b"].into_iter().enumerate() {
        let req_id = c.subscribe(10 + i as u64, pattern).await;
        let e = c.expect_error(ErrorCode::InvalidPattern).await;
        assert_eq!(e.req_id, req_id, "error answers the request ({pattern:?})");
    }
    c.ping(2).await;
}

#[tokio::test]
async fn subscription_id_rules() {
    let b = start().await;
    let mut c = RawConn::hello(b.addr).await;
    c.subscribe(0, "a").await;
    c.expect_error(ErrorCode::InvalidRequest).await;
    c.subscribe_ok(5, "a").await;
    c.subscribe(5, "b").await;
    c.expect_error(ErrorCode::DuplicateSubscription).await;
    c.send(Frame::from_op(Op::Unsubscribe(v1::Unsubscribe {
        req_id: 77,
        sub_id: 6,
    })))
    .await;
    let e = c.expect_error(ErrorCode::UnknownSubscription).await;
    assert_eq!(e.req_id, 77);
}

#[tokio::test]
async fn unsubscribe_stops_deliveries_for_that_subscription_only() {
    let b = start().await;
    let mut c = RawConn::hello(b.addr).await;
    c.subscribe_ok(1, "u.x").await;
    c.subscribe_ok(2, "u.>").await;
    c.send(Frame::from_op(Op::Unsubscribe(v1::Unsubscribe {
        req_id: 50,
        sub_id: 1,
    })))
    .await;
    match c.recv().await {
        Some(Frame {
            op: Some(Op::UnsubAck(a)),
        }) => assert_eq!((a.req_id, a.sub_id), (50, 1)),
        other => panic!("expected UnsubAck, got {other:?}"),
    }
    let mut p = RawConn::hello(b.addr).await;
    p.publish_acked("u.x", b"one").await;
    p.publish_acked("u.y", b"two").await;
    // Frames arrive in order: had sub 1 still been active, its Deliver of "one" would
    // come first.
    assert_eq!(
        c.expect_deliver().await,
        (2, "u.x".into(), Bytes::from_static(b"one"))
    );
    assert_eq!(
        c.expect_deliver().await,
        (2, "u.y".into(), Bytes::from_static(b"two"))
    );
}

#[tokio::test]
async fn fire_and_forget_publish_gets_no_ack_but_errors_still_arrive() {
    let b = start().await;
    let mut c = RawConn::hello(b.addr).await;
    c.subscribe_ok(1, "f.>").await;
    c.send(Frame::from_op(Op::Publish(v1::Publish {
        req_id: 0,
        topic: "f.x".into(),
        payload: Bytes::from_static(b"quiet"),
        ..Default::default()
    })))
    .await;
    assert_eq!(c.expect_deliver().await.2, Bytes::from_static(b"quiet"));
    c.send(Frame::from_op(Op::Publish(v1::Publish {
        req_id: 0,
        topic: "bad..topic".into(),
        ..Default::default()
    })))
    .await;
    assert_eq!(c.expect_error(ErrorCode::InvalidTopic).await.req_id, 0);
}

#[tokio::test]
async fn payload_whose_deliver_would_exceed_the_frame_limit_is_refused() {
    let b = start_with(|c| {
        c.max_frame_size = 4096;
        c.outbound_queue_bytes = 1 << 20;
    })
    .await;
    let mut c = RawConn::hello(b.addr).await;
    // Fill the Publish frame up to the announced limit exactly.
    let mut publish = v1::Publish {
        req_id: 1,
        topic: "big".into(),
        ..Default::default()
    };
    let mut size = 4096;
    let frame = loop {
        publish.payload = Bytes::from(vec![7u8; size]);
        let frame = Frame::from_op(Op::Publish(publish.clone()));
        if prost::Message::encoded_len(&frame) <= 4096 {
            break frame;
        }
        size -= 1;
    };
    assert_eq!(
        prost::Message::encoded_len(&frame),
        4096,
        "publish frame fills the limit"
    );
    c.send(frame).await;
    c.expect_error(ErrorCode::PayloadTooLarge).await;
    c.ping(3).await;
}

#[tokio::test]
async fn subscription_limit_per_connection() {
    let b = start_with(|c| c.max_subscriptions_per_connection = 2).await;
    let mut c = RawConn::hello(b.addr).await;
    c.subscribe_ok(1, "a").await;
    c.subscribe_ok(2, "b").await;
    c.subscribe(3, "c").await;
    c.expect_error(ErrorCode::LimitExceeded).await;
}

#[tokio::test]
async fn connection_limit_refuses_with_an_error() {
    let b = start_with(|c| c.max_connections = 1).await;
    let _first = RawConn::hello(b.addr).await;
    let mut second = RawConn::connect(b.addr).await;
    second.expect_error(ErrorCode::LimitExceeded).await;
    second.expect_closed().await;
}

#[tokio::test]
async fn silent_connection_is_closed_after_three_heartbeat_intervals() {
    let b = start_with(|c| c.heartbeat_interval = Duration::from_millis(100)).await;
    let mut silent = RawConn::hello(b.addr).await;
    let started = tokio::time::Instant::now();
    let e = silent.expect_error(ErrorCode::HeartbeatTimeout).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed early: {e:?}"
    );
    silent.expect_closed().await;
}

#[tokio::test]
async fn pinging_connection_stays_open_past_the_heartbeat_limit() {
    let b = start_with(|c| c.heartbeat_interval = Duration::from_millis(100)).await;
    let mut c = RawConn::hello(b.addr).await;
    // Ten pings 50 ms apart span 500 ms, beyond the 300 ms idle limit.
    for nonce in 0..10 {
        c.ping(nonce).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.ping(99).await;
}

#[tokio::test]
async fn no_hello_is_closed_after_the_handshake_timeout() {
    let b = start_with(|c| c.handshake_timeout = Duration::from_millis(200)).await;
    let mut c = RawConn::connect(b.addr).await;
    c.expect_error(ErrorCode::HandshakeTimeout).await;
    c.expect_closed().await;
    assert_serving(b.addr).await;
}

#[tokio::test]
async fn shutdown_tells_clients_and_finishes() {
    let b = start().await;
    let mut c = RawConn::hello(b.addr).await;
    c.subscribe_ok(1, "x").await;
    let addr = b.addr;
    tokio::time::timeout(Duration::from_secs(15), b.handle.shutdown())
        .await
        .expect("shutdown finishes");
    c.expect_error(ErrorCode::ShuttingDown).await;
    c.expect_closed().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn frames_split_anywhere_and_packed_together_are_all_handled_in_order() {
    // The session decodes each read whole: frames cut at every point, and many in one
    // read, must each be handled once and in order.
    const N: u64 = 60;
    let b = start().await;
    let mut c = RawConn::hello(b.addr).await;
    c.subscribe_ok(1, "split.x").await;
    let mut wire = BytesMut::new();
    for req_id in 100..100 + N {
        let frame = Frame::from_op(Op::Publish(v1::Publish {
            req_id,
            topic: "split.x".into(),
            payload: Bytes::from(req_id.to_string()),
            ..Default::default()
        }));
        rtc_proto::codec::encode_frame(&frame, usize::MAX, &mut wire).unwrap();
    }
    // Pieces of 1 to 13 bytes, then the last ~200 bytes (several frames) in one write.
    assert!(wire.len() > 1000, "{} bytes", wire.len());
    let mut size = 1;
    while wire.len() > 200 {
        let piece = wire.split_to(size);
        c.send_raw(&piece).await;
        size = size % 13 + 1;
    }
    c.send_raw(&wire).await;
    let (mut acks, mut delivered) = (Vec::new(), Vec::new());
    while acks.len() < N as usize || delivered.len() < N as usize {
        match c.recv().await {
            Some(Frame {
                op: Some(Op::PubAck(a)),
            }) => acks.push(a.req_id),
            Some(Frame {
                op: Some(Op::Deliver(d)),
            }) => {
                let m = d.message.expect("a message");
                delivered.push(String::from_utf8(m.payload.to_vec()).unwrap());
            }
            other => panic!("expected PubAck or Deliver, got {other:?}"),
        }
    }
    let want: Vec<u64> = (100..100 + N).collect();
    assert_eq!(acks, want, "every publish acknowledged once, in order");
    let want: Vec<String> = want.iter().map(u64::to_string).collect();
    assert_eq!(delivered, want, "every publish delivered once, in order");
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_gets_everything_in_order_when_it_reads_again() {
    // Deliveries are written straight from the thread that queued them (the publisher's
    // session for an ephemeral topic, with a lone subscriber's copies; the storage
    // thread for a durable one, shared) while the subscriber's socket takes them; once
    // its buffers fill, the rest waits in the queue for the subscriber's own writer.
    // Nothing may be lost, doubled or reordered at that hand-over.
    let b = start_with(|c| c.topic = vec![rtc_broker::topic::TopicRule::ephemeral("eph.>")]).await;
    for topic in ["eph.stall", "durable.stall"] {
        stall_then_read(b.addr, topic).await;
    }
}

async fn stall_then_read(addr: std::net::SocketAddr, topic: &str) {
    const N: u64 = 6_000;
    const SIZE: usize = 1_000;
    let mut sub = RawConn::hello(addr).await;
    sub.subscribe_ok(1, topic).await;
    let mut p = RawConn::hello(addr).await;
    for batch in 0..N / 200 {
        let mut wire = BytesMut::new();
        for i in batch * 200..(batch + 1) * 200 {
            let mut payload = vec![(i % 251) as u8; SIZE];
            payload[..8].copy_from_slice(&i.to_be_bytes());
            let frame = Frame::from_op(Op::Publish(v1::Publish {
                req_id: 0,
                topic: topic.into(),
                payload: Bytes::from(payload),
                ..Default::default()
            }));
            rtc_proto::codec::encode_frame(&frame, usize::MAX, &mut wire).unwrap();
        }
        p.send_raw(&wire).await;
    }
    // Every publish was handled once the Pong comes back (6 MB is more than the
    // subscriber's socket buffers hold).
    p.ping(7).await;
    for i in 0..N {
        let (sub_id, _, payload) = sub.expect_deliver().await;
        assert_eq!(sub_id, 1);
        let got = u64::from_be_bytes(payload[..8].try_into().unwrap());
        assert_eq!(got, i, "{topic}: in publish order, none lost or doubled");
        let intact = payload[8..].iter().all(|&b| b == (i % 251) as u8);
        assert!(intact, "{topic}: message {i} intact");
    }
    sub.ping(8).await;
}
