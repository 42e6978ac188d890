//! Cluster mode on a Redis Cluster of three masters (real redis-server processes,
//! created with `redis-cli --cluster create` on loopback): fan-out across nodes for
//! topics on every shard by sharded pub/sub (the default there), durable topics with
//! dedup and replay, and a durable consumer; then classic pub/sub, which has wildcards;
//! shard connections cut under load; a shard whose master is SIGKILLed, taken over by
//! its replica; and a topic whose slot moves to another shard.

mod common;

use std::collections::BTreeSet;

use common::cluster::{publish_in_background, Node};
use common::{next, take};
use rtc_client::{
    ConsumerOptions, ErrorCode, PresenceJoin, PublishMessage, StartAt, SubscribeOptions,
};
use rtc_testkit::redis_server::RedisServer;
use std::time::Duration;

/// Two brokers on the Redis Cluster of `shards` (each a seed), with `more` added to
/// their `[cluster]` section.
fn two_nodes(shards: &[RedisServer], more: &str) -> Vec<Node> {
    let seeds: Vec<String> = shards.iter().map(|s| format!("\"{}\"", s.url())).collect();
    let extra = format!("redis_cluster = [{}]\n{more}", seeds.join(", "));
    (0..2)
        .map(|_| Node::start_with(&shards[0], "t", &extra))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_durable_topics_and_consumers_work_on_a_redis_cluster() {
    let shards = RedisServer::cluster(3);
    let nodes = two_nodes(&shards, "");
    let (a, b) = (nodes[0].client().await, nodes[1].client().await);
    // Sharded pub/sub has no patterns: a wildcard is refused, and says why.
    let err = b.subscribe("orders.>").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unsupported), "{err}");
    assert!(err.to_string().contains("pubsub = \"classic\""), "{err}");
    // Twelve topics: their hash tags spread them over the three shards.
    let topics: Vec<String> = (0..12).map(|i| format!("orders.t{i}")).collect();
    let mut on_b = Vec::new();
    let mut live_b = Vec::new();
    for t in &topics {
        on_b.push(b.subscribe(t.as_str()).await.unwrap());
        live_b.push(b.subscribe(format!("live.{t}").as_str()).await.unwrap());
    }
    // Each topic's channel is subscribed on its own shard, by sharded pub/sub only.
    let mut shard_channels = 0;
    let mut holding_channels = 0;
    for s in &shards {
        let listed = s.cli(&["PUBSUB", "SHARDCHANNELS"]);
        let n = listed.lines().filter(|l| l.contains(":live")).count();
        shard_channels += n;
        holding_channels += usize::from(n > 0);
        let classic = s.cli(&["PUBSUB", "CHANNELS", "*:live"]);
        assert_eq!(classic.trim(), "", "no classic subscription to a topic");
    }
    assert_eq!(shard_channels, 24, "every topic's channel, once");
    assert!(
        holding_channels >= 2,
        "channels on {holding_channels} shard(s)"
    );
    for round in 0..5 {
        for t in &topics {
            let id = format!("{t}-{round}");
            let ack = a
                .publish_message(PublishMessage::new(t.as_str(), id.clone()).msg_id(id))
                .await
                .unwrap();
            assert_eq!(ack.seq, round + 1, "{t}: its own seqs");
        }
    }
    for t in &topics {
        a.publish(format!("live.{t}").as_str(), "e").await.unwrap();
    }
    for (t, sub) in topics.iter().zip(on_b.iter_mut()) {
        let seqs: Vec<u64> = take(sub, 5).await.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            [1, 2, 3, 4, 5],
            "{t}: every message once, in order, on B"
        );
    }
    // The topics' keys are spread over the shards, not on one.
    let holding = shards
        .iter()
        .filter(|s| s.cli(&["DBSIZE"]).trim().parse::<u64>().unwrap_or(0) > 0)
        .count();
    assert!(holding >= 2, "keys on {holding} shard(s)");
    for (t, sub) in topics.iter().zip(live_b.iter_mut()) {
        let got = take(sub, 1).await;
        assert_eq!(
            got[0].topic.as_str(),
            format!("live.{t}"),
            "ephemeral, on B"
        );
    }
    // A retry on the other node is a duplicate; replay on B from the start.
    let retry = b
        .publish_message(PublishMessage::new("orders.t3", "x").msg_id("orders.t3-0"))
        .await
        .unwrap();
    assert!(retry.duplicate && retry.seq == 1, "{retry:?}");
    let opts = SubscribeOptions {
        start: StartAt::First,
        ..Default::default()
    };
    let mut replay = b.subscribe_with("orders.t7", opts).await.unwrap();
    let history: Vec<u64> = take(&mut replay, 5).await.iter().map(|m| m.seq).collect();
    assert_eq!(history, [1, 2, 3, 4, 5]);
    // Request-reply and presence go by sharded channels too.
    let mut served = b.subscribe("svc.upper").await.unwrap();
    let responder = b.clone();
    let serving = tokio::spawn(async move {
        let request = next(&mut served).await;
        let text = String::from_utf8_lossy(&request.payload).to_uppercase();
        responder.reply(&request, text).await.unwrap();
    });
    let wait = Duration::from_secs(5);
    let answer = a.request("svc.upper", "job", wait).await.unwrap();
    assert_eq!(&answer.payload[..], b"JOB");
    serving.await.unwrap();
    let joining = |info: &str| SubscribeOptions {
        presence: Some(PresenceJoin {
            info: info.into(),
            events: true,
        }),
        ..Default::default()
    };
    let mut events = a.presence_events();
    let _a_in = a
        .subscribe_with("room.s", joining(r#"{"n":"a"}"#))
        .await
        .unwrap();
    let _b_in = b
        .subscribe_with("room.s", joining(r#"{"n":"b"}"#))
        .await
        .unwrap();
    let members = loop {
        let e = tokio::time::timeout(wait, events.recv())
            .await
            .unwrap()
            .unwrap();
        if e.members == 2 {
            break e.members;
        }
    };
    assert_eq!(members, 2, "B's member is in A's room");
    // A durable consumer with a member on each node.
    let join = |c: &rtc_client::Client| {
        let c = c.clone();
        async move {
            let options = SubscribeOptions {
                consumer: Some(ConsumerOptions::new("w").max_in_flight(2)),
                ..Default::default()
            };
            c.subscribe_with("orders.t5", options).await.unwrap()
        }
    };
    let (mut ca, mut cb) = (join(&a).await, join(&b).await);
    let mut seen = BTreeSet::new();
    for _ in 0..5 {
        let (sub, m) = tokio::select! {
            m = next(&mut ca) => (&ca, m),
            m = next(&mut cb) => (&cb, m),
        };
        sub.ack(&m).await.unwrap();
        assert!(seen.insert(m.seq), "seq {} twice", m.seq);
    }
    assert_eq!(seen, (1..=5).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_pubsub_on_a_redis_cluster_carries_wildcard_subscriptions() {
    let shards = RedisServer::cluster(3);
    let nodes = two_nodes(&shards, "pubsub = \"classic\"\n");
    let (a, b) = (nodes[0].client().await, nodes[1].client().await);
    let mut on_b = b.subscribe("orders.>").await.unwrap();
    let mut live_b = b.subscribe("live.>").await.unwrap();
    let topics: Vec<String> = (0..6).map(|i| format!("orders.t{i}")).collect();
    for round in 0..3 {
        for t in &topics {
            let ack = a.publish(t.as_str(), "x").await.unwrap();
            assert_eq!(ack.seq, round + 1, "{t}: its own seqs");
        }
    }
    for t in &topics {
        a.publish(format!("live.{t}").as_str(), "e").await.unwrap();
    }
    let got = take(&mut on_b, 18).await;
    for t in &topics {
        let seqs: Vec<u64> = got
            .iter()
            .filter(|m| m.topic.as_str() == t)
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3], "{t}: every message once, in order, on B");
    }
    let live: BTreeSet<String> = take(&mut live_b, 6)
        .await
        .into_iter()
        .map(|m| m.topic.to_string())
        .collect();
    assert_eq!(live.len(), 6, "ephemeral messages of every shard reach B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_shard_subscriptions_drop_delivers_what_it_missed_in_order() {
    let shards = RedisServer::cluster(3);
    let nodes = two_nodes(&shards, "");
    let (a, b) = (nodes[0].client().await, nodes[1].client().await);
    const TOPICS: [&str; 3] = ["feed.t0", "feed.t1", "feed.t2"];
    const N: usize = 400;
    let mut subs = Vec::new();
    for t in TOPICS {
        subs.push(b.subscribe(t).await.unwrap());
    }
    let publishers: Vec<_> = TOPICS
        .iter()
        .map(|t| publish_in_background(a.clone(), "a", t, N))
        .collect();
    // Every shard drops its pub/sub connections, five times while the publishers run.
    let mut killed = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        for s in &shards {
            killed += s
                .cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
                .trim()
                .parse::<u32>()
                .unwrap_or(0);
        }
    }
    assert!(
        killed >= 5,
        "the shard subscriptions were cut ({killed} connections)"
    );
    for (t, sub) in TOPICS.iter().zip(subs.iter_mut()) {
        let got = take(sub, N).await;
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=N as u64).collect::<Vec<_>>(),
            "{t}: no gap, in order"
        );
    }
    for p in publishers {
        p.await.unwrap();
    }
    for (t, sub) in TOPICS.iter().zip(subs.iter_mut()) {
        a.publish(t, "end").await.unwrap();
        assert_eq!(&next(sub).await.payload[..], b"end", "{t}: nothing twice");
    }
}

/// The `INFO replication` field `name` of `s`.
fn replication(s: &RedisServer, name: &str) -> String {
    let info = s.cli(&["INFO", "replication"]);
    let line = info.lines().find(|l| l.starts_with(name));
    line.map(|l| l.trim().to_string()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_master_dies_is_served_again_by_its_replica() {
    let mut servers = RedisServer::cluster_with_replicas(3, 1);
    let nodes = two_nodes(&servers, "");
    let (a, b) = (nodes[0].client().await, nodes[1].client().await);
    let topics: Vec<String> = (0..6).map(|i| format!("ha.t{i}")).collect();
    let mut subs = Vec::new();
    for t in &topics {
        subs.push(b.subscribe(t.as_str()).await.unwrap());
        assert_eq!(a.publish(t.as_str(), "before").await.unwrap().seq, 1);
    }
    // The master holding the first topic, once its replica has everything it wrote.
    let holds = |s: &RedisServer, t: &str| {
        s.cli(&["ROLE"]).starts_with("master")
            && s.cli(&["EXISTS", &format!("t:{{{t}}}:meta")]).trim() == "1"
    };
    let doomed = servers.iter().position(|s| holds(s, &topics[0])).unwrap();
    let other = topics
        .iter()
        .position(|t| !holds(&servers[doomed], t))
        .expect("a topic on another shard");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let offset = replication(&servers[doomed], "master_repl_offset:");
        let offset = offset.trim_start_matches("master_repl_offset:");
        // `slave0:ip=…,port=…,state=online,offset=N,lag=…`
        if replication(&servers[doomed], "slave0:").contains(&format!("offset={offset},")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    servers[doomed].kill();
    // The other shards go on serving while this one has no master.
    let during = a.publish(topics[other].as_str(), "during").await.unwrap();
    assert_eq!(during.seq, 2);
    // The dead shard's topic is refused until its replica takes over, never acked
    // falsely; then it is taken with the next seq.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut refused = 0;
    let after = loop {
        match a.publish(topics[0].as_str(), "after").await {
            Ok(ack) => break ack,
            Err(rtc_client::Error::Server {
                code: ErrorCode::Unavailable,
                ..
            }) => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "no failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused > 0, "the outage was met");
    assert_eq!(after.seq, 2, "the replica had the history");
    let seqs: Vec<u64> = take(&mut subs[0], 2).await.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2], "B got both, once, across the failover");
    let seqs: Vec<u64> = take(&mut subs[other], 2)
        .await
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_whose_slot_moves_to_another_shard_keeps_its_subscribers() {
    let shards = RedisServer::cluster(3);
    let nodes = two_nodes(&shards, "");
    let (a, b) = (nodes[0].client().await, nodes[1].client().await);
    let mut sub = b.subscribe("moving.t").await.unwrap();
    assert_eq!(a.publish("moving.t", "before").await.unwrap().seq, 1);
    assert_eq!(&next(&mut sub).await.payload[..], b"before");
    // Every slot of the shard holding the topic goes to another master (its keys
    // with them): Redis tells the subscriber its channel is gone from that shard.
    let holder = shards
        .iter()
        .position(|s| s.cli(&["EXISTS", "t:{moving.t}:meta"]).trim() == "1")
        .unwrap();
    let to = (holder + 1) % shards.len();
    let id = |s: &RedisServer| s.cli(&["CLUSTER", "MYID"]).trim().to_string();
    let cli = rtc_testkit::redis_server::redis_server_bin().with_file_name("redis-cli");
    let moved = std::process::Command::new(cli)
        .args([
            "--cluster",
            "reshard",
            &format!("127.0.0.1:{}", shards[0].port),
        ])
        .args(["--cluster-from", &id(&shards[holder])])
        .args(["--cluster-to", &id(&shards[to])])
        .args(["--cluster-slots", "16384", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        moved.status.success(),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    assert_eq!(shards[to].cli(&["EXISTS", "t:{moving.t}:meta"]).trim(), "1");
    // Stored on the new shard with the next seq, and delivered once to B.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        match a.publish("moving.t", "after").await {
            Ok(ack) => break ack,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(after.seq, 2);
    let m = next(&mut sub).await;
    assert_eq!((m.seq, &m.payload[..]), (2, &b"after"[..]));
}
