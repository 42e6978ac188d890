//! Cluster mode with real parts: a real redis-server (installed by
//! scripts/ensure-redis.sh when missing) and several real `rtc-broker` processes given
//! the same `--cluster`, on free loopback ports with temp dirs; clients connect to
//! different nodes.

mod common;

use std::time::Duration;

use common::cluster::{nodes, publish_in_background};
use common::{next, take, WAIT};
use rtc_client::{Client, ErrorCode, PublishMessage, StartAt, SubscribeOptions};
use rtc_testkit::redis_server::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_one_node_reaches_subscribers_on_the_others_once_and_in_order() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 3);
    let (a, b, c) = (
        nodes[0].client().await,
        nodes[1].client().await,
        nodes[2].client().await,
    );
    let mut on_b = b.subscribe("orders.>").await.unwrap();
    let mut on_c = c.subscribe("orders.eu").await.unwrap();
    let mut live_b = b.subscribe("live.*").await.unwrap();
    let mut live_c = c.subscribe("live.>").await.unwrap();
    const N: usize = 300;
    for i in 0..N {
        let ack = a.publish("orders.eu", format!("m{i}")).await.unwrap();
        assert_eq!(ack.seq, i as u64 + 1, "seqs from 1, in publish order");
    }
    for i in 0..N {
        a.publish("live.room", format!("e{i}")).await.unwrap();
    }
    for (name, sub) in [("B", &mut on_b), ("C", &mut on_c)] {
        let got = take(sub, N).await;
        for (i, m) in got.iter().enumerate() {
            assert_eq!(
                (m.seq, &m.payload[..]),
                (i as u64 + 1, format!("m{i}").as_bytes()),
                "on {name}"
            );
        }
    }
    for (name, sub) in [("B", &mut live_b), ("C", &mut live_c)] {
        let got = take(sub, N).await;
        for (i, m) in got.iter().enumerate() {
            assert_eq!(
                &m.payload[..],
                format!("e{i}").as_bytes(),
                "ephemeral on {name}"
            );
        }
    }
    // Nothing more: each message came once.
    a.publish("orders.eu", "end").await.unwrap();
    a.publish("live.room", "end").await.unwrap();
    for sub in [&mut on_b, &mut on_c, &mut live_b, &mut live_c] {
        assert_eq!(
            &next(sub).await.payload[..],
            b"end",
            "no repeat before the marker"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_asks_redis_only_for_what_its_clients_want() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 2);
    let (a, b) = (nodes[0].client().await, nodes[1].client().await);
    let channels = || redis.cli(&["PUBSUB", "CHANNELS", "t:*"]);
    assert!(
        !channels().contains("{orders.eu}"),
        "no interest yet: {}",
        channels()
    );
    let sub = b.subscribe("orders.eu").await.unwrap();
    assert!(
        channels().contains("t:{orders.eu}:live"),
        "B listens once subscribed: {}",
        channels()
    );
    a.publish("orders.eu", "x").await.unwrap();
    sub.unsubscribe().await.unwrap();
    // The unsubscribe reaches Redis after the UnsubAck; wait for it, bounded.
    let deadline = tokio::time::Instant::now() + WAIT;
    while channels().contains("{orders.eu}") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B still listens: {}",
            channels()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let patterns = || redis.cli(&["PUBSUB", "NUMPAT"]);
    let _all = b.subscribe("orders.>").await.unwrap();
    assert_eq!(patterns().trim(), "1", "a wildcard is one glob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_topic_written_through_two_nodes_dedups_across_them_and_replays_on_a_third() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 3);
    let (a, b, c) = (
        nodes[0].client().await,
        nodes[1].client().await,
        nodes[2].client().await,
    );
    let mut seqs = Vec::new();
    for i in 0..50 {
        let via = if i % 2 == 0 { &a } else { &b };
        let ack = via
            .publish_message(
                PublishMessage::new("audit", format!("p{i}")).msg_id(format!("id-{i}")),
            )
            .await
            .unwrap();
        seqs.push(ack.seq);
    }
    assert_eq!(
        seqs,
        (1..=50).collect::<Vec<u64>>(),
        "one seq order across nodes"
    );
    // A retry sent to the other node is the duplicate it is.
    let retry = b
        .publish_message(PublishMessage::new("audit", "p0").msg_id("id-0"))
        .await
        .unwrap();
    assert!(retry.duplicate && retry.seq == 1, "{retry:?}");
    let opts = SubscribeOptions {
        start: StartAt::First,
        ..Default::default()
    };
    let mut replay = c.subscribe_with("audit", opts).await.unwrap();
    let got = take(&mut replay, 50).await;
    let epoch = got[0].epoch;
    assert_ne!(epoch, 0, "a durable topic has an epoch");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(
            (m.seq, &m.payload[..], m.msg_id.as_str(), m.epoch),
            (
                i as u64 + 1,
                format!("p{i}").as_bytes(),
                format!("id-{i}").as_str(),
                epoch
            )
        );
    }
    // Then live, with no gap and no repeat.
    a.publish("audit", "after").await.unwrap();
    let m = next(&mut replay).await;
    assert_eq!((m.seq, &m.payload[..]), (51, &b"after"[..]));
    // Every node sees the same topic.
    let info = c.topic_info("audit").await.unwrap();
    assert_eq!((info.last_seq, info.epoch), (51, epoch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_publishes_are_refused_and_local_live_delivery_goes_on() {
    let mut redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ]);
    let nodes = nodes(&redis, 2);
    let (a, b) = (nodes[0].client().await, nodes[1].client().await);
    let mut on_b = b.subscribe("jobs").await.unwrap();
    let mut live_a = a.subscribe("live.local").await.unwrap();
    for i in 0..20 {
        a.publish("jobs", format!("j{i}")).await.unwrap();
    }
    assert_eq!(take(&mut on_b, 20).await.len(), 20);
    redis.kill();
    let refused = a.publish("jobs", "during").await.unwrap_err();
    assert!(
        matches!(
            &refused,
            rtc_client::Error::Server {
                code: ErrorCode::Unavailable,
                ..
            }
        ),
        "{refused:?}"
    );
    // The connection stays, and an ephemeral message still reaches this node's
    // subscribers.
    a.publish("live.local", "still here").await.unwrap();
    assert_eq!(&next(&mut live_a).await.payload[..], b"still here");
    redis.restart();
    // Publishes are taken again once the nodes reconnect (bounded wait).
    let deadline = tokio::time::Instant::now() + WAIT;
    let ack = loop {
        match a.publish("jobs", "back").await {
            Ok(ack) => break ack,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "not back: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(
        ack.seq, 21,
        "nothing acknowledged was lost, nothing refused was stored"
    );
    let m = next(&mut on_b).await;
    assert_eq!(
        (m.seq, &m.payload[..]),
        (21, &b"back"[..]),
        "B resubscribed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_lost_in_redis_starts_a_new_epoch_instead_of_reusing_seqs() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 2);
    let (a, b) = (nodes[0].client().await, nodes[1].client().await);
    let mut on_b = b.subscribe("ledger").await.unwrap();
    for i in 0..3 {
        a.publish("ledger", format!("old{i}")).await.unwrap();
    }
    let before = take(&mut on_b, 3).await;
    let old_epoch = before[2].epoch;
    redis.cli(&["FLUSHALL"]);
    let ack = a.publish("ledger", "new").await.unwrap();
    assert_eq!(ack.seq, 1, "the lost log's seqs start again");
    let m = next(&mut on_b).await;
    assert_eq!((m.seq, &m.payload[..]), (1, &b"new"[..]));
    assert_ne!(
        m.epoch, old_epoch,
        "under another epoch, so seq 1 is not mistaken for the old one"
    );
    // A position in the lost history is refused, not served from the new one.
    let opts = SubscribeOptions {
        start: StartAt::Seq(2),
        epoch: Some(old_epoch),
        ..Default::default()
    };
    let refused = b.subscribe_with("ledger", opts).await.unwrap_err();
    assert!(
        matches!(
            &refused,
            rtc_client::Error::Server {
                code: ErrorCode::UnrecoverablePosition,
                ..
            }
        ),
        "{refused:?}"
    );
    // And the topic is still known to every node.
    let info = a.topic_info("ledger").await.unwrap();
    assert_eq!((info.last_seq, info.epoch), (1, m.epoch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_pubsub_connection_drops_delivers_what_it_missed_in_order() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 2);
    let (a, b) = (nodes[0].client().await, nodes[1].client().await);
    let mut on_b = b.subscribe("stream").await.unwrap();
    const N: usize = 1500;
    let publisher = publish_in_background(a.clone(), "a", "stream", N);
    // Redis drops every pub/sub connection, five times while the publisher runs.
    let mut killed = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        killed += redis
            .cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
            .trim()
            .parse::<u32>()
            .unwrap_or(0);
    }
    assert!(killed >= 5, "the feeds were cut ({killed} connections)");
    let got = take(&mut on_b, N).await;
    publisher.await.unwrap();
    for (i, m) in got.iter().enumerate() {
        assert_eq!(
            (m.seq, &m.payload[..]),
            (i as u64 + 1, format!("m{i}").as_bytes())
        );
    }
    a.publish("stream", "end").await.unwrap();
    assert_eq!(
        &next(&mut on_b).await.payload[..],
        b"end",
        "nothing delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_resume_on_another_with_no_gap() {
    let redis = RedisServer::start();
    let mut nodes = nodes(&redis, 3);
    let a = nodes[0].client().await;
    let options = rtc_client::ConnectOptions {
        servers: vec![nodes[2].broker.url()],
        ..Default::default()
    };
    let on_b = Client::connect_with(&nodes[1].broker.url(), options.clone())
        .await
        .unwrap();
    let mut sub = on_b.subscribe("orders").await.unwrap();
    // A publisher on the node that dies too: its outbox resends, dedup stores once.
    let via_b = Client::connect_with(&nodes[1].broker.url(), options)
        .await
        .unwrap();
    const N: usize = 1000;
    let from_a = publish_in_background(a.clone(), "a", "orders", N);
    let from_b = publish_in_background(via_b, "b", "orders", 200);
    let first = take(&mut sub, 100).await;
    nodes.remove(1).broker.kill();
    let rest = take(&mut sub, N + 200 - 100).await;
    from_a.await.unwrap();
    from_b.await.unwrap();
    let seqs: Vec<u64> = first.iter().chain(&rest).map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=(N + 200) as u64).collect::<Vec<_>>(),
        "every seq once, in order, across the failover"
    );
    let mut ids: Vec<&str> = first
        .iter()
        .chain(&rest)
        .map(|m| m.msg_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), N + 200, "no message stored twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_loses_no_acknowledged_message_and_acks_none_it_did_not_store() {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ]);
    let nodes = nodes(&redis, 2);
    let (a, b) = (nodes[0].client().await, nodes[1].client().await);
    let mut acked = std::collections::HashMap::new();
    let mut refused = 0;
    let mut in_flight = FuturesUnordered::new();
    let mut next_id = 0u64;
    let mut killed_at = None;
    // 64 in flight from two nodes; Redis is killed (SIGKILL) after 1000 acks and
    // restarted 300 ms later from its append-only file.
    while acked.len() < 3000 {
        while in_flight.len() < 64 {
            let via = if next_id % 2 == 0 {
                a.clone()
            } else {
                b.clone()
            };
            let id = format!("w-{next_id}");
            next_id += 1;
            in_flight.push(async move {
                let r = via
                    .publish_message(PublishMessage::new("ledger", id.clone()).msg_id(id.clone()))
                    .await;
                (id, r)
            });
        }
        let (id, r) = in_flight.next().await.unwrap();
        match r {
            Ok(ack) => assert!(acked.insert(id, ack.seq).is_none() || ack.duplicate),
            Err(rtc_client::Error::Server {
                code: ErrorCode::Unavailable,
                ..
            }) => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
        if acked.len() == 1000 && killed_at.is_none() {
            redis.kill();
            killed_at = Some(tokio::time::Instant::now());
        }
        if killed_at.is_some_and(|t| t.elapsed() > Duration::from_millis(300))
            && killed_at.take().is_some()
        {
            redis.restart();
        }
    }
    while let Some((id, r)) = in_flight.next().await {
        if let Ok(ack) = r {
            acked.insert(id, ack.seq);
        }
    }
    assert!(refused > 0, "the outage was met");
    let opts = SubscribeOptions {
        start: StartAt::First,
        ..Default::default()
    };
    let info = a.topic_info("ledger").await.unwrap();
    let mut replay = a.subscribe_with("ledger", opts).await.unwrap();
    let stored = take(&mut replay, info.last_seq as usize).await;
    let mut by_id = std::collections::HashMap::new();
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1, "seqs without gaps");
        assert!(
            by_id.insert(m.msg_id.clone(), m.seq).is_none(),
            "{} stored twice",
            m.msg_id
        );
    }
    for (id, seq) in &acked {
        assert_eq!(
            by_id.get(id),
            Some(seq),
            "acknowledged {id} at seq {seq} is there"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_one_node_is_answered_by_a_responder_on_another() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 2);
    let (a, b) = (nodes[0].client().await, nodes[1].client().await);
    let mut sub = b.subscribe("svc.upper").await.unwrap();
    let responder = b.clone();
    let serving = tokio::spawn(async move {
        let mut answered = 0;
        while let Some(request) = sub.next().await {
            let text = String::from_utf8_lossy(&request.payload).to_uppercase();
            responder.reply(&request, text).await.unwrap();
            answered += 1;
        }
        answered
    });
    for i in 0..20 {
        let r = a
            .request("svc.upper", format!("job {i}"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(&r.payload[..], format!("JOB {i}").as_bytes());
    }
    // Nobody serves this one on any node: refused at once, not timed out.
    let started = tokio::time::Instant::now();
    let refused = a
        .request("svc.none", "?", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &refused,
            rtc_client::Error::Server {
                code: ErrorCode::NoResponders,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    b.close().await;
    assert_eq!(serving.await.unwrap(), 20, "each request answered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_a_redis_over_tls_with_a_password_and_a_private_ca() {
    let dir = rtc_testkit::temp_dir();
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("redis.pem"), dir.path().join("redis.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let redis = RedisServer::start_tls(&cert, &key, "s3cret");
    let section = |password: &str| {
        format!(
            "redis = \"rediss://:{password}@127.0.0.1:{}\"\ntls_ca = \"{}\"",
            redis.port,
            cert.display()
        )
    };
    let nodes: Vec<common::cluster::Node> = (0..2)
        .map(|_| common::cluster::Node::start_section(&section("s3cret")))
        .collect();
    let (a, b) = (nodes[0].client().await, nodes[1].client().await);
    let mut on_b = b.subscribe("secure").await.unwrap();
    let ack = a.publish("secure", "over tls").await.unwrap();
    assert_eq!(ack.seq, 1);
    assert_eq!(&next(&mut on_b).await.payload[..], b"over tls");
    // A wrong password stops the broker at start, saying why.
    let cfg_dir = rtc_testkit::temp_dir();
    let config = cfg_dir.path().join("rtc.toml");
    std::fs::write(&config, format!("[cluster]\n{}\n", section("wrong"))).unwrap();
    let out = std::process::Command::new(rtc_testkit::workspace_bin("rtc-broker"))
        .args(["--tcp", "127.0.0.1:0", "--http", "off", "--data-dir"])
        .arg(cfg_dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
}
