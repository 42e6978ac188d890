//! JSON Web Tokens on the wire: the app's backend mints them, a client presents them in
//! `Hello` (TCP), as `Authorization: Bearer` (HTTP publish) or `?token=` (SSE). Their
//! claims are the permissions; an expired one is refused at connect; a connection whose
//! token expires is closed unless it refreshed it; `rtc-broker mint-token` makes them.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{http, start_gateway, RawConn, TestGateway};
use rtc_broker::auth::jwt::{mint_hs256, Claims, JwtConfig};
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::{ErrorCode, Frame, PROTOCOL_VERSION};

const SECRET: &str = "test secret of at least thirty-two bytes";
const BIN: &str = env!("CARGO_BIN_EXE_rtc-broker");

async fn broker() -> TestGateway {
    start_gateway(|c| {
        c.jwt = Some(JwtConfig {
            hs256_secret: Some(SECRET.into()),
            ..Default::default()
        })
    })
    .await
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn token(sub: &str, ttl_s: i64) -> String {
    token_for(sub, ttl_s, &["chat.>"])
}

/// A token of `sub` that may publish to `publish` and subscribe to `chat.>`.
fn token_for(sub: &str, ttl_s: i64, publish: &[&str]) -> String {
    let claims = Claims {
        sub: sub.into(),
        exp: now_s() + ttl_s,
        nbf: None,
        publish: publish.iter().map(|p| p.to_string()).collect(),
        subscribe: vec!["chat.>".into()],
        admin: false,
    };
    mint_hs256(SECRET, &claims).unwrap()
}

async fn hello(g: &TestGateway, token: &str) -> (RawConn, Option<Frame>) {
    let mut c = RawConn::connect(g.handle.tcp_addr()).await;
    c.send(Frame::from_op(Op::Hello(v1::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "jwt".into(),
        auth_token: token.into(),
    })))
    .await;
    let answer = c.recv().await;
    (c, answer)
}

fn refresh(req_id: u64, token: &str) -> Frame {
    Frame::from_op(Op::AuthRefresh(v1::AuthRefresh {
        req_id,
        auth_token: token.into(),
    }))
}

#[tokio::test]
async fn claims_are_the_permissions_and_an_expired_token_is_refused() {
    let g = broker().await;
    let (mut c, welcome) = hello(&g, &token("alice", 3600)).await;
    assert!(
        matches!(
            welcome,
            Some(Frame {
                op: Some(Op::Welcome(_))
            })
        ),
        "{welcome:?}"
    );
    c.publish_acked("chat.room1", b"hi").await;
    c.subscribe_ok(1, "chat.room1").await;
    c.send(Frame::from_op(Op::Publish(v1::Publish {
        req_id: 9,
        topic: "billing.x".into(),
        ..Default::default()
    })))
    .await;
    c.expect_error(ErrorCode::PermissionDenied).await;

    // Expired (beyond the few seconds of clock skew allowed), and not a token at all.
    for bad in [
        token("alice", -60),
        "not.a.token".to_string(),
        String::new(),
    ] {
        let (mut c, answer) = hello(&g, &bad).await;
        match answer {
            Some(Frame {
                op: Some(Op::Error(e)),
            }) => {
                assert_eq!(e.error_code(), ErrorCode::Unauthorized, "{e:?}");
                if bad.starts_with("ey") && bad.len() > 20 {
                    assert!(e.message.contains("expired"), "{e:?}");
                }
            }
            other => panic!("expected UNAUTHORIZED, got {other:?}"),
        }
        c.expect_closed().await;
    }
    g.handle.shutdown().await;
}

#[tokio::test]
async fn a_token_that_expires_closes_the_connection_unless_refreshed() {
    let g = broker().await;
    // The token expires in 2 s; nothing refreshes it.
    let (mut lapsing, _) = hello(&g, &token("bob", 2)).await;
    let started = Instant::now();
    let e = lapsing.expect_error(ErrorCode::Unauthorized).await;
    assert!(e.message.contains("AuthRefresh"), "{e:?}");
    lapsing.expect_closed().await;
    let waited = started.elapsed();
    assert!(waited <= Duration::from_secs(4), "closed after {waited:?}");

    // The same, refreshed in time: still open after the first token's expiry.
    let (mut kept, _) = hello(&g, &token("bob", 2)).await;
    kept.send(refresh(5, &token("bob", 3600))).await;
    match kept.recv().await {
        Some(Frame {
            op: Some(Op::AuthRefreshed(r)),
        }) => {
            assert_eq!(r.req_id, 5);
            assert!(r.expires_at_ms > (now_s() + 3000) * 1000, "{r:?}");
        }
        other => panic!("expected AuthRefreshed, got {other:?}"),
    }
    // A fresh token of someone else is refused; the connection keeps its own.
    kept.send(refresh(6, &token("mallory", 3600))).await;
    let e = kept.expect_error(ErrorCode::Unauthorized).await;
    assert_eq!(e.req_id, 6);
    tokio::time::sleep(Duration::from_secs(3)).await;
    kept.ping(1).await;
    kept.publish_acked("chat.kept", b"still here").await;
    g.handle.shutdown().await;
}

#[tokio::test]
async fn http_publish_and_sse_take_the_same_tokens() {
    let g = broker().await;
    let bearer = format!("Authorization: Bearer {}", token("carol", 3600));
    let a = http::request(g.http, "POST", "/v1/publish/chat.web", &[&bearer], b"hello").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = http::request(g.http, "POST", "/v1/publish/billing.x", &[&bearer], b"x").await;
    assert_eq!(a.status, 403);
    let expired = format!("Authorization: Bearer {}", token("carol", -60));
    let a = http::request(g.http, "POST", "/v1/publish/chat.web", &[&expired], b"x").await;
    assert_eq!(a.status, 401);
    assert!(a.text().contains("expired"), "{}", a.text());
    let a = http::get(
        g.http,
        &format!(
            "/v1/poll?topic=chat.web&from=first&timeout=1ms&token={}",
            token("carol", 3600)
        ),
        &[],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["messages"][0]["payload"], "hello");
    let a = http::get(
        g.http,
        "/v1/poll?topic=chat.web&token=forged.jwt.value",
        &[],
    )
    .await;
    assert_eq!(a.status, 401);
    g.handle.shutdown().await;
}

#[tokio::test]
async fn mint_token_makes_tokens_the_broker_accepts() {
    let g = broker().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rtc.toml");
    std::fs::write(&config, format!("[jwt]\nhs256_secret = \"{SECRET}\"\n")).unwrap();
    let out = Command::new(BIN)
        .args(["mint-token", "--config"])
        .arg(&config)
        .args([
            "--sub",
            "dave",
            "--publish",
            "chat.>",
            "--subscribe",
            "chat.>",
            "--ttl",
            "10m",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (mut c, welcome) = hello(&g, &minted).await;
    assert!(
        matches!(
            welcome,
            Some(Frame {
                op: Some(Op::Welcome(_))
            })
        ),
        "{welcome:?}"
    );
    c.publish_acked("chat.cli", b"minted").await;

    // Without a secret to sign with: one clear line, and a failure.
    let out = Command::new(BIN)
        .args(["mint-token", "--sub", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    g.handle.shutdown().await;
}

/// A token in a query string (`?token=`, for browsers) never reaches the log, even at
/// `trace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_token_never_appears_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rtc.toml");
    std::fs::write(&config, format!("[jwt]\nhs256_secret = \"{SECRET}\"\n")).unwrap();
    let broker = rtc_testkit::BrokerProcess::start(
        std::path::Path::new(BIN),
        &dir.path().join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--log",
            "trace",
        ],
    );
    let http = broker.http.expect("the gateway");
    let good = token("erin", 3600);
    let bad = "eyJhbGciOiJIUzI1NiJ9.bm90LWEtcmVhbC10b2tlbg.c2VjcmV0LW1hcmtlcg";
    for t in [good.as_str(), bad] {
        let _ = http::get(
            http,
            &format!("/v1/poll?topic=chat.x&timeout=1ms&token={t}"),
            &[],
        )
        .await;
        let _ = http::get(
            http,
            &format!("/v1/sse?topic=chat.%3E&token={t}&from=nope"),
            &[],
        )
        .await;
    }
    let log = broker.kill_collecting_stderr();
    assert!(!log.is_empty(), "the broker logged at trace");
    for t in [good.as_str(), bad] {
        assert!(!log.contains(t), "a token in the log:\n{log}");
    }
}

/// A refreshed token's permissions apply from then on, also to a topic the connection
/// already published to (its permission check is cached per topic).
#[tokio::test]
async fn a_refreshed_token_brings_its_own_permissions() {
    let g = broker().await;
    let (mut c, _) = hello(&g, &token("frank", 3600)).await;
    c.publish_acked("chat.a", b"allowed").await;
    c.send(refresh(1, &token_for("frank", 3600, &["news.>"])))
        .await;
    assert!(matches!(
        c.recv().await,
        Some(Frame {
            op: Some(Op::AuthRefreshed(_))
        })
    ));
    c.send(Frame::from_op(Op::Publish(v1::Publish {
        req_id: 2,
        topic: "chat.a".into(),
        ..Default::default()
    })))
    .await;
    let e = c.expect_error(ErrorCode::PermissionDenied).await;
    assert_eq!(e.req_id, 2);
    c.publish_acked("news.b", b"now allowed").await;
    g.handle.shutdown().await;
}
