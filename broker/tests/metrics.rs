//! `GET /metrics` against the real broker on 127.0.0.1:0: the text parses as Prometheus
//! exposition, and its counters and gauges move when clients connect, publish, receive,
//! fail to authenticate and send requests.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::{http, jwt_config, jwt_for, start_gateway, RawConn};
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::{ErrorCode, Frame, PROTOCOL_VERSION};

/// Every sample of the exposition, by its name with labels; fails on a line that is not
/// a comment or `name{labels} value`.
async fn scrape(http_addr: SocketAddr) -> HashMap<String, f64> {
    let answer = http::get(http_addr, "/metrics", &[]).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        answer.headers
    );
    let text = answer.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        assert!(name.starts_with("rtc_"), "{line:?}");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line:?}"));
        samples.insert(name.to_string(), value);
    }
    samples
}

fn get(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn counters_move_when_clients_do() {
    let g = start_gateway(|_| {}).await;
    let before = scrape(g.http).await;
    assert!(get(&before, "rtc_process_resident_memory_bytes") > 1e6);
    assert!(get(&before, "rtc_process_open_fds") > 0.0);

    let mut sub = RawConn::hello(g.handle.tcp_addr()).await;
    sub.subscribe_ok(1, "m.>").await;
    let mut publisher = RawConn::hello(g.handle.tcp_addr()).await;
    for _ in 0..5 {
        publisher.publish_acked("m.x", b"12345678").await;
    }
    for _ in 0..5 {
        sub.expect_deliver().await;
    }
    // The publisher's session adds its counts at the end of a read: one more round trip.
    publisher.ping(1).await;
    publisher
        .send(Frame::from_op(Op::Request(v1::Request {
            req_id: 9,
            topic: "nobody.here".into(),
            ..Default::default()
        })))
        .await;
    publisher.expect_error(ErrorCode::NoResponders).await;

    let after = scrape(g.http).await;
    let moved = |name: &str| get(&after, name) - get(&before, name);
    assert_eq!(get(&after, "rtc_connections_open{transport=\"tcp\"}"), 2.0);
    assert_eq!(
        moved("rtc_connections_accepted_total{transport=\"tcp\"}"),
        2.0
    );
    assert_eq!(moved("rtc_messages_in_total"), 5.0);
    assert_eq!(moved("rtc_bytes_in_total"), 40.0);
    assert_eq!(moved("rtc_messages_out_total"), 5.0);
    assert!(moved("rtc_bytes_out_total") >= 40.0);
    assert_eq!(moved("rtc_publish_latency_seconds_count"), 5.0);
    assert!(moved("rtc_publish_latency_seconds_sum") > 0.0);
    assert_eq!(
        moved("rtc_publish_latency_seconds_bucket{le=\"+Inf\"}"),
        5.0
    );
    assert_eq!(moved("rtc_requests_total"), 1.0);
    assert_eq!(
        moved("rtc_requests_unanswered_total{reason=\"no_responders\"}"),
        1.0
    );
    drop(sub);
    drop(publisher);
    // Closed connections leave the gauge (their sessions end after the sockets close).
    let deadline = std::time::Instant::now() + common::WAIT;
    while get(
        &scrape(g.http).await,
        "rtc_connections_open{transport=\"tcp\"}",
    ) != 0.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the gauge went back to 0"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    g.handle.shutdown().await;
}

#[tokio::test]
async fn auth_failures_are_counted_by_reason() {
    const SECRET: &str = "metrics test secret of at least 32 bytes";
    let g = start_gateway(|c| c.jwt = Some(jwt_config(SECRET))).await;
    for token in ["", "not.a.token"] {
        let mut c = RawConn::connect(g.handle.tcp_addr()).await;
        c.send(Frame::from_op(Op::Hello(v1::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "metrics-test".into(),
            auth_token: token.into(),
        })))
        .await;
        c.expect_error(ErrorCode::Unauthorized).await;
    }
    let mut ana = RawConn::login(
        g.handle.tcp_addr(),
        &jwt_for(SECRET, "ana", &["a.>"], &["a.>"]),
    )
    .await;
    ana.subscribe(1, "b.>").await;
    ana.expect_error(ErrorCode::PermissionDenied).await;
    let samples = scrape(g.http).await;
    for reason in ["missing_token", "invalid_token", "permission_denied"] {
        let name = format!("rtc_auth_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(get(&samples, &name), 1.0, "{name}");
    }
    g.handle.shutdown().await;
}

/// Storage passes, replay reads and durable consumers show in their series; a consumer on
/// a topic a config rule names gets series of its own, any other one only counts in the
/// sum (so invented names cannot grow the series).
#[tokio::test]
async fn storage_replay_and_consumer_series_move() {
    let g = start_gateway(|c| {
        c.fsync = rtc_broker::config::FsyncPolicy::Always;
        let mut rule = rtc_broker::topic::TopicRule::ephemeral("jobs");
        rule.storage = rtc_broker::topic::StorageName::Durable;
        c.topic = vec![rule];
    })
    .await;
    let tcp = g.handle.tcp_addr();
    let mut c = RawConn::hello(tcp).await;
    for topic in ["jobs", "other"] {
        for _ in 0..3 {
            c.publish_acked(topic, b"job").await;
        }
    }
    let mut replayer = RawConn::hello(tcp).await;
    replayer
        .send(Frame::from_op(Op::Subscribe(v1::Subscribe {
            req_id: 1,
            sub_id: 1,
            pattern: "jobs".into(),
            start: Some(v1::StartPosition {
                position: Some(v1::start_position::Position::First(true)),
            }),
            ..Default::default()
        })))
        .await;
    assert!(matches!(
        replayer.recv().await.unwrap().op,
        Some(Op::SubAck(_))
    ));
    for _ in 0..3 {
        replayer.expect_deliver().await;
    }
    // A consumer on each topic, each holding 3 unacknowledged messages.
    let mut worker = RawConn::hello(tcp).await;
    for (sub_id, topic) in [(1, "jobs"), (2, "other")] {
        worker
            .send(Frame::from_op(Op::Subscribe(v1::Subscribe {
                req_id: sub_id,
                sub_id,
                pattern: topic.into(),
                consumer: "w".into(),
                ..Default::default()
            })))
            .await;
        assert!(matches!(
            worker.recv().await.unwrap().op,
            Some(Op::SubAck(_))
        ));
        for _ in 0..3 {
            worker.expect_deliver().await;
        }
    }
    // The consumer series are sampled once a second.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let s = loop {
        let s = scrape(g.http).await;
        if get(&s, "rtc_consumer_pending{topic=\"\",consumer=\"\"}") == 3.0 {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no consumer series: {s:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        get(&s, "rtc_consumer_pending{topic=\"jobs\",consumer=\"w\"}"),
        3.0
    );
    assert!(
        !s.keys().any(|k| k.contains("topic=\"other\"")),
        "no series of its own for a topic no rule names"
    );
    assert!(get(&s, "rtc_storage_pass_appends_count") >= 1.0, "{s:?}");
    assert_eq!(
        get(&s, "rtc_storage_pass_appends_sum"),
        6.0,
        "six appends in the passes"
    );
    assert!(get(&s, "rtc_storage_commit_seconds_count") >= 1.0);
    assert!(
        get(&s, "rtc_storage_fsync_seconds_count") >= 1.0,
        "fsync always flushes every pass"
    );
    assert!(get(&s, "rtc_replay_reads_total") >= 1.0);
    assert_eq!(get(&s, "rtc_replay_messages_read_total"), 3.0);
    g.handle.shutdown().await;
}
