//! Presence through rtc-client against a real in-process broker on 127.0.0.1:0, over
//! TCP, TLS and QUIC: joining with a subscription, the room's events, queries and
//! counts, typing state, and the leave when the other client closes.

mod common;

transport_tests!(a_room_through_the_client);

use std::time::Duration;

use common::{start_over, Transport, WAIT};
use rtc_client::{PresenceEvent, PresenceEventKind, PresenceJoin, SubscribeOptions};

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

async fn a_room_through_the_client(t: Transport) {
    let b = start_over(t, |_| {}).await;
    let ana = b.connect().await;
    let mut events = ana.presence_events();
    let _in_room = ana
        .subscribe_with("room.x", joining(r#"{"name":"Ana"}"#, true))
        .await
        .unwrap();
    let own = next(&mut events).await;
    assert_eq!(own.kind(), PresenceEventKind::Join);
    let bob = b.connect().await;
    let _bob_in_room = bob
        .subscribe_with("room.x", joining(r#"{"name":"Bob"}"#, false))
        .await
        .unwrap();
    let joined = next(&mut events).await;
    assert_eq!(
        (joined.kind(), joined.members),
        (PresenceEventKind::Join, 2)
    );
    let bob_id = joined.member.unwrap().user;

    assert_eq!(ana.presence_count("room.x").await.unwrap(), (2, 2));
    let page = ana.presence("room.x", "", 0).await.unwrap();
    let names: Vec<&str> = page.list.iter().map(|m| m.info.as_str()).collect();
    assert!(names.contains(&r#"{"name":"Bob"}"#), "{names:?}");

    bob.presence_update("room.x", "typing", "true", Some(Duration::from_secs(5)))
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
        Some("true")
    );

    bob.close().await;
    let left = next(&mut events).await;
    assert_eq!((left.kind(), left.members), (PresenceEventKind::Leave, 1));
    assert_eq!(left.member.unwrap().user, bob_id);
    ana.close().await;
}

/// Presence is not stored: after a SIGKILL of the broker the room is empty, and the
/// member is back once its client has reconnected and restored its subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_rejoins_after_the_broker_is_killed_and_restarted() {
    use rtc_testkit::{temp_dir, workspace_bin, BrokerProcess};
    let bin = workspace_bin("rtc-broker");
    let data = temp_dir();
    let broker = BrokerProcess::start(&bin, data.path(), &[]);
    let url = broker.url();
    let member = rtc_client::Client::connect(&url).await.unwrap();
    let _room = member
        .subscribe_with("room.r", joining("{}", false))
        .await
        .unwrap();
    let count = |url: String| async move {
        let c = rtc_client::Client::connect(&url).await.unwrap();
        let n = c.presence_count("room.r").await.unwrap();
        c.close().await;
        n
    };
    assert_eq!(count(url.clone()).await, (1, 1));
    broker.kill();
    let addr = url.trim_start_matches("tcp://").to_string();
    let broker = BrokerProcess::start_on(&bin, data.path(), &addr, &[]);
    // The new broker serves once start_on returns, with an empty room: until the
    // member's client has reconnected and restored its subscription.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = count(url.clone()).await;
    while seen != (1, 1) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = count(url.clone()).await;
    }
    assert_eq!(seen, (1, 1), "the member rejoined");
    member.close().await;
    broker.kill();
}
