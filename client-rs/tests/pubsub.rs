//! Live pub/sub through rtc-client against a real in-process broker on 127.0.0.1:0.

mod common;

transport_tests!(
    round_trip_with_headers,
    wildcards_match_exactly_what_they_should,
    fifty_subscribers_each_get_every_message_once_in_order,
    fire_and_forget_publishes_arrive_in_order_without_an_added_id,
    a_streaming_publisher_sends_in_batches_in_order_and_flushes_on_drop,
    unsubscribe_ends_delivery_and_other_subscriptions_continue,
    broker_errors_reach_the_call_that_caused_them,
    oversized_publish_is_refused_locally,
    shutdown_ends_subscriptions_and_fails_requests_with_the_reason,
);

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{ephemeral_rule, next, start_over, start_with, until_marker, Transport, WAIT};
use rtc_client::{Client, Error, ErrorCode, PublishMessage};
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::{Frame, FrameCodec};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Decoder;

async fn round_trip_with_headers(t: Transport) {
    let b = start_over(t, |_| {}).await;
    let client = b.connect().await;
    let mut sub = client.subscribe("demo.>").await.unwrap();
    let ack = client
        .publish_message(
            PublishMessage::new("demo.x", "hello")
                .header("k", "v")
                .msg_id("m1"),
        )
        .await
        .unwrap();
    assert_eq!(
        (ack.seq, ack.duplicate),
        (1, false),
        "first message of a durable topic"
    );
    let m = next(&mut sub).await;
    assert_eq!(m.topic, "demo.x");
    assert_eq!(m.payload, Bytes::from_static(b"hello"));
    assert_eq!(
        m.headers,
        BTreeMap::from([("k".to_string(), "v".to_string())])
    );
    assert_eq!(m.msg_id, "m1");
    assert_eq!((m.seq, m.delivery_count), (1, 1));
    assert!(
        m.timestamp_ms > 1_600_000_000_000,
        "broker timestamp set: {}",
        m.timestamp_ms
    );
    client.close().await;
}

async fn wildcards_match_exactly_what_they_should(t: Transport) {
    let b = start_over(t, |_| {}).await;
    let client = b.connect().await;
    // (pattern, topics it must receive, in publish order)
    let cases: [(&str, &[&str]); 5] = [
        ("a.*.c", &["a.b.c", "a.x.c"]),
        ("a.>", &["a.b", "a.b.c", "a.x.c", "a.b.c.d", "a.b.x.c"]),
        ("*.b", &["a.b", "z.b"]),
        ("a.b.c", &["a.b.c"]),
        ("*", &["a", "z"]),
    ];
    let mut subs = Vec::new();
    for (pattern, _) in &cases {
        subs.push(client.subscribe(pattern).await.unwrap());
    }
    let publisher = b.connect().await;
    for topic in [
        "a", "a.b", "a.b.c", "a.x.c", "a.b.c.d", "z", "z.b", "b.c", "a.b.x.c",
    ] {
        publisher.publish(topic, topic.to_string()).await.unwrap();
    }
    // One end marker per subscription, on a topic it matches; markers of other
    // subscriptions that it also matches are skipped.
    let markers = ["a.end.c", "a.end", "end.b", "a.b.c", "end"];
    for (i, topic) in markers.iter().enumerate() {
        publisher.publish(topic, format!("END-{i}")).await.unwrap();
    }
    for (i, ((pattern, want), sub)) in cases.iter().zip(subs.iter_mut()).enumerate() {
        let got: Vec<String> = until_marker(sub, &format!("END-{i}"))
            .await
            .into_iter()
            .filter(|m| !m.payload.starts_with(b"END-"))
            .map(|m| m.topic.to_string())
            .collect();
        assert_eq!(got, *want, "pattern {pattern}");
    }
}

async fn fifty_subscribers_each_get_every_message_once_in_order(t: Transport) {
    let b = start_over(t, |_| {}).await;
    let mut subscribers = Vec::new();
    for _ in 0..50 {
        let c = b.connect().await;
        let s = c.subscribe("fan.*").await.unwrap();
        subscribers.push((c, s));
    }
    let publisher = b.connect().await;
    const N: usize = 200;
    for i in 0..N {
        publisher.publish("fan.out", i.to_string()).await.unwrap();
    }
    publisher.publish("fan.out", "END").await.unwrap();
    for (_, sub) in subscribers.iter_mut() {
        let got: Vec<String> = until_marker(sub, "END")
            .await
            .into_iter()
            .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
            .collect();
        let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
        assert_eq!(got, want);
    }
}

async fn a_streaming_publisher_sends_in_batches_in_order_and_flushes_on_drop(t: Transport) {
    let b = start_over(t, |_| {}).await;
    let client = b.connect().await;
    let mut sub = client.subscribe("sp.>").await.unwrap();
    let mut publisher = client.publisher().batch_bytes(1000);
    const N: usize = 3000;
    for i in 0..N {
        let m = PublishMessage::new("sp.x", i.to_string()).header("i", i.to_string());
        publisher.publish(&m).await.unwrap();
        assert!(publisher.buffered() < 1000, "a full batch is sent");
    }
    // Too large for the broker: refused here, and what is buffered stays.
    let before = publisher.buffered();
    let huge = PublishMessage::new("sp.x", vec![0u8; 2 * 1024 * 1024]);
    let err = publisher.publish(&huge).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert_eq!(publisher.buffered(), before);
    publisher.flush().await.unwrap();
    assert_eq!(publisher.buffered(), 0);
    // Left in a batch, then dropped: the drop queues it.
    let mut last = client.publisher();
    last.publish(&PublishMessage::new("sp.x", "END"))
        .await
        .unwrap();
    assert!(last.buffered() > 0);
    drop(last);
    let got = until_marker(&mut sub, "END").await;
    assert_eq!(got.len(), N);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload, Bytes::from(i.to_string()));
        assert_eq!(
            m.headers.get("i").map(String::as_str),
            Some(i.to_string().as_str())
        );
        assert_eq!(m.seq, i as u64 + 1, "stored in order on the durable topic");
    }
}

async fn fire_and_forget_publishes_arrive_in_order_without_an_added_id(t: Transport) {
    let b = start_over(t, |_| {}).await;
    let client = b.connect().await;
    let mut sub = client.subscribe("ff.>").await.unwrap();
    const N: usize = 500;
    for i in 0..N {
        client
            .publish_nowait(PublishMessage::new("ff.x", i.to_string()))
            .await
            .unwrap();
    }
    client
        .publish_nowait(
            PublishMessage::new("ff.x", "tagged")
                .msg_id("mine")
                .header("h", "v"),
        )
        .await
        .unwrap();
    for i in 0..N {
        let m = next(&mut sub).await;
        assert_eq!(m.payload, Bytes::from(i.to_string()), "in publish order");
        assert_eq!(m.msg_id, "", "no ID is added to a fire-and-forget publish");
        assert_eq!(m.seq, i as u64 + 1, "stored on the durable topic");
    }
    let m = next(&mut sub).await;
    assert_eq!(
        (m.payload, m.msg_id.as_str()),
        (Bytes::from("tagged"), "mine")
    );
    assert_eq!(m.headers.get("h").map(String::as_str), Some("v"));
    client.close().await;
}

async fn unsubscribe_ends_delivery_and_other_subscriptions_continue(t: Transport) {
    let b = start_over(t, |_| {}).await;
    let client = b.connect().await;
    let first = client.subscribe("u.x").await.unwrap();
    let mut second = client.subscribe("u.>").await.unwrap();
    first.unsubscribe().await.unwrap();
    client.publish("u.x", "after").await.unwrap();
    assert_eq!(
        next(&mut second).await.payload,
        Bytes::from_static(b"after")
    );
    // Dropping a subscription unsubscribes too; the connection keeps working.
    drop(second);
    let mut third = client.subscribe("u.x").await.unwrap();
    client.publish("u.x", "again").await.unwrap();
    assert_eq!(next(&mut third).await.payload, Bytes::from_static(b"again"));
}

async fn broker_errors_reach_the_call_that_caused_them(t: Transport) {
    let b = start_over(t, |_| {}).await;
    let client = b.connect().await;
    let err = client.publish("bad..topic", "x").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidTopic), "{err}");
    let err = client.subscribe("a.>.b").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidPattern), "{err}");
    // Still usable.
    let mut sub = client.subscribe("ok").await.unwrap();
    client.publish("ok", "fine").await.unwrap();
    assert_eq!(next(&mut sub).await.payload, Bytes::from_static(b"fine"));
}

async fn oversized_publish_is_refused_locally(t: Transport) {
    let b = start_over(t, |c| c.max_frame_size = 4096).await;
    let client = b.connect().await;
    let err = client.publish("big", vec![0u8; 5000]).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { max: 4096, .. }), "{err}");
    let err = client
        .publish_nowait(PublishMessage::new("big", vec![0u8; 5000]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { max: 4096, .. }), "{err}");
    client.publish("small", vec![0u8; 100]).await.unwrap();
}

#[tokio::test]
async fn connect_errors_are_clear() {
    let err = Client::connect("tcp://127.0.0.1:1").await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    let err = Client::connect("quic-ish://x:1").await.unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
}

async fn shutdown_ends_subscriptions_and_fails_requests_with_the_reason(t: Transport) {
    let b = start_over(t, |_| {}).await;
    let once = rtc_client::ConnectOptions {
        reconnect: None,
        ..b.options()
    };
    let client = Client::connect_with(&b.url, once).await.unwrap();
    let mut sub = client.subscribe("x").await.unwrap();
    b.handle.shutdown().await;
    assert!(tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .is_none());
    let err = client.publish("x", "y").await.unwrap_err();
    match err {
        Error::Closed(reason) => assert!(reason.contains("SHUTTING_DOWN"), "{reason}"),
        other => panic!("expected Closed, got {other}"),
    }
}

/// A subscriber that never reads must not slow the publisher or a fast subscriber; the
/// broker drops its messages, counts them exactly, and tells it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_does_not_stall_publisher_or_fast_subscriber() {
    let b = start_with(|c| {
        c.max_frame_size = 64 * 1024;
        c.outbound_queue_bytes = 256 * 1024;
        c.topic = vec![ephemeral_rule("load.>")];
    })
    .await;
    let addr = b.url.trim_start_matches("tcp://").to_string();

    // The stalled subscriber speaks the raw protocol so nothing reads on its behalf.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut codec = FrameCodec::default();
    let mut out = BytesMut::new();
    for frame in [
        Frame::from_op(Op::Hello(v1::Hello {
            protocol_version: 1,
            ..Default::default()
        })),
        Frame::from_op(Op::Subscribe(v1::Subscribe {
            req_id: 1,
            sub_id: 1,
            pattern: "load.>".into(),
            start: None,
            ..Default::default()
        })),
    ] {
        rtc_proto::codec::encode_frame(&frame, usize::MAX, &mut out).unwrap();
    }
    stalled.write_all(&out).await.unwrap();
    // Read until the SubAck (Welcome, SubAck) so the subscription is known to be active,
    // then stop reading this socket.
    let mut inbuf = BytesMut::new();
    let mut frames_seen = Vec::new();
    while frames_seen.len() < 2 {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(
            WAIT,
            tokio::io::AsyncReadExt::read(&mut stalled, &mut chunk),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(n > 0, "broker closed the stalled connection early");
        inbuf.put_slice(&chunk[..n]);
        while let Some(f) = codec.decode(&mut inbuf).unwrap() {
            frames_seen.push(f);
        }
    }
    assert!(
        matches!(frames_seen[1].op, Some(Op::SubAck(_))),
        "{frames_seen:?}"
    );

    let fast_client = b.connect().await;
    let mut fast = fast_client.subscribe("load.>").await.unwrap();
    let publisher = b.connect().await;
    const N: u64 = 4_000;
    let payload = Bytes::from(vec![b'x'; 4096]);
    let consume = tokio::spawn(async move {
        for i in 0..N {
            let m = next(&mut fast).await;
            assert_eq!(
                m.headers.get("i").map(String::as_str),
                Some(i.to_string().as_str())
            );
        }
    });
    // 16 MiB in total: far beyond the stalled connection's 256 KiB queue plus socket
    // buffers. Every publish must still be acknowledged promptly.
    tokio::time::timeout(Duration::from_secs(60), async {
        for i in 0..N {
            publisher
                .publish_message(
                    PublishMessage::new("load.x", payload.clone()).header("i", i.to_string()),
                )
                .await
                .unwrap();
        }
    })
    .await
    .expect("publisher was not slowed down by the stalled subscriber");
    tokio::time::timeout(Duration::from_secs(60), consume)
        .await
        .expect("fast subscriber got everything")
        .unwrap();

    // Now read the stalled connection: deliveries plus reported drops account for every
    // message exactly.
    let mut delivered = 0u64;
    let mut dropped = 0u64;
    for f in frames_seen.drain(..) {
        assert!(!matches!(f.op, Some(Op::Deliver(_))));
    }
    while delivered + dropped < N {
        while let Some(f) = codec.decode(&mut inbuf).unwrap() {
            match f.op {
                Some(Op::Deliver(_)) => delivered += 1,
                Some(Op::Error(e)) => {
                    assert_eq!(e.error_code(), ErrorCode::SlowConsumer);
                    assert!(e.count > 0);
                    dropped += e.count;
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
        if delivered + dropped >= N {
            break;
        }
        let mut chunk = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(
            WAIT,
            tokio::io::AsyncReadExt::read(&mut stalled, &mut chunk),
        )
        .await
        .expect("stalled connection still being served")
        .unwrap();
        assert!(n > 0, "broker closed the stalled connection");
        inbuf.put_slice(&chunk[..n]);
    }
    assert_eq!(delivered + dropped, N);
    assert!(dropped > 0, "a stalled reader must have lost messages");
    assert!(
        delivered > 0,
        "queued messages are still delivered once it reads"
    );
    println!("stalled subscriber: {delivered} delivered, {dropped} dropped and reported");
}

/// The client decodes each read whole: frames the network cut at any point, and many
/// in one read, must each reach their subscription or request once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cut_anywhere_on_the_way_in_are_each_handled_once_in_order() {
    const N: usize = 60;
    let b = start_with(|c| c.topic = vec![ephemeral_rule("cut.>")]).await;
    let addr: std::net::SocketAddr = b.url.trim_start_matches("tcp://").parse().unwrap();
    let proxy = common::proxy::Proxy::start(addr).await;
    let client = Client::connect(&proxy.url()).await.unwrap();
    proxy.chop_replies(true);
    let mut sub = client.subscribe("cut.>").await.unwrap();
    let publisher = b.connect().await;
    for i in 0..N {
        // Deliveries arrive cut up; so do the PubAcks of the chopped client's own
        // publishes, interleaved with them.
        publisher.publish("cut.a", i.to_string()).await.unwrap();
        let ack = client.publish("cut.b", i.to_string()).await.unwrap();
        assert_eq!(ack.seq, 0, "an ephemeral topic");
    }
    let (mut a, mut bs) = (Vec::new(), Vec::new());
    while a.len() + bs.len() < 2 * N {
        let m = next(&mut sub).await;
        let text = String::from_utf8(m.payload.to_vec()).unwrap();
        match m.topic.as_str() {
            "cut.a" => a.push(text),
            "cut.b" => bs.push(text),
            other => panic!("unexpected topic {other}"),
        }
    }
    let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(a, want, "every delivery once, in order");
    assert_eq!(bs, want);
}
