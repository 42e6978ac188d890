//! The admin API (`/v1/admin/…`) over real HTTP: who may use it, the connections list
//! and a disconnect the client sees, topics created, purged and deleted, consumers
//! deleted, the events ring and stream, the stats and the redacted settings.

mod common;

use common::http::{get, request};
use common::{start_gateway, RawConn};
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::{ErrorCode, Frame};

const SECRET: &str = "admin api test secret, long enough";

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

#[tokio::test]
async fn only_admins_get_in() {
    let g = start_gateway(|c| c.jwt = Some(common::jwt_config(SECRET))).await;
    let user = common::jwt_for(SECRET, "ana", &[">"], &[">"]);
    let admin = common::jwt_with(SECRET, "ops", &[], &[], true);
    for path in [
        "/v1/admin/stats",
        "/v1/admin/connections",
        "/v1/admin/topics",
    ] {
        let none = get(g.http, path, &[]).await;
        assert_eq!(
            (none.status, none.json()["code"].clone()),
            (401, "UNAUTHORIZED".into())
        );
        let not_admin = get(g.http, path, &[&bearer(&user)]).await;
        assert_eq!(
            (not_admin.status, not_admin.json()["code"].clone()),
            (403, "PERMISSION_DENIED".into())
        );
        assert_eq!(get(g.http, path, &[&bearer(&admin)]).await.status, 200);
    }
    let stream = get(g.http, "/v1/admin/events/stream?token=nonsense", &[]).await;
    assert_eq!(stream.status, 401);
    // The refusal is an event itself.
    let events = get(g.http, "/v1/admin/events", &[&bearer(&admin)])
        .await
        .json();
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "auth_failure"
                && e["detail"].as_str().unwrap().contains("not an admin")),
        "{events}"
    );
    // The settings leave the secret out.
    let settings = get(g.http, "/v1/admin/settings", &[&bearer(&admin)]).await;
    assert_eq!(settings.status, 200);
    assert!(!settings.text().contains(SECRET), "{}", settings.text());
    assert_eq!(settings.json()["jwt"]["hs256_secret"], "(redacted)");
    g.handle.shutdown().await;
}

#[tokio::test]
async fn connections_are_listed_and_a_disconnect_reaches_the_client() {
    let g = start_gateway(|_| {}).await;
    let mut client = RawConn::hello(g.handle.tcp_addr()).await;
    client.subscribe_ok(5, "chat.>").await;
    client.publish("chat.x", b"hi").await;
    // Fan-out comes before the answer.
    client.expect_deliver().await;
    assert!(matches!(
        client.recv().await.unwrap().op,
        Some(Op::PubAck(_))
    ));
    let list = get(g.http, "/v1/admin/connections", &[]).await.json();
    let conns = list["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "{list}");
    let c = &conns[0];
    assert_eq!(c["transport"], "tcp");
    assert_eq!(c["subscriptions"]["5"], "chat.>");
    assert_eq!(c["messages_in"], 1);
    assert_eq!(c["messages_out"], 1, "its own message came back to it");
    let id = c["id"].as_u64().unwrap();

    let kick = request(
        g.http,
        "DELETE",
        &format!("/v1/admin/connections/{id}?reason=maintenance"),
        &[],
        b"",
    )
    .await;
    assert_eq!(kick.status, 204);
    let e = client.expect_error(ErrorCode::Disconnected).await;
    assert!(e.message.contains("maintenance"), "{e:?}");
    client.expect_closed().await;
    let again = request(
        g.http,
        "DELETE",
        &format!("/v1/admin/connections/{id}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(again.status, 404);
    let events = get(g.http, "/v1/admin/events", &[]).await.json();
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in ["connect", "kick", "disconnect"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    g.handle.shutdown().await;
}

#[tokio::test]
async fn topics_and_consumers_are_created_purged_and_deleted() {
    let g = start_gateway(|_| {}).await;
    let created = request(
        g.http,
        "PUT",
        "/v1/admin/topics/orders",
        &["Content-Type: application/json"],
        br#"{"max_msgs": 100}"#,
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.text());
    assert_eq!(created.json()["max_msgs"], 100);
    let bad = request(
        g.http,
        "PUT",
        "/v1/admin/topics/orders",
        &["Content-Type: application/json"],
        br#"{"max_msg": 1}"#,
    )
    .await;
    assert_eq!(
        bad.status,
        422,
        "an unknown field is refused: {}",
        bad.text()
    );

    let mut c = RawConn::hello(g.handle.tcp_addr()).await;
    for _ in 0..4 {
        c.publish_acked("orders", b"o").await;
    }
    let sub = v1::Subscribe {
        req_id: 1,
        sub_id: 1,
        pattern: "orders".into(),
        consumer: "billing".into(),
        ..Default::default()
    };
    c.send(Frame::from_op(Op::Subscribe(sub))).await;
    assert!(matches!(c.recv().await.unwrap().op, Some(Op::SubAck(_))));
    for _ in 0..4 {
        c.expect_deliver().await;
    }
    let consumers = get(g.http, "/v1/admin/consumers", &[]).await.json();
    assert_eq!(consumers["consumers"][0]["name"], "billing", "{consumers}");

    let purged = request(
        g.http,
        "POST",
        "/v1/admin/topics/orders/purge?keep=1",
        &[],
        b"",
    )
    .await;
    assert_eq!(
        (
            purged.json()["messages"].clone(),
            purged.json()["first_seq"].clone()
        ),
        (1.into(), 4.into())
    );
    let gone = request(
        g.http,
        "DELETE",
        "/v1/admin/consumers/orders/billing",
        &[],
        b"",
    )
    .await;
    assert_eq!(gone.status, 200);
    let e = c.expect_error(ErrorCode::TopicDeleted).await;
    assert_eq!(e.sub_id, 1);
    let missing = get(g.http, "/v1/admin/consumers/orders/billing", &[]).await;
    assert_eq!(missing.status, 404);

    let deleted = request(g.http, "DELETE", "/v1/admin/topics/orders", &[], b"").await;
    assert_eq!(deleted.status, 200);
    assert_eq!(
        get(g.http, "/v1/admin/topics/orders", &[]).await.status,
        404
    );
    let topics = get(g.http, "/v1/admin/topics", &[]).await.json();
    assert_eq!(topics["topics"], serde_json::json!([]));
    let stats = get(g.http, "/v1/admin/stats", &[]).await.json();
    assert_eq!(stats["connections"], 1);
    assert_eq!(stats["version"], env!("CARGO_PKG_VERSION"));
    assert!(stats["messages_in"].as_u64().unwrap() >= 4, "{stats}");
    g.handle.shutdown().await;
}

#[tokio::test]
async fn the_event_stream_sends_events_and_figures() {
    let g = start_gateway(|_| {}).await;
    let mut tcp = tokio::net::TcpStream::connect(g.http).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "GET /v1/admin/events/stream HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        g.http
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let _client = RawConn::hello(g.handle.tcp_addr()).await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while !(seen.contains("event: rtc-event")
        && seen.contains("\"kind\":\"connect\"")
        && seen.contains("event: stats"))
    {
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .expect("the stream sends within the wait")
            .unwrap();
        assert!(n > 0, "stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    g.handle.shutdown().await;
}

#[tokio::test]
async fn settings_changed_at_run_time_take_effect_and_bad_ones_change_nothing() {
    let g = start_gateway(|_| {}).await;
    let patch = |body: &'static str| {
        request(
            g.http,
            "PATCH",
            "/v1/admin/settings",
            &["Content-Type: application/json"],
            body.as_bytes(),
        )
    };
    let changed = patch(r#"{"max_payload": 100, "publish_rate": 0}"#).await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    assert_eq!(changed.json()["max_payload"], 100);
    let mut c = RawConn::hello(g.handle.tcp_addr()).await;
    static BIG: [u8; 200] = [b'x'; 200];
    c.publish("s.t", &BIG).await;
    c.expect_error(ErrorCode::PayloadTooLarge).await;
    c.publish_acked("s.t", b"small").await;

    // Refused whole: one bad value, an unknown field, a log filter without its hook.
    let bad = patch(r#"{"max_payload": 5000, "max_msg_id": 0}"#).await;
    assert_eq!(
        (bad.status, bad.json()["code"].clone()),
        (400, "INVALID_REQUEST".into())
    );
    assert_eq!(patch(r#"{"max_payloads": 1}"#).await.status, 422);
    let log = patch(r#"{"log": "debug"}"#).await;
    assert_eq!(log.status, 400, "{}", log.text());
    let settings = get(g.http, "/v1/admin/settings", &[]).await.json();
    assert_eq!(settings["max_payload"], 100, "nothing changed: {settings}");
    c.publish("s.t", &BIG).await;
    c.expect_error(ErrorCode::PayloadTooLarge).await;

    // No config file to reread.
    let reload = request(g.http, "POST", "/v1/admin/reload", &[], b"").await;
    assert_eq!(reload.status, 404, "{}", reload.text());
    g.handle.shutdown().await;
}

/// `POST /v1/admin/reload` rereads the file: a new topic rule reaches the topics that
/// follow the rules (retention then trims them), not one created explicitly.
#[tokio::test]
async fn a_reloaded_topic_rule_applies_to_the_topics_that_follow_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rtc.toml");
    std::fs::write(&file, "").unwrap();
    let handle = rtc_broker::Broker::builder()
        .tcp("127.0.0.1:0".parse().unwrap())
        .http(Some("127.0.0.1:0".parse().unwrap()))
        .data_dir(dir.path().join("data"))
        .config_file(&file)
        .start()
        .await
        .unwrap();
    let http = handle.http_addr().unwrap();
    let mut c = RawConn::hello(handle.tcp_addr()).await;
    let created = request(
        http,
        "PUT",
        "/v1/admin/topics/keep.explicit",
        &["Content-Type: application/json"],
        b"{}",
    )
    .await;
    assert_eq!(created.status, 200);
    for topic in ["keep.auto", "keep.explicit"] {
        for _ in 0..5 {
            c.publish_acked(topic, b"m").await;
        }
    }
    std::fs::write(&file, "[[topic]]\npattern = \"keep.>\"\nmax_msgs = 2\n").unwrap();
    let reload = request(http, "POST", "/v1/admin/reload", &[], b"").await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    assert_eq!(
        c.topic_info("keep.auto").await.settings.unwrap().max_msgs,
        2
    );
    assert_eq!(
        c.topic_info("keep.explicit")
            .await
            .settings
            .unwrap()
            .max_msgs,
        0
    );
    // Retention runs every second.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while c.topic_info("keep.auto").await.messages != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never trimmed it"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(c.topic_info("keep.explicit").await.messages, 5);
    // A file that does not parse is refused, and the rule stays.
    std::fs::write(&file, "[[topic]\n").unwrap();
    let bad = request(http, "POST", "/v1/admin/reload", &[], b"").await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(
        c.topic_info("keep.auto").await.settings.unwrap().max_msgs,
        2
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn a_consumer_created_over_the_api_starts_where_it_was_told() {
    let g = start_gateway(|_| {}).await;
    let mut c = RawConn::hello(g.handle.tcp_addr()).await;
    for _ in 0..4 {
        c.publish_acked("made.t", b"m").await;
    }
    let put = |body: &'static [u8]| {
        request(
            g.http,
            "PUT",
            "/v1/admin/consumers/made.t/audit",
            &["Content-Type: application/json"],
            body,
        )
    };
    let created = put(br#"{"start": "seq:3"}"#).await;
    assert_eq!(created.status, 200, "{}", created.text());
    assert_eq!(
        (
            created.json()["next_seq"].clone(),
            created.json()["members"].clone()
        ),
        (3.into(), 0.into())
    );
    // Again: left as it is.
    assert_eq!(put(br#"{"start": "first"}"#).await.json()["next_seq"], 3);
    assert_eq!(put(br#"{"start": "soon"}"#).await.status, 400);
    let sub = v1::Subscribe {
        req_id: 1,
        sub_id: 1,
        pattern: "made.t".into(),
        consumer: "audit".into(),
        ..Default::default()
    };
    c.send(Frame::from_op(Op::Subscribe(sub))).await;
    assert!(matches!(c.recv().await.unwrap().op, Some(Op::SubAck(_))));
    match c.recv().await.unwrap().op {
        Some(Op::Deliver(d)) => assert_eq!(d.message.unwrap().seq, 3),
        other => panic!("expected seq 3, got {other:?}"),
    }
    g.handle.shutdown().await;
}

/// A store that refuses writes (here: its disk is below a reserve no disk has) shows as
/// an event and in the metrics.
#[tokio::test]
async fn a_storage_failure_is_an_event_and_a_metric() {
    let g = start_gateway(|c| c.store_reserve = 1 << 60).await;
    let mut c = RawConn::hello(g.handle.tcp_addr()).await;
    // The free space is looked at every second (or after a quarter of the reserve is
    // written): publish until a write is refused.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        c.publish("full.t", b"m").await;
        match c.recv().await.unwrap().op {
            Some(Op::PubAck(_)) => {}
            Some(Op::Error(e)) if e.error_code() == ErrorCode::Storage => break,
            other => panic!("expected PubAck or STORAGE, got {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no write was refused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let events = get(g.http, "/v1/admin/events", &[]).await.json();
        let hit = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "storage_error");
        if hit {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no storage_error event: {events}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let metrics = get(g.http, "/metrics", &[]).await.text();
    assert!(
        metrics.lines().any(|l| l == "rtc_storage_failed 1"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == "rtc_storage_failures_total 1"),
        "{metrics}"
    );
    g.handle.shutdown().await;
}
