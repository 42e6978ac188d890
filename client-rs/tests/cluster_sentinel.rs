//! Cluster mode on a Redis with a replica and Sentinel, all real processes on loopback:
//! the master is killed under a subscriber and a publisher on two nodes, Sentinel
//! promotes the replica, and the nodes follow it: publishes are refused meanwhile, then
//! taken again with the next seq, and the subscriber gets them.

mod common;

use std::time::Duration;

use common::cluster::Node;
use common::{next, take};
use rtc_client::{ErrorCode, PublishMessage};
use rtc_testkit::redis_server::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_follow_the_master_sentinel_promotes() {
    let mut master = RedisServer::start();
    let replica_of = master.port.to_string();
    let replica = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--replicaof",
        "127.0.0.1",
        &replica_of,
    ]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !replica
        .cli(&["INFO", "replication"])
        .contains("master_link_status:up")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica never synced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sentinel = RedisServer::sentinel(master.port);
    let extra = format!(
        "sentinels = [\"redis://127.0.0.1:{}\"]\nmaster = \"mymaster\"",
        sentinel.port
    );
    let nodes: Vec<Node> = (0..2)
        .map(|_| Node::start_with(&master, "t", &extra))
        .collect();
    let (a, b) = (nodes[0].client().await, nodes[1].client().await);
    let mut on_b = b.subscribe("orders").await.unwrap();
    for i in 0..20 {
        let m = PublishMessage::new("orders", format!("m{i}")).msg_id(format!("m{i}"));
        a.publish_message(m).await.unwrap();
    }
    assert_eq!(take(&mut on_b, 20).await.len(), 20);
    // Replication is asynchronous: wait until the replica has it all, so that the test
    // is about the failover, not about what an unreplicated write loses.
    let acked = master.cli(&["WAIT", "1", "5000"]);
    assert_eq!(acked.trim(), "1", "replicated");
    master.kill();
    let killed = tokio::time::Instant::now();
    let mut refused = 0;
    let ack = loop {
        let m = PublishMessage::new("orders", "after").msg_id("after");
        match a.publish_message(m).await {
            Ok(ack) => break ack,
            Err(rtc_client::Error::Server {
                code: ErrorCode::Unavailable,
                ..
            }) => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no failover: {refused} refused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused > 0, "the outage was met");
    assert_eq!(ack.seq, 21, "the new master has the history");
    let m = next(&mut on_b).await;
    assert_eq!(
        (m.seq, &m.payload[..]),
        (21, &b"after"[..]),
        "B follows the new master"
    );
    assert!(
        replica.cli(&["ROLE"]).starts_with("master"),
        "the replica was promoted"
    );
}
