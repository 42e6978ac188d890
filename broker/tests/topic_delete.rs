//! Deleting and purging topics and deleting durable consumers, over the raw protocol:
//! subscribers and consumer members are told, the name starts again at seq 1 with a new
//! epoch, a position of the old log is refused, a purge keeps what it was asked to and
//! never reuses a seq, only admins may remove, and a deletion survives a restart.

mod common;

use common::{start_with, RawConn};
use rtc_broker::{Broker, Config};
use rtc_proto::v1::{self, frame::Op, start_position::Position};
use rtc_proto::{ErrorCode, Frame};

/// Sends `op` and returns the answer.
async fn ask(c: &mut RawConn, op: Op) -> Frame {
    c.send(Frame::from_op(op)).await;
    c.recv().await.expect("an answer")
}

fn confirmed(f: Frame, req_id: u64) {
    assert!(
        matches!(f.op, Some(Op::Confirm(v1::Confirm { req_id: r })) if r == req_id),
        "expected Confirm {req_id}, got {f:?}"
    );
}

fn error(f: Frame, code: ErrorCode) -> v1::Error {
    match f.op {
        Some(Op::Error(e)) if e.error_code() == code => e,
        other => panic!("expected Error {code:?}, got {other:?}"),
    }
}

/// The next Deliver's message.
async fn delivered(c: &mut RawConn) -> v1::Message {
    match c.recv().await {
        Some(Frame {
            op: Some(Op::Deliver(d)),
        }) => d.message.expect("a message"),
        other => panic!("expected Deliver, got {other:?}"),
    }
}

fn delete(req_id: u64, name: &str) -> Op {
    Op::TopicDelete(v1::TopicDelete {
        req_id,
        name: name.into(),
    })
}

#[tokio::test]
async fn a_deleted_topic_tells_its_subscribers_and_starts_again_with_a_new_epoch() {
    let b = start_with(|_| {}).await;
    let mut publisher = RawConn::hello(b.addr).await;
    let mut watcher = RawConn::hello(b.addr).await;
    watcher.subscribe_ok(1, "del.>").await;
    for payload in [&b"one"[..], b"two", b"three"] {
        publisher.publish_acked("del.t", payload).await;
    }
    let mut old_epoch = 0;
    for seq in 1..=3 {
        let m = delivered(&mut watcher).await;
        assert_eq!(m.seq, seq);
        assert_ne!(m.epoch, 0, "a durable message carries its epoch");
        old_epoch = m.epoch;
    }
    assert_eq!(publisher.topic_info("del.t").await.epoch, old_epoch);

    let mut admin = RawConn::hello(b.addr).await;
    confirmed(ask(&mut admin, delete(7, "del.t")).await, 7);
    let notice = error(watcher.recv().await.unwrap(), ErrorCode::TopicDeleted);
    assert_eq!((notice.sub_id, notice.topic.as_str()), (1, "del.t"));

    let gone = ask(
        &mut admin,
        Op::TopicInfoRequest(v1::TopicInfoRequest {
            req_id: 8,
            name: "del.t".into(),
        }),
    )
    .await;
    error(gone, ErrorCode::NotFound);
    error(
        ask(&mut admin, delete(9, "del.t")).await,
        ErrorCode::NotFound,
    );

    // The name again: a new log from seq 1, which the live subscription still gets.
    publisher.publish_acked("del.t", b"new one").await;
    let m = delivered(&mut watcher).await;
    assert_eq!((m.seq, &m.payload[..]), (1, &b"new one"[..]));
    assert_ne!(m.epoch, old_epoch, "a new epoch");
    assert_eq!(publisher.topic_info("del.t").await.messages, 1);

    // A start position of the old log is refused, not served from the new one.
    let mut late = RawConn::hello(b.addr).await;
    let from_seq = |req_id, sub_id, epoch| {
        Op::Subscribe(v1::Subscribe {
            req_id,
            sub_id,
            pattern: "del.t".into(),
            start: Some(v1::StartPosition {
                position: Some(Position::Seq(1)),
            }),
            epochs: [("del.t".to_string(), epoch)].into(),
            ..Default::default()
        })
    };
    let e = error(
        ask(&mut late, from_seq(3, 1, old_epoch)).await,
        ErrorCode::UnrecoverablePosition,
    );
    assert_eq!((e.req_id, e.topic.as_str()), (3, "del.t"));
    // With the new epoch the same position is fine.
    let ok = ask(&mut late, from_seq(4, 2, m.epoch)).await;
    assert!(matches!(ok.op, Some(Op::SubAck(_))), "{ok:?}");
    assert_eq!(&delivered(&mut late).await.payload[..], b"new one");

    // A client resuming after seq 2 of the old log (a reconnect) is told, and gets the
    // new log from its start: nothing of it is skipped.
    let mut resumed = RawConn::hello(b.addr).await;
    let ack = ask(
        &mut resumed,
        Op::Subscribe(v1::Subscribe {
            req_id: 5,
            sub_id: 9,
            pattern: "del.>".into(),
            resume_after: [("del.t".to_string(), 2)].into(),
            epochs: [("del.t".to_string(), old_epoch)].into(),
            ..Default::default()
        }),
    )
    .await;
    assert!(matches!(ack.op, Some(Op::SubAck(_))), "{ack:?}");
    let notice = error(resumed.recv().await.unwrap(), ErrorCode::TopicDeleted);
    assert_eq!((notice.sub_id, notice.topic.as_str()), (9, "del.t"));
    let m = delivered(&mut resumed).await;
    assert_eq!((m.seq, &m.payload[..]), (1, &b"new one"[..]));
    b.handle.shutdown().await;
}

#[tokio::test]
async fn purge_keeps_the_newest_and_never_reuses_a_seq() {
    let b = start_with(|_| {}).await;
    let mut c = RawConn::hello(b.addr).await;
    for _ in 0..10 {
        c.publish_acked("purge.t", b"m").await;
    }
    let purge = |req_id, keep| {
        Op::TopicPurge(v1::TopicPurge {
            req_id,
            name: "purge.t".into(),
            keep,
        })
    };
    let Some(Op::TopicInfo(info)) = ask(&mut c, purge(5, 3)).await.op else {
        panic!("TopicInfo expected")
    };
    assert_eq!(
        (info.req_id, info.first_seq, info.last_seq, info.messages),
        (5, 8, 10, 3)
    );
    let Some(Op::TopicInfo(info)) = ask(&mut c, purge(6, 0)).await.op else {
        panic!("TopicInfo expected")
    };
    assert_eq!((info.messages, info.last_seq), (0, 10));
    c.publish_acked("purge.t", b"after").await;
    let info = c.topic_info("purge.t").await;
    assert_eq!((info.first_seq, info.last_seq, info.messages), (11, 11, 1));
    b.handle.shutdown().await;
}

#[tokio::test]
async fn a_deleted_consumer_tells_its_member_and_is_gone() {
    let b = start_with(|_| {}).await;
    let mut c = RawConn::hello(b.addr).await;
    c.publish_acked("work.t", b"job").await;
    let mut member = RawConn::hello(b.addr).await;
    let sub = ask(
        &mut member,
        Op::Subscribe(v1::Subscribe {
            req_id: 1,
            sub_id: 4,
            pattern: "work.t".into(),
            consumer: "w".into(),
            ack_mode: v1::AckMode::Explicit as i32,
            ..Default::default()
        }),
    )
    .await;
    assert!(matches!(sub.op, Some(Op::SubAck(_))), "{sub:?}");
    assert_eq!(&delivered(&mut member).await.payload[..], b"job");
    let del = |req_id| {
        Op::ConsumerDelete(v1::ConsumerDelete {
            req_id,
            topic: "work.t".into(),
            name: "w".into(),
        })
    };
    confirmed(ask(&mut c, del(2)).await, 2);
    let notice = error(member.recv().await.unwrap(), ErrorCode::TopicDeleted);
    assert_eq!(notice.sub_id, 4);
    let info = ask(
        &mut c,
        Op::ConsumerInfoRequest(v1::ConsumerInfoRequest {
            req_id: 3,
            topic: "work.t".into(),
            name: "w".into(),
        }),
    )
    .await;
    error(info, ErrorCode::NotFound);
    error(ask(&mut c, del(4)).await, ErrorCode::NotFound);
    b.handle.shutdown().await;
}

#[tokio::test]
async fn only_an_admin_may_remove() {
    const SECRET: &str = "topic delete test secret of 32+ bytes";
    let b = start_with(|c| c.jwt = Some(common::jwt_config(SECRET))).await;
    let user = common::jwt_for(SECRET, "ana", &[">"], &[">"]);
    let admin = common::jwt_with(SECRET, "ops", &[">"], &[">"], true);
    let mut ana = RawConn::login(b.addr, &user).await;
    ana.publish_acked("keep.t", b"x").await;
    let e = error(
        ask(&mut ana, delete(1, "keep.t")).await,
        ErrorCode::PermissionDenied,
    );
    assert!(e.message.contains("admin"), "{e:?}");
    let purge = Op::TopicPurge(v1::TopicPurge {
        req_id: 2,
        name: "keep.t".into(),
        keep: 0,
    });
    error(ask(&mut ana, purge).await, ErrorCode::PermissionDenied);
    assert_eq!(
        ana.topic_info("keep.t").await.messages,
        1,
        "nothing removed"
    );
    let mut ops = RawConn::login(b.addr, &admin).await;
    confirmed(ask(&mut ops, delete(3, "keep.t")).await, 3);
    b.handle.shutdown().await;
}

#[tokio::test]
async fn a_deletion_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        Broker::builder()
            .tcp("127.0.0.1:0".parse().unwrap())
            .http(None)
            .data_dir(dir.path())
            .configure(|_: &mut Config| {})
            .start()
    };
    let b = start().await.unwrap();
    let mut c = RawConn::hello(b.tcp_addr()).await;
    c.publish_acked("gone.t", b"a").await;
    c.publish_acked("kept.t", b"b").await;
    let mut member = RawConn::hello(b.tcp_addr()).await;
    let sub = ask(
        &mut member,
        Op::Subscribe(v1::Subscribe {
            req_id: 1,
            sub_id: 1,
            pattern: "gone.t".into(),
            consumer: "c".into(),
            ..Default::default()
        }),
    )
    .await;
    assert!(matches!(sub.op, Some(Op::SubAck(_))), "{sub:?}");
    let old_epoch = c.topic_info("gone.t").await.epoch;
    confirmed(ask(&mut c, delete(2, "gone.t")).await, 2);
    drop((c, member));
    b.shutdown().await;

    let b = start().await.unwrap();
    let mut c = RawConn::hello(b.tcp_addr()).await;
    let Some(Op::TopicList(list)) = ask(
        &mut c,
        Op::TopicListRequest(v1::TopicListRequest { req_id: 1 }),
    )
    .await
    .op
    else {
        panic!("TopicList expected")
    };
    let names: Vec<&str> = list.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["kept.t"]);
    let consumers = ask(
        &mut c,
        Op::ConsumerListRequest(v1::ConsumerListRequest {
            req_id: 2,
            topic: "gone.t".into(),
        }),
    )
    .await;
    assert!(
        matches!(&consumers.op, Some(Op::ConsumerList(l)) if l.consumers.is_empty()),
        "{consumers:?}"
    );
    c.publish_acked("gone.t", b"again").await;
    let info = c.topic_info("gone.t").await;
    assert_eq!((info.first_seq, info.last_seq), (1, 1));
    assert!(info.epoch > old_epoch, "epochs are never reused");
    b.shutdown().await;
}
