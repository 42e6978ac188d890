//! Presence against the real broker on 127.0.0.1:0, raw frames over TCP: members from
//! the connection's identity, one user on two connections counted once, join, update and
//! leave events, a silently dead connection leaving within the heartbeat timeout, pages
//! and counts, large rooms told by count, and the refusals.

mod common;

use std::time::Duration;

use common::{start_with, RawConn, WAIT};
use rtc_proto::v1::{self, frame::Op, PresenceEventKind};
use rtc_proto::{ErrorCode, Frame};

const SECRET: &str = "test secret of at least thirty-two bytes";

fn jwt(c: &mut rtc_broker::config::Config) {
    c.jwt = Some(common::jwt_config(SECRET));
}

async fn login(addr: std::net::SocketAddr, user: &str) -> RawConn {
    RawConn::login(
        addr,
        &common::jwt_for(SECRET, user, &["room.>"], &["room.>"]),
    )
    .await
}

fn join(sub_id: u64, room: &str, info: &str, events: bool) -> Frame {
    Frame::from_op(Op::Subscribe(v1::Subscribe {
        req_id: sub_id,
        sub_id,
        pattern: room.into(),
        presence: Some(v1::PresenceJoin {
            info: info.into(),
            events,
        }),
        ..Default::default()
    }))
}

async fn join_ok(c: &mut RawConn, sub_id: u64, room: &str, info: &str, events: bool) {
    c.send(join(sub_id, room, info, events)).await;
    match c.recv().await {
        Some(Frame {
            op: Some(Op::SubAck(a)),
        }) => assert_eq!(a.sub_id, sub_id),
        other => panic!("expected SubAck, got {other:?}"),
    }
}

/// The next presence event: (kind, user, connections, members).
async fn event(c: &mut RawConn) -> (PresenceEventKind, String, u32, u64) {
    match c.recv().await {
        Some(Frame {
            op: Some(Op::PresenceEvent(e)),
        }) => {
            let kind = e.kind();
            let m = e.member.unwrap_or_default();
            (kind, m.user, m.connections, e.members)
        }
        other => panic!("expected PresenceEvent, got {other:?}"),
    }
}

async fn query(c: &mut RawConn, room: &str, after: &str, limit: u32) -> v1::PresenceInfo {
    c.send(Frame::from_op(Op::PresenceRequest(v1::PresenceRequest {
        req_id: 77,
        topic: room.into(),
        after: after.into(),
        limit,
        ..Default::default()
    })))
    .await;
    match c.recv().await {
        Some(Frame {
            op: Some(Op::PresenceInfo(i)),
        }) => i,
        other => panic!("expected PresenceInfo, got {other:?}"),
    }
}

#[tokio::test]
async fn two_tabs_are_one_member_and_leave_with_the_last() {
    let b = start_with(jwt).await;
    let mut bob = login(b.addr, "bob").await;
    join_ok(&mut bob, 1, "room.lobby", r#"{"name":"Bob"}"#, true).await;
    use PresenceEventKind::*;
    assert_eq!(event(&mut bob).await, (Join, "bob".into(), 1, 1));
    let mut tab1 = login(b.addr, "ana").await;
    join_ok(&mut tab1, 1, "room.lobby", r#"{"tab":1}"#, false).await;
    assert_eq!(event(&mut bob).await, (Join, "ana".into(), 1, 2));
    let mut tab2 = login(b.addr, "ana").await;
    join_ok(&mut tab2, 1, "room.lobby", r#"{"tab":2}"#, false).await;
    assert_eq!(event(&mut bob).await, (Update, "ana".into(), 2, 2));

    let info = query(&mut bob, "room.lobby", "", 0).await;
    assert_eq!((info.members, info.connections), (2, 3));
    let ana = &info.list[0];
    assert_eq!((ana.user.as_str(), ana.connections), ("ana", 2));
    assert_eq!(ana.info, r#"{"tab":2}"#, "the latest tab's info");

    // A clean close: at once.
    drop(tab1);
    assert_eq!(event(&mut bob).await, (Update, "ana".into(), 1, 2));
    // An unsubscribe too.
    tab2.send(Frame::from_op(Op::Unsubscribe(v1::Unsubscribe {
        req_id: 5,
        sub_id: 1,
    })))
    .await;
    assert_eq!(event(&mut bob).await, (Leave, "ana".into(), 0, 1));
    let info = query(&mut bob, "room.lobby", "", 0).await;
    assert_eq!((info.members, info.list.len()), (1, 1));
    b.handle.shutdown().await;
}

#[tokio::test]
async fn a_silently_dead_member_leaves_within_the_heartbeat_timeout() {
    let b = start_with(|c| {
        jwt(c);
        c.heartbeat_interval = Duration::from_millis(200);
    })
    .await;
    let mut watcher = login(b.addr, "bob").await;
    join_ok(&mut watcher, 1, "room.call", "", true).await;
    event(&mut watcher).await;
    // Joins, then never sends anything again, and never closes.
    let mut silent = login(b.addr, "ana").await;
    join_ok(&mut silent, 1, "room.call", "", false).await;
    assert_eq!(event(&mut watcher).await.0, PresenceEventKind::Join);
    let joined = std::time::Instant::now();
    // The watcher keeps its own connection alive while it waits.
    let left = tokio::time::timeout(WAIT, async {
        let mut nonce = 0;
        loop {
            nonce += 1;
            watcher
                .send(Frame::from_op(Op::Ping(v1::Ping { nonce })))
                .await;
            match watcher.recv().await {
                Some(Frame {
                    op: Some(Op::PresenceEvent(e)),
                }) if e.kind() == PresenceEventKind::Leave => {
                    return e.member.unwrap().user;
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                None => panic!("the watcher was closed"),
            }
        }
    })
    .await
    .expect("the dead member left within the wait");
    assert_eq!(left, "ana");
    // Three silent intervals of 200 ms, and some slack for the tick.
    assert!(
        joined.elapsed() < Duration::from_secs(3),
        "{:?}",
        joined.elapsed()
    );
    drop(silent);
    b.handle.shutdown().await;
}

#[tokio::test]
async fn large_rooms_tell_counts_and_pages_cover_everyone() {
    let b = start_with(|c| {
        jwt(c);
        c.presence_events_max = 2;
    })
    .await;
    let mut watcher = login(b.addr, "w").await;
    join_ok(&mut watcher, 1, "room.big", "", true).await;
    assert_eq!(event(&mut watcher).await.0, PresenceEventKind::Join);
    let mut members = Vec::new();
    for i in 0..5 {
        let mut c = login(b.addr, &format!("u{i}")).await;
        join_ok(&mut c, 1, "room.big", "", false).await;
        members.push(c);
    }
    // One more join one by one (2 members), then counts only.
    assert_eq!(event(&mut watcher).await.0, PresenceEventKind::Join);
    // A tick may fall between the joins: counts until the last one.
    let mut last = 0;
    for _ in 0..5 {
        let (kind, user, _, count) = event(&mut watcher).await;
        assert_eq!((kind, user.as_str()), (PresenceEventKind::Count, ""));
        assert!(count > last && count <= 6, "{count} after {last}");
        last = count;
        if count == 6 {
            break;
        }
    }
    assert_eq!(last, 6);
    // Pages of two cover all six, in order.
    let mut users = Vec::new();
    let mut after = String::new();
    for _ in 0..10 {
        let page = query(&mut watcher, "room.big", &after, 2).await;
        users.extend(page.list.into_iter().map(|m| m.user));
        if page.next.is_empty() {
            break;
        }
        after = page.next;
    }
    assert_eq!(users, ["u0", "u1", "u2", "u3", "u4", "w"]);
    b.handle.shutdown().await;
}

#[tokio::test]
async fn bad_joins_and_queries_are_refused() {
    let b = start_with(jwt).await;
    let mut c = login(b.addr, "ana").await;
    c.send(join(1, "room.*", "", false)).await;
    c.expect_error(ErrorCode::InvalidRequest).await;
    c.send(join(2, "room.x", "not json", false)).await;
    c.expect_error(ErrorCode::InvalidRequest).await;
    c.send(join(
        3,
        "room.x",
        &format!("\"{}\"", "x".repeat(2000)),
        false,
    ))
    .await;
    c.expect_error(ErrorCode::PayloadTooLarge).await;
    c.send(Frame::from_op(Op::PresenceRequest(v1::PresenceRequest {
        req_id: 4,
        topic: "secret.room".into(),
        ..Default::default()
    })))
    .await;
    let e = c.expect_error(ErrorCode::PermissionDenied).await;
    assert_eq!(e.req_id, 4);
    // Nothing joined: the room is empty.
    let info = query(&mut c, "room.x", "", 0).await;
    assert_eq!(info.members, 0);
    b.handle.shutdown().await;
}

fn update(req_id: u64, room: &str, key: &str, value: &str, ttl_ms: u64) -> Frame {
    Frame::from_op(Op::PresenceUpdate(v1::PresenceUpdate {
        req_id,
        topic: room.into(),
        key: key.into(),
        value: value.into(),
        ttl_ms,
    }))
}

/// The next presence event's member state.
async fn state_event(c: &mut RawConn) -> std::collections::BTreeMap<String, String> {
    match c.recv().await {
        Some(Frame {
            op: Some(Op::PresenceEvent(e)),
        }) => {
            assert_eq!(e.kind(), PresenceEventKind::Update);
            e.member.unwrap().state
        }
        other => panic!("expected PresenceEvent, got {other:?}"),
    }
}

#[tokio::test]
async fn typing_expires_after_its_ttl_and_keystrokes_are_rate_limited() {
    let b = start_with(jwt).await;
    let mut bob = login(b.addr, "bob").await;
    join_ok(&mut bob, 1, "room.chat", "", true).await;
    event(&mut bob).await;
    let mut ana = login(b.addr, "ana").await;
    join_ok(&mut ana, 1, "room.chat", "", false).await;
    event(&mut bob).await;

    let sent = std::time::Instant::now();
    ana.send(update(1, "room.chat", "typing", "true", 300))
        .await;
    match ana.recv().await {
        Some(Frame {
            op: Some(Op::Confirm(c)),
        }) => assert_eq!(c.req_id, 1),
        other => panic!("expected Confirm, got {other:?}"),
    }
    assert_eq!(
        state_event(&mut bob)
            .await
            .get("typing")
            .map(String::as_str),
        Some("true")
    );
    // Nothing refreshes it: it clears itself, within the TTL and one tick.
    assert!(state_event(&mut bob).await.is_empty());
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // One update per keystroke: beyond the burst they are refused, and bob hears only
    // those that passed.
    let mut refused = 0;
    for i in 0..10 {
        ana.send(update(10 + i, "room.chat", "draft", &i.to_string(), 0))
            .await;
        match ana.recv().await {
            Some(Frame {
                op: Some(Op::Confirm(_)),
            }) => {}
            Some(Frame {
                op: Some(Op::Error(e)),
            }) if e.error_code() == ErrorCode::RateLimited => refused += 1,
            other => panic!("expected Confirm or RATE_LIMITED, got {other:?}"),
        }
    }
    assert!(refused >= 5, "{refused} of 10 refused");
    for _ in 0..10 - refused {
        state_event(&mut bob).await;
    }
    bob.ping(1).await;
    // Not joined to that room: nothing to update.
    ana.send(update(99, "room.other", "typing", "true", 0))
        .await;
    ana.expect_error(ErrorCode::NotFound).await;
    b.handle.shutdown().await;
}

#[tokio::test]
async fn topic_rules_turn_a_rooms_events_off_or_to_counts() {
    use rtc_broker::topic::TopicRule;
    let b = start_with(|c| {
        jwt(c);
        c.topic = vec![
            TopicRule {
                presence_events: false,
                ..TopicRule::ephemeral("room.quiet.>")
            },
            TopicRule {
                presence_events_max: Some(1),
                ..TopicRule::ephemeral("room.counted.>")
            },
        ];
    })
    .await;
    let mut watcher = login(b.addr, "w").await;
    join_ok(&mut watcher, 1, "room.quiet.a", "", true).await;
    join_ok(&mut watcher, 2, "room.counted.a", "", true).await;
    // Its own join in the counted room: one member, within the limit.
    assert_eq!(event(&mut watcher).await.0, PresenceEventKind::Join);
    let mut other = login(b.addr, "o").await;
    join_ok(&mut other, 1, "room.quiet.a", "", false).await;
    join_ok(&mut other, 2, "room.counted.a", "", false).await;
    // Nothing from the quiet room; a count from the counted one.
    let (kind, _, _, members) = event(&mut watcher).await;
    assert_eq!((kind, members), (PresenceEventKind::Count, 2));
    watcher.ping(1).await;
    // The quiet room still answers queries.
    assert_eq!(query(&mut watcher, "room.quiet.a", "", 0).await.members, 2);
    b.handle.shutdown().await;
}
