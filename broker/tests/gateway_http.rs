//! HTTP publish through the gateway, against the broker on 127.0.0.1:0 over real
//! sockets: one message with `Idempotency-Key` dedup, a newline-delimited batch with a
//! result per line, ephemeral topics, and every refusal with its status and wire code
//! (bad topic, body above `max_payload`, missing, wrong and unpermitted tokens).

mod common;

use bytes::Bytes;
use common::http::{self, Answer};
use common::{start_gateway, RawConn, TestGateway};
use rtc_broker::auth::{hash_token, UserConfig};
use rtc_broker::topic::TopicRule;
use rtc_broker::Config;

/// The gateway, with `eph.>` ephemeral.
async fn start(tweak: impl FnOnce(&mut Config)) -> TestGateway {
    start_gateway(|c| {
        c.topic = vec![TopicRule::ephemeral("eph.>")];
        tweak(c)
    })
    .await
}

async fn post(g: &TestGateway, path: &str, headers: &[&str], body: &[u8]) -> Answer {
    http::request(g.http, "POST", path, headers, body).await
}

fn error_code(a: &Answer) -> String {
    a.json()["code"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_publish_is_stored_once_per_idempotency_key() {
    let g = start(|_| {}).await;
    let mut sub = RawConn::hello(g.handle.tcp_addr()).await;
    sub.subscribe_ok(1, "orders.>").await;

    let key = "Idempotency-Key: order-17";
    let a = post(&g, "/v1/publish/orders.new", &[key], b"{\"id\":17}").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), serde_json::json!({"seq": 1, "duplicate": false}));
    // The same key again: answered as a duplicate with the first seq, not stored again.
    let a = post(&g, "/v1/publish/orders.new", &[key], b"{\"id\":17}").await;
    assert_eq!(a.json(), serde_json::json!({"seq": 1, "duplicate": true}));
    let a = post(&g, "/v1/publish/orders.new", &[], b"no key").await;
    assert_eq!(a.json(), serde_json::json!({"seq": 2, "duplicate": false}));

    let (_, topic, payload) = sub.expect_deliver().await;
    assert_eq!(
        (topic.as_str(), payload),
        ("orders.new", Bytes::from_static(b"{\"id\":17}"))
    );
    assert_eq!(sub.expect_deliver().await.2, Bytes::from_static(b"no key"));
    g.handle.shutdown().await;
}

#[tokio::test]
async fn an_ephemeral_publish_is_fanned_out_with_seq_0() {
    let g = start(|_| {}).await;
    let mut sub = RawConn::hello(g.handle.tcp_addr()).await;
    sub.subscribe_ok(1, "eph.>").await;
    let a = post(&g, "/v1/publish/eph.pos", &[], b"x=1").await;
    assert_eq!(a.json(), serde_json::json!({"seq": 0, "duplicate": false}));
    assert_eq!(sub.expect_deliver().await.2, Bytes::from_static(b"x=1"));
    g.handle.shutdown().await;
}

#[tokio::test]
async fn a_batch_gets_one_result_per_line_in_order() {
    let g = start(|_| {}).await;
    let mut sub = RawConn::hello(g.handle.tcp_addr()).await;
    sub.subscribe_ok(1, "chat.>").await;
    let body = concat!(
        "{\"topic\":\"chat.room1\",\"payload\":\"hello\",\"msg_id\":\"m1\"}\n",
        "{\"topic\":\"bad topic\",\"payload\":\"x\"}\n",
        "\n",
        "{\"topic\":\"chat.room1\",\"payload_base64\":\"AAH/\",\"headers\":{\"k\":\"v\"}}\n",
        "not json\n",
        "{\"topic\":\"chat.room1\",\"payload\":\"hello\",\"msg_id\":\"m1\"}\n",
    );
    let a = post(
        &g,
        "/v1/publish",
        &["Content-Type: application/x-ndjson"],
        body.as_bytes(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let results = a.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 5, "{results:?}");
    assert_eq!(
        results[0],
        serde_json::json!({"seq": 1, "duplicate": false})
    );
    assert_eq!(results[1]["code"], "INVALID_TOPIC");
    assert_eq!(
        results[2],
        serde_json::json!({"seq": 2, "duplicate": false})
    );
    assert_eq!(results[3]["code"], "INVALID_REQUEST");
    assert!(
        results[3]["message"].as_str().unwrap().contains("line 4"),
        "{results:?}"
    );
    assert_eq!(results[4], serde_json::json!({"seq": 1, "duplicate": true}));
    assert_eq!(sub.expect_deliver().await.2, Bytes::from_static(b"hello"));
    assert_eq!(
        sub.expect_deliver().await.2,
        Bytes::from_static(&[0, 1, 255])
    );
    g.handle.shutdown().await;
}

#[tokio::test]
async fn refusals_carry_the_status_and_the_wire_code() {
    let g = start(|c| c.max_payload = 1000).await;
    let a = post(&g, "/v1/publish/bad%20topic", &[], b"x").await;
    assert_eq!(
        (a.status, error_code(&a).as_str()),
        (400, "INVALID_TOPIC"),
        "{}",
        a.text()
    );
    let a = post(&g, "/v1/publish/ok.topic", &[], &[7u8; 1001]).await;
    assert_eq!(
        (a.status, error_code(&a).as_str()),
        (413, "PAYLOAD_TOO_LARGE")
    );
    let a = post(&g, "/v1/publish/ok.topic", &[], &[7u8; 1000]).await;
    assert_eq!(a.status, 200, "exactly the limit is accepted: {}", a.text());
    let long_key = format!("Idempotency-Key: {}", "k".repeat(300));
    let a = post(&g, "/v1/publish/ok.topic", &[&long_key], b"x").await;
    assert_eq!(
        (a.status, error_code(&a).as_str()),
        (400, "INVALID_REQUEST")
    );
    let a = post(&g, "/v1/publish", &[], &[b'x'; 1001]).await;
    assert_eq!(
        (a.status, error_code(&a).as_str()),
        (413, "PAYLOAD_TOO_LARGE")
    );
    g.handle.shutdown().await;
}

#[tokio::test]
async fn tokens_and_permissions_apply_to_http_publish() {
    let g = start(|c| {
        c.user = vec![UserConfig {
            name: "shop".into(),
            token_hash: hash_token("shop-token"),
            publish: vec!["orders.>".into()],
            subscribe: vec![],
            admin: false,
        }]
    })
    .await;
    let a = post(&g, "/v1/publish/orders.x", &[], b"x").await;
    assert_eq!((a.status, error_code(&a).as_str()), (401, "UNAUTHORIZED"));
    let a = post(
        &g,
        "/v1/publish/orders.x",
        &["Authorization: Bearer nope"],
        b"x",
    )
    .await;
    assert_eq!((a.status, error_code(&a).as_str()), (401, "UNAUTHORIZED"));
    let ok = "Authorization: Bearer shop-token";
    let a = post(&g, "/v1/publish/billing.x", &[ok], b"x").await;
    assert_eq!(
        (a.status, error_code(&a).as_str()),
        (403, "PERMISSION_DENIED")
    );
    let a = post(&g, "/v1/publish/orders.x", &[ok], b"x").await;
    assert_eq!(a.json(), serde_json::json!({"seq": 1, "duplicate": false}));
    // The batch form checks each line.
    let body =
        "{\"topic\":\"orders.y\",\"payload\":\"a\"}\n{\"topic\":\"billing.y\",\"payload\":\"b\"}\n";
    let a = post(&g, "/v1/publish", &[ok], body.as_bytes()).await;
    let results = a.json()["results"].clone();
    assert_eq!(
        results[0],
        serde_json::json!({"seq": 1, "duplicate": false})
    );
    assert_eq!(results[1]["code"], "PERMISSION_DENIED");
    g.handle.shutdown().await;
}

#[tokio::test]
async fn cors_lets_allowed_origins_in_and_keeps_others_out() {
    let g = start(|c| c.allowed_origins = vec!["https://app.example".into()]).await;
    // A preflight from an allowed origin.
    let a = http::request(
        g.http,
        "OPTIONS",
        "/v1/publish/chat.x",
        &[
            "Origin: https://app.example",
            "Access-Control-Request-Method: POST",
            "Access-Control-Request-Headers: idempotency-key, content-type",
        ],
        b"",
    )
    .await;
    assert_eq!(a.status, 204, "{a:?}");
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let allowed = a.header("access-control-allow-headers").unwrap_or_default();
    assert!(
        allowed.contains("idempotency-key") && allowed.contains("authorization"),
        "{allowed}"
    );
    assert!(a
        .header("access-control-allow-methods")
        .unwrap_or_default()
        .contains("POST"));
    // The request itself: served, and readable by the page.
    let a = post(
        &g,
        "/v1/publish/chat.x",
        &["Origin: https://app.example"],
        b"hi",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    // Another site's page: its preflight and its request are refused, nothing stored.
    for method in ["OPTIONS", "POST"] {
        let a = http::request(
            g.http,
            method,
            "/v1/publish/chat.x",
            &[
                "Origin: https://evil.example",
                "Access-Control-Request-Method: POST",
            ],
            b"forged",
        )
        .await;
        assert_eq!(
            (a.status, error_code(&a).as_str()),
            (403, "PERMISSION_DENIED"),
            "{method}"
        );
        assert_eq!(a.header("access-control-allow-origin"), None);
    }
    let a = http::get(g.http, "/v1/poll?topic=chat.x&from=first&timeout=1ms", &[]).await;
    let messages = a.json()["messages"].as_array().unwrap().clone();
    assert_eq!(
        messages.len(),
        1,
        "only the allowed page's message: {messages:?}"
    );
    // Without Origin (curl, a backend): no CORS headers, served.
    let a = post(&g, "/v1/publish/chat.x", &[], b"from curl").await;
    assert_eq!(
        (a.status, a.header("access-control-allow-origin")),
        (200, None)
    );
    g.handle.shutdown().await;
}

#[tokio::test]
async fn each_http_connection_has_the_publish_rate() {
    let g = start(|c| {
        c.publish_rate = 2;
        c.publish_burst = 3;
    })
    .await;
    // A batch of 6 on one connection: the burst of 3 is stored, the rest refused.
    let body: String = (0..6)
        .map(|i| format!("{{\"topic\":\"rate.x\",\"payload\":\"{i}\"}}\n"))
        .collect();
    let a = post(&g, "/v1/publish", &[], body.as_bytes()).await;
    let results = a.json()["results"].as_array().unwrap().clone();
    let codes: Vec<&str> = results
        .iter()
        .map(|r| r["code"].as_str().unwrap_or("stored"))
        .collect();
    assert_eq!(
        codes,
        [
            "stored",
            "stored",
            "stored",
            "RATE_LIMITED",
            "RATE_LIMITED",
            "RATE_LIMITED"
        ]
    );
    // Two single publishes pipelined on one connection after a burst of three: 429 with
    // the wire code for the fourth.
    let one = |close: bool| {
        format!(
            "POST /v1/publish/rate.y HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n{}\r\nz",
            if close { "Connection: close\r\n" } else { "" }
        )
    };
    let mut tcp = tokio::net::TcpStream::connect(g.http).await.unwrap();
    let requests = [one(false), one(false), one(false), one(true)].concat();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, requests.as_bytes())
        .await
        .unwrap();
    let mut answers = String::new();
    tokio::time::timeout(
        common::WAIT,
        tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut answers),
    )
    .await
    .expect("answers")
    .unwrap();
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 3, "{answers}");
    assert_eq!(answers.matches("HTTP/1.1 429").count(), 1, "{answers}");
    assert!(answers.contains("RATE_LIMITED"), "{answers}");
    // Another connection has a bucket of its own.
    let a = post(&g, "/v1/publish/rate.y", &[], b"z").await;
    assert_eq!(a.status, 200);
    g.handle.shutdown().await;
}

/// `GET /v1/presence/{topic}`: the room's members with their info as JSON, a count-only
/// form, and a bad topic refused with its code.
#[tokio::test]
async fn presence_over_http() {
    let g = start_gateway(|_| {}).await;
    let mut member = RawConn::hello(g.handle.tcp_addr()).await;
    member
        .send(rtc_proto::Frame::from_op(
            rtc_proto::v1::frame::Op::Subscribe(rtc_proto::v1::Subscribe {
                req_id: 1,
                sub_id: 1,
                pattern: "room.h".into(),
                presence: Some(rtc_proto::v1::PresenceJoin {
                    info: r#"{"name":"Ana"}"#.into(),
                    events: false,
                }),
                ..Default::default()
            }),
        ))
        .await;
    member.recv().await;
    let answer = http::get(g.http, "/v1/presence/room.h", &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!(
        (&body["members"], &body["connections"]),
        (&1.into(), &1.into())
    );
    assert_eq!(body["list"][0]["info"]["name"], "Ana");
    assert_eq!(body["next"], "");
    let count = http::get(g.http, "/v1/presence/room.h?count_only=true", &[]).await;
    assert_eq!(count.json()["members"], 1);
    assert_eq!(count.json()["list"], serde_json::json!([]));
    let bad = http::get(g.http, "/v1/presence/bad..topic", &[]).await;
    assert_eq!(
        (bad.status, bad.json()["code"].as_str()),
        (400, Some("INVALID_TOPIC"))
    );
    g.handle.shutdown().await;
}
