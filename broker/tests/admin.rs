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
