//! Request-reply and queue groups against the real broker on 127.0.0.1:0, raw frames over
//! TCP: a reply routed back to the requester only, NO_RESPONDERS at once, TIMEOUT, a
//! queue group sharing requests with none answered twice, a reply from a connection the
//! request was not delivered to refused, a second reply refused, and queue groups for
//! plain publishes.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::{start, RawConn};
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::{ErrorCode, Frame};

fn request(req_id: u64, topic: &str, payload: &'static [u8], timeout_ms: u64) -> Frame {
    Frame::from_op(Op::Request(v1::Request {
        req_id,
        topic: topic.into(),
        payload: Bytes::from_static(payload),
        timeout_ms,
        ..Default::default()
    }))
}

fn reply(req_id: u64, reply_to: &str, payload: Bytes) -> Frame {
    Frame::from_op(Op::Reply(v1::Reply {
        req_id,
        reply_to: reply_to.into(),
        payload,
        ..Default::default()
    }))
}

/// The next frame as a delivered request: (sub_id, payload, reply_to).
async fn expect_request(conn: &mut RawConn) -> (u64, Bytes, String) {
    match conn.recv().await {
        Some(Frame {
            op:
                Some(Op::Deliver(v1::Deliver {
                    sub_id,
                    message: Some(m),
                })),
        }) => {
            assert!(!m.reply_to.is_empty(), "a request carries reply_to: {m:?}");
            (sub_id, m.payload, m.reply_to)
        }
        other => panic!("expected a delivered request, got {other:?}"),
    }
}

async fn expect_response(conn: &mut RawConn) -> v1::Response {
    match conn.recv().await {
        Some(Frame {
            op: Some(Op::Response(r)),
        }) => r,
        other => panic!("expected Response, got {other:?}"),
    }
}

async fn expect_confirm(conn: &mut RawConn, req_id: u64) {
    match conn.recv().await {
        Some(Frame {
            op: Some(Op::Confirm(c)),
        }) => assert_eq!(c.req_id, req_id),
        other => panic!("expected Confirm, got {other:?}"),
    }
}

async fn subscribe_group(conn: &mut RawConn, sub_id: u64, pattern: &str, group: &str) {
    conn.send(Frame::from_op(Op::Subscribe(v1::Subscribe {
        req_id: 100 + sub_id,
        sub_id,
        pattern: pattern.into(),
        group: group.into(),
        ..Default::default()
    })))
    .await;
    match conn.recv().await {
        Some(Frame {
            op: Some(Op::SubAck(_)),
        }) => {}
        other => panic!("expected SubAck, got {other:?}"),
    }
}

#[tokio::test]
async fn a_reply_comes_back_to_the_requester_alone() {
    let b = start().await;
    let mut responder = RawConn::hello(b.addr).await;
    responder.subscribe_ok(1, "svc.*").await;
    let mut requester = RawConn::hello(b.addr).await;
    let mut other = RawConn::hello(b.addr).await;
    requester.send(request(5, "svc.echo", b"ping", 0)).await;
    let (sub_id, payload, reply_to) = expect_request(&mut responder).await;
    assert_eq!((sub_id, &payload[..]), (1, &b"ping"[..]));
    responder
        .send(reply(9, &reply_to, Bytes::from_static(b"pong")))
        .await;
    expect_confirm(&mut responder, 9).await;
    let response = expect_response(&mut requester).await;
    assert_eq!((response.req_id, &response.payload[..]), (5, &b"pong"[..]));
    // Nobody else heard any of it.
    other.ping(1).await;
    // A second reply to the same request finds nothing.
    responder
        .send(reply(10, &reply_to, Bytes::from_static(b"again")))
        .await;
    responder.expect_error(ErrorCode::NotFound).await;
    requester.ping(2).await;
    b.handle.shutdown().await;
}

#[tokio::test]
async fn no_responders_at_once_and_a_timeout_when_nobody_answers() {
    let b = start().await;
    let mut requester = RawConn::hello(b.addr).await;
    let asked = std::time::Instant::now();
    requester.send(request(1, "svc.nobody", b"?", 60_000)).await;
    let e = requester.expect_error(ErrorCode::NoResponders).await;
    assert_eq!(e.req_id, 1);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "at once, not after a timeout"
    );

    let mut silent = RawConn::hello(b.addr).await;
    silent.subscribe_ok(1, "svc.silent").await;
    requester.send(request(2, "svc.silent", b"?", 200)).await;
    let (_, _, reply_to) = expect_request(&mut silent).await;
    let e = requester.expect_error(ErrorCode::Timeout).await;
    assert_eq!(e.req_id, 2);
    // Too late now.
    silent.send(reply(3, &reply_to, Bytes::new())).await;
    silent.expect_error(ErrorCode::NotFound).await;
    // Requests need a req_id and a valid topic.
    requester.send(request(0, "svc.silent", b"?", 0)).await;
    requester.expect_error(ErrorCode::InvalidRequest).await;
    requester.send(request(4, "bad..topic", b"?", 0)).await;
    requester.expect_error(ErrorCode::InvalidTopic).await;
    b.handle.shutdown().await;
}

#[tokio::test]
async fn a_group_shares_requests_and_none_is_answered_twice() {
    let b = start().await;
    let mut workers = Vec::new();
    for _ in 0..3 {
        let mut w = RawConn::hello(b.addr).await;
        subscribe_group(&mut w, 1, "jobs.resize", "resizers").await;
        workers.push(w);
    }
    let mut requester = RawConn::hello(b.addr).await;
    const N: u64 = 30;
    for i in 1..=N {
        requester.send(request(i, "jobs.resize", b"img", 0)).await;
    }
    // Each worker gets its share in turn; every one answers all it got.
    let mut per_worker = Vec::new();
    for w in &mut workers {
        let mut got = 0;
        for _ in 0..N / 3 {
            let (_, _, reply_to) = expect_request(w).await;
            w.send(reply(0, &reply_to, Bytes::from(reply_to.clone())))
                .await;
            got += 1;
        }
        // Nothing more for this one.
        w.ping(1).await;
        per_worker.push(got);
    }
    assert_eq!(per_worker, vec![10, 10, 10], "round-robin");
    let mut answered = HashMap::new();
    for _ in 0..N {
        let r = expect_response(&mut requester).await;
        *answered.entry(r.req_id).or_insert(0) += 1;
    }
    assert_eq!(answered.len() as u64, N);
    assert!(answered.values().all(|n| *n == 1), "{answered:?}");
    requester.ping(2).await;
    b.handle.shutdown().await;
}

#[tokio::test]
async fn a_reply_from_a_connection_the_request_did_not_reach_is_refused() {
    let b = start().await;
    let mut responder = RawConn::hello(b.addr).await;
    responder.subscribe_ok(1, "svc.pay").await;
    let mut requester = RawConn::hello(b.addr).await;
    let mut forger = RawConn::hello(b.addr).await;
    requester.send(request(1, "svc.pay", b"100", 0)).await;
    let (_, _, reply_to) = expect_request(&mut responder).await;
    // Even knowing the token, another connection cannot answer.
    forger
        .send(reply(7, &reply_to, Bytes::from_static(b"forged")))
        .await;
    forger.expect_error(ErrorCode::PermissionDenied).await;
    forger.send(reply(8, "r999", Bytes::new())).await;
    forger.expect_error(ErrorCode::NotFound).await;
    responder
        .send(reply(0, &reply_to, Bytes::from_static(b"real")))
        .await;
    let r = expect_response(&mut requester).await;
    assert_eq!(&r.payload[..], b"real");
    b.handle.shutdown().await;
}

#[tokio::test]
async fn a_group_shares_plain_publishes_too() {
    let b = start().await;
    let mut a = RawConn::hello(b.addr).await;
    subscribe_group(&mut a, 1, "work.>", "w").await;
    let mut c = RawConn::hello(b.addr).await;
    subscribe_group(&mut c, 1, "work.>", "w").await;
    let mut everything = RawConn::hello(b.addr).await;
    everything.subscribe_ok(1, "work.>").await;
    let mut publisher = RawConn::hello(b.addr).await;
    for _ in 0..10 {
        publisher.publish_acked("work.x", b"job").await;
    }
    for _ in 0..10 {
        everything.expect_deliver().await;
    }
    for member in [&mut a, &mut c] {
        for _ in 0..5 {
            member.expect_deliver().await;
        }
        member.ping(1).await;
    }
    // A group is for live subscriptions only.
    a.send(Frame::from_op(Op::Subscribe(v1::Subscribe {
        req_id: 9,
        sub_id: 2,
        pattern: "work.>".into(),
        group: "w".into(),
        start: Some(v1::StartPosition {
            position: Some(v1::start_position::Position::First(true)),
        }),
        ..Default::default()
    })))
    .await;
    a.expect_error(ErrorCode::InvalidRequest).await;
    a.send(Frame::from_op(Op::Subscribe(v1::Subscribe {
        req_id: 10,
        sub_id: 3,
        pattern: "work.>".into(),
        group: "no spaces".into(),
        ..Default::default()
    })))
    .await;
    a.expect_error(ErrorCode::InvalidRequest).await;
    b.handle.shutdown().await;
}

#[tokio::test]
async fn requests_waiting_per_connection_are_bounded() {
    let b = common::start_with(|c| c.max_requests_per_connection = 2).await;
    let mut silent = RawConn::hello(b.addr).await;
    silent.subscribe_ok(1, "svc.slow").await;
    let mut requester = RawConn::hello(b.addr).await;
    for i in 1..=2 {
        requester.send(request(i, "svc.slow", b"?", 300)).await;
        expect_request(&mut silent).await;
    }
    requester.send(request(3, "svc.slow", b"?", 300)).await;
    let e = requester.expect_error(ErrorCode::LimitExceeded).await;
    assert_eq!(e.req_id, 3);
    // Once those two time out, there is room again.
    for _ in 0..2 {
        requester.expect_error(ErrorCode::Timeout).await;
    }
    requester.send(request(4, "svc.slow", b"?", 0)).await;
    let (_, _, reply_to) = expect_request(&mut silent).await;
    silent
        .send(reply(0, &reply_to, Bytes::from_static(b"ok")))
        .await;
    assert_eq!(expect_response(&mut requester).await.req_id, 4);
    b.handle.shutdown().await;
}
