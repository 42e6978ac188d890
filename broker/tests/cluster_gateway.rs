//! Cluster mode through the HTTP gateway, with no sticky sessions: a real redis-server
//! and two real broker processes on one Redis. An SSE stream read on node A is resumed
//! with `Last-Event-ID` on node B, a long-poll hands its position from A to B, and an
//! HTTP publish on B reaches a subscriber of A — every message once, in order.

mod common;

use std::net::SocketAddr;

use common::sse::Sse;
use common::RawConn;
use rtc_testkit::redis_server::RedisServer;
use rtc_testkit::{temp_dir, workspace_bin, BrokerProcess};

struct Node {
    broker: BrokerProcess,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(redis: &RedisServer) -> Node {
        let dir = temp_dir();
        let config = dir.path().join("rtc.toml");
        // A heartbeat every second (a third of the presence TTL).
        let text = format!(
            "fsync = \"never\"\n[cluster]\nredis = \"{}\"\npresence_ttl = \"3s\"\n",
            redis.url()
        );
        std::fs::write(&config, text).unwrap();
        let data = dir.path().join("data");
        let config = config.to_str().unwrap().to_string();
        let args = ["--config", config.as_str(), "--http", "127.0.0.1:0"];
        let broker = BrokerProcess::start(&workspace_bin("rtc-broker"), &data, &args);
        Node { broker, _dir: dir }
    }

    fn http(&self) -> SocketAddr {
        self.broker.http.expect("--http given")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_read_on_one_node_resumes_on_another_with_last_event_id() {
    let redis = RedisServer::start();
    let (a, b) = (Node::start(&redis), Node::start(&redis));
    let mut p = RawConn::hello(a.broker.addr).await;
    const N: u64 = 60;
    for _ in 0..N / 2 {
        p.publish_acked("feed.x", b"before").await;
    }
    let path = "/v1/sse?topic=feed.%3E&from=first";
    let (status, sse) = Sse::open(a.http(), path, &[]).await;
    assert_eq!(status, 200);
    let mut sse = sse.unwrap();
    let mut seqs = Vec::new();
    let mut last_id = None;
    for _ in 0..20 {
        let e = sse.next_message().await;
        seqs.push(e.json()["seq"].as_u64().unwrap());
        last_id = e.id.clone();
    }
    drop(sse);
    for _ in N / 2..N {
        p.publish_acked("feed.x", b"after").await;
    }
    let header = format!("Last-Event-ID: {}", last_id.unwrap());
    let (status, sse) = Sse::open(b.http(), path, &[&header]).await;
    assert_eq!(status, 200, "node B takes A's position");
    let mut sse = sse.unwrap();
    while seqs.len() < N as usize {
        let e = sse.next_message().await;
        seqs.push(e.json()["seq"].as_u64().unwrap());
    }
    assert_eq!(
        seqs,
        (1..=N).collect::<Vec<_>>(),
        "every message once, in order"
    );
    // Then live on B, for a publish on A.
    p.publish_acked("feed.x", b"live").await;
    let e = sse.next_message().await;
    assert_eq!(
        (e.json()["seq"].as_u64(), e.json()["payload"].as_str()),
        (Some(N + 1), Some("live"))
    );
}

async fn poll(node: &Node, query: &str) -> (Vec<serde_json::Value>, String) {
    let a = common::http::get(node.http(), &format!("/v1/poll?{query}"), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    let messages = v["messages"].as_array().cloned().unwrap_or_default();
    (messages, v["next"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_position_from_one_node_is_served_by_another_and_http_publish_crosses_nodes() {
    let redis = RedisServer::start();
    let (a, b) = (Node::start(&redis), Node::start(&redis));
    // An HTTP publish on B, polled from the start on A.
    let published = common::http::request(
        b.http(),
        "POST",
        "/v1/publish/lp.a",
        &["Content-Type: text/plain"],
        b"one",
    )
    .await;
    assert_eq!(published.status, 200, "{}", published.text());
    let (messages, next) = poll(&a, "topic=lp.%3E&from=first&timeout=5s").await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["payload"].as_str(), Some("one"));
    // More on A; the position A gave is polled on B.
    let mut p = RawConn::hello(a.broker.addr).await;
    p.publish_acked("lp.a", b"two").await;
    p.publish_acked("lp.a", b"three").await;
    let (messages, next) = poll(&b, &format!("topic=lp.%3E&after={next}&timeout=5s")).await;
    let payloads: Vec<_> = messages
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    assert_eq!(
        payloads,
        ["two", "three"],
        "nothing missed, nothing repeated"
    );
    // And a poll on A waits for a live message published through B.
    let waiting = tokio::spawn(async move {
        let (messages, _) = poll(&a, &format!("topic=lp.%3E&after={next}&timeout=10s")).await;
        messages
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut q = RawConn::hello(b.broker.addr).await;
    q.publish_acked("lp.a", b"four").await;
    let messages = waiting.await.unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["payload"].as_str(), Some("four"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_every_node_with_its_connections() {
    let redis = RedisServer::start();
    let (a, b) = (Node::start(&redis), Node::start(&redis));
    // Two connections on B, none on A.
    let _c1 = RawConn::hello(b.broker.addr).await;
    let _c2 = RawConn::hello(b.broker.addr).await;
    // A heartbeat carries the count; the first one is at start, the next a second
    // later: wait for B's, bounded.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let answer = common::http::get(a.http(), "/v1/admin/cluster", &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let v = answer.json();
        assert_eq!(v["cluster"], true);
        let nodes = v["nodes"].as_array().unwrap().clone();
        assert_eq!(nodes.len(), 2, "{v}");
        assert!(nodes.iter().all(|n| n["alive"] == true), "{v}");
        assert_eq!(nodes.iter().filter(|n| n["this"] == true).count(), 1, "{v}");
        let counts: Vec<u64> = nodes
            .iter()
            .map(|n| n["connections"].as_u64().unwrap())
            .collect();
        if counts.contains(&2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B's connections never counted: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[test]
fn a_broker_that_cannot_reach_redis_at_start_says_so_and_exits() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = temp_dir();
    let mut child = std::process::Command::new(workspace_bin("rtc-broker"))
        .args(["--tcp", "127.0.0.1:0", "--http", "off", "--data-dir"])
        .arg(dir.path())
        .args(["--cluster", &format!("redis://127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = rtc_testkit::wait_timeout(&mut child, std::time::Duration::from_secs(20))
        .expect("it exits");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
    // And a bad URL is refused before anything starts.
    let out = std::process::Command::new(workspace_bin("rtc-broker"))
        .args(["--tcp", "127.0.0.1:0", "--http", "off", "--data-dir"])
        .arg(dir.path())
        .args(["--cluster", "http://127.0.0.1:6379"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("redis:// or rediss://"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_redis_is_a_503_for_http_publish_and_shows_in_the_metrics() {
    let mut redis = RedisServer::start();
    let a = Node::start(&redis);
    let publish = || common::http::request(a.http(), "POST", "/v1/publish/jobs", &[], b"x");
    let metric = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    assert_eq!(publish().await.status, 200);
    redis.kill();
    let refused = publish().await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("UNAVAILABLE"), "{}", refused.text());
    let metrics = common::http::get(a.http(), "/metrics", &[]).await.text();
    assert_eq!(
        metric(&metrics, "rtc_storage_failed"),
        Some(1.0),
        "{metrics}"
    );
    redis.restart();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while publish().await.status != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis never taken back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let metrics = common::http::get(a.http(), "/metrics", &[]).await.text();
    assert_eq!(
        metric(&metrics, "rtc_storage_failed"),
        Some(0.0),
        "{metrics}"
    );
    assert!(metric(&metrics, "rtc_storage_failures_total").unwrap_or(0.0) >= 1.0);
}
