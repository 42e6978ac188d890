//! Presence in cluster mode, with real parts (a redis-server and broker processes):
//! members on any node are in the room for watchers and queries on every node; a
//! clean leave is told at once, a killed node's members leave within the presence TTL.

mod common;

use std::time::Duration;

use common::cluster::Node;
use common::WAIT;
use rtc_client::{PresenceEvent, PresenceEventKind, PresenceJoin, SubscribeOptions};
use rtc_testkit::redis_server::RedisServer;

fn joining(info: &str, events: bool) -> SubscribeOptions {
    SubscribeOptions {
        presence: Some(PresenceJoin {
            info: info.into(),
            events,
        }),
        ..Default::default()
    }
}

async fn next(events: &mut tokio::sync::broadcast::Receiver<PresenceEvent>) -> PresenceEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event within the wait")
        .expect("no event lost")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_the_nodes_and_a_dead_nodes_members_leave_within_the_ttl() {
    let redis = RedisServer::start();
    let ttl = "presence_ttl = \"3s\"";
    let mut nodes: Vec<Node> = (0..3).map(|_| Node::start_with(&redis, "t", ttl)).collect();
    let (ana, bob, carl) = (
        nodes[0].client().await,
        nodes[1].client().await,
        nodes[2].client().await,
    );
    let mut events = ana.presence_events();
    let _ana_in = ana
        .subscribe_with("room.x", joining(r#"{"n":"ana"}"#, true))
        .await
        .unwrap();
    assert_eq!(
        next(&mut events).await.kind(),
        PresenceEventKind::Join,
        "her own join"
    );

    // Bob joins on node B: Ana, on A, is told.
    let bob_in = bob
        .subscribe_with("room.x", joining(r#"{"n":"bob"}"#, false))
        .await
        .unwrap();
    let joined = next(&mut events).await;
    assert_eq!(
        (joined.kind(), joined.members),
        (PresenceEventKind::Join, 2)
    );
    let bob_member = joined.member.unwrap();
    assert_eq!(bob_member.info, r#"{"n":"bob"}"#);
    // A query on node C, which has nobody in the room, sees both.
    assert_eq!(carl.presence_count("room.x").await.unwrap(), (2, 2));
    let page = carl.presence("room.x", "", 0).await.unwrap();
    let mut infos: Vec<&str> = page.list.iter().map(|m| m.info.as_str()).collect();
    infos.sort_unstable();
    assert_eq!(infos, [r#"{"n":"ana"}"#, r#"{"n":"bob"}"#]);

    // Typing on B reaches A as an update of Bob's state.
    bob.presence_update("room.x", "typing", "1", Some(Duration::from_secs(30)))
        .await
        .unwrap();
    let typing = next(&mut events).await;
    assert_eq!(typing.kind(), PresenceEventKind::Update);
    assert_eq!(
        typing
            .member
            .unwrap()
            .state
            .get("typing")
            .map(String::as_str),
        Some("1")
    );

    // A clean leave on B is told at once.
    let left = tokio::time::Instant::now();
    bob_in.unsubscribe().await.unwrap();
    let leave = next(&mut events).await;
    assert_eq!((leave.kind(), leave.members), (PresenceEventKind::Leave, 1));
    assert_eq!(leave.member.unwrap().user, bob_member.user);
    assert!(
        left.elapsed() < Duration::from_secs(2),
        "at once: {:?}",
        left.elapsed()
    );

    // Carl joins on C, then C is killed: his entry goes within the TTL (3 s) and a
    // heartbeat (1 s).
    let _carl_in = carl
        .subscribe_with("room.x", joining(r#"{"n":"carl"}"#, false))
        .await
        .unwrap();
    let joined = next(&mut events).await;
    assert_eq!(
        (joined.kind(), joined.members),
        (PresenceEventKind::Join, 2)
    );
    let killed = tokio::time::Instant::now();
    nodes.remove(2).broker.kill();
    let gone = next(&mut events).await;
    assert_eq!((gone.kind(), gone.members), (PresenceEventKind::Leave, 1));
    assert_eq!(gone.member.unwrap().info, r#"{"n":"carl"}"#);
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert_eq!(bob.presence_count("room.x").await.unwrap(), (1, 1));
}
