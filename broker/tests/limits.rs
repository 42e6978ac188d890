//! Every limit and rule docs/protocol.md documents for a publish and a subscription, as a
//! client written from the docs meets it: what `Welcome` announces, the message-ID
//! limit, the header rules, `seq:N` beyond the newest message, what `TopicInfo.bytes`
//! counts, and the `ReplayEnd` marker between history and live delivery.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::{start_with, RawConn};
use prost::Message as _;
use rtc_proto::headers::{MAX_HEADERS, MAX_KEY_LEN, MAX_VALUE_LEN};
use rtc_proto::v1::{self, frame::Op, start_position::Position};
use rtc_proto::{ErrorCode, Frame, PROTOCOL_VERSION};

async fn welcome(c: &mut RawConn) -> v1::Welcome {
    c.send(Frame::from_op(Op::Hello(v1::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "limits".into(),
        auth_token: String::new(),
    })))
    .await;
    match c.recv().await {
        Some(Frame {
            op: Some(Op::Welcome(w)),
        }) => w,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

/// Publishes one message with `req_id`; the answer frame.
async fn publish(c: &mut RawConn, p: v1::Publish) -> Frame {
    c.send(Frame::from_op(Op::Publish(p))).await;
    c.recv().await.expect("an answer")
}

fn acked(f: &Frame, req_id: u64) -> u64 {
    match &f.op {
        Some(Op::PubAck(a)) if a.req_id == req_id => a.seq,
        other => panic!("expected PubAck {req_id}, got {other:?}"),
    }
}

fn refused(f: &Frame, req_id: u64, code: ErrorCode) -> String {
    match &f.op {
        Some(Op::Error(e)) if e.req_id == req_id && e.error_code() == code => e.message.clone(),
        other => panic!("expected Error {code:?} for {req_id}, got {other:?}"),
    }
}

#[tokio::test]
async fn welcome_announces_the_payload_and_message_id_limits_and_the_features() {
    let b = start_with(|c| {
        c.max_payload = 5000;
        c.max_msg_id = 40;
    })
    .await;
    let w = welcome(&mut RawConn::connect(b.addr).await).await;
    assert_eq!((w.max_payload, w.max_msg_id), (5000, 40));
    assert_eq!(
        w.features,
        [
            "durable",
            "replay",
            "consumers",
            "topic-admin",
            "replay-end",
            "request-reply",
            "queue-groups",
            "presence"
        ],
        "over TCP: no datagrams"
    );
}

#[tokio::test]
async fn a_message_id_over_the_limit_is_refused_and_one_at_it_is_stored() {
    let b = start_with(|c| c.max_msg_id = 32).await;
    let mut c = RawConn::hello(b.addr).await;
    let p = |req_id, msg_id: String| v1::Publish {
        req_id,
        topic: "ids.x".into(),
        payload: Bytes::from_static(b"m"),
        msg_id,
        ..Default::default()
    };
    let msg = refused(
        &publish(&mut c, p(1, "i".repeat(33))).await,
        1,
        ErrorCode::InvalidRequest,
    );
    assert!(msg.contains("33 bytes") && msg.contains("32"), "{msg}");
    assert_eq!(acked(&publish(&mut c, p(2, "i".repeat(32))).await, 2), 1);
    // Refused before the topic was checked or anything stored: the next is seq 2.
    assert_eq!(acked(&publish(&mut c, p(3, "j".into())).await, 3), 2);
}

#[tokio::test]
async fn header_rules_are_enforced_at_their_documented_limits() {
    let b = start_with(|_| {}).await;
    let mut c = RawConn::hello(b.addr).await;
    let with = |req_id, headers: BTreeMap<String, String>| v1::Publish {
        req_id,
        topic: "hdr.x".into(),
        payload: Bytes::from_static(b"m"),
        headers,
        ..Default::default()
    };
    let one = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
    let many = |n: usize| (0..n).map(|i| (format!("k{i}"), "v".into())).collect();
    let bad: Vec<BTreeMap<String, String>> = vec![
        one("", "v"),
        one(&"k".repeat(MAX_KEY_LEN + 1), "v"),
        one("a:b", "v"),
        one("a b", "v"),
        one("ключ", "v"),
        one("k", &"v".repeat(MAX_VALUE_LEN + 1)),
        one("k", "new\nline"),
        many(MAX_HEADERS + 1),
    ];
    for (i, headers) in bad.into_iter().enumerate() {
        let req_id = 100 + i as u64;
        refused(
            &publish(&mut c, with(req_id, headers)).await,
            req_id,
            ErrorCode::InvalidRequest,
        );
    }
    let good: Vec<BTreeMap<String, String>> = vec![
        one(&"k".repeat(MAX_KEY_LEN), "v"),
        one("k", &"v".repeat(MAX_VALUE_LEN)),
        one("x-tab", "a\tb"),
        many(MAX_HEADERS),
    ];
    for (i, headers) in good.into_iter().enumerate() {
        let req_id = 200 + i as u64;
        acked(&publish(&mut c, with(req_id, headers)).await, req_id);
    }
}

fn subscribe_from(sub_id: u64, pattern: &str, position: Position) -> Frame {
    Frame::from_op(Op::Subscribe(v1::Subscribe {
        req_id: sub_id,
        sub_id,
        pattern: pattern.into(),
        start: Some(v1::StartPosition {
            position: Some(position),
        }),
        ..Default::default()
    }))
}

async fn expect_sub_ack(c: &mut RawConn, sub_id: u64) {
    match c.recv().await {
        Some(Frame {
            op: Some(Op::SubAck(a)),
        }) => assert_eq!(a.sub_id, sub_id),
        other => panic!("expected SubAck, got {other:?}"),
    }
}

async fn expect_replay_end(c: &mut RawConn, sub_id: u64) {
    match c.recv().await {
        Some(Frame {
            op: Some(Op::ReplayEnd(e)),
        }) => assert_eq!(e.sub_id, sub_id),
        other => panic!("expected ReplayEnd, got {other:?}"),
    }
}

/// The next frame is a Deliver; its message.
async fn expect_message(c: &mut RawConn) -> v1::Message {
    match c.recv().await {
        Some(Frame {
            op: Some(Op::Deliver(d)),
        }) => d.message.expect("a message"),
        other => panic!("expected Deliver, got {other:?}"),
    }
}

#[tokio::test]
async fn replay_end_separates_history_from_live_and_a_live_subscription_gets_none() {
    let b = start_with(|_| {}).await;
    let mut p = RawConn::hello(b.addr).await;
    for payload in [&b"one"[..], b"two", b"three"] {
        p.publish_acked("re.x", payload).await;
    }
    let mut s = RawConn::hello(b.addr).await;
    s.send(subscribe_from(1, "re.>", Position::First(true)))
        .await;
    expect_sub_ack(&mut s, 1).await;
    for seq in 1..=3 {
        assert_eq!(expect_message(&mut s).await.seq, seq);
    }
    expect_replay_end(&mut s, 1).await;
    // A subscription from "new" is live from the start: no marker.
    s.subscribe_ok(2, "re.x").await;
    p.publish_acked("re.x", b"four").await;
    let (a, b2) = (expect_message(&mut s).await, expect_message(&mut s).await);
    assert_eq!(
        (a.seq, b2.seq),
        (4, 4),
        "one live delivery per subscription"
    );
    s.ping(1).await;
}

#[tokio::test]
async fn a_start_beyond_the_newest_message_waits_for_it_and_skips_what_comes_before() {
    let b = start_with(|_| {}).await;
    let mut p = RawConn::hello(b.addr).await;
    p.publish_acked("far.x", b"1").await;
    p.publish_acked("far.x", b"2").await;
    let mut s = RawConn::hello(b.addr).await;
    s.send(subscribe_from(1, "far.x", Position::Seq(5))).await;
    expect_sub_ack(&mut s, 1).await;
    // Nothing stored at or after 5: the history is empty.
    expect_replay_end(&mut s, 1).await;
    for n in [&b"3"[..], b"4", b"5", b"6"] {
        p.publish_acked("far.x", n).await;
    }
    // 3 and 4 came live but lie before the start: skipped.
    assert_eq!(expect_message(&mut s).await.seq, 5);
    assert_eq!(expect_message(&mut s).await.seq, 6);
}

#[tokio::test]
async fn topic_info_bytes_count_the_stored_messages_encoded_size() {
    let b = start_with(|_| {}).await;
    let mut p = RawConn::hello(b.addr).await;
    p.publish_acked("size.x", b"first payload").await;
    p.publish_acked("size.x", b"2nd").await;
    let mut s = RawConn::hello(b.addr).await;
    s.send(subscribe_from(1, "size.x", Position::First(true)))
        .await;
    expect_sub_ack(&mut s, 1).await;
    let encoded: u64 = [expect_message(&mut s).await, expect_message(&mut s).await]
        .iter()
        .map(|m| m.encoded_len() as u64)
        .sum();
    expect_replay_end(&mut s, 1).await;
    s.send(Frame::from_op(Op::TopicInfoRequest(v1::TopicInfoRequest {
        req_id: 9,
        name: "size.x".into(),
    })))
    .await;
    match s.recv().await {
        Some(Frame {
            op: Some(Op::TopicInfo(t)),
        }) => {
            assert_eq!(t.messages, 2);
            assert_eq!(t.bytes, encoded, "the encoded size, not the payloads' 16");
        }
        other => panic!("expected TopicInfo, got {other:?}"),
    }
}

/// `resume_after`: each listed topic continues after the seq given, the others start at
/// `start` (`new` when unset); the limit on entries is enforced.
#[tokio::test]
async fn resume_after_continues_each_listed_topic_and_starts_the_others_at_start() {
    let b = start_with(|_| {}).await;
    let mut p = RawConn::hello(b.addr).await;
    for _ in 0..5 {
        p.publish_acked("ra.x", b"x").await;
    }
    for _ in 0..3 {
        p.publish_acked("ra.y", b"y").await;
    }
    let resume = |sub_id, start: Option<Position>, after: &[(&str, u64)]| {
        Frame::from_op(Op::Subscribe(v1::Subscribe {
            sub_id,
            pattern: "ra.>".into(),
            start: start.map(|p| v1::StartPosition { position: Some(p) }),
            resume_after: after.iter().map(|(t, s)| (t.to_string(), *s)).collect(),
            ..Default::default()
        }))
    };
    let mut s = RawConn::hello(b.addr).await;
    // Unset start: ra.x after 3, ra.y (not listed) only what comes live.
    s.send(resume(1, None, &[("ra.x", 3)])).await;
    expect_sub_ack(&mut s, 1).await;
    let got: Vec<(String, u64)> = [expect_message(&mut s).await, expect_message(&mut s).await]
        .into_iter()
        .map(|m| (m.topic, m.seq))
        .collect();
    assert_eq!(got, [("ra.x".to_string(), 4), ("ra.x".to_string(), 5)]);
    expect_replay_end(&mut s, 1).await;
    p.publish_acked("ra.y", b"live").await;
    let m = expect_message(&mut s).await;
    assert_eq!((m.topic.as_str(), m.seq), ("ra.y", 4));

    // Start first: the unlisted topic from its first message.
    let mut s = RawConn::hello(b.addr).await;
    s.send(resume(
        2,
        Some(Position::First(true)),
        &[("ra.x", 5), ("ra.y", 2)],
    ))
    .await;
    expect_sub_ack(&mut s, 2).await;
    let m = expect_message(&mut s).await;
    assert_eq!((m.topic.as_str(), m.seq), ("ra.y", 3));
    let m = expect_message(&mut s).await;
    assert_eq!((m.topic.as_str(), m.seq), ("ra.y", 4));
    expect_replay_end(&mut s, 2).await;

    let many: Vec<(String, u64)> = (0..1001).map(|i| (format!("ra.t{i}"), 1)).collect();
    let many: Vec<(&str, u64)> = many.iter().map(|(t, s)| (t.as_str(), *s)).collect();
    s.send(resume(3, None, &many)).await;
    let e = s.expect_error(ErrorCode::InvalidRequest).await;
    assert!(e.message.contains("1000"), "{e:?}");
}
