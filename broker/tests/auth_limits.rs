//! Authentication, per-topic permissions and limits, on the wire.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{assert_serving, start_with, RawConn};
use rtc_broker::auth::{hash_token, UserConfig};
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::{ErrorCode, Frame, PROTOCOL_VERSION};

fn users() -> Vec<UserConfig> {
    vec![
        UserConfig {
            name: "billing".into(),
            token_hash: hash_token("billing-token"),
            publish: vec!["orders.>".into()],
            subscribe: vec!["orders.*".into()],
            admin: false,
        },
        UserConfig {
            name: "admin".into(),
            token_hash: hash_token("admin-token"),
            publish: vec![">".into()],
            subscribe: vec![">".into()],
            admin: false,
        },
    ]
}

async fn hello(addr: std::net::SocketAddr, token: &str) -> (RawConn, Option<Frame>) {
    let mut c = RawConn::connect(addr).await;
    c.send(Frame::from_op(Op::Hello(v1::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "t".into(),
        auth_token: token.into(),
    })))
    .await;
    let answer = c.recv().await;
    (c, answer)
}

#[tokio::test]
async fn missing_or_wrong_token_is_refused_and_closed() {
    let b = start_with(|c| c.user = users()).await;
    for token in ["", "guess", "billing-token "] {
        let (mut c, answer) = hello(b.addr, token).await;
        match answer {
            Some(Frame {
                op: Some(Op::Error(e)),
            }) => assert_eq!(e.error_code(), ErrorCode::Unauthorized),
            other => panic!("token {token:?}: expected UNAUTHORIZED, got {other:?}"),
        }
        c.expect_closed().await;
    }
    let (_c, answer) = hello(b.addr, "billing-token").await;
    assert!(matches!(
        answer,
        Some(Frame {
            op: Some(Op::Welcome(_))
        })
    ));
}

#[tokio::test]
async fn permissions_are_checked_per_topic_and_the_connection_stays_up() {
    let b = start_with(|c| c.user = users()).await;
    let (mut c, _) = hello(b.addr, "billing-token").await;
    let req = c.publish("payments.x", b"no").await;
    let e = c.expect_error(ErrorCode::PermissionDenied).await;
    assert_eq!(e.req_id, req);
    assert!(e.message.contains("billing"), "{e:?}");
    c.publish_acked("orders.eu", b"yes").await;
    // Subscribing wider than allowed, or elsewhere, is refused; within is fine.
    for pattern in ["orders.>", "payments.*", ">"] {
        c.subscribe(7, pattern).await;
        c.expect_error(ErrorCode::PermissionDenied).await;
    }
    c.subscribe_ok(7, "orders.*").await;
    // A durable consumer on a topic outside the subscribe patterns, and creating a
    // topic outside the publish patterns, are refused too.
    c.send(Frame::from_op(Op::Subscribe(v1::Subscribe {
        req_id: 40,
        sub_id: 8,
        pattern: "payments.x".into(),
        consumer: "w".into(),
        ..Default::default()
    })))
    .await;
    assert_eq!(c.expect_error(ErrorCode::PermissionDenied).await.req_id, 40);
    c.send(Frame::from_op(Op::TopicCreate(v1::TopicCreate {
        req_id: 41,
        name: "payments.new".into(),
        settings: None,
    })))
    .await;
    assert_eq!(c.expect_error(ErrorCode::PermissionDenied).await.req_id, 41);
    c.ping(1).await;
}

#[tokio::test]
async fn an_open_broker_accepts_any_token() {
    let b = start_with(|_| {}).await;
    let (_c, answer) = hello(b.addr, "whatever").await;
    assert!(matches!(
        answer,
        Some(Frame {
            op: Some(Op::Welcome(_))
        })
    ));
}

#[tokio::test]
async fn payload_above_max_payload_is_refused() {
    let b = start_with(|c| c.max_payload = 1000).await;
    let mut c = RawConn::hello(b.addr).await;
    c.send(Frame::from_op(Op::Publish(v1::Publish {
        req_id: 5,
        topic: "big".into(),
        payload: Bytes::from(vec![0u8; 1001]),
        ..Default::default()
    })))
    .await;
    assert_eq!(c.expect_error(ErrorCode::PayloadTooLarge).await.req_id, 5);
    c.send(Frame::from_op(Op::Publish(v1::Publish {
        req_id: 6,
        topic: "big".into(),
        payload: Bytes::from(vec![0u8; 1000]),
        ..Default::default()
    })))
    .await;
    match c.recv().await {
        Some(Frame {
            op: Some(Op::PubAck(a)),
        }) => assert_eq!(a.req_id, 6),
        other => panic!("expected PubAck, got {other:?}"),
    }
}

/// Over its rate, a publisher is slowed down and told so — and nothing is dropped.
#[tokio::test]
async fn the_publish_rate_limit_slows_the_publisher_and_drops_nothing() {
    let b = start_with(|c| {
        c.publish_rate = 200;
        c.publish_burst = 20;
        c.topic = vec![rtc_broker::topic::TopicRule::ephemeral("fast.>")];
    })
    .await;
    let mut c = RawConn::hello(b.addr).await;
    let started = Instant::now();
    const N: u64 = 120;
    for _ in 0..N {
        c.publish("fast.x", b"p").await;
    }
    let (mut acks, mut told) = (0, 0);
    while acks < N {
        match c.recv().await {
            Some(Frame {
                op: Some(Op::PubAck(_)),
            }) => acks += 1,
            Some(Frame {
                op: Some(Op::Error(e)),
            }) => {
                assert_eq!(e.error_code(), ErrorCode::RateLimited, "{e:?}");
                told += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let took = started.elapsed();
    // 20 at once, then 100 at 200/s: at least half a second.
    assert!(
        took >= Duration::from_millis(450),
        "not slowed down: {took:?}"
    );
    assert!(told >= 1, "the publisher was told");
    println!("rate limit: {N} publishes acknowledged in {took:?}, told {told} time(s)");
    assert_serving(b.addr).await;
}
