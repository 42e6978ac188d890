//! The client across lost connections: reconnect with state events, subscriptions that
//! come back without gaps or repeats, the outbox (bounded, resent with the same message
//! IDs, kept in a file across a restart of the application), and a fault test that cuts
//! the link again and again under load.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use common::proxy::Proxy;
use common::{next, replay_all, seqs, start, take};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rtc_client::{
    Client, ConnectOptions, ConnectionState, ConsumerOptions, Error, PublishMessage,
    ReconnectPolicy, StartAt, SubscribeOptions,
};

fn fast_reconnect() -> ConnectOptions {
    ConnectOptions {
        reconnect: Some(ReconnectPolicy {
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_attempts: None,
        }),
        ..Default::default()
    }
}

async fn wait_for_state(
    rx: &mut tokio::sync::watch::Receiver<ConnectionState>,
    want: fn(ConnectionState) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| want(*s)))
        .await
        .expect("state reached in time")
        .expect("client alive");
}

fn broker_addr(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("tcp://").parse().unwrap()
}

#[tokio::test]
async fn reconnects_with_state_events_and_subscriptions_resume_without_gap_or_repeat() {
    let b = start().await;
    let proxy = Proxy::start(broker_addr(&b.url)).await;
    let publisher = Client::connect(&b.url).await.unwrap();
    let client = Client::connect_with(&proxy.url(), fast_reconnect())
        .await
        .unwrap();
    let mut state = client.state();
    assert_eq!(*state.borrow(), ConnectionState::Connected);
    let mut live = client.subscribe("rc.x").await.unwrap();
    let mut history = client
        .subscribe_with(
            "rc.x",
            SubscribeOptions {
                start: StartAt::First,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for i in 1..=5 {
        publisher.publish("rc.x", format!("{i}")).await.unwrap();
    }
    assert_eq!(seqs(&take(&mut live, 5).await), vec![1, 2, 3, 4, 5]);
    assert_eq!(seqs(&take(&mut history, 3).await), vec![1, 2, 3]);

    proxy.cut();
    wait_for_state(&mut state, |s| {
        matches!(s, ConnectionState::Reconnecting(_))
    })
    .await;
    for i in 6..=10 {
        publisher.publish("rc.x", format!("{i}")).await.unwrap();
    }
    wait_for_state(&mut state, |s| s == ConnectionState::Connected).await;
    // Messages published while the link was down arrive, each once, in order.
    assert_eq!(seqs(&take(&mut live, 5).await), vec![6, 7, 8, 9, 10]);
    assert_eq!(
        seqs(&take(&mut history, 7).await),
        vec![4, 5, 6, 7, 8, 9, 10]
    );
    publisher.publish("rc.x", "11").await.unwrap();
    assert_eq!(next(&mut live).await.seq, 11);
    assert_eq!(next(&mut history).await.seq, 11);

    client.close().await;
    assert_eq!(*client.state().borrow(), ConnectionState::Closed);
}

#[tokio::test]
async fn unacknowledged_publishes_are_resent_and_stored_once() {
    let b = start().await;
    let proxy = Proxy::start(broker_addr(&b.url)).await;
    let client = Client::connect_with(&proxy.url(), fast_reconnect())
        .await
        .unwrap();
    // The broker stores these, but the acknowledgements are lost on the way back.
    proxy.drop_replies(true);
    let pending: Vec<_> = (0..5)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move { c.publish("ob.x", format!("m{i}")).await })
        })
        .collect();
    let observer = Client::connect(&b.url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while observer.topic_info("ob.x").await.map_or(0, |t| t.messages) < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishes never reached the broker"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        client.outbox_len(),
        5,
        "all five wait for their acknowledgement"
    );
    proxy.drop_replies(false);
    proxy.cut();
    // After the reconnect the outbox is resent; the broker recognises every message.
    let mut acks = Vec::new();
    for p in pending {
        acks.push(p.await.unwrap().unwrap());
    }
    assert!(acks.iter().all(|a| a.duplicate), "{acks:?}");
    let mut stored: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    stored.sort();
    assert_eq!(stored, vec![1, 2, 3, 4, 5]);
    assert_eq!(
        observer.topic_info("ob.x").await.unwrap().messages,
        5,
        "stored exactly once"
    );
    assert_eq!(client.outbox_len(), 0);
}

#[tokio::test]
async fn a_full_outbox_refuses_at_once() {
    let b = start().await;
    let proxy = Proxy::start(broker_addr(&b.url)).await;
    let options = ConnectOptions {
        outbox_capacity: 2,
        ..fast_reconnect()
    };
    let client = Client::connect_with(&proxy.url(), options).await.unwrap();
    proxy.drop_replies(true);
    let a = tokio::spawn({
        let c = client.clone();
        async move { c.publish("full.x", "a").await }
    });
    let b2 = tokio::spawn({
        let c = client.clone();
        async move { c.publish("full.x", "b").await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.outbox_len() < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    let err = client.publish("full.x", "c").await.unwrap_err();
    assert!(matches!(err, Error::OutboxFull(2)), "{err}");
    proxy.drop_replies(false);
    proxy.cut();
    a.await.unwrap().unwrap();
    b2.await.unwrap().unwrap();
    client.publish("full.x", "c").await.unwrap();
}

#[tokio::test]
async fn the_outbox_file_resends_what_a_previous_run_left_unacknowledged() {
    let b = start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outbox");
    let proxy = Proxy::start(broker_addr(&b.url)).await;
    // Fsynced: the same behaviour, each entry on disk before its publish is sent.
    let with_file = || ConnectOptions {
        outbox_file: Some(file.clone()),
        outbox_fsync: true,
        request_timeout: Duration::from_millis(300),
        ..fast_reconnect()
    };
    {
        let first_run = Client::connect_with(&proxy.url(), with_file())
            .await
            .unwrap();
        first_run.publish("of.x", "before").await.unwrap();
        // From here on nothing gets through: the publishes time out unacknowledged.
        proxy.drop_replies(true);
        for i in 0..3 {
            let msg = PublishMessage::new("of.x", format!("lost {i}")).msg_id(format!("lost-{i}"));
            let err = first_run.publish_message(msg).await.unwrap_err();
            assert!(matches!(err, Error::Timeout(_)), "{err}");
        }
        assert_eq!(first_run.outbox_len(), 3);
        // The application goes away without its publishes acknowledged.
        first_run.close().await;
    }
    let second_run = Client::connect_with(&b.url, with_file()).await.unwrap();
    let observer = Client::connect(&b.url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while second_run.outbox_len() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox never drained"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut sub = observer
        .subscribe_with(
            "of.x",
            SubscribeOptions {
                start: StartAt::First,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let stored = take(&mut sub, 4).await;
    let ids: Vec<&str> = stored[1..].iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["lost-0", "lost-1", "lost-2"],
        "each stored once, in order"
    );
    assert_eq!(observer.topic_info("of.x").await.unwrap().messages, 4);
}

/// The fault test: a proxy cuts the client links every 250 ms while 10 000
/// acknowledged messages are published (64 in flight) and a durable consumer processes
/// them. Afterwards every message is stored exactly once and was processed at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_link_cuts_lose_nothing_and_store_nothing_twice() {
    const N: usize = 10_000;
    let b = start().await;
    let proxy = std::sync::Arc::new(Proxy::start(broker_addr(&b.url)).await);
    let publisher = Client::connect_with(&proxy.url(), fast_reconnect())
        .await
        .unwrap();
    let worker = Client::connect_with(&proxy.url(), fast_reconnect())
        .await
        .unwrap();
    let options = SubscribeOptions {
        consumer: Some(
            ConsumerOptions::new("proc")
                .ack_wait(Duration::from_secs(2))
                .max_in_flight(256),
        ),
        ..Default::default()
    };
    let mut sub = worker.subscribe_with("fault.x", options).await.unwrap();

    let cuts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let cutter = tokio::spawn({
        let (proxy, cuts) = (proxy.clone(), cuts.clone());
        async move {
            // Bounded: at most 1000 cuts (over four minutes); the test ends long before.
            for _ in 0..1000 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                proxy.cut();
                cuts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let cuts_seen = cuts.clone();
    let publishing = tokio::spawn(async move {
        let mut in_flight = FuturesUnordered::new();
        let mut next_i = 0;
        let mut acked = 0;
        while acked < N {
            while next_i < N && in_flight.len() < 64 {
                if next_i % 1000 == 0 {
                    // Spread the run over the cuts, however fast the broker is: before
                    // each thousand, wait for its share of cuts (five before the last).
                    let want = (next_i / 1000 + 1) as u32 / 2;
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                    while cuts_seen.load(std::sync::atomic::Ordering::SeqCst) < want {
                        assert!(tokio::time::Instant::now() < deadline, "the cutter stalled");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                let c = publisher.clone();
                let i = next_i;
                in_flight.push(async move { c.publish("fault.x", format!("{i}")).await });
                next_i += 1;
            }
            in_flight
                .next()
                .await
                .unwrap()
                .expect("every publish is acknowledged in the end");
            acked += 1;
        }
        publisher
    });
    let mut processed = HashSet::new();
    let mut redelivered = 0u64;
    let consuming = async {
        while processed.len() < N {
            let m = next_with_patience(&mut sub).await;
            if m.delivery_count > 1 {
                redelivered += 1;
            }
            processed.insert(String::from_utf8(m.payload.to_vec()).unwrap());
            // An ack lost with a cut link just means a redelivery later.
            let _ = sub.ack_nowait(&m).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), consuming)
        .await
        .expect("every message processed within two minutes");
    let publisher = tokio::time::timeout(Duration::from_secs(60), publishing)
        .await
        .unwrap()
        .unwrap();
    cutter.abort();
    drop(proxy);
    let cuts = cuts.load(std::sync::atomic::Ordering::SeqCst);
    assert!(cuts >= 5, "the links were cut only {cuts} times");

    let observer = Client::connect(&b.url).await.unwrap();
    let (info, stored, _) = replay_all(&observer, "fault.x").await;
    let payloads: BTreeSet<String> = stored
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(
        info.messages as usize, N,
        "stored exactly once: {} messages for {N} publishes",
        info.messages
    );
    assert_eq!(payloads.len(), N, "every payload stored once");
    assert_eq!(processed.len(), N, "every message processed at least once");
    println!(
        "fault test: {cuts} link cuts; {N} published, {} stored, {} processed, {redelivered} redeliveries; publisher outbox left: {}",
        info.messages,
        processed.len(),
        publisher.outbox_len()
    );
}

async fn next_with_patience(sub: &mut rtc_client::Subscription) -> rtc_client::Message {
    tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("a delivery within 30 s")
        .expect("subscription open")
}

/// A QUIC client reconnects after the broker restarts (same UDP port, same self-signed
/// certificate kept in the data dir), and its subscription resumes without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_client_reconnects_after_the_broker_restarts() {
    let b = common::start_over(common::Transport::Quic, |_| {}).await;
    let quic_addr = b.handle.quic_addr().unwrap();
    let options = ConnectOptions {
        ca_file: b.ca.clone(),
        ..fast_reconnect()
    };
    let client = Client::connect_with(&b.url, options).await.unwrap();
    let mut state = client.state();
    let mut sub = client.subscribe("qr.x").await.unwrap();
    client.publish("qr.x", "before").await.unwrap();
    assert_eq!(next(&mut sub).await.seq, 1);

    let dir = b.stop().await;
    wait_for_state(&mut state, |s| {
        matches!(s, ConnectionState::Reconnecting(_))
    })
    .await;
    let b = common::start_in(dir, |c| c.quic = Some(quic_addr)).await;
    let publisher = Client::connect(&b.url).await.unwrap();
    publisher.publish("qr.x", "while away").await.unwrap();
    wait_for_state(&mut state, |s| s == ConnectionState::Connected).await;
    let m = next(&mut sub).await;
    assert_eq!((m.seq, &m.payload[..]), (2, &b"while away"[..]));
    client.publish("qr.x", "after").await.unwrap();
    assert_eq!(next(&mut sub).await.seq, 3);
}

/// A broker that goes silent (here: a proxy drops everything it sends, while the client's
/// pings still reach it) is declared gone after three heartbeat intervals, and the client
/// reconnects.
#[tokio::test]
async fn a_silent_broker_is_detected_by_the_heartbeat() {
    let b = common::start_with(|c| c.heartbeat_interval = Duration::from_millis(200)).await;
    let proxy = Proxy::start(broker_addr(&b.url)).await;
    let client = Client::connect_with(&proxy.url(), fast_reconnect())
        .await
        .unwrap();
    let mut state = client.state();
    let started = tokio::time::Instant::now();
    proxy.drop_replies(true);
    wait_for_state(&mut state, |s| {
        matches!(s, ConnectionState::Reconnecting(_))
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "declared dead too early: {:?}",
        started.elapsed()
    );
    proxy.drop_replies(false);
    wait_for_state(&mut state, |s| s == ConnectionState::Connected).await;
    client.publish("hb.x", "alive again").await.unwrap();
}

/// An idle client keeps its connection: its writer pings every heartbeat interval the
/// broker announced, so the broker (which closes a connection silent for three
/// intervals) never takes it for dead; lone requests before and after (written by their
/// callers, not the writer) share the connection with the pings.
#[tokio::test]
async fn an_idle_client_keeps_its_connection_with_pings() {
    let b = common::start_with(|c| c.heartbeat_interval = Duration::from_millis(200)).await;
    let client = b.connect().await;
    client.publish("idle.x", "before").await.unwrap();
    let mut state = client.state();
    // Six heartbeat intervals (twice the broker's limit) with nothing to send but pings.
    let idle = tokio::time::timeout(Duration::from_millis(1200), state.changed()).await;
    assert!(
        idle.is_err(),
        "the connection changed state while idle: {:?}",
        *state.borrow()
    );
    assert_eq!(client.publish("idle.x", "after").await.unwrap().seq, 2);
    assert_eq!(*state.borrow(), ConnectionState::Connected);
}

/// A topic deleted and created again, while the client is connected and while it is
/// away: its subscription takes the new log's messages (seq 1 again, another epoch) for
/// new ones, not for repeats of the old log's, and a resume across the gap starts at the
/// new log's beginning.
#[tokio::test]
async fn a_topic_deleted_and_created_again_is_followed_from_its_new_start() {
    let b = start().await;
    let proxy = Proxy::start(broker_addr(&b.url)).await;
    let admin = Client::connect(&b.url).await.unwrap();
    let client = Client::connect_with(&proxy.url(), fast_reconnect())
        .await
        .unwrap();
    let mut state = client.state();
    let mut sub = client
        .subscribe_with(
            "ep.>",
            SubscribeOptions {
                start: StartAt::First,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for i in 1..=3 {
        admin.publish("ep.t", format!("old{i}")).await.unwrap();
    }
    let old = take(&mut sub, 3).await;
    assert_eq!(seqs(&old), vec![1, 2, 3]);
    let first_epoch = old[0].epoch;
    assert_ne!(first_epoch, 0);

    // While connected: the new log's seq 1 is delivered.
    admin.delete_topic("ep.t").await.unwrap();
    admin.publish("ep.t", "live1").await.unwrap();
    let m = next(&mut sub).await;
    assert_eq!((m.seq, &m.payload[..]), (1, &b"live1"[..]));
    let second_epoch = m.epoch;
    assert_ne!(second_epoch, first_epoch);
    admin.publish("ep.t", "live2").await.unwrap();
    assert_eq!(next(&mut sub).await.seq, 2);

    // While away (the link cut, new ones refused): the client resumes after seq 2 of a
    // log that is gone; it gets the newest log from its start, each message once.
    proxy.refuse(true);
    wait_for_state(&mut state, |s| {
        matches!(s, ConnectionState::Reconnecting(_))
    })
    .await;
    admin.delete_topic("ep.t").await.unwrap();
    for i in 1..=2 {
        admin.publish("ep.t", format!("away{i}")).await.unwrap();
    }
    proxy.refuse(false);
    wait_for_state(&mut state, |s| s == ConnectionState::Connected).await;
    admin.publish("ep.t", "after").await.unwrap();
    let got = take(&mut sub, 3).await;
    let payloads: Vec<&[u8]> = got.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(payloads, [&b"away1"[..], b"away2", b"after"]);
    assert_eq!(seqs(&got), vec![1, 2, 3]);
    assert!(got.iter().all(|m| m.epoch != second_epoch && m.epoch != 0));
}
